# ruff: noqa: INP001 (a script to copy, not a package)
"""A Starlette app sharing one `AsyncVSRClient`, opened in its lifespan.

    POST /tasks                       {"video_url": ..., "model": ...} -> 201, the new task
    GET  /tasks/{id}                  the task's current state
    GET  /tasks/{id}/wait?timeout=30  waits until it ends: 200, or 202 with the state so far
    GET  /tasks/{id}/events           Server-Sent Events: one ``transition`` event per status
                                      change, ending at completed or failed

The key and URL come from ``VSR_API_KEY`` and ``VSR_BASE_URL``. Try it against the emulator:
run ``vsr-async emulator`` in one terminal, paste the ``export`` lines it prints into another,
then ``hypercorn examples.webapp:app`` (or uvicorn) and ``curl -N localhost:8000/tasks/ID/events``.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vsr_async import AsyncVSRClient, Model, Task, TaskNotFoundError, Transition

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

#: Seconds between two polls of a task streamed to a browser.
POLL_INTERVAL = 5.0
#: The longest /wait a caller may ask for, in seconds.
MAX_WAIT = 60.0


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


async def create_task(request: Request) -> Response:
    body = await request.json()
    try:
        task = await client_of(request).create_task(
            body["video_url"], model=body.get("model", Model.SUPER_RESOLUTION_1080P_LOWFPS)
        )
    except (KeyError, TypeError, ValueError) as exc:
        return JSONResponse({"detail": f"invalid request: {exc}"}, status_code=422)
    return JSONResponse(task_json(task), status_code=201)


async def get_task(request: Request) -> Response:
    try:
        task = await client_of(request).get_task(request.path_params["task_id"])
    except TaskNotFoundError:
        return JSONResponse({"detail": "no such task"}, status_code=404)
    return JSONResponse(task_json(task))


async def wait_task(request: Request) -> Response:
    client = client_of(request)
    task_id = request.path_params["task_id"]
    timeout = min(float(request.query_params.get("timeout", MAX_WAIT)), MAX_WAIT)
    interval = float(request.query_params.get("interval", POLL_INTERVAL))
    last: Task | None = None
    try:
        # A watch of one task, so a timeout can answer with the last state seen.
        with anyio.move_on_after(timeout):
            async with client.watch([task_id], interval=interval) as watcher:
                async for transition in watcher:
                    if transition.error is not None:
                        raise transition.error
                    last = transition.task
    except TaskNotFoundError:
        return JSONResponse({"detail": "no such task"}, status_code=404)
    if last is None:
        return JSONResponse({"id": task_id, "status": None}, status_code=202)
    return JSONResponse(task_json(last), status_code=200 if last.is_terminal else 202)


async def task_events(request: Request) -> Response:
    client = client_of(request)
    try:
        await client.get_task(request.path_params["task_id"])  # a 404 before the stream starts
    except TaskNotFoundError:
        return JSONResponse({"detail": "no such task"}, status_code=404)
    interval = float(request.query_params.get("interval", POLL_INTERVAL))
    return TransitionStream(client, request.path_params["task_id"], interval=interval)


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
                while (await receive())["type"] != "http.disconnect":
                    pass
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
        Route("/tasks", create_task, methods=["POST"]),
        Route("/tasks/{task_id}", get_task),
        Route("/tasks/{task_id}/wait", wait_task),
        Route("/tasks/{task_id}/events", task_events),
    ],
    lifespan=lifespan,
)
