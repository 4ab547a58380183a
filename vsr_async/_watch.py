"""Watching many tasks at once: a due-time heap feeding a bounded set of workers.

A watched task is a small record in a heap ordered by when it is next due, not a coroutine:
one dispatcher pops due records and hands them to ``max_concurrency`` workers, which poll
once, report a `Transition` when the status changed, and push the record back. So memory
grows by a few hundred bytes per task, and a 429 pauses every poller at once (the session's
rate budget holds the pause, for every request of the client) instead of each finding out for
itself. How long a task waits between polls is its `Schedule`'s answer (see ``_schedule.py``),
with jitter on top.

A record is due at its next poll or at its deadline, whichever comes first, and the dispatcher
gives up a task past its deadline whenever it pops it, paused or not: during a pause a due
record goes back into the heap until the pause ends or its deadline comes. The deadline is
``timeout`` seconds after the task's first poll, so a task waiting behind thousands of others
(or behind the rate budget) is never given up unasked.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from typing import TYPE_CHECKING

import anyio
import attrs

from ._config import JITTER, MAX_MALFORMED, RATE_WINDOW, WARN_AFTER_FAILURES, WARN_EVERY
from ._errors import (
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    VSRError,
    WaitTimeoutError,
)
from ._retry import asks_to_slow_down, backoff_delay, is_transient
from ._schedule import as_schedule
from ._validate import check_count, check_seconds, check_task_id

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._models import Task, TaskStatus
    from ._schedule import Schedule
    from ._tasks import Tasks

logger = logging.getLogger("vsr_async")


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


@attrs.frozen(kw_only=True)
class WatchStats:
    """A watch's counters at one moment, from `Watcher.stats`.

    Attributes:
        watched: Tasks being watched (added and not ended).
        in_flight: Polls being sent now (at most ``max_concurrency``).
        polls: Polls sent so far, failed ones included.
        retries: Polls that failed and were scheduled again.
        rate_limited: Polls answered 429 (counted in ``retries`` too).
        rate: Polls sent per second, over the last few seconds.
        allowed_rate: The requests per second the client allows now (its
            `AsyncVSRClient.current_rate`), or ``None`` without a ``rate_limit``.
    """

    watched: int
    in_flight: int
    polls: int
    retries: int
    rate_limited: int
    rate: float
    allowed_rate: float | None = None


class _Meter:
    """Counts events in two fixed windows, for a sliding-window rate in O(1) time and memory."""

    __slots__ = ("_current", "_origin", "_previous", "_start")

    def __init__(self, now: float) -> None:
        self._origin = self._start = now
        self._current = self._previous = 0

    def hit(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def rate(self, now: float) -> float:
        """Events per second over the last `RATE_WINDOW` (or since the start, if sooner)."""
        self._roll(now)
        into = (now - self._start) / RATE_WINDOW  # how far into the current window, 0 to 1
        count = self._previous * (1 - into) + self._current
        return count / max(min(now - self._origin, RATE_WINDOW), 1.0)

    def _roll(self, now: float) -> None:
        if now >= self._start + RATE_WINDOW:
            windows = (now - self._start) // RATE_WINDOW
            self._previous = self._current if windows == 1 else 0
            self._current = 0
            self._start += windows * RATE_WINDOW


@attrs.define
class _Watched:
    """One watched task: all a watch keeps per ID."""

    task_id: str
    since: float  # when its current status was first seen (or it was added): the schedule's 0
    deadline: float = math.inf  # set at its first poll (stays so without a timeout)
    task: Task | None = None
    failures: int = 0  # consecutive transient failures
    malformed: int = 0  # consecutive unreadable answers


class Watcher:
    """Watches tasks concurrently and yields their `Transition`s; made by `AsyncVSRClient.watch`.

    Each status change of each task is yielded once, in order: its first sighting, every
    change, and its end (terminal status, or an error when given up). The iteration ends when
    every task has ended (and, with ``keep_open``, `done_adding` was called). Leaving the
    ``async with`` block stops every poller at once.
    """

    def __init__(
        self,
        tasks: Tasks,
        task_ids: Iterable[str],
        *,
        interval: float | Schedule,
        timeout: float | None,
        max_concurrency: int,
        keep_open: bool,
    ) -> None:
        if isinstance(task_ids, str):
            raise TypeError("task_ids must be an iterable of IDs, not one string")
        self._initial = [check_task_id(task_id) for task_id in task_ids]
        self._tasks = tasks
        session = tasks.session
        self._budget = session.budget  # holds the server's pauses, for the whole client
        self._retry = session.retry
        self._pace = as_schedule(interval)
        self._timeout = (
            math.inf if timeout is None else check_seconds("timeout", timeout, finite=False)
        )
        # More workers than connections would only queue at the client's limiter.
        self._max_concurrency = min(
            check_count("max_concurrency", max_concurrency, minimum=1), session.max_connections
        )
        self._keep_open = keep_open
        self._watched: dict[str, _Watched] = {}
        self._due: list[tuple[float, int, _Watched]] = []
        self._order = itertools.count()  # ties in the heap go to the first scheduled
        self._throttled = 0  # consecutive 429s / Retry-Afters, across all tasks
        self._warned_at = -math.inf  # when we last warned of polls failing again and again
        self._stopping = False
        self._started = False
        # The counters of `stats`.
        self._in_flight = self._polls = self._retries = self._rate_limited = 0
        self._meter: _Meter | None = None
        self._undelivered = 0  # transitions sent or being sent, not yet received
        self._changed: anyio.Event | None = None
        self._task_group: TaskGroup | None = None
        self._transitions: MemoryObjectReceiveStream[Transition | Exception | None] | None = None

    # The consumer's side.

    async def __aenter__(self) -> Watcher:
        if self._started:
            raise RuntimeError("a Watcher can be entered only once")
        self._started = True
        self._changed = anyio.Event()
        self._meter = _Meter(anyio.current_time())
        send, self._transitions = anyio.create_memory_object_stream[Transition | Exception | None](
            self._max_concurrency
        )
        jobs_in, jobs_out = anyio.create_memory_object_stream[_Watched]()
        initial, self._initial = self._initial, []
        for task_id in initial:
            self.add(task_id)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        async with send, jobs_out:
            for _ in range(self._max_concurrency):
                self._task_group.start_soon(self._work, jobs_out.clone(), send.clone())
            self._task_group.start_soon(self._dispatch, jobs_in, send.clone())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task_group is not None  # noqa: S101
        assert self._transitions is not None  # noqa: S101
        self._stopping = True
        self._task_group.cancel_scope.cancel()
        # The body's exception is not the task group's business: passing it in would wrap it
        # in an ExceptionGroup. Our tasks raise nothing but cancellation.
        try:
            await self._task_group.__aexit__(None, None, None)
        finally:  # an outer cancellation (wait()'s deadline) raises out of the line above
            self._transitions.close()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Transition:
        if self._transitions is None:
            raise RuntimeError("use the Watcher in `async with client.watch(...)` first")
        while True:
            # The consumer decides when the watch is over, so add() works until it is.
            if not self._watched and not self._keep_open and not self._undelivered:
                self._stopping = True
                raise StopAsyncIteration
            try:
                item = await self._transitions.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            if item is None:  # the dispatcher's nudge: look at the condition again
                continue
            if isinstance(item, Exception):  # an error that ends the whole watch
                raise item
            self._undelivered -= 1
            return item

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
        if task_id not in self._watched:
            now = anyio.current_time()
            entry = _Watched(task_id, since=now)
            self._watched[task_id] = entry
            self._schedule(entry, now)

    def done_adding(self) -> None:
        """With ``keep_open=True``: no more tasks will come; end once every task has ended."""
        self._keep_open = False
        self._wake()

    @property
    def watching(self) -> int:
        """How many tasks are being watched now."""
        return len(self._watched)

    @property
    def stats(self) -> WatchStats:
        """The watch's counters now: cheap enough to read several times a second."""
        return WatchStats(
            watched=len(self._watched),
            in_flight=self._in_flight,
            polls=self._polls,
            retries=self._retries,
            rate_limited=self._rate_limited,
            rate=0.0 if self._meter is None else self._meter.rate(anyio.current_time()),
            allowed_rate=self._budget.current,
        )

    # The workers' side.

    async def _dispatch(
        self,
        jobs: MemoryObjectSendStream[_Watched],
        send: MemoryObjectSendStream[Transition | Exception | None],
    ) -> None:
        async with jobs, send:
            while not self._stopping:
                if not self._watched and not self._keep_open:
                    await send.send(None)  # wake a consumer blocked in receive()
                    await self._wait_changed()
                    continue
                now = anyio.current_time()
                due = self._due[0][0] if self._due else math.inf
                if due > now:
                    with anyio.move_on_after(due - now):
                        await self._wait_changed()
                    continue
                entry = heapq.heappop(self._due)[2]
                if now >= entry.deadline:
                    await self._give_up(entry, send)
                elif (pause := self._budget.paused_for()) > 0:
                    self._schedule(entry, now + pause)  # due when it ends (or at the deadline)
                else:
                    await jobs.send(entry)

    async def _work(
        self,
        jobs: MemoryObjectReceiveStream[_Watched],
        send: MemoryObjectSendStream[Transition | Exception | None],
    ) -> None:
        async with jobs, send:
            async for entry in jobs:
                if self._stopping:
                    return
                if (pause := self._budget.paused_for()) > 0:
                    # Handed over just before a 429 paused the client: wait like the rest.
                    self._schedule(entry, anyio.current_time() + pause)
                    continue
                try:
                    await self._poll(entry, send)
                except Exception as exc:  # noqa: BLE001 (401/403, a closed client, a bug) ends the watch
                    self._stopping = True
                    self._wake()
                    await send.send(exc)
                    return

    async def _poll(
        self, entry: _Watched, send: MemoryObjectSendStream[Transition | Exception | None]
    ) -> None:
        now = anyio.current_time()
        if entry.deadline == math.inf:  # its first poll: the timeout counts from here
            entry.deadline, left = now + self._timeout, math.inf  # (and it is never cut short)
        else:
            left = entry.deadline - now
        try:
            task = await self._send_poll(entry.task_id, left)
            if task is None:  # past its deadline in flight (waiting out a pause, say)
                await self._give_up(entry, send)
                return
        except (AuthenticationError, PermissionDeniedError):
            raise  # the key is bad for every task: _work ends the whole watch with it
        except VSRError as exc:
            if isinstance(exc, ResponseValidationError):
                entry.malformed += 1
                give_up = entry.malformed >= MAX_MALFORMED
            else:
                entry.malformed = 0  # "in a row": a readable error answer breaks the run
                give_up = not is_transient(exc)  # 404, 400...: this task only
            if give_up:
                await self._end(
                    entry, send, Transition(entry.task_id, _status(entry), entry.task, exc)
                )
            else:
                self._retry_later(entry, exc)
            return
        previous = _status(entry)
        entry.task, entry.failures, entry.malformed = task, 0, 0
        self._throttled = 0
        transition = Transition(entry.task_id, previous, task)
        if task.is_terminal:
            await self._end(entry, send, transition)
            return
        if previous is None or task.status.casefold() != previous.casefold():
            # (An unknown status is kept verbatim, but "Paused" and "PAUSED" are one status.)
            entry.since = anyio.current_time()
            self._undelivered += 1
            await send.send(transition)
        now = anyio.current_time()  # (after a consumer that was slow to take the transition)
        self._schedule(entry, now + self._next_interval(entry, now))

    async def _send_poll(self, task_id: str, seconds: float) -> Task | None:
        """The task, or ``None`` if no answer came within ``seconds``."""
        assert self._meter is not None  # noqa: S101
        self._polls += 1
        self._in_flight += 1
        self._meter.hit(anyio.current_time())
        try:
            if seconds == math.inf:  # (no cancel scope to pay for)
                return await self._tasks.fetch(task_id)
            with anyio.move_on_after(seconds):
                return await self._tasks.fetch(task_id)
            return None
        finally:
            self._in_flight -= 1

    def _next_interval(self, entry: _Watched, now: float) -> float:
        """The schedule's interval for this task now, with jitter."""
        interval = self._pace.next_interval(now - entry.since)
        interval = check_seconds("the schedule's interval", interval)
        return interval * random.uniform(1 - JITTER, 1 + JITTER)

    def _retry_later(self, entry: _Watched, exc: VSRError) -> None:
        """Schedule a poll that failed with a transient ``exc`` again; a ``Retry-After`` past
        `MAX_RETRY_AFTER` raises ``exc``, which ends the watch (as it would fail `get_task`)."""
        now = anyio.current_time()
        self._retries += 1
        self._rate_limited += isinstance(exc, RateLimitError)
        delay = self._retry.delay(exc, entry.failures)
        if asks_to_slow_down(exc):
            # The server asked us to slow down: every poller waits, and longer each time. (The
            # session already paused the budget for a Retry-After; without one, we do.)
            self._throttled += 1
            if isinstance(exc, RateLimitError) and exc.retry_after is None:
                self._budget.pause(backoff_delay(self._throttled))
        entry.failures += 1
        if entry.failures == WARN_AFTER_FAILURES and now >= self._warned_at + WARN_EVERY:
            # Debug lines are for one failure; a task failing again and again is worth a word
            # (but not a word per task: a bad server fails them all).
            self._warned_at = now
            logger.warning("polls keep failing (%s); retrying with backoff", exc)
        # A failed poll never brings the next one closer than the normal interval.
        delay = max(delay, self._next_interval(entry, now))
        logger.debug("polling %r failed (%s); again in %.2f s", entry.task_id, exc, delay)
        self._schedule(entry, now + delay)

    async def _give_up(
        self, entry: _Watched, send: MemoryObjectSendStream[Transition | Exception | None]
    ) -> None:
        """End a task past its deadline with a `WaitTimeoutError`."""
        error = WaitTimeoutError(entry.task_id, self._timeout, entry.task)
        await self._end(entry, send, Transition(entry.task_id, _status(entry), entry.task, error))

    async def _end(
        self,
        entry: _Watched,
        send: MemoryObjectSendStream[Transition | Exception | None],
        transition: Transition,
    ) -> None:
        self._undelivered += 1
        del self._watched[entry.task_id]
        self._wake()
        await send.send(transition)

    def _schedule(self, entry: _Watched, when: float) -> None:
        heapq.heappush(self._due, (min(when, entry.deadline), next(self._order), entry))
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_changed(self) -> None:
        assert self._changed is not None  # noqa: S101
        await self._changed.wait()
        self._changed = anyio.Event()


def _status(entry: _Watched) -> TaskStatus | str | None:
    return None if entry.task is None else entry.task.status
