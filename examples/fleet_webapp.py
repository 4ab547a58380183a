# ruff: noqa: INP001 (a script to copy, not a package)
"""A FastAPI app that follows tasks through a fleet: any number of app processes, no polling.

    GET /tasks/{id}/events     Server-Sent Events: one ``transition`` event per status change,
                               ending at completed or failed
    GET /tasks/{id}            waits up to ?timeout= seconds (30 by default, at most 60):
                               200 and the ended task, or 202

The app sends nothing to the API: it submits each task to the fleet (``submit`` is idempotent:
a task already watched is not added twice) and follows it there, while ``vsr-async worker``
processes poll, together within one ``--rate-limit``. Run it with several workers::

    vsr-async emulator                                  # prints the export lines to paste
    export VSR_REDIS_URL=redis://127.0.0.1:6379/0
    vsr-async worker --rate-limit 20 &                  # as many as you like
    uvicorn --app-dir examples fleet_webapp:app --workers 2
    curl -N localhost:8000/tasks/ID/events

The Redis URL comes from ``VSR_REDIS_URL``, the namespace from ``VSR_NAMESPACE`` ("vsr").
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vsr_async.fleet import RedisFleet

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from vsr_async import Task, Transition

#: The longest GET /tasks/{id} waits, in seconds.
MAX_WAIT = 60.0


def task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "status": str(task.status),
        "video_url": task.video_url,
        "error": None if task.error is None else str(task.error),
    }


def sse_event(transition: Transition) -> str:
    data = {
        "task_id": transition.task_id,
        "previous": None if transition.previous is None else str(transition.previous),
        "status": None if transition.status is None else str(transition.status),
        "task": None if transition.task is None else task_json(transition.task),
        "error": None if transition.error is None else str(transition.error),
    }
    return f"event: transition\ndata: {json.dumps(data)}\n\n"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    redis_url = os.environ.get("VSR_REDIS_URL", "redis://127.0.0.1:6379/0")
    async with RedisFleet(redis_url, os.environ.get("VSR_NAMESPACE", "vsr")) as fleet:
        app.state.fleet = fleet
        yield


app = FastAPI(lifespan=lifespan)


def fleet_of(request: Request) -> RedisFleet:
    fleet: RedisFleet = request.app.state.fleet
    return fleet


async def submitted(fleet: RedisFleet, task_id: str) -> None:
    try:
        await fleet.submit([task_id])
    except ValueError as exc:  # an ID that cannot be one
        raise HTTPException(422, str(exc)) from None


@app.get("/tasks/{task_id}/events")
async def task_events(task_id: str, request: Request) -> StreamingResponse:
    fleet = fleet_of(request)
    await submitted(fleet, task_id)

    async def events() -> AsyncIterator[str]:
        # Leaving early (the browser went away) leaves the follow: nothing is polled here.
        async with fleet.follow([task_id]) as transitions:
            async for transition in transitions:
                yield sse_event(transition)

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@app.get("/tasks/{task_id}", response_model=None)
async def wait_task(
    task_id: str,
    request: Request,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT)] = 30.0,  # noqa: ASYNC109 (a parameter)
) -> JSONResponse:
    fleet = fleet_of(request)
    await submitted(fleet, task_id)
    last: Task | None = None
    with anyio.move_on_after(timeout):
        async with fleet.follow([task_id]) as transitions:
            async for transition in transitions:
                if transition.error is not None:
                    return JSONResponse({"detail": str(transition.error)}, status_code=502)
                last = transition.task
    if last is None:
        return JSONResponse({"id": task_id, "status": None}, status_code=202)
    return JSONResponse(task_json(last), status_code=200 if last.is_terminal else 202)
