"""Watching many tasks at once: a subscription to a scheduler, yielding `Transition`s.

A `Watcher` polls nothing itself: it subscribes to its task IDs on a `Scheduler` (see
``_scheduler.py``) and turns the answers it is told of into its own transitions: each task's
first sighting (for this watch), every change of status, and its end. On a client opened with
``async with``, every watch and wait subscribes to the client's one scheduler, so a task watched
by many is polled once per interval; otherwise (and with an explicit ``max_concurrency``) a
watch brings a scheduler of its own, run in its own task group.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import anyio
import attrs

from ._schedule import as_schedule
from ._scheduler import Scheduler, WatchStats
from ._validate import check_count, check_seconds, check_task_id

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._errors import VSRError
    from ._models import Task, TaskStatus
    from ._schedule import Schedule
    from ._tasks import Tasks

__all__ = ["Transition", "WatchStats", "Watcher"]

#: What a watch keeps of a task it has not seen yet.
_UNSEEN = None
#: Not watched at all.
_ABSENT = object()


@attrs.frozen
class Transition:
    """A change seen by a watch: a task's first sighting, a status change, or its end.

    ``error`` is set when the watch gave the task up (not found, unreadable answers, past its
    timeout); ``task`` is then the last snapshot seen, if any.
    """

    task_id: str
    previous: TaskStatus | str | None
    task: Task | None
    error: VSRError | None = None

    @property
    def status(self) -> TaskStatus | str | None:
        """The task's status after this transition (``None`` if it was never seen)."""
        return None if self.task is None else self.task.status

    @property
    def is_final(self) -> bool:
        """Whether this is the task's last transition in this watch."""
        return self.error is not None or (self.task is not None and self.task.is_terminal)


class Watcher:
    """Watches tasks concurrently and yields their `Transition`s; made by `AsyncVSRClient.watch`.

    Each status change of each task is yielded once, in order: its first sighting, every
    change, and its end (terminal status, or an error when given up). The iteration ends when
    every task has ended (and, with ``keep_open``, `done_adding` was called). Leaving the
    ``async with`` block ends the watch: a task no other watch wants is polled no more.
    """

    def __init__(
        self,
        tasks: Tasks,
        task_ids: Iterable[str],
        *,
        interval: float | Schedule,
        timeout: float | None,
        max_concurrency: int | None,
        keep_open: bool,
        scheduler: Scheduler | None = None,
    ) -> None:
        if isinstance(task_ids, str):
            raise TypeError("task_ids must be an iterable of IDs, not one string")
        self._initial = [check_task_id(task_id) for task_id in task_ids]
        self._pace = as_schedule(interval)
        self.timeout = (
            math.inf if timeout is None else check_seconds("timeout", timeout, finite=False)
        )
        limit = tasks.session.max_connections
        if max_concurrency is not None:
            # More workers than connections would only queue at the client's limiter.
            limit = min(check_count("max_concurrency", max_concurrency, minimum=1), limit)
            scheduler = None  # a pool of pollers of its own
        self._own = scheduler is None
        self._scheduler = scheduler or Scheduler(tasks, workers=limit)
        self._keep_open = keep_open
        self._seen: dict[str, TaskStatus | str | None] = {}  # each task watched: its last status
        # Made at the first transition: most watches of one task hold one or two at a time,
        # and an empty deque is 760 bytes.
        self._ready: collections.deque[Transition] | None = None
        self._error: Exception | None = None
        self._unwinding: list[anyio.Event] = []  # polls cancelled for this watch, unwinding
        self._wakeup: anyio.Event | None = None
        self._started = self._stopping = False
        self._task_group: TaskGroup | None = None

    # The consumer's side.

    async def __aenter__(self) -> Watcher:
        if self._started:
            raise RuntimeError("a Watcher can be entered only once")
        self._started = True
        if self._own:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            self._task_group.start_soon(self._scheduler.run)
        initial, self._initial = self._initial, []
        for task_id in initial:
            self.add(task_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        self._ready = None  # a watch left early stays ended: nothing more is yielded
        for task_id in self._seen:
            if (unwound := self._scheduler.unsubscribe(self, task_id)) is not None:
                self._unwinding.append(unwound)
        self._seen.clear()
        # Polls in flight that no one else wants are cancelled: wait for them to unwind (their
        # connections closed), even when leaving because of a cancellation.
        with anyio.CancelScope(shield=True):
            for unwound in self._unwinding:
                await unwound.wait()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
            # The body's exception is not the task group's business: passing it in would wrap
            # it in an ExceptionGroup. The scheduler raises nothing but cancellation.
            await self._task_group.__aexit__(None, None, None)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Transition:
        if not self._started:
            raise RuntimeError("use the Watcher in `async with client.watch(...)` first")
        while True:
            if self._error is not None:  # an error that ends the whole watch
                error, self._error = self._error, None
                self._stopping = True
                raise error
            if self._ready:
                return self._ready.popleft()
            # The consumer decides when the watch is over, so add() works until it is.
            if self._stopping or (not self._seen and not self._keep_open):
                self._stopping = True
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def add(self, task_id: str) -> None:
        """Watch one more task. One being watched is ignored; one that already ended in this
        watch is watched again, from its first sighting.

        Raises:
            ValueError: ``task_id`` is invalid.
            RuntimeError: This watch has ended.
        """
        task_id = check_task_id(task_id)
        if not self._started:
            self._initial.append(task_id)
            return
        if self._stopping:
            raise RuntimeError("this watch has ended; add() needs a running watch")
        if task_id not in self._seen:
            self._seen[task_id] = _UNSEEN
            self._scheduler.subscribe(self, task_id, self._pace)

    def discard(self, task_id: str, *, error: Exception | None = None) -> None:
        """Stop watching one task: nothing more is yielded for it, and a task no other watch
        wants is polled no more. An ID not being watched is ignored. ``error`` says why it was
        given up, to the client's hooks (``wait`` passes its `WaitTimeoutError`)."""
        if self._seen.pop(task_id, _ABSENT) is _ABSENT:
            return
        if (unwound := self._scheduler.unsubscribe(self, task_id, error)) is not None:
            self._unwinding.append(unwound)  # awaited on the way out
        if self._ready:
            self._ready = collections.deque(t for t in self._ready if t.task_id != task_id)

    def done_adding(self) -> None:
        """With ``keep_open=True``: no more tasks will come; end once every task has ended."""
        self._keep_open = False
        self._wake()

    @property
    def watching(self) -> int:
        """How many tasks are being watched now."""
        return len(self._seen)

    @property
    def stats(self) -> WatchStats:
        """The counters now: ``watched`` is this watch's; the others are its scheduler's (the
        client's, when it is shared). Cheap enough to read several times a second."""
        return self._scheduler.stats(watched=len(self._seen))

    # The scheduler's side (the `Subscriber` protocol).

    def observe(self, task_id: str, task: Task | None, error: VSRError | None = None) -> None:
        """Turn an answer about ``task_id`` into this watch's transition, if it is one."""
        if task_id not in self._seen:
            return
        previous = self._seen[task_id]
        if error is not None or (task is not None and task.is_terminal):
            del self._seen[task_id]
        elif task is None or (
            previous is not None and task.status.casefold() == previous.casefold()
        ):
            return  # no change (an unknown status is kept verbatim, "Paused" is "PAUSED")
        else:
            self._seen[task_id] = task.status
        if self._ready is None:
            self._ready = collections.deque()
        self._ready.append(Transition(task_id, previous, task, error))
        self._wake()

    def fail(self, error: Exception, unwinding: list[anyio.Event]) -> None:
        """End the watch with ``error`` (raised by the iteration), once the polls it cancelled
        have unwound (awaited on the way out)."""
        self._seen.clear()
        self._error = error
        self._unwinding += unwinding
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
