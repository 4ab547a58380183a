"""`RedisFleet`: submit task IDs to a namespace, follow their transitions, run a worker."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs
import coredis

from vsr_async import (
    Task,
    TaskFailedError,
    TaskStatus,
    Transition,
    WaitTimeoutError,
    WatchStats,
)
from vsr_async._validate import check_count, check_seconds, check_task_id

from . import _codec
from ._faults import UNREACHABLE, Outage, logger
from ._keys import GROUP, STATES, SUBMIT, Keys

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from types import TracebackType

    from coredis.response.types import StreamEntry

    from vsr_async import AsyncVSRClient

#: Default lease: a worker that stops renewing loses its tasks after this many seconds.
DEFAULT_LEASE = 30.0
#: Default cap of the events stream (entries, approximately: ``MAXLEN ~``).
DEFAULT_EVENTS = 100_000
#: Default seconds an ended task's last transition stays readable (and its ID not resubmitted).
DEFAULT_KEEP = 24 * 3600.0
#: Milliseconds a follower's read blocks before it looks again.
_BLOCK_MS = 1000


@attrs.frozen
class _Mark:
    """A place in the events stream: an entry's ID, and its ``seq`` (how many transitions the
    namespace had published up to it; ``None`` for an entry without one)."""

    entry: str
    seq: int | None

    @property
    def order(self) -> tuple[int, int]:
        """The entry ID (``"1700000000000-3"``) as a tuple that sorts as Redis does."""
        ms, _, n = self.entry.partition("-")
        return int(ms), int(n or 0)

    @classmethod
    def of(cls, entry: StreamEntry | None) -> _Mark:
        """The place of ``entry``, or the start of the stream."""
        if entry is None:
            return cls("0-0", 0)
        seq = entry.field_values.get("seq")
        return cls(str(entry.identifier), None if seq is None else int(seq))


def fingerprint(api_key: str, namespace: str) -> str:
    """What a namespace stores of its API key: a salted hash, never the key."""
    return hashlib.sha256(f"vsr-async fleet\0{namespace}\0{api_key}".encode()).hexdigest()[:32]


def shown_url(url: str) -> str:
    """A Redis URL without its password, for logs, errors and ``repr``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


@attrs.frozen(kw_only=True)
class FleetStatus:
    """A namespace at one moment, from `RedisFleet.status`.

    Attributes:
        workers: Each worker's name and its last heartbeat (``owned``, ``at``...).
        watched: Task IDs submitted and not ended.
        owned: Of those, the ones a worker owns now.
        waiting: The ones no worker owns yet.
        rate: The requests per second the workers may send together now (the shared
            ``rate_limit``, less after 429s); ``None`` without one.
        rate_limit: The workers' shared ``rate_limit``, if they have one.
    """

    workers: dict[str, dict[str, Any]]
    watched: int
    owned: int
    rate: float | None = None
    rate_limit: float | None = None

    @property
    def waiting(self) -> int:
        return max(0, self.watched - self.owned)


class RedisFleet:
    """A namespace of watched tasks in Redis, shared by processes: workers poll, others follow.

    Args:
        redis: A ``redis://`` or ``rediss://`` URL (with its ACL user and password, if any),
            or a coredis client the caller has entered.
        namespace: Keeps fleets apart on one Redis; every key carries it as its hash tag.
        api_key: The key the fleet's workers use (``VSR_API_KEY`` by default): only its
            fingerprint is stored, so that `submit` refuses a namespace another key serves.
        lease: Seconds a worker owns a task without renewing it; a worker that dies loses its
            tasks to the others after this long.
        events: About how many transitions the events stream keeps.
        keep: Seconds an ended task's last transition stays readable, by `follow` and `wait`.
    """

    def __init__(
        self,
        redis: str | coredis.Redis[str],
        namespace: str = "vsr",
        *,
        api_key: str | None = None,
        lease: float = DEFAULT_LEASE,
        events: int = DEFAULT_EVENTS,
        keep: float = DEFAULT_KEEP,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}\0"):
            raise ValueError(
                f"namespace must be a non-empty name without braces, got {namespace!r}"
            )
        self.namespace = namespace
        self.keys = Keys(namespace)
        self.lease = check_seconds("lease", lease)
        self.events = check_count("events", events, minimum=1)
        self.keep = check_seconds("keep", keep)
        api_key = api_key if api_key is not None else os.environ.get("VSR_API_KEY", "")
        #: What is stored of the API key ("" without one: then nothing is checked).
        self.fingerprint = fingerprint(api_key, namespace) if api_key else ""
        if isinstance(redis, str):
            self.url = shown_url(redis)
            self.redis: coredis.Redis[str] = coredis.Redis.from_url(redis, decode_responses=True)
            self._owns_client = True
        else:
            self.url = repr(redis)
            self.redis = redis
            self._owns_client = False
        self._events = _Events(self)

    def __repr__(self) -> str:
        return f"<RedisFleet {self.namespace!r} on {self.url}>"

    async def __aenter__(self) -> RedisFleet:
        if self._owns_client:
            await self.redis.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_client:
            await self.redis.__aexit__(exc_type, exc, tb)

    async def submit(
        self,
        task_ids: Iterable[str],
        *,
        interval: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (each task's, not this call's)
    ) -> int:
        """Add task IDs for the workers to watch; return how many were new.

        An ID already watched, or ended (and still remembered, see ``keep``), is left alone:
        submitting again is safe, whoever does it and however often.

        Args:
            task_ids: The tasks.
            interval: Seconds between two polls of each (the worker's default if ``None``).
            timeout: Seconds after its first poll when a task still running is given up.

        Raises:
            ValueError: An ID or an argument is invalid (nothing is added).
            PermissionError: The namespace's workers serve another API key.
        """
        if isinstance(task_ids, str):
            raise TypeError("task_ids must be an iterable of IDs, not one string")
        ids = [check_task_id(task_id) for task_id in task_ids]
        settings = {
            "interval": None if interval is None else check_seconds("interval", interval),
            "timeout": None if timeout is None else check_seconds("timeout", timeout),
        }
        added = 0
        script = self.redis.register_script(SUBMIT)
        keys = [self.keys.ids, self.keys.queue, self.keys.state, self.keys.fingerprint]
        head = [self.fingerprint, json.dumps(settings)]
        for start in range(0, len(ids), 1000):  # (a script blocks Redis while it runs)
            try:
                result: object = await script(keys=keys, args=[*head, *ids[start : start + 1000]])
            except coredis.exceptions.ResponseError as exc:
                if "WRONGKEY" in str(exc):
                    raise PermissionError(
                        f"namespace {self.namespace!r} is served by workers with another API"
                        " key; use another namespace, or the same key"
                    ) from None
                raise
            added += cast("int", result)
        return added

    def follow(self, task_ids: Iterable[str]) -> Follower:
        """Follow tasks submitted to the fleet: yields the same `Transition`s as
        `AsyncVSRClient.watch` (its first sighting for this follower, each change, its end),
        each once and in order per task, until every task has ended::

            async with fleet.follow(ids) as transitions:
                async for t in transitions:
                    print(t.task_id, t.previous, "->", t.status)
        """
        return Follower(self._events, task_ids)

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline, as in AsyncVSRClient.wait)
        raise_on_failure: bool = True,
    ) -> Task:
        """The task once ended, even if it ended before the call (see ``keep``).

        Raises:
            WaitTimeoutError: ``timeout`` passed first.
            TaskFailedError: It failed (and ``raise_on_failure``).
            VSRError: The workers gave it up (not found, past its own timeout...).
        """
        deadline = math.inf if timeout is None else check_seconds("timeout", timeout)
        last: Transition | None = None
        with anyio.move_on_after(deadline):
            async with self.follow([task_id]) as transitions:
                async for last in transitions:  # noqa: B007 (the last one is the answer)
                    pass
        if last is None or not last.is_final:
            raise WaitTimeoutError(task_id, deadline, None if last is None else last.task)
        if last.error is not None:
            raise last.error
        assert last.task is not None  # noqa: S101
        if raise_on_failure and last.task.status is TaskStatus.FAILED:
            raise TaskFailedError(last.task)
        return last.task

    async def status(self) -> FleetStatus:
        """The namespace's workers and counts now."""
        heartbeats = await self.redis.hgetall(self.keys.workers)
        watched = await self.redis.hlen(self.keys.ids)
        owned = 0
        if await self.redis.exists([self.keys.queue]):
            groups = await self.redis.xinfo_groups(self.keys.queue)
            owned = sum(cast("int", g["pending"]) for g in groups if g["name"] == GROUP)
        workers = {name: json.loads(beat) for name, beat in heartbeats.items()}
        rate, limit = await self.redis.hmget(self.keys.rate, ["rate", "limit"])
        return FleetStatus(
            workers=workers,
            watched=watched,
            owned=owned,
            rate=None if rate is None else float(rate),
            rate_limit=None if limit is None else float(limit),
        )

    async def serve(
        self,
        client: AsyncVSRClient,
        *,
        concurrency: int | None = None,
        name: str | None = None,
        interval: float | None = None,
        rate_limit: float | None = None,
    ) -> None:
        """Work for the fleet until cancelled: take tasks, poll them, publish what they do.

        See `vsr_async.fleet.Worker`, which this runs.
        """
        from ._worker import Worker  # noqa: PLC0415 (the worker imports this module)

        worker = Worker(
            self,
            client,
            concurrency=concurrency,
            name=name,
            interval=interval,
            rate_limit=rate_limit,
        )
        await worker.run()


class _Events:
    """The events stream, read once for all the followers of one `RedisFleet`.

    A web app's open ``follow()``s and ``wait()``s hold one blocking read of Redis between
    them, not one each: the first follower out of transitions reads for all, the others wait
    (each woken only when one of its tasks moves, or to read next), and each event goes to the
    followers of its task. Events carry their ``seq``: one missing between two events read
    means the capped stream trimmed it unread, and the followers that needed it reread the
    state hash; one that goes back means Redis lost its data, and every follower rereads it.
    """

    def __init__(self, fleet: RedisFleet) -> None:
        self.fleet = fleet
        self._subscriptions: set[_Subscription] = set()
        self._by_task: dict[str, list[_Subscription]] = {}
        self._position: _Mark | None = None  # the last event read (None: no follower)
        self._reading = False
        self._waiting: dict[_Subscription, anyio.Event] = {}  # each set to wake it
        #: The ``seq`` of the last event read: a stream that now ends below it lost its data.
        self.last_seq = 0
        self._outage = Outage("following")

    async def join(self, subscription: _Subscription) -> None:
        """Deliver events to ``subscription`` from where it reads the state hash on."""
        self._subscriptions.add(subscription)
        for task_id in subscription.ids:
            self._by_task.setdefault(task_id, []).append(subscription)
        try:
            await subscription.read_states(first=True)
        except BaseException:
            self.leave(subscription)
            raise

    def leave(self, subscription: _Subscription) -> None:
        if subscription not in self._subscriptions:
            return
        self._subscriptions.remove(subscription)
        for task_id in subscription.ids:
            subscriptions = self._by_task.get(task_id, [])
            if subscription in subscriptions:
                subscriptions.remove(subscription)
            if not subscriptions:
                self._by_task.pop(task_id, None)
        if not self._subscriptions:
            self._position = None

    def start_at(self, mark: _Mark) -> None:
        """Read from ``mark`` on, for a subscription that starts there (if not from earlier)."""
        if self._position is None or mark.order < self._position.order:
            self._position = mark

    async def next(self, subscription: _Subscription) -> None:
        """Until more may be ready for ``subscription``: its resync if it is behind, else the
        next read of the stream, its own or another follower's."""
        try:
            if subscription.behind:
                await self._guarded(subscription.read_states)
            elif self._reading:
                self._waiting[subscription] = woken = anyio.Event()
                try:
                    await woken.wait()
                finally:
                    del self._waiting[subscription]
            else:
                self._reading = True
                try:
                    await self._guarded(self._read)
                finally:
                    self._reading = False
        finally:
            if not self._reading:  # (one woken to read may go back to its caller instead)
                self._hand_over()

    def _hand_over(self) -> None:
        """No one reads now: wake a waiting subscription with nothing new, to read next."""
        for woken in self._waiting.values():
            if not woken.is_set():
                woken.set()
                return

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except UNREACHABLE as exc:
            for subscription in self._subscriptions:
                subscription.behind = True  # (Redis may have lost events meanwhile)
            await self._outage.failed(exc)
        else:
            self._outage.recovered()

    async def _read(self) -> None:
        start = self._position
        if start is None:
            return
        redis, events = self.fleet.redis, self.fleet.keys.events
        answer = await redis.xread({events: start.entry}, count=1000, block=_BLOCK_MS)
        last = start
        for entry in (answer or {}).get(events, ()):
            mark = _Mark.of(entry)
            if mark.seq is not None and last.seq is not None and mark.seq != last.seq + 1:
                self._missed(last.seq, mark.seq)
            last = mark
            self.last_seq = self.last_seq if mark.seq is None else mark.seq
            task_id, data = str(entry.field_values["id"]), str(entry.field_values["data"])
            for subscription in self._by_task.get(task_id, ()):
                if mark.order > subscription.start.order:  # (else it started with it)
                    subscription.observe(task_id, data)
                    woken = self._waiting.get(subscription)
                    if woken is not None and subscription.ready:
                        woken.set()
        if self._position is start:  # (not moved back meanwhile, for a follower starting)
            self._position = last
        for subscription, woken in self._waiting.items():
            if subscription.behind:  # (to reread its tasks' states)
                woken.set()

    def _missed(self, before: int, after: int) -> None:
        """The events between ``seq`` ``before`` and ``after`` are gone: behind are the
        subscriptions that started before one of them (all if ``seq`` began again)."""
        for subscription in self._subscriptions:
            seq = subscription.start.seq
            if after <= before:
                subscription.behind = subscription.lost = True
            elif seq is None or seq < after - 1:
                subscription.behind = True


class _Subscription:
    """What one follower knows of its tasks: each one's last status and number, the
    transitions ready for it, and where in the events stream it stands."""

    def __init__(self, events: _Events, task_ids: Iterable[str]) -> None:
        self.fleet = events.fleet
        self.events = events
        self.seen: dict[str, Any] = dict.fromkeys(check_task_id(t) for t in task_ids)
        self.ids = tuple(self.seen)
        self.ready: collections.deque[Transition] = collections.deque()
        #: Where the events stream ended when the state hash was last read: the events
        #: needed are the ones after.
        self.start = _Mark.of(None)
        self.behind = False  # events needed are gone: read the state hash again
        self.lost = False  # and Redis lost its data: the numbers begin again
        self.numbers: dict[str, int] = {}  # each task's last transition seen, by number
        self.gone: set[str] = set()  # tasks found no longer in the fleet (warned once)

    async def read_states(self, *, first: bool = False) -> None:
        """Each task's last transition, from the state hash: read after noting where the
        events stream ends, so that no event is missed between the two (one seen twice is
        dropped by its number)."""
        redis, keys = self.fleet.redis, self.fleet.keys
        last = await redis.xrevrange(keys.events, count=1)
        self.start = _Mark.of(last[0] if last else None)
        self.behind = False  # (until an event after the mark goes missing)
        self.events.start_at(self.start)
        if (self.start.seq or 0) < self.events.last_seq:  # (the count went back)
            self.lost = True
        ids = list(self.seen)
        states = await self._states(ids)
        if self.lost:  # (the states read come after the loss: numbered from 1 again)
            self.numbers.clear()
            self.lost = False
        unknown = [task_id for task_id, data in zip(ids, states, strict=True) if data is None]
        if unknown and first:
            shown = ", ".join(map(repr, unknown[:3])) + (", ..." if len(unknown) > 3 else "")
            raise ValueError(
                f"not in fleet {self.fleet.namespace!r} (never submitted, or ended and"
                f" forgotten): {shown}; submit them first"
            )
        if unknown:
            self._warn_gone(unknown)
        for task_id, data in zip(ids, states, strict=True):
            if data:
                self.observe(task_id, data)

    def _warn_gone(self, unknown: list[str]) -> None:
        """Tasks that the fleet no longer knows: Redis lost its data."""
        if new := set(unknown) - self.gone:
            self.gone |= new
            logger.warning(
                "%d followed tasks are no longer in fleet %r (did Redis lose its data?);"
                " waiting for them to be submitted again",
                len(new),
                self.fleet.namespace,
            )

    async def _states(self, ids: list[str]) -> list[str | None]:
        """Each task's last transition, "" if not seen yet, ``None`` if not in the fleet."""
        keys = self.fleet.keys
        script = self.fleet.redis.register_script(STATES)
        states: list[str | None] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            states += cast(
                "list[str | None]", await script(keys=[keys.state, keys.ids], args=chunk)
            )
        return states

    def observe(self, task_id: str, stored: str) -> None:
        """A task's transition, numbered: one not newer than the last seen is dropped."""
        if task_id not in self.seen:
            return
        number, _, data = stored.partition(" ")
        if not number.isdigit():  # (unnumbered: as the first fleets stored it)
            number, data = "0", stored
        if 0 < int(number) <= self.numbers.get(task_id, 0):
            return  # seen already (in the state, read after this event was published)
        self.numbers[task_id] = int(number)
        previous = self.seen[task_id]
        transition = _codec.loads(task_id, data, previous)
        task = transition.task
        if transition.is_final:
            del self.seen[task_id]
        elif task is None or (
            previous is not None and task.status.casefold() == previous.casefold()
        ):
            return  # no change (an unknown status is kept verbatim, "Paused" is "PAUSED")
        else:
            self.seen[task_id] = task.status
        self.ready.append(transition)


class Follower:
    """Follows tasks through a fleet; made by `RedisFleet.follow`."""

    def __init__(self, events: _Events, task_ids: Iterable[str]) -> None:
        if isinstance(task_ids, str):
            raise TypeError("task_ids must be an iterable of IDs, not one string")
        self._events = events
        self._subscription = _Subscription(events, task_ids)
        self._started = False

    async def __aenter__(self) -> Follower:
        if self._started:
            raise RuntimeError("a Follower can be entered only once")
        self._started = True
        await self._events.join(self._subscription)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._events.leave(self._subscription)
        self._subscription.seen.clear()

    def __aiter__(self) -> Follower:
        return self

    @property
    def stats(self) -> WatchStats:
        """``watched``: the tasks this follower waits for; the rest is 0: it polls nothing
        (the workers' figures are in `RedisFleet.status`)."""
        watched = len(self._subscription.seen)
        return WatchStats(
            watched=watched, in_flight=0, polls=0, retries=0, rate_limited=0, rate=0.0
        )

    async def __anext__(self) -> Transition:
        if not self._started:
            raise RuntimeError("use the Follower in `async with fleet.follow(...)` first")
        subscription = self._subscription
        while not subscription.ready:
            if not subscription.seen:
                raise StopAsyncIteration
            await self._events.next(subscription)
        return subscription.ready.popleft()
