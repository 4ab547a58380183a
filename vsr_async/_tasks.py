"""The task calls, on a session: query a task (once, or retried) and create one.

An answer becomes a `Task` here and nowhere else: the converter parses it, then the same-task
check refuses an answer about another task, and an unknown status is logged once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from ._converter import parse_task
from ._errors import ResponseValidationError, mask
from ._hooks import CreateDetails, RetryDetails
from ._models import Model, Task, TaskStatus
from ._retry import not_processed
from ._validate import check_http_url, check_model, check_task_id

if TYPE_CHECKING:
    from ._session import Session

logger = logging.getLogger("vsr_async")


class Tasks:
    """The API's task endpoints, sent through ``session``."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._unknown_statuses: set[str] = set()

    async def fetch(self, task_id: str) -> Task:
        """Query a (valid) task ID once: no retry, for a caller that schedules its own."""
        session = self.session
        return self._parse(await session.send("GET", session.task_url(task_id)), task_id)

    async def get(self, task_id: str) -> Task:
        """Query a task, retrying transient failures (`AsyncVSRClient.get_task`)."""
        session = self.session
        url = session.task_url(check_task_id(task_id))
        return self._parse(await session.request("GET", url), task_id)

    async def create(self, video_url: str, model: Model | str) -> Task:
        """Create a task (`AsyncVSRClient.create_task`): billed, so retried only when the
        request did nothing (it never left, or a 429 refused it)."""
        check_http_url("video_url", video_url)
        body = {"model": check_model(model), "videoUrl": video_url}
        url = f"{self.session.base_url}/v1/super-resolution/videos"
        hooks = self.session.hooks
        if hooks is None:
            content = await self.session.request("POST", url, json=body, retry_if=not_processed)
            return self._parse(content, None, status=TaskStatus.QUEUED)
        started, start = time.time(), anyio.current_time()
        retried: list[RetryDetails] = []
        task: Task | None = None
        error: BaseException | None = None
        try:
            content = await self.session.request(
                "POST", url, json=body, retry_if=not_processed, retried=retried
            )
            task = self._parse(content, None, status=TaskStatus.QUEUED)
        except BaseException as exc:  # a cancellation too: told, then raised
            error = exc
            raise
        finally:
            duration = anyio.current_time() - start
            hooks.on_create(CreateDetails(started, duration, tuple(retried), task, error))
        return task

    def _parse(self, content: bytes, task_id: str | None, **defaults: Any) -> Task:
        """The task in a success answer, if it is the one asked for (``task_id``, unless it is a
        create's answer). The data is kept as sent; only what an error or a log line quotes has
        the key masked, should the server echo it (an echo proxy, a debug page)."""
        secret = self.session.secret
        refused: str | None = None
        try:
            task = parse_task(content, **defaults)
        except ResponseValidationError as exc:
            refused = exc.reason
        else:
            if task_id is not None and task.id != task_id:  # a proxy's cache, a mixed-up answer
                refused = f"asked for task {task_id!r}, the answer is about task {task.id!r}"
        if refused is not None:  # (raised out here, where nothing chained quotes the body)
            raise ResponseValidationError.from_body(refused, content, secret=secret)
        status = task.status.casefold()
        if not isinstance(task.status, TaskStatus) and status not in self._unknown_statuses:
            self._unknown_statuses.add(status)
            logger.warning(
                "unknown task status %r: treated as still running", mask(task.status, secret)
            )
        return task
