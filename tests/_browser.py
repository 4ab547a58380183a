"""A real headless Chromium for the end-to-end tests of the example web apps, driven by
Playwright's async API against Debian's ``chromium`` (Playwright's own browser downloads are
never used), and an ASGI app served by uvicorn on a free loopback port, in the running loop.

``.ci/run`` installs ``chromium`` with apt-get, and the ``test`` extra brings ``playwright``;
with ``CI`` set, a missing browser or Playwright fails the tests that need them, elsewhere it
skips them (as ``_redis.py`` does for redis-server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import zlib
from typing import TYPE_CHECKING, Any

import anyio
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Chromium's flags on this machine (a root user, no GPU, a closed network): without the
#: background-networking ones, it keeps trying to reach Google's hosts. Playwright's `launch`
#: gives each browser a new, empty profile directory of its own, and removes it after.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds for the browser to start and for a page to show what a test awaits: generous,
#: as CI may run these on two cores busy with other work. A test waits this long only if what
#: it awaits never comes.
DEADLINE_MS = 60_000


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A started headless Chromium (a Playwright ``Browser``), or a skip (a failure with
    ``CI`` set) without Debian's chromium or the playwright package."""
    executable = shutil.which("chromium")
    if executable is None:
        _missing("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright  # noqa: PLC0415 (optional)
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=FLAGS, timeout=DEADLINE_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn (its lifespan included) on a free loopback port, in this event
    loop (asyncio): its base URL. Open streams are given a second to end at the exit."""
    import uvicorn  # noqa: PLC0415 (the test extra's; only these tests need it)

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,  # leave the logging of the test process alone
        log_level="warning",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        with anyio.fail_after(DEADLINE_MS / 1000):
            while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


def _png_chunks(png: bytes) -> dict[bytes, bytes]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        chunks[kind] = chunks.get(kind, b"") + png[at + 8 : at + 8 + length]
        at += 12 + length
    return chunks


def png_size(png: bytes) -> tuple[int, int]:
    """The width and height of a PNG image."""
    width, height = struct.unpack(">II", _png_chunks(png)[b"IHDR"][:8])
    return width, height


def png_pixels(png: bytes, right: int, bottom: int) -> list[list[tuple[int, int, int]]]:
    """The RGB pixels of a PNG image's top-left corner, ``right`` columns by ``bottom`` rows,
    row by row. 8-bit RGB or RGBA, not interlaced, as Chromium writes its screenshots; the
    whole image must be there. A reader of our own (PNG's filters only look left and up, so
    a corner decodes alone, quickly) that checks what a screenshot shows with something other
    than the browser that made it."""
    chunks = _png_chunks(png)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color, interlace) in ((8, 2, 0), (8, 6, 0)), "not 8-bit RGB(A)"
    assert right <= width
    assert bottom <= height
    size = 3 if color == 2 else 4  # bytes a pixel
    stride = width * size
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + stride), "not a whole image"
    rows: list[list[tuple[int, int, int]]] = []
    previous = bytearray(right * size)
    for y in range(bottom):
        start = y * (1 + stride)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + right * size])
        for i in range(len(line) if kind else 0):  # undo the row's filter (PNG spec, section 9)
            left = line[i - size] if i >= size else 0
            up, up_left = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            else:
                guess = left + up - up_left
                near = min((abs(guess - left), 0), (abs(guess - up), 1), (abs(guess - up_left), 2))
                line[i] = (line[i] + (left, up, up_left)[near[1]]) & 0xFF
        rows.append([(line[x], line[x + 1], line[x + 2]) for x in range(0, len(line), size)])
        previous = line
    return rows
