# ruff: noqa: INP001 (a script to copy, not a package)
"""A Starlette app sharing one `AsyncVSRClient`, opened in its lifespan.

    GET  /                            a page that creates a task (or follows ``?task=ID``)
                                      and shows its progress from the events below
    POST /tasks                       {"video_url": ..., "model": ...} -> 201, the new task
    GET  /tasks/{id}                  the task's current state
    GET  /tasks/{id}/wait?timeout=30  waits until it ends: 200, or 202 with the state so far
    GET  /tasks/{id}/events           Server-Sent Events: one ``transition`` event per status
                                      change, ending at completed or failed

Both waiting routes take ``?interval=`` (seconds between polls), held between `MIN_INTERVAL`
and `MAX_INTERVAL`; both stop polling when the client disconnects. A malformed parameter or
body answers 400 or 422 with ``{"detail": ..., "parameter": ...}``.

The key and URL come from ``VSR_API_KEY`` and ``VSR_BASE_URL``. Try it against the emulator:
run ``vsr-async emulator`` in one terminal, paste the ``export`` lines it prints into another,
then ``hypercorn examples.webapp:app`` (or uvicorn) and ``curl -N localhost:8000/tasks/ID/events``.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vsr_async import (
    AsyncVSRClient,
    BadRequestError,
    Model,
    Task,
    TaskNotFoundError,
    Transition,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

#: Seconds between two polls of one task: the provider asks for 5 to 10. A caller's
#: ``?interval=`` is held between these (it defaults to `MIN_INTERVAL`).
MIN_INTERVAL = 5.0
MAX_INTERVAL = 10.0
#: The longest /wait a caller may ask for, in seconds (and its default).
MAX_WAIT = 60.0


class BadInput(Exception):  # noqa: N818 (answered as a 4xx, not an error of the app)
    """A query parameter or body field the app refuses: answered by `bad_input`."""

    def __init__(self, parameter: str, detail: str, *, status_code: int = 400) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.status_code = status_code


async def bad_input(request: Request, exc: Exception) -> Response:  # noqa: ARG001
    """The app's answer to `BadInput`: its status and a short JSON error."""
    assert isinstance(exc, BadInput)  # noqa: S101 (registered for BadInput only)
    return JSONResponse({"detail": str(exc), "parameter": exc.parameter}, exc.status_code)


def seconds_param(request: Request, name: str, default: float) -> float:
    """The query parameter ``name`` as a finite number of seconds > 0, or ``default``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadInput(name, f"{name} must be a number of seconds > 0, got {raw[:40]!r}")
    return value


def interval_param(request: Request) -> float:
    """The caller's ``?interval=``, held between `MIN_INTERVAL` and `MAX_INTERVAL`."""
    interval = seconds_param(request, "interval", MIN_INTERVAL)
    return min(max(interval, MIN_INTERVAL), MAX_INTERVAL)


async def until_disconnected(receive: Receive) -> None:
    """Return when the ASGI server reports that the client has gone (``http.disconnect``).

    Only for a request whose body is read already or empty: this consumes it.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


def task_json(task: Task) -> dict[str, Any]:
    """A task as the app's JSON."""
    return {
        "id": task.id,
        "status": str(task.status),
        "video_url": task.video_url,
        "actual_duration": task.actual_duration,
        "error": None if task.error is None else str(task.error),
    }


def client_of(request: Request) -> AsyncVSRClient:
    """The app's shared client, opened by `lifespan`."""
    client: AsyncVSRClient = request.app.state.vsr
    return client


#: The page at ``GET /``: a form that creates a task, then the task's progress as its
#: transitions arrive from ``/tasks/{id}/events`` (``?task=ID`` follows an existing task).
#: Text from the API is set with ``textContent`` and the result link only takes http(s) URLs.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Video super-resolution</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 40rem;
         color: #1f2328; }
  [hidden] { display: none !important; }
  form { display: grid; grid-template-columns: max-content 1fr; gap: .5rem 1rem;
         align-items: center; }
  input, select, button { font: inherit; padding: .3rem; }
  button { grid-column: 2; justify-self: start; padding: .3rem 1.5rem; }
  #steps { display: flex; gap: .5rem; list-style: none; padding: 0; }
  #steps li + li::before { content: "\\2192\\a0"; }
  .status { padding: .1rem .6rem; border-radius: 1rem; background: #d0d7de; }
  .status[data-status=processing] { background: #0969da; color: white; }
  .status[data-status=completed] { background: #1a7f37; color: white; }
  .status[data-status=failed] { background: #cf222e; color: white; }
  #error { color: #cf222e; }
</style>
</head>
<body>
<h1>Video super-resolution</h1>
<form id="create">
  <label for="video-url">Video URL</label>
  <input id="video-url" name="video_url" type="url" required
    placeholder="https://example.com/video.mp4">
  <label for="model">Model</label>
  <select id="model" name="model">$models</select>
  <button>Upscale</button>
</form>
<section id="task" hidden>
  <p>Task <code id="task-id"></code>: <span id="status" class="status"></span></p>
  <ol id="steps"></ol>
  <p><a id="result" hidden>Download the result</a></p>
</section>
<p id="error" role="alert" hidden></p>
<script>
const $ = (id) => document.getElementById(id);
let events = null;  // the EventSource of the task followed

function show(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
  if ($("steps").lastElementChild?.textContent !== status) {  // not again after a reconnect
    const step = document.createElement("li");
    step.textContent = status;
    $("steps").append(step);
  }
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function follow(taskId) {
  events?.close();
  $("task").hidden = false;
  $("task-id").textContent = taskId;
  $("steps").replaceChildren();
  $("result").hidden = $("error").hidden = true;
  const source = new EventSource("/tasks/" + encodeURIComponent(taskId) + "/events");
  events = source;
  source.addEventListener("transition", (message) => {
    const t = JSON.parse(message.data);
    if (t.error) {  // the app could not follow it: the stream ends here
      source.close();
      fail(t.error);
      return;
    }
    show(t.status);
    if (t.status === "completed" || t.status === "failed") {
      source.close();  // or the browser reconnects when the stream ends
    }
    if (t.status === "completed" && /^https?:\\/\\//i.test(t.task.video_url)) {
      $("result").href = t.task.video_url;
      $("result").hidden = false;
    } else if (t.status === "failed") {
      fail(t.task.error || "The task failed.");
    }
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {  // refused (404, 400), not a reconnect
      fail("This task cannot be followed: is its ID right?");
    }
  });
}

$("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = new FormData(event.target);
  const response = await fetch("/tasks", {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({video_url: fields.get("video_url"), model: fields.get("model")}),
  });
  const body = await response.json();
  if (!response.ok) {
    fail(body.detail);
    return;
  }
  history.replaceState(null, "", "?task=" + encodeURIComponent(body.id));
  follow(body.id);
});

const asked = new URLSearchParams(location.search).get("task");
if (asked) follow(asked);
</script>
</body>
</html>
""".replace(
    "$models",
    "".join(
        f"<option{' selected' * (m is Model.SUPER_RESOLUTION_1080P_LOWFPS)}>"
        f"{html.escape(m.value)}</option>"
        for m in Model
    ),
)


async def page(request: Request) -> Response:  # noqa: ARG001
    return HTMLResponse(PAGE)


async def create_task(request: Request) -> Response:
    try:
        body = await request.json()
    except ValueError:  # not JSON, or not UTF-8
        raise BadInput("body", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadInput("body", "the body must be a JSON object", status_code=422)
    video_url = body.get("video_url")
    if not isinstance(video_url, str):
        raise BadInput("video_url", "video_url must be an http(s) URL string", status_code=422)
    model = body.get("model", Model.SUPER_RESOLUTION_1080P_LOWFPS.value)
    if not isinstance(model, str) or not model.strip() or model != model.strip():
        example = Model.SUPER_RESOLUTION_1080P_LOWFPS.value
        detail = f"model must be a model name such as {example!r}"
        raise BadInput("model", detail, status_code=422)
    try:
        task = await client_of(request).create_task(video_url, model=model)
    except ValueError as exc:  # the client's own check of video_url (model passed ours)
        raise BadInput("video_url", str(exc), status_code=422) from None
    except BadRequestError as exc:  # the provider's checks: an unknown model, say
        raise BadInput("body", f"the API refused it: {exc.message}", status_code=422) from None
    return JSONResponse(task_json(task), status_code=201)


async def get_task(request: Request) -> Response:
    try:
        task = await client_of(request).get_task(request.path_params["task_id"])
    except ValueError as exc:
        raise BadInput("task_id", str(exc)) from None
    except TaskNotFoundError:
        return JSONResponse({"detail": "no such task"}, status_code=404)
    return JSONResponse(task_json(task))


async def wait_task(request: Request) -> Response:
    client = client_of(request)
    task_id = request.path_params["task_id"]
    timeout = min(seconds_param(request, "timeout", MAX_WAIT), MAX_WAIT)
    interval = interval_param(request)
    last: Task | None = None
    error: Exception | None = None
    # A plain endpoint is not cancelled when the client goes (not under uvicorn, at least):
    # the wait runs next to a listener for the disconnect, which cancels it.
    async with anyio.create_task_group() as tg:

        async def cancel_on_disconnect() -> None:
            await until_disconnected(request.receive)
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_disconnect)
        # A watch of one task, so a timeout can answer with the last state seen.
        with anyio.move_on_after(timeout):
            try:
                async with client.watch([task_id], interval=interval) as watcher:
                    async for transition in watcher:
                        if transition.error is not None:
                            error = transition.error
                            break
                        last = transition.task
            except ValueError as exc:  # an invalid task ID
                error = exc
        tg.cancel_scope.cancel()  # the wait is over: stop listening
    if isinstance(error, ValueError):
        raise BadInput("task_id", str(error))
    if isinstance(error, TaskNotFoundError):
        return JSONResponse({"detail": "no such task"}, status_code=404)
    if error is not None:
        raise error
    if last is None:
        return JSONResponse({"id": task_id, "status": None}, status_code=202)
    return JSONResponse(task_json(last), status_code=200 if last.is_terminal else 202)


async def task_events(request: Request) -> Response:
    client = client_of(request)
    task_id = request.path_params["task_id"]
    interval = interval_param(request)
    try:
        await client.get_task(task_id)  # a 404 before the stream starts
    except ValueError as exc:
        raise BadInput("task_id", str(exc)) from None
    except TaskNotFoundError:
        return JSONResponse({"detail": "no such task"}, status_code=404)
    return TransitionStream(client, task_id, interval=interval)


def sse_event(transition: Transition) -> bytes:
    """One Server-Sent Event for a transition."""
    data: dict[str, Any] = {
        "task_id": transition.task_id,
        "previous": None if transition.previous is None else str(transition.previous),
        "status": None if transition.status is None else str(transition.status),
        "task": None if transition.task is None else task_json(transition.task),
        "error": None if transition.error is None else str(transition.error),
    }
    return f"event: transition\ndata: {json.dumps(data)}\n\n".encode()


class TransitionStream(Response):
    """Streams a task's transitions as Server-Sent Events until its last one.

    The watch runs next to a listener for ``http.disconnect``: when the browser goes away the
    task group is cancelled, which leaves ``client.watch()`` and stops its poller at once,
    whatever ASGI version the server speaks.
    """

    media_type = "text/event-stream"

    def __init__(self, client: AsyncVSRClient, task_id: str, *, interval: float) -> None:
        # Not Response.__init__: it would render an empty body and send "content-length: 0".
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-store", "x-accel-buffering": "no"})
        self.client = client
        self.task_id = task_id
        self.interval = interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                await until_disconnected(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_disconnect)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with self.client.watch([self.task_id], interval=self.interval) as watcher:
                async for transition in watcher:
                    body = sse_event(transition)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()  # the stream is complete: stop listening


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with AsyncVSRClient() as client:  # VSR_API_KEY, VSR_BASE_URL
        app.state.vsr = client
        yield


app = Starlette(
    routes=[
        Route("/", page),
        Route("/tasks", create_task, methods=["POST"]),
        Route("/tasks/{task_id}", get_task),
        Route("/tasks/{task_id}/wait", wait_task),
        Route("/tasks/{task_id}/events", task_events),
    ],
    lifespan=lifespan,
    exception_handlers={BadInput: bad_input},
)
