"""One measured download, in a fresh process so its peak memory is its own.

``python -m tests.bench._fetch VARIANT BACKEND URL PATH SIZE`` imports what every variant
needs (the same modules for all, so they start alike) and creates its client. Then it records
the resident set size (RSS), resets the peak (``VmHWM``, via ``/proc/self/clear_refs``), and
times the download alone: wall time, CPU time of all the process's threads, and the peak RSS
during it. After the clock stops it checks the file: its size, and 16 windows of 64 KiB (the
first, the last, 14 chosen by a seeded PRNG) against the server's body. It prints one JSON
line; a failed check prints ``{"error": ...}`` and exits 1.

The variants:

- ``plain-raw``: the loop a user writes with httpx, ``aiter_raw()`` into ``open(path, "wb")``.
- ``plain-bytes``: the same with ``aiter_bytes()`` (decoding ``identity`` is a pass-through).
- ``plain-fsync``: ``plain-raw`` into ``<path>.part``, then fsync it, rename it into place and
  fsync the directory: what `download` does to make the file durable, hand-written.
- ``vsr``: ``await AsyncVSRClient(...).download(url, path)``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

# httpcore imports its network backend on the first request: import it now, not then.
import httpcore._backends.anyio
import httpcore._backends.trio  # noqa: F401 - see above
import httpx
import trio

from tests.bench._server import body
from vsr_async import AsyncVSRClient

_WINDOW = 64 * 1024
_STATUS = "/proc/self/status"


def _status(field: str) -> int:
    """A ``/proc/self/status`` field, in KiB."""
    with open(_STATUS, encoding="ascii") as status:  # noqa: PTH123
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


class _Peak:
    """The peak RSS from here on: the kernel's high-water mark, reset; else a sampling thread."""

    def __init__(self) -> None:
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:  # noqa: PTH123
                refs.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "sampled every 2 ms"
            self.sampled = _status("VmRSS")
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.sampled = max(self.sampled, _status("VmRSS"))

    def read(self) -> int:
        if self.method == "VmHWM":
            return _status("VmHWM")
        self.stop.set()
        self.thread.join()
        return max(self.sampled, _status("VmRSS"))


async def plain_raw(client: httpx.AsyncClient, url: str, path: Path) -> None:
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        with open(path, "wb") as file:  # noqa: PTH123
            async for chunk in response.aiter_raw():
                file.write(chunk)


async def plain_bytes(client: httpx.AsyncClient, url: str, path: Path) -> None:
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        with open(path, "wb") as file:  # noqa: PTH123
            async for chunk in response.aiter_bytes():
                file.write(chunk)


async def plain_fsync(client: httpx.AsyncClient, url: str, path: Path) -> None:
    part = path.with_name(path.name + ".part")
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        with open(part, "wb") as file:  # noqa: PTH123
            async for chunk in response.aiter_raw():
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
    part.replace(path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def vsr(client: Any, url: str, path: Path) -> None:
    saved = await client.download(url, path)
    assert saved == path, saved


VARIANTS = {
    "plain-raw": plain_raw,
    "plain-bytes": plain_bytes,
    "plain-fsync": plain_fsync,
    "vsr": vsr,
}


async def measure(variant: str, base_url: str, url: str, path: Path) -> dict[str, Any]:
    if variant == "vsr":
        client: Any = AsyncVSRClient(api_key="bench", base_url=base_url)
    else:
        client = httpx.AsyncClient()
    fetch = VARIANTS[variant]
    async with client:
        gc.collect()
        rss_before = _status("VmRSS")
        peak = _Peak()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await fetch(client, url, path)
        wall = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        rss_peak = peak.read()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "wall": wall,
        "cpu": cpu,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "peak_method": peak.method,
    }


def verify(path: Path, size: int) -> str | None:
    """Why the file is not the body, or ``None``."""
    actual = path.stat().st_size
    if actual != size:
        return f"{path.name}: {actual} bytes, expected {size}"
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    if leftovers:
        return f"left behind: {leftovers}"
    window = min(_WINDOW, size)
    pick = random.Random(size)
    offsets = [0, size - window, *(pick.randrange(size - window + 1) for _ in range(14))]
    with path.open("rb") as file:
        for offset in offsets:
            file.seek(offset)
            if file.read(window) != body(offset, window):
                return f"{path.name}: bytes at {offset} differ from the server's body"
    return None


def main() -> int:
    variant, backend, url, dest, size_text = sys.argv[1:]
    path, size = Path(dest), int(size_text)
    base_url = url.partition("/file/")[0]
    if backend == "trio":
        result = trio.run(measure, variant, base_url, url, path)
    else:
        result = asyncio.run(measure(variant, base_url, url, path))
    problem = verify(path, size)
    if problem:
        print(json.dumps({"error": problem}))
        return 1
    print(json.dumps({**result, "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
