"""examples/webapp.py, driven through ASGI against the emulator on a loopback port."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os

import anyio
import httpx
import pytest
from _doc_samples import ROOT
from _helpers import still_polling

from vsr_async import Model
from vsr_async.testing import Emulator, EmulatorServer, Timeline

pytest.importorskip("starlette")

pytestmark = pytest.mark.anyio

_spec = importlib.util.spec_from_file_location("webapp", ROOT / "examples" / "webapp.py")
assert _spec is not None
assert _spec.loader is not None
webapp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(webapp)

QUICK = Timeline.completed(queued=0.1, processing=0.1)
NEVER_ENDS = Timeline(((0.0, "queued"),))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    """Intervals of milliseconds instead of the provider's 5-10 s, so that tests stay short."""
    monkeypatch.setattr(webapp, "MIN_INTERVAL", 0.02)
    monkeypatch.setattr(webapp, "MAX_INTERVAL", 1.0)


#: The emulator's clock counts its requests, each 20 ms of a timeline: a poll delayed by a busy
#: machine cannot miss a status (QUICK's last five requests each).
REQUEST_CLOCK = pytest.mark.request_clock


@pytest.fixture
async def emulator(monkeypatch, request):
    """The emulator served on a loopback port, its key and URL in the app's environment."""
    emulator = Emulator(seed=3, timeline=QUICK)
    if request.node.get_closest_marker("request_clock"):
        emulator = Emulator(seed=3, timeline=QUICK, clock=lambda: 0.02 * len(emulator.requests))
    async with EmulatorServer(emulator) as server:
        monkeypatch.setenv("VSR_API_KEY", emulator.api_key)
        monkeypatch.setenv("VSR_BASE_URL", server.base_url)
        yield emulator


@pytest.fixture
async def app(emulator):
    """The app with its lifespan entered: one shared client open."""
    async with webapp.app.router.lifespan_context(webapp.app):
        yield webapp.app


@pytest.fixture
async def http(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        yield http


def record_sends(client) -> list[str]:
    """The URL of every request ``client`` sends from now on (a poll cut off in flight may
    still reach the emulator, so the emulator may see fewer)."""
    send_one = client._session.send
    urls: list[str] = []

    async def logged_send(method, url, **options):
        urls.append(str(url))
        return await send_one(method, url, **options)

    client._session.send = logged_send
    return urls


def asgi_request(path: str, query: bytes) -> dict:
    """The ASGI scope of a browser's GET of ``path``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"app"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 5000),
        "server": ("app", 80),
    }


def receive_until(disconnected: anyio.Event):
    """An ASGI ``receive``: the (empty) request body, then ``http.disconnect`` once
    ``disconnected`` is set."""
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    return receive


async def wait_for_polls(emulator, task_id: str, count: int) -> None:
    """Return once the emulator has answered ``count`` polls of ``task_id``."""
    while len(emulator.polls(task_id)) < count:  # noqa: ASYNC110 (a poller is live)
        await anyio.sleep(0.01)


async def settle(client, emulator, interval: float) -> None:
    """Let a poller left running show itself: return once another task, watched by the same
    client at the same interval, has been polled 5 times (an event, not a guess at time)."""
    control = emulator.add_task(NEVER_ENDS)
    async with client.watch([control], interval=interval):
        await wait_for_polls(emulator, control, 5)


def events(body: str) -> list[dict]:
    """The data of each ``transition`` event in an SSE body."""
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line)
        if lines:
            assert lines["event"] == "transition"
            found.append(json.loads(lines["data"]))
    return found


async def test_lifespan_opens_one_client_and_closes_it(emulator) -> None:
    """The lifespan opens one client from the environment and closes it at shutdown."""
    async with webapp.app.router.lifespan_context(webapp.app):
        client = webapp.app.state.vsr
        assert client.base_url == os.environ["VSR_BASE_URL"]
        assert "open" in repr(client)
    assert "closed" in repr(client)


async def test_the_page(http) -> None:
    """GET / answers the page that creates and follows a task, offering every model
    (tests/test_browser.py runs it in a browser)."""
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for model in Model:
        assert f">{model.value}</option>" in response.text
    assert 'new EventSource("/tasks/" + encodeURIComponent(taskId) + "/events")' in response.text


async def test_create_then_state(http, emulator) -> None:
    """POST /tasks creates a task (201) and GET /tasks/{id} returns its current state."""
    response = await http.post(
        "/tasks",
        json={"video_url": "https://example.com/a.mp4", "model": "superResolution-4k-lowfps"},
    )
    assert response.status_code == 201
    task_id = response.json()["id"]
    assert task_id in emulator.task_ids
    state = (await http.get(f"/tasks/{task_id}")).json()
    assert state["id"] == task_id
    assert state["status"] in ("queued", "processing", "completed")


async def test_bad_create_and_unknown_task(http) -> None:
    """A create without a usable video URL is a 422; an unknown task is a 404 on every route."""
    assert (await http.post("/tasks", json={"model": "x"})).status_code == 422
    assert (await http.post("/tasks", json={"video_url": "file:///etc"})).status_code == 422
    for path in ("/tasks/nope", "/tasks/nope/wait?timeout=1", "/tasks/nope/events"):
        assert (await http.get(path)).status_code == 404, path


async def test_wait_returns_the_final_state(http, emulator) -> None:
    """GET /wait answers 200 with the completed task once it has ended (within the longest
    wait the app allows: the task ends in 0.2 s, however slowly it is polled)."""
    task_id = emulator.add_task(QUICK)
    params = {"timeout": webapp.MAX_WAIT, "interval": 0.05}
    with anyio.fail_after(2 * webapp.MAX_WAIT):
        response = await http.get(f"/tasks/{task_id}/wait", params=params)
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["video_url"].endswith(".mp4")


async def test_wait_times_out_with_the_state_so_far(http, emulator) -> None:
    """Past its timeout, GET /wait answers 202 with the last state seen (the task never ends:
    only the timeout answers; a guard catches a wait that ignores it). The timeout leaves the
    first poll, milliseconds long, time to be answered on a busy machine."""
    task_id = emulator.add_task(NEVER_ENDS)
    with anyio.fail_after(30):
        response = await http.get(
            f"/tasks/{task_id}/wait", params={"timeout": 2.0, "interval": 0.05}
        )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


@REQUEST_CLOCK
async def test_events_stream_every_transition_to_the_end(http, emulator) -> None:
    """GET /events streams one SSE event per transition and ends at the terminal state."""
    task_id = emulator.add_task(QUICK)
    with anyio.fail_after(30):
        response = await http.get(f"/tasks/{task_id}/events", params={"interval": 0.02})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in response.headers
    data = events(response.text)
    assert [(e["previous"], e["status"]) for e in data] == [
        (None, "queued"),
        ("queued", "processing"),
        ("processing", "completed"),
    ]
    assert data[-1]["task"]["video_url"]


async def test_a_failed_task_ends_the_stream_failed(http, emulator) -> None:
    """A task that fails ends the stream with a ``failed`` event carrying its error."""
    task_id = emulator.add_task(Timeline.failed(queued=0.05, processing=0.05))
    with anyio.fail_after(30):
        response = await http.get(f"/tasks/{task_id}/events", params={"interval": 0.02})
    last = events(response.text)[-1]
    assert last["status"] == "failed"
    assert last["task"]["error"]


async def test_disconnect_stops_the_poller(app, emulator) -> None:
    """When the browser disconnects mid-stream, the response returns, its watch is gone, the
    app's client sends no more polls for the task, and the emulator receives none but those
    sent before."""
    task_id = emulator.add_task(NEVER_ENDS)
    client = app.state.vsr
    polls_sent = record_sends(client)
    disconnected = anyio.Event()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = asgi_request(f"/tasks/{task_id}/events", b"interval=0.02")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive_until(disconnected), send)
            await wait_for_polls(emulator, task_id, 5)
            disconnected.set()
        assert still_polling(client) == []  # the app returned: its watch has stopped
        assert sent[0]["type"] == "http.response.start"
        assert b"event: transition" in sent[1]["body"]
        sent_before = len(polls_sent)
        await settle(client, emulator, 0.02)
    assert all(url.endswith(task_id) for url in polls_sent[:sent_before])
    assert not any(url.endswith(task_id) for url in polls_sent[sent_before:])
    assert len(emulator.polls(task_id)) <= sent_before  # (one cut off may arrive late)


async def test_wait_stops_when_the_client_disconnects(app, emulator, monkeypatch) -> None:
    """A plain endpoint is not cancelled when its client goes (uvicorn runs it to the end):
    /wait listens for the disconnect itself, so it returns at once, its watch is gone, and the
    app's client sends no more polls for the task."""
    monkeypatch.setattr(webapp, "MAX_WAIT", 3600.0)
    task_id = emulator.add_task(NEVER_ENDS)
    client = app.state.vsr
    polls_sent = record_sends(client)
    disconnected = anyio.Event()

    async def send(message: dict) -> None:
        pass  # nobody is listening any more

    scope = asgi_request(f"/tasks/{task_id}/wait", b"timeout=3600&interval=0.02")
    with anyio.fail_after(30):  # a wait that ignores the disconnect runs for an hour
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive_until(disconnected), send)
            await wait_for_polls(emulator, task_id, 3)
            disconnected.set()
        assert still_polling(client) == []
        sent_before = len(polls_sent)
        await settle(client, emulator, 0.02)
    assert sent_before >= 3
    assert all(url.endswith(task_id) for url in polls_sent[:sent_before])
    assert not any(url.endswith(task_id) for url in polls_sent[sent_before:])
    assert len(emulator.polls(task_id)) <= sent_before  # (one cut off may arrive late)


BAD_QUERIES = [
    ("events", "interval=abc", "interval"),
    ("events", "interval=-1", "interval"),
    ("events", "interval=0", "interval"),
    ("events", "interval=nan", "interval"),
    ("events", "interval=inf", "interval"),
    ("wait", "interval=abc", "interval"),
    ("wait", "interval=0", "interval"),
    ("wait", "timeout=abc", "timeout"),
    ("wait", "timeout=-1", "timeout"),
    ("wait", "timeout=0", "timeout"),
    ("wait", "timeout=nan", "timeout"),
]


@pytest.mark.parametrize(("route", "query", "parameter"), BAD_QUERIES)
async def test_a_bad_query_parameter_is_a_400(http, emulator, route, query, parameter) -> None:
    """A query parameter that is not a finite number of seconds > 0 answers 400 with a JSON
    error naming it, before any poll."""
    task_id = emulator.add_task(NEVER_ENDS)
    with anyio.fail_after(30):
        response = await http.get(f"/tasks/{task_id}/{route}?{query}")
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert parameter in response.json()["detail"]
    assert emulator.polls(task_id) == []


BAD_BODIES = [
    (b"not json", 400, "body"),
    (b"\xff\xfe", 400, "body"),
    (b"", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b'"https://example.com/a.mp4"', 422, "body"),
    (b"{}", 422, "video_url"),
    (b'{"video_url": 5}', 422, "video_url"),
    (b'{"video_url": "file:///etc/passwd"}', 422, "video_url"),
    (b'{"video_url": "https://example.com/a.mp4", "model": 5}', 422, "model"),
    (b'{"video_url": "https://example.com/a.mp4", "model": " "}', 422, "model"),
    (b'{"video_url": "https://example.com/a.mp4", "model": "nonsense"}', 422, "body"),
]


@pytest.mark.parametrize(("body", "status", "parameter"), BAD_BODIES)
async def test_a_bad_body_is_a_4xx(http, emulator, body, status, parameter) -> None:
    """A body that is not JSON (400), or not an object with a usable ``video_url`` and
    ``model`` (422), answers with a JSON error naming what is wrong, and creates no task."""
    response = await http.post("/tasks", content=body)
    assert response.status_code == status
    assert response.json()["parameter"] == parameter
    assert response.json()["detail"]
    assert emulator.task_ids == []


@pytest.mark.parametrize("route", ["", "/wait", "/events"])
async def test_an_invalid_task_id_is_a_400(http, route) -> None:
    """A task ID the client refuses (here one with a leading space) is a 400, not a 500."""
    with anyio.fail_after(30):
        response = await http.get(f"/tasks/%20x{route}")
    assert response.status_code == 400
    assert response.json()["parameter"] == "task_id"


@pytest.mark.parametrize("route", ["wait", "events"])
@pytest.mark.parametrize("asked", ["0.001", "1000"])
async def test_intervals_are_held_to_the_providers_advice(
    http, emulator, monkeypatch, route, asked
) -> None:
    """A caller's interval is held between MIN_INTERVAL and MAX_INTERVAL: asked for 1 ms, the
    app's polls of a task are never closer than MIN_INTERVAL (less its 10 % jitter); asked for
    1000 s, the app still sees the task end, 1.2 s after its creation."""
    monkeypatch.setattr(webapp, "MIN_INTERVAL", 0.3)
    monkeypatch.setattr(webapp, "MAX_INTERVAL", 0.6)
    task_id = emulator.add_task(Timeline.completed(queued=0.6, processing=0.6))
    with anyio.fail_after(60):  # at 1000 s, the second poll would come long after
        response = await http.get(
            f"/tasks/{task_id}/{route}", params={"interval": asked, "timeout": 60}
        )
    assert response.status_code == 200
    times = [poll.time for poll in emulator.polls(task_id)]
    if route == "events":
        times = times[1:]  # the first is the 404 check, before the watch
    assert len(times) >= 3
    # Each poll is scheduled at least 0.9 intervals after the answer to the one before, so
    # after it reached the emulator: a load can only stretch the gaps.
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.85 * 0.3
