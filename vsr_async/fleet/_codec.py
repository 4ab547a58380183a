"""Transitions as JSON, as the fleet stores them in Redis, and back.

JSON, not pickle: whoever can write to Redis must not be able to run code in a worker or a
follower. An error keeps its class (one of the library's, else `VSRError`), its message and
what a caller may read off it (the status code, the timeout).
"""

from __future__ import annotations

import json
from typing import Any

import vsr_async
from vsr_async import APIStatusError, Task, TaskError, Transition, VSRError, WaitTimeoutError


def task_to_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "status": str(task.status),
        "object": task.object,
        "created": task.created,
        "video_url": task.video_url,
        "actual_duration": task.actual_duration,
        "error": None if task.error is None else [task.error.message, task.error.code],
    }


def task_from_dict(data: dict[str, Any]) -> Task:
    error = data.get("error")
    return Task(
        id=data["id"],
        status=data["status"],
        object=data.get("object"),
        created=data.get("created"),
        video_url=data.get("video_url"),
        actual_duration=data.get("actual_duration"),
        error=None if error is None else TaskError(error[0], error[1]),
    )


def _error_to_dict(error: VSRError) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, APIStatusError):
        data |= {"status_code": error.status_code, "api_message": error.message}
    if isinstance(error, WaitTimeoutError):
        data["timeout"] = error.timeout
    return data


def _error_from_dict(data: dict[str, Any], task_id: str, task: Task | None) -> VSRError:
    cls = getattr(vsr_async, str(data.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, VSRError)):
        return VSRError(data.get("message", "the task was given up"))
    if issubclass(cls, WaitTimeoutError):
        return WaitTimeoutError(task_id, float(data.get("timeout", 0.0)), task)
    if issubclass(cls, APIStatusError):
        return cls(data.get("api_message", ""), status_code=int(data.get("status_code", 0)))
    error = cls.__new__(cls)  # (their constructors want what the message already says)
    Exception.__init__(error, data.get("message", ""))
    return error


def dumps(transition: Transition) -> str:
    """A transition as the JSON stored in Redis (its ``previous`` is the worker's)."""
    task = transition.task
    return json.dumps(
        {
            "task": None if task is None else task_to_dict(task),
            "error": None if transition.error is None else _error_to_dict(transition.error),
        },
        separators=(",", ":"),
    )


def loads(task_id: str, data: str, previous: Any) -> Transition:
    """A stored transition, as a follower whose last status was ``previous`` sees it."""
    fields = json.loads(data)
    task = None if fields["task"] is None else task_from_dict(fields["task"])
    error = fields["error"]
    return Transition(
        task_id,
        previous,
        task,
        None if error is None else _error_from_dict(error, task_id, task),
    )
