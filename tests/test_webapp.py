"""examples/webapp.py, driven through ASGI against the emulator on a loopback port."""

from __future__ import annotations

import importlib.util
import json
import os

import anyio
import httpx
import pytest
from _doc_samples import ROOT
from _helpers import watcher_tasks

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


@pytest.fixture
async def emulator(monkeypatch):
    """The emulator served on a loopback port, its key and URL in the app's environment."""
    emulator = Emulator(seed=3, timeline=QUICK)
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
    send_one = client._send
    polls_sent: list[str] = []  # the URL of every request the app's client sends

    async def logged_send(method, url, **options):
        polls_sent.append(str(url))
        return await send_one(method, url, **options)

    client._send = logged_send
    disconnected = anyio.Event()
    sent: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/tasks/{task_id}/events",
        "raw_path": f"/tasks/{task_id}/events".encode(),
        "query_string": b"interval=0.02",
        "root_path": "",
        "headers": [(b"host", b"app"), (b"accept", b"text/event-stream")],
        "client": ("127.0.0.1", 5000),
        "server": ("app", 80),
    }
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive, send)
            while len(emulator.polls(task_id)) < 5:  # noqa: ASYNC110 (the poller is live)
                await anyio.sleep(0.01)
            disconnected.set()
    assert watcher_tasks() == []  # the app returned: its watch has stopped
    assert sent[0]["type"] == "http.response.start"
    assert b"event: transition" in sent[1]["body"]
    sent_before = len(polls_sent)
    await anyio.sleep(0.5)  # 25 intervals: a poller left running would have polled
    assert len(polls_sent) == sent_before
    assert all(url.endswith(task_id) for url in polls_sent)
    assert len(emulator.polls(task_id)) <= sent_before  # (one cut off may arrive late)
