"""The example web apps end to end in a real headless Chromium (Debian's ``chromium``, driven
by Playwright): examples/webapp.py's page, and what a browser sees of examples/fleet_webapp.py
(it has no page: its event stream and its JSON, opened in a tab and read with an EventSource).
Each app is served by uvicorn on a loopback port against the emulator on another.

The emulator's clock is the test's: a task moves on only when the test moves it, after the page
has shown its state so far, so each step is awaited as an event (with a deadline for a loaded
machine), never guessed from the time it takes.

Asyncio only: Playwright's async API runs on asyncio, and here one loop drives the browser, the
app and the emulator. The apps' own code is tested on trio too: through ASGI in
tests/test_webapp.py, as separate processes in tests/test_fleet_webapp.py.

``VSR_SAVE_SCREENSHOT=1 python -m pytest tests/test_browser.py`` also writes the screenshot of
the completed page to docs/img/webapp-completed.png, which docs/webapps.md shows.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest
from _browser import DEADLINE_MS, chromium, png_pixels, png_size, served
from _doc_samples import ROOT
from _redis import RedisServer, redis_server

from vsr_async import AsyncVSRClient
from vsr_async.testing import Emulator, EmulatorServer, Timeline

try:
    from playwright.async_api import expect
except ImportError:  # the `browser` fixture fails or skips each test, as _browser.py says
    expect = None

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.anyio


def _example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webapp = _example("webapp")

VIEWPORT = {"width": 800, "height": 480}
SCREENSHOT = ROOT / "docs" / "img" / "webapp-completed.png"
#: Queued from 0 s, processing from 1 s, ended at 2 s, on the emulator's (stopped) clock.
STEPS = Timeline.completed(queued=1, processing=1)
ERROR = "Video could not be decoded: the stream has no keyframe"
NEVER_ENDS = Timeline(((0.0, "queued"),))
_namespaces = itertools.count()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Asyncio: Playwright's async API runs on it only (see the module's docstring)."""
    return "asyncio"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the module (it takes seconds to start), a context per test."""
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A tab in a context of its own (no cookies or cache from another test)."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEADLINE_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


class Clock:
    """The emulator's clock: it stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Site:
    """An example app served against the emulator, and the emulator's clock."""

    url: str
    emulator: Emulator
    emulator_url: str
    clock: Clock

    def result_url(self, task_id: str) -> str:
        """The ``video_url`` the emulator hands out for a completed task."""
        return f"{self.emulator_url}/files/{urllib.parse.quote(task_id, safe='')}.mp4"


@pytest.fixture
async def emulated(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Emulator, str, Clock]]:
    """The emulator on a loopback port, on a stopped clock, its key and URL in the apps'
    environment."""
    clock = Clock()
    emulator = Emulator(seed=3, timeline=STEPS, clock=clock)
    async with EmulatorServer(emulator) as server:
        monkeypatch.setenv("VSR_API_KEY", emulator.api_key)
        monkeypatch.setenv("VSR_BASE_URL", server.base_url)
        yield emulator, server.url, clock


@pytest.fixture
async def site(emulated: tuple[Emulator, str, Clock], monkeypatch) -> AsyncIterator[Site]:
    """examples/webapp.py served by uvicorn, polling every 20 ms (the provider's 5 s would
    only make the tests slow: nothing here waits for a given number of polls)."""
    monkeypatch.setattr(webapp, "MIN_INTERVAL", 0.02)
    monkeypatch.setattr(webapp, "MAX_INTERVAL", 1.0)
    async with served(webapp.app) as url:
        yield Site(url, *emulated)


async def expect_status(page: Any, status: str) -> None:
    await expect(page.locator("#status")).to_have_text(status, timeout=DEADLINE_MS)


async def follow_to_completed(page: Any, site: Site) -> None:
    """Step the page's task through its timeline, each step once the page has shown the one
    before."""
    await expect_status(page, "queued")
    site.clock.now = 1.0
    await expect_status(page, "processing")
    site.clock.now = 2.0
    await expect_status(page, "completed")


async def test_the_page_creates_a_task_and_follows_it_to_its_result(page, site: Site) -> None:
    """The form creates a task; the page subscribes to its events, shows it moving through
    queued and processing to completed, then the link to its result, the emulator's URL, which
    the browser can open."""
    await page.goto(site.url)
    await page.get_by_label("Video URL").fill("https://example.com/clip.mp4")
    await page.get_by_label("Model").select_option("superResolution-4k-lowfps")
    await page.get_by_role("button", name="Upscale").click()
    await expect_status(page, "queued")
    [task_id] = site.emulator.task_ids
    await expect(page.locator("#task-id")).to_have_text(task_id)
    assert page.url == f"{site.url}/?task={task_id}"  # a reload follows the same task
    await follow_to_completed(page, site)
    await expect(page.locator("#steps li")).to_have_text(["queued", "processing", "completed"])
    link = page.get_by_role("link", name="Download the result")
    await expect(link).to_have_attribute("href", site.result_url(task_id))
    await expect(page.locator("#error")).to_be_hidden()
    async with page.expect_response(site.result_url(task_id)) as opened:
        await link.click()
    response = await opened.value
    assert response.ok
    assert response.headers["content-type"] == "video/mp4"


async def test_a_refused_create_shows_why(page, site: Site) -> None:
    """A video URL the client refuses (not http(s)) is answered 422 by the app, and the page
    shows the app's reason; no task is created or followed."""
    await page.goto(site.url)
    await page.get_by_label("Video URL").fill("ftp://example.com/clip.mp4")
    await page.get_by_role("button", name="Upscale").click()
    await expect(page.get_by_role("alert")).to_contain_text("must be an http:// or https:// URL")
    await expect(page.locator("#task")).to_be_hidden()
    assert site.emulator.task_ids == []


async def test_a_failed_task_shows_its_error(page, site: Site) -> None:
    """A task that fails shows ``failed`` and the provider's error, and no result link."""
    task_id = site.emulator.add_task(Timeline.failed(queued=1, processing=1, error=ERROR))
    await page.goto(f"{site.url}/?task={task_id}")
    await expect_status(page, "queued")
    site.clock.now = 2.0
    await expect_status(page, "failed")
    await expect(page.get_by_role("alert")).to_have_text(ERROR)
    await expect(page.locator("#steps li")).to_have_text(["queued", "failed"])
    await expect(page.locator("#result")).to_be_hidden()


async def test_an_unknown_task_is_said_so(page, site: Site) -> None:
    """An ID the API does not know: the stream is refused (404) and the page says so, without
    reconnecting for ever."""
    await page.goto(f"{site.url}/?task=task_nope")
    await expect(page.get_by_role("alert")).to_contain_text("cannot be followed")
    await expect(page.locator("#steps li")).to_have_count(0)
    await expect(page.locator("#result")).to_be_hidden()


async def test_closing_the_tab_stops_the_polling(page, site: Site) -> None:
    """A tab closed while its task runs ends the stream: the app's watch of the task ends with
    it (its client watches nothing), so nothing polls for a page nobody looks at."""
    task_id = site.emulator.add_task(NEVER_ENDS)
    await page.goto(f"{site.url}/?task={task_id}")
    await expect_status(page, "queued")
    client: AsyncVSRClient = webapp.app.state.vsr
    assert client.stats.watched == 1
    await page.close()
    with anyio.fail_after(DEADLINE_MS / 1000):
        while client.stats.watched:  # noqa: ASYNC110 (the server's disconnect, no event of ours)
            await anyio.sleep(0.01)


async def test_a_screenshot_of_the_completed_page(page, site: Site, tmp_path) -> None:
    """A screenshot of the page at its end is an image of the whole viewport that shows what
    the page says: the task, its steps, a green ``completed`` badge where the badge is, the
    link, no error."""
    task_id = site.emulator.add_task(STEPS)
    await page.goto(f"{site.url}/?task={task_id}")
    await follow_to_completed(page, site)
    await expect(page.get_by_role("link", name="Download the result")).to_be_visible()
    badge = await page.locator("#status").bounding_box()
    text = await page.locator("body").inner_text()
    png = await page.screenshot(path=tmp_path / "completed.png")
    assert await page.locator("#status").bounding_box() == badge  # nothing moved meanwhile

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[0] == "Video super-resolution"
    assert f"Task {task_id}: completed" in lines
    assert lines[-4:] == ["queued", "processing", "completed", "Download the result"]
    assert ERROR not in text
    assert png_size(png) == (VIEWPORT["width"], VIEWPORT["height"])
    x, y = int(badge["x"] + badge["width"] / 2), int(badge["y"] + 2)  # above the badge's text
    pixels = png_pixels(png, x + 1, y + 1)  # the corner from the top left to that point
    green = (0x1A, 0x7F, 0x37)  # the completed badge's background in the page's CSS
    assert all(abs(got - want) <= 8 for got, want in zip(pixels[y][x], green, strict=True))
    assert len({pixel for row in pixels for pixel in row}) > 20  # text, not a blank page
    if os.environ.get("VSR_SAVE_SCREENSHOT"):
        SCREENSHOT.write_bytes(png)


# examples/fleet_webapp.py: no page of its own, so what a browser sees of its endpoints.


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
async def fleet_site(
    emulated: tuple[Emulator, str, Clock], redis: RedisServer, monkeypatch
) -> AsyncIterator[Site]:
    """examples/fleet_webapp.py served by uvicorn, and a fleet worker polling every 20 ms."""
    pytest.importorskip("fastapi")
    pytest.importorskip("coredis")
    from vsr_async.fleet import RedisFleet  # noqa: PLC0415 (the redis extra's)

    fleet_webapp = _example("fleet_webapp")
    namespace = f"browser{next(_namespaces)}"
    monkeypatch.setenv("VSR_REDIS_URL", redis.url)
    monkeypatch.setenv("VSR_NAMESPACE", namespace)
    async with (
        AsyncVSRClient() as client,
        RedisFleet(redis.url, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        group.start_soon(lambda: fleet.serve(client, interval=0.02))
        async with served(fleet_webapp.app) as url:
            yield Site(url, *emulated)
        group.cancel_scope.cancel()


async def test_the_fleet_event_stream_opened_in_a_tab(page, fleet_site: Site) -> None:
    """The fleet app's event stream opened as a page shows each transition as it happens (the
    stream is not buffered), then the JSON endpoint shows the ended task and its result URL."""
    site = fleet_site
    task_id = site.emulator.add_task(STEPS)
    await page.goto(f"{site.url}/tasks/{task_id}/events", wait_until="commit")
    body = page.locator("body")
    await expect(body).to_contain_text('"status": "queued"', timeout=DEADLINE_MS)
    site.clock.now = 1.0
    await expect(body).to_contain_text('"status": "processing"', timeout=DEADLINE_MS)
    site.clock.now = 2.0
    await expect(body).to_contain_text('"status": "completed"', timeout=DEADLINE_MS)
    events = [
        json.loads(line.removeprefix("data: "))
        for line in (await body.inner_text()).splitlines()
        if line.startswith("data: ")
    ]
    assert [(e["previous"], e["status"]) for e in events] == [
        (None, "queued"),
        ("queued", "processing"),
        ("processing", "completed"),
    ]
    await page.goto(f"{site.url}/tasks/{task_id}?timeout=5")
    shown = json.loads(await page.locator("pre").first.inner_text())
    assert shown["status"] == "completed"
    assert shown["video_url"] == site.result_url(task_id)


async def test_the_fleet_stream_read_by_an_eventsource(page, fleet_site: Site) -> None:
    """An EventSource as docs/webapps.md shows it, on a page of the fleet app's origin, receives
    each transition as it happens and closes at the end."""
    site = fleet_site
    task_id = site.emulator.add_task(STEPS)
    await page.goto(f"{site.url}/openapi.json")  # a document of the app's own origin
    await page.evaluate(
        """(taskId) => {
            window.seen = [];
            const events = new EventSource(`/tasks/${taskId}/events`);
            events.addEventListener("transition", (message) => {
                const t = JSON.parse(message.data);
                window.seen.push([t.previous, t.status, t.task.video_url]);
                if (t.status === "completed" || t.status === "failed" || t.error) events.close();
            });
        }""",
        task_id,
    )
    for now, status in [(1.0, "queued"), (2.0, "processing"), (None, "completed")]:
        await page.wait_for_function(f"seen.at(-1)?.[1] === {status!r}", timeout=DEADLINE_MS)
        if now is not None:
            site.clock.now = now
    assert await page.evaluate("seen") == [
        [None, "queued", None],
        ["queued", "processing", None],
        ["processing", "completed", site.result_url(task_id)],
    ]
