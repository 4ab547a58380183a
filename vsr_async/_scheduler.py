"""The scheduler: one heap of due polls, a bounded set of workers, and the subscribers of each task.

A watched task is a small record in a heap ordered by when it is next due, not a coroutine:
``workers`` workers take due records from it, poll once and push the record back, and a
dispatcher keeps the clock (deadlines, and due records for idle workers). Watches and waits
do not poll: they subscribe to task IDs. One poll per task per interval serves every subscriber
of that task (the shortest interval asked wins), and each subscriber is told of every answer
through `Subscriber.observe`, which never waits: a task has few transitions, so what a slow
consumer has not taken yet stays small, and it holds up no one.

A subscriber's ``timeout`` counts from the first poll of the task after it subscribed (so a
task waiting behind thousands of others, or behind the rate budget, is never given up unasked),
and it is the subscriber's alone: an entry of its own in the heap gives the task up for it when
it comes, paused or not, while the others go on. When a task's last subscriber leaves, its
record is dropped and a poll of it in flight is cancelled. A task whose poll failed (a 429, a
5xx, a dropped connection...) is polled again after the ``Retry-After`` (a short one
lengthened by up to `RETRY_AFTER_JITTER`) or backoff, sooner than its interval for its first
`QUICK_RETRIES` failures in a row while quick retries are at most `QUICK_RETRY_SHARE` of the
polls (a retry budget: an outage, where every poll fails, is not met with several polls per
task), else no sooner than its interval, and (but for a ``Retry-After``) no later than
`MAX_FAILING_INTERVALS` of it; the session's rate budget learns from every answer.
A task refused with a 429 did not use its turn: after its wait it is polled in the place in
line it had, ahead of the tasks that became due after it (held apart until then, see `_hold`).
When the budget pauses every request of the client (a ``Retry-After`` of `PAUSE_RETRY_AFTER` or
more), due records are held until the pause ends.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel
import attrs

from ._config import (
    JITTER,
    MAX_FAILING_INTERVALS,
    MAX_MALFORMED,
    PAUSE_RETRY_AFTER,
    QUICK_RETRIES,
    QUICK_RETRY_BURST,
    QUICK_RETRY_SHARE,
    RATE_WINDOW,
    RETRY_AFTER_JITTER,
    WARN_AFTER_FAILURES,
    WARN_EVERY,
)
from ._errors import (
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    VSRError,
    WaitTimeoutError,
)
from ._hooks import PollDetails, RetryDetails, TransitionDetails, WatchDetails
from ._retry import is_transient
from ._validate import check_seconds

if TYPE_CHECKING:
    from collections.abc import Collection

    from ._hooks import Hooks
    from ._models import Task
    from ._schedule import Schedule
    from ._tasks import Tasks

logger = logging.getLogger("vsr_async")


class Subscriber(Protocol):
    """What the scheduler tells of the tasks it polls: a watch, a wait."""

    #: Seconds after the first poll of a task (once subscribed) when it is given up.
    timeout: float

    def observe(self, task_id: str, task: Task | None, error: VSRError | None = None) -> None:
        """A poll's answer (``error`` set when the task is given up); must not wait."""

    def fail(self, error: Exception, unwinding: list[anyio.Event]) -> None:
        """An error that ends every subscription (a refused key); must not wait. The polls
        it cancelled set ``unwinding``'s events once unwound."""


@attrs.frozen(kw_only=True)
class WatchStats:
    """A watch's counters at one moment, from `Watcher.stats` (or the client's, from
    `AsyncVSRClient.stats`).

    Attributes:
        watched: Tasks being watched (added and not ended).
        in_flight: Polls being sent now.
        polls: Polls sent so far, failed ones included.
        retries: Polls that failed and were scheduled again.
        rate_limited: Polls answered 429 (counted in ``retries`` too).
        rate: Polls sent per second, over the last few seconds.
        allowed_rate: The requests per second the client allows now (its
            `AsyncVSRClient.current_rate`), or ``None`` while it has neither a
            ``rate_limit`` nor a quota learnt from 429s.
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


@attrs.define(eq=False)
class _Record:
    """One polled task: all the scheduler keeps per ID."""

    task_id: str
    since: float  # when its current status was first seen (or it was added): the schedules' 0
    subscribers: dict[Subscriber, Schedule] = attrs.Factory(dict)
    waiting: list[Subscriber] = attrs.Factory(list)  # subscribed, deadline not started
    task: Task | None = None
    failures: int = 0  # consecutive transient failures
    malformed: int = 0  # consecutive unreadable answers
    version: int = 0  # bumped when rescheduled or dropped: older heap entries are stale
    due: float = 0.0  # when its next poll is due (told to the hooks as lateness)
    turn: tuple[float, int] = (0.0, 0)  # its place in line: its entry's (when, order) in the heap
    polling: anyio.CancelScope | None = None  # the poll in flight
    unwound: anyio.Event | None = None  # set once a cancelled poll in flight has unwound


@attrs.define(eq=False)
class _Expiry:
    """A subscriber's deadline for one task."""

    subscriber: Subscriber
    record: _Record


@attrs.define(eq=False)
class _Idle:
    """A worker waiting for the dispatcher to hand it a record."""

    woken: anyio.Event = attrs.Factory(anyio.Event)
    record: _Record | None = None


class Scheduler:
    """The heap, the workers and the subscriptions; `run` polls until cancelled."""

    def __init__(self, tasks: Tasks, *, workers: int) -> None:
        self._tasks = tasks
        self._budget = tasks.session.budget  # holds the server's pauses, for the whole client
        self._retry = tasks.session.retry
        self._hooks = tasks.session.hooks
        self._workers = workers
        self._records: dict[str, _Record] = {}
        self._due: list[tuple[float, int, _Record | _Expiry, int]] = []
        self._held: list[tuple[float, int, _Record, int]] = []  # refused: (until, ...), see _hold
        self._subscriptions = 0  # (subscriber, task) pairs: each has at most one live _Expiry
        self._order = itertools.count()  # ties in the heap go to the first scheduled
        self._warned_at = -math.inf  # when we last warned of polls failing again and again
        self._changed: anyio.Event | None = None
        self._parked: collections.deque[_Idle] = collections.deque()  # workers with no record
        self._starved = False  # a record is due and every worker busy (see _dispatch)
        self._in_flight = self._polls = self._retries = self._rate_limited = 0
        self._meter: _Meter | None = None
        self._quick_tokens = QUICK_RETRY_BURST  # quick retries allowed now (a retry budget)
        self._polls_earned = 0  # the polls that have earned their share of it

    # The subscribers' side.

    def subscribe(self, subscriber: Subscriber, task_id: str, schedule: Schedule) -> None:
        """Add ``subscriber``'s interest in ``task_id``; it hears of the task at once if a poll
        already saw it (its first sighting, for it), else at the next poll."""
        record = self._records.get(task_id)
        if record is None:
            now = anyio.current_time()
            record = self._records[task_id] = _Record(task_id, since=now)
            self._schedule(record, now)
        if subscriber not in record.subscribers:
            self._subscriptions += 1
            if self._hooks is not None:
                self._hooks.on_watch(WatchDetails(task_id, subscriber))
        record.subscribers[subscriber] = schedule
        if subscriber.timeout < math.inf:
            record.waiting.append(subscriber)
        if record.task is not None:
            subscriber.observe(task_id, record.task)

    def unsubscribe(
        self, subscriber: Subscriber, task_id: str, error: Exception | None = None
    ) -> anyio.Event | None:
        """Drop ``subscriber``'s interest (``error``: why it gave the task up, for the hooks);
        the task's last subscriber leaving stops its polls. Returns, if a poll of it was in
        flight, the event set once that poll has unwound."""
        record = self._records.get(task_id)
        if record is None or record.subscribers.pop(subscriber, None) is None:
            return None
        self._subscriptions -= 1
        if self._hooks is not None:
            details = WatchDetails(task_id, subscriber, ended=True, task=record.task, error=error)
            self._hooks.on_watch(details)
        if not record.subscribers:
            self._drop(record)
        return record.unwound

    def stats(self, watched: int | None = None) -> WatchStats:
        """The counters now (``watched``: a subscriber's own count, else every task's)."""
        return WatchStats(
            watched=len(self._records) if watched is None else watched,
            in_flight=self._in_flight,
            polls=self._polls,
            retries=self._retries,
            rate_limited=self._rate_limited,
            rate=0.0 if self._meter is None else self._meter.rate(anyio.current_time()),
            allowed_rate=self._budget.current,
        )

    # The workers' side.

    async def run(self) -> None:
        """Poll due tasks until cancelled (by whoever hosts the scheduler)."""
        self._changed = anyio.Event()
        self._meter = self._meter or _Meter(anyio.current_time())
        async with anyio.create_task_group() as task_group:
            for _ in range(self._workers):
                task_group.start_soon(self._work)
            await self._dispatch()

    async def _dispatch(self) -> None:
        """Keep the clock: give up deadlines, and hand due records to idle workers. A busy
        worker takes its next record itself (`_take`), so while every worker is busy the
        dispatcher sleeps: no handover per poll (a stream's cost more than the heap's)."""
        while True:
            now = anyio.current_time()
            if (record := self._settle(now)) is not None:  # a record is due
                if self._parked:
                    idle = self._parked.popleft()
                    idle.record = self._pop(record, now)
                    idle.woken.set()
                    # Its poll starts before the next one's, even where woken tasks run in any
                    # order (trio): polls go out in the order they were due.
                    await anyio.lowlevel.checkpoint()
                    continue
                self._starved = True  # until a worker parks: the first one done takes it
                try:
                    await self._wait_changed()
                finally:
                    self._starved = False
                continue
            due = self._due[0][0] if self._due else math.inf
            held = self._held[0][0] if self._held else math.inf
            with anyio.move_on_after(min(due, held) - now):
                await self._wait_changed()

    async def _work(self) -> None:
        """Poll due records, one at a time. One cancel scope serves a worker's polls until one
        of them is cancelled (its task dropped, see `_drop`): one per poll cost more than the
        heap."""
        while True:
            with anyio.CancelScope() as scope:
                while not scope.cancel_called:  # (a cancel that came after the answer)
                    await self._work_once(scope)

    async def _work_once(self, scope: anyio.CancelScope) -> None:
        now = anyio.current_time()
        record = self._take(now)
        if record is None:  # nothing due: wait for the dispatcher to hand one over
            idle = _Idle()
            self._parked.append(idle)
            if self._starved and self._changed is not None:
                self._changed.set()
            await idle.woken.wait()
            record, now = idle.record, anyio.current_time()
        if record is not None and record.subscribers:  # (else dropped since handed over)
            try:
                await self._poll(record, now, scope)
            except Exception as exc:  # noqa: BLE001 (401/403, a closed client, a bug)
                self._fail_all(exc)

    def _settle(self, now: float) -> _Record | None:
        """Deal with the due entries that need no worker (stale ones, deadlines, records due
        during a pause: due again at its end), up to the first due record to poll, which is
        returned and left in line (``None`` if there is none)."""
        self._release(now)
        while self._due and self._due[0][0] <= now:
            _, _, item, version = self._due[0]
            if isinstance(item, _Record) and version == item.version:
                if (pause := self._budget.paused_for()) <= 0:
                    return item
                item.version += 1  # due again when it ends (and late since it was due)
                heapq.heappop(self._due)
                self._push(now + pause, item, item.version)
                continue
            heapq.heappop(self._due)
            if isinstance(item, _Expiry) and self._live(item, version):
                self._expire(item)
        return None

    def _take(self, now: float) -> _Record | None:
        """The first due record, out of line (see `_settle`), or ``None``."""
        record = self._settle(now)
        return None if record is None else self._pop(record, now)

    def _pop(self, record: _Record, now: float) -> _Record:
        """Take ``record``, the first due one as `_settle` returned it, out of line."""
        heapq.heappop(self._due)
        record.version += 1  # (in a worker's hands: no other entry counts meanwhile)
        if self._starved and not (self._due and self._due[0][0] <= now):
            # The dispatcher waits, without a timer, for a worker to take what was due:
            # once nothing is, it must go back to keeping the clock (a deadline may come
            # while every worker is busy). (Not per poll while polls are still due.)
            assert self._changed is not None  # noqa: S101 (set while it runs)
            self._changed.set()
        return record

    async def _poll(self, record: _Record, now: float, scope: anyio.CancelScope) -> None:
        """Poll ``record`` in the worker's ``scope``, which `_drop` cancels if it must."""
        waiting, record.waiting = record.waiting, []
        try:
            record.polling = scope
            task = await self._send_poll(record, now)
        except (AuthenticationError, PermissionDeniedError):
            raise  # the key is bad for every task: _work ends every subscription with it
        except VSRError as exc:
            self._failed(record, exc)
            return
        finally:
            record.polling = None
            if record.unwound is not None:
                record.unwound.set()
            # The first poll since they came is over: their deadlines start. (Not before its
            # answer: a task waiting for its turn or for a token is never given up unasked.)
            now = anyio.current_time() if waiting else now
            for subscriber in waiting:
                if subscriber in record.subscribers:
                    self._push(now + subscriber.timeout, _Expiry(subscriber, record), 0)
        if record.subscribers:  # (else cancelled: its last subscriber left)
            self._answered(record, task)

    def _answered(self, record: _Record, task: Task) -> None:
        """Tell the subscribers of a poll's answer, and schedule the next one."""
        previous = None if record.task is None else record.task.status
        record.task, record.failures, record.malformed = task, 0, 0
        now = anyio.current_time()
        if previous is None or task.status.casefold() != previous.casefold():
            record.since = now
            if self._hooks is not None:
                watchers = tuple(record.subscribers)
                details = TransitionDetails(record.task_id, previous, task, watchers)
                self._hooks.on_transition(details)
        for subscriber in list(record.subscribers):
            subscriber.observe(record.task_id, task)
        if task.is_terminal:
            self._drop(record)
        else:
            self._schedule(record, now + self._next_interval(record, now))

    async def _send_poll(self, record: _Record, now: float) -> Task:
        assert self._meter is not None  # noqa: S101
        self._polls += 1
        self._in_flight += 1
        self._meter.hit(now)
        try:
            if self._hooks is None:
                return await self._tasks.fetch(record.task_id)
            return await self._told_poll(record, self._hooks)
        finally:
            self._in_flight -= 1

    async def _told_poll(self, record: _Record, hooks: Hooks) -> Task:
        """The poll, its answer or failure told to ``hooks``."""
        attempt, started, start = record.failures, time.time(), anyio.current_time()
        lateness = max(start - record.due, 0.0)
        task, error = None, None
        try:
            task = await self._tasks.fetch(record.task_id)
        except VSRError as exc:
            error = exc
            raise
        finally:
            if task is not None or error is not None:  # (not when cancelled)
                duration = anyio.current_time() - start
                watchers = tuple(record.subscribers)
                details = PollDetails(
                    record.task_id, attempt, started, duration, lateness, task, error, watchers
                )
                hooks.on_poll(details)
        return task

    def _failed(self, record: _Record, exc: VSRError) -> None:
        """A poll that failed with ``exc``: the task given up, or polled again later."""
        if isinstance(exc, ResponseValidationError):
            record.malformed += 1
            give_up = record.malformed >= MAX_MALFORMED
        else:
            record.malformed = 0  # "in a row": a readable error answer breaks the run
            give_up = not is_transient(exc)  # 404, 400...: this task only
        if give_up:
            for subscriber in list(record.subscribers):
                subscriber.observe(record.task_id, record.task, exc)
            self._drop(record, exc)
        else:
            self._retry_later(record, exc)

    def _next_interval(self, record: _Record, now: float) -> float:
        """The shortest interval its subscribers' schedules ask for now, with jitter."""
        elapsed = now - record.since
        schedules: Collection[Schedule] = record.subscribers.values()
        if len(schedules) > 1:  # (many subscribers often share one schedule: asked once)
            schedules = {id(s): s for s in schedules}.values()
        interval = min(s.next_interval(elapsed) for s in schedules)
        interval = check_seconds("the schedule's interval", interval)
        return interval * random.uniform(1 - JITTER, 1 + JITTER)

    def _retry_later(self, record: _Record, exc: VSRError) -> None:
        """Schedule a poll that failed with a transient ``exc`` again; a ``Retry-After`` past
        `MAX_RETRY_AFTER` raises ``exc``, which ends every subscription (as it would fail
        `get_task`)."""
        if not record.subscribers:
            return  # dropped while its poll failed (on trio, a cancel can come after the answer)
        now = anyio.current_time()
        self._retries += 1
        self._rate_limited += isinstance(exc, RateLimitError)
        delay = self._retry.delay(exc, record.failures)
        record.failures += 1
        if record.failures == WARN_AFTER_FAILURES and now >= self._warned_at + WARN_EVERY:
            # Debug lines are for one failure; a task failing again and again is worth a word
            # (but not a word per task: a bad server fails them all).
            self._warned_at = now
            logger.warning("polls keep failing (%s); retrying with backoff", exc)
        retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
        if retry_after is not None and retry_after < PAUSE_RETRY_AFTER:
            delay *= random.uniform(1, 1 + RETRY_AFTER_JITTER)  # so a herd comes back spread
        # Sooner than its interval only for a few failures in a row, and (but after a 429, which
        # the rate budget paces) within the retry budget: an outage is not met with more polls.
        interval = self._next_interval(record, now)
        refused = isinstance(exc, RateLimitError)
        if delay < interval and (
            record.failures > QUICK_RETRIES or not (refused or self._spend_quick_retry())
        ):
            delay = interval
        elif retry_after is None:
            delay = min(delay, MAX_FAILING_INTERVALS * interval)  # (an outage too: half the polls)
        logger.debug("polling %r failed (%s); again in %.2f s", record.task_id, exc, delay)
        if self._hooks is not None:
            details = RetryDetails(
                "GET /v1/result/{id}",
                record.task_id,
                record.failures,
                delay,
                exc,
                tuple(record.subscribers),
            )
            self._hooks.on_retry(details)
        if refused and record.failures <= QUICK_RETRIES:
            self._hold(record, now + delay)  # a turn refused is not a turn used: its place kept
        else:
            self._schedule(record, now + delay)

    def _spend_quick_retry(self) -> bool:
        """Take one quick retry from the budget, if one is left: each poll sent earns
        `QUICK_RETRY_SHARE` of one, up to `QUICK_RETRY_BURST` saved."""
        earned = (self._polls - self._polls_earned) * QUICK_RETRY_SHARE
        self._polls_earned = self._polls
        self._quick_tokens = min(QUICK_RETRY_BURST, self._quick_tokens + earned)
        if self._quick_tokens < 1:
            return False
        self._quick_tokens -= 1
        return True

    def _expire(self, expiry: _Expiry) -> None:
        """A subscriber's deadline for a task: give the task up for it."""
        subscriber, record = expiry.subscriber, expiry.record
        error = WaitTimeoutError(record.task_id, subscriber.timeout, record.task)
        subscriber.observe(record.task_id, record.task, error)
        self.unsubscribe(subscriber, record.task_id, error)

    def _fail_all(self, exc: Exception) -> None:
        """End every subscription with ``exc`` and forget every task."""
        subscribers = {s for r in self._records.values() for s in r.subscribers}
        records = list(self._records.values())
        for record in records:
            self._drop(record, exc)
        unwinding = [r.unwound for r in records if r.unwound is not None]
        for subscriber in subscribers:
            subscriber.fail(exc, unwinding)

    def _drop(self, record: _Record, error: Exception | None = None) -> None:
        """Forget a task: it ended (``error``: given up), or its last subscriber left."""
        if self._records.get(record.task_id) is record:
            del self._records[record.task_id]
        record.version += 1
        self._subscriptions -= len(record.subscribers)
        if self._hooks is not None:
            for subscriber in record.subscribers:
                details = WatchDetails(
                    record.task_id, subscriber, ended=True, task=record.task, error=error
                )
                self._hooks.on_watch(details)
        record.subscribers.clear()
        if record.polling is not None and record.unwound is None:
            record.polling.cancel()
            record.unwound = anyio.Event()

    def _schedule(self, record: _Record, when: float) -> None:
        record.version += 1
        record.due = when
        record.turn = self._push(when, record, record.version)

    def _hold(self, record: _Record, until: float) -> None:
        """Poll ``record`` again no sooner than ``until``, in the place in line it had: ahead of
        the tasks that became due after it. (A refused task sent to the back of the line, behind
        every task due by then, lost a turn per refusal under a quota.)"""
        record.version += 1
        record.due = until
        heapq.heappush(self._held, (until, next(self._order), record, record.version))
        if self._changed is not None:
            self._changed.set()

    def _release(self, now: float) -> None:
        """Put the held records whose wait is over back in line, each in its place."""
        while self._held and self._held[0][0] <= now:
            _, _, record, version = heapq.heappop(self._held)
            if version == record.version:  # (else dropped, or rescheduled, since)
                heapq.heappush(self._due, (*record.turn, record, version))

    def _push(self, when: float, item: _Record | _Expiry, version: int) -> tuple[float, int]:
        if len(self._due) > 2 * (len(self._records) + self._subscriptions) + 64:
            # Mostly stale entries (deadlines of subscribers that left, tasks that ended):
            # keep the live ones, so the heap stays proportional to what is watched.
            self._due = [entry for entry in self._due if self._live(*entry[2:])]
            heapq.heapify(self._due)
        order = next(self._order)
        sooner = not self._due or when < self._due[0][0]  # (else no one waits for less)
        heapq.heappush(self._due, (when, order, item, version))
        if sooner and self._changed is not None:
            self._changed.set()
        return when, order

    def _live(self, item: _Record | _Expiry, version: int) -> bool:
        """Whether a heap entry still counts: its record not rescheduled or dropped since, its
        subscriber still subscribed."""
        if isinstance(item, _Expiry):
            record = item.record
            current = self._records.get(record.task_id) is record
            return current and item.subscriber in record.subscribers
        return version == item.version

    async def _wait_changed(self) -> None:
        assert self._changed is not None  # noqa: S101
        await self._changed.wait()
        self._changed = anyio.Event()
