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
from ._faults import UNREACHABLE, Outage
from ._keys import GROUP, STATES, SUBMIT, Keys

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from vsr_async import AsyncVSRClient

#: Default lease: a worker that stops renewing loses its tasks after this many seconds.
DEFAULT_LEASE = 30.0
#: Default cap of the events stream (entries, approximately: ``MAXLEN ~``).
DEFAULT_EVENTS = 100_000
#: Default seconds an ended task's last transition stays readable (and its ID not resubmitted).
DEFAULT_KEEP = 24 * 3600.0
#: Milliseconds a follower's read blocks before it looks again.
_BLOCK_MS = 1000


def _order(stream_id: object) -> tuple[int, int]:
    """A stream entry ID (``"1700000000000-3"``) as a tuple that sorts as Redis does."""
    ms, _, seq = str(stream_id).partition("-")
    return int(ms), int(seq or 0)


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
        return Follower(self, task_ids)

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


class Follower:
    """Follows tasks through a fleet; made by `RedisFleet.follow`."""

    def __init__(self, fleet: RedisFleet, task_ids: Iterable[str]) -> None:
        if isinstance(task_ids, str):
            raise TypeError("task_ids must be an iterable of IDs, not one string")
        self._fleet = fleet
        self._seen: dict[str, Any] = dict.fromkeys(check_task_id(t) for t in task_ids)
        self._ready: collections.deque[Transition] = collections.deque()
        self._position = "0-0"  # the last event read
        self._outage = Outage("following")
        self._behind = False  # events may have been missed: resync from the state hash
        self._numbers: dict[str, int] = {}  # each task's last transition seen, by number
        self._started = False

    async def __aenter__(self) -> Follower:
        if self._started:
            raise RuntimeError("a Follower can be entered only once")
        self._started = True
        await self._catch_up()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._seen.clear()

    def __aiter__(self) -> Follower:
        return self

    @property
    def stats(self) -> WatchStats:
        """``watched``: the tasks this follower waits for; the rest is 0: it polls nothing
        (the workers' figures are in `RedisFleet.status`)."""
        return WatchStats(
            watched=len(self._seen), in_flight=0, polls=0, retries=0, rate_limited=0, rate=0.0
        )

    async def __anext__(self) -> Transition:
        if not self._started:
            raise RuntimeError("use the Follower in `async with fleet.follow(...)` first")
        while not self._ready:
            if not self._seen:
                raise StopAsyncIteration
            await self._read()
        return self._ready.popleft()

    async def _catch_up(self) -> None:
        """Each task's last transition, from the state hash: read after noting where the
        events stream ends, so that no event is missed between the two (one seen twice is
        dropped as no change)."""
        redis, keys = self._fleet.redis, self._fleet.keys
        last = await redis.xrevrange(keys.events, count=1)
        if last:
            self._position = str(last[0].identifier)
        ids = list(self._seen)
        states = await self._states(ids)
        unknown = [task_id for task_id, data in zip(ids, states, strict=True) if data is None]
        if unknown:
            shown = ", ".join(map(repr, unknown[:3])) + (", ..." if len(unknown) > 3 else "")
            raise ValueError(
                f"not in fleet {self._fleet.namespace!r} (never submitted, or ended and"
                f" forgotten): {shown}; submit them first"
            )
        for task_id, data in zip(ids, states, strict=True):
            if data:
                self._observe(task_id, data)

    async def _states(self, ids: list[str]) -> list[str | None]:
        """Each task's last transition, "" if not seen yet, ``None`` if not in the fleet."""
        keys = self._fleet.keys
        script = self._fleet.redis.register_script(STATES)
        states: list[str | None] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            states += cast(
                "list[str | None]", await script(keys=[keys.state, keys.ids], args=chunk)
            )
        return states

    async def _read(self) -> None:
        redis, keys = self._fleet.redis, self._fleet.keys
        try:
            if self._behind:
                await self._resync()
            answer = await redis.xread({keys.events: self._position}, count=1000, block=_BLOCK_MS)
            entries = (answer or {}).get(keys.events, ())
            if entries:
                # The stream is capped: if its first entry is past the last one read here,
                # what came between was trimmed unread. The state hash knows where each is.
                first = await redis.xrange(keys.events, count=1)
                self._behind = bool(first) and _order(first[0].identifier) > _order(self._position)
        except UNREACHABLE as exc:
            self._behind = True  # (and what the stream lost meanwhile, if Redis lost it)
            await self._outage.failed(exc)
            return
        self._outage.recovered()
        if self._behind:
            return  # resynced at the next read, instead of applying events of unknown gaps
        for entry in entries:
            self._position = str(entry.identifier)
            fields = entry.field_values
            self._observe(str(fields["id"]), str(fields["data"]))

    async def _resync(self) -> None:
        """Go on from the end of the events stream, each task from its state: noted in that
        order, so that nothing published between the two is missed."""
        redis, keys = self._fleet.redis, self._fleet.keys
        last = await redis.xrevrange(keys.events, count=1)
        ids = list(self._seen)
        states = await self._states(ids)
        if last:
            self._position = str(last[0].identifier)
        for task_id, data in zip(ids, states, strict=True):
            if data:
                self._observe(task_id, data)
        self._behind = False

    def _observe(self, task_id: str, stored: str) -> None:
        if task_id not in self._seen:
            return
        number, _, data = stored.partition(" ")
        if not number.isdigit():  # (unnumbered: as the first fleets stored it)
            number, data = "0", stored
        if 0 < int(number) <= self._numbers.get(task_id, 0):
            return  # seen already (in the state, read after this event was published)
        self._numbers[task_id] = int(number)
        previous = self._seen[task_id]
        transition = _codec.loads(task_id, data, previous)
        task = transition.task
        if transition.is_final:
            del self._seen[task_id]
        elif task is None or (
            previous is not None and task.status.casefold() == previous.casefold()
        ):
            return  # no change (an unknown status is kept verbatim, "Paused" is "PAUSED")
        else:
            self._seen[task_id] = task.status
        self._ready.append(transition)
