"""A fleet's worker: the client's watch, fed from the namespace's queue, publishing to Redis.

It joins the consumer group, takes entries while it has room (first those whose owner let its
lease run out, then new ones), and adds their tasks to a watch of the client (one per
interval and timeout the submitters asked for): the same schedule and per-task rules as any
watch. Transitions go to Redis in batches, through a script that checks the worker still owns
each task (a worker paused past its lease publishes nothing); leases are renewed in batches
too. Cancelled (SIGTERM in the CLI), it publishes what it has and hands every task back at
once, for another worker to take without waiting for the lease to run out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import anyio
import coredis

from vsr_async._config import RATE_DECREASE, RATE_FLOOR, RATE_RECOVERY
from vsr_async._validate import check_count, check_rate, check_seconds

from . import _codec
from ._faults import UNREACHABLE, Outage
from ._keys import GROUP, HAND_BACK, PUBLISH, RATE, RENEW

if TYPE_CHECKING:
    from vsr_async import AsyncVSRClient, Transition, Watcher

    from ._fleet import RedisFleet

logger = logging.getLogger("vsr_async.fleet")

#: Seconds between two publishes of what the watches yielded (at most: a full batch goes at once).
_FLUSH_EVERY = 0.1
#: Transitions (or leases) per script call: a script blocks Redis while it runs.
_BATCH = 500
#: New tasks a worker takes at once: workers reading together take turns, and share them out.
_INTAKE = 100
#: Tasks whose lease ran out a worker claims at once (each call scans up to 10 times that).
_CLAIM_AT_ONCE = 1000
#: Seconds between two updates of a worker's share of the namespace's rate budget.
RATE_SYNC = 1.0
#: The least share a worker gets (requests/s): one with no demand yet still starts.
_LEAST_SHARE = 0.01


class Worker:
    """Takes tasks from a fleet's queue and polls them with ``client`` until cancelled.

    Args:
        fleet: The fleet (entered).
        client: The client that polls (entered: its scheduler is shared by the watches).
        concurrency: The most tasks it owns at once; ``None`` for no limit. Workers that read
            the queue together share it out (they take 100 at a time); one that starts later
            takes only what is new or handed back, so cap the others to leave it some.
        name: Its consumer name in the group (host and process ID by default).
        interval: Seconds between two polls of a task whose submitter did not say.
        rate_limit: Requests per second for every worker of the namespace together (the
            namespace's, given by each of its workers); ``None`` for no shared limit. Each
            worker's client gets its share, by demand, every `RATE_SYNC` seconds, and a 429
            met by any worker cuts the rate of all.
    """

    def __init__(
        self,
        fleet: RedisFleet,
        client: AsyncVSRClient,
        *,
        concurrency: int | None = None,
        name: str | None = None,
        interval: float | None = None,
        rate_limit: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.client = client
        self.concurrency = (
            math.inf if concurrency is None else check_count("concurrency", concurrency, minimum=1)
        )
        # Unique: ownership and fencing go by name (containers share hostnames and PIDs).
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.interval = 5.0 if interval is None else check_seconds("interval", interval)
        self._owned: dict[str, str] = {}  # task ID -> its queue entry
        self._watches: dict[tuple[float, float | None], Watcher] = {}
        self._outbox: list[Transition] = []
        self._room = anyio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._cursor = "0-0"  # where XAUTOCLAIM goes on
        self._next_pass = -math.inf  # when XAUTOCLAIM next looks for leases run out
        self.rate_limit = None if rate_limit is None else check_rate("rate_limit", rate_limit)
        self._rate_limited = 0  # the client's 429s, when last told to Redis

    async def run(self) -> None:
        await self._join()
        await self._claim_key()
        try:
            async with self._stack, anyio.create_task_group() as group:
                self._group = group
                if self.rate_limit is not None:
                    await self._share()  # before the first poll
                    group.start_soon(self._share_forever)
                group.start_soon(self._take)
                group.start_soon(self._flush)
                group.start_soon(self._renew)
        finally:
            # Cancelled (a signal, a stop): publish what the watches yielded and hand every
            # task back, while the Redis connection is open (cancel the serve call, not the
            # block holding the fleet). What fails here returns with the lease instead.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.fleet.lease / 2):
                try:
                    await self._publish()
                    await self._hand_back()
                except (coredis.exceptions.RedisError, *UNREACHABLE) as exc:
                    logger.warning(
                        "could not hand %d task(s) back (%s): they return to the queue when"
                        " their lease runs out",
                        len(self._owned),
                        exc,
                    )

    async def _claim_key(self) -> None:
        """Store the API key's fingerprint, or refuse a namespace that serves another key."""
        mine = self.fleet.fingerprint
        if not mine:
            raise ValueError(
                "a worker needs its API key's fingerprint: pass RedisFleet(api_key=...) or set"
                " VSR_API_KEY"
            )
        redis = self.fleet.redis
        await redis.set(self.fleet.keys.fingerprint, mine, condition=coredis.PureToken.NX)
        if await redis.get(self.fleet.keys.fingerprint) != mine:
            raise PermissionError(
                f"namespace {self.fleet.namespace!r} is served by workers with another API key"
            )

    # Taking tasks.

    async def _take(self) -> None:
        outage = Outage("taking tasks")
        joined = True  # (run() joined the group)
        while True:
            room = int(min(self.concurrency - len(self._owned), _CLAIM_AT_ONCE))
            if room <= 0:
                self._room = anyio.Event()
                await self._room.wait()
                continue
            try:
                if not joined:
                    await self._join()
                    joined = True
                await self._take_some(room)
            except UNREACHABLE as exc:
                await outage.failed(exc)
            except coredis.exceptions.StreamConsumerGroupError:
                # Redis came back without its data (no persistence): the queue is empty until
                # the IDs are submitted again; keep the group ready for them.
                logger.warning(
                    "the queue of fleet %r has no consumer group (did Redis lose its data?):"
                    " creating it again; submit the tasks again",
                    self.fleet.namespace,
                )
                joined = False
            else:
                outage.recovered()

    async def _join(self) -> None:
        with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
            await self.fleet.redis.xgroup_create(self.fleet.keys.queue, GROUP, "0", mkstream=True)

    async def _take_some(self, room: int) -> None:
        """Up to ``room`` tasks: those whose lease ran out (a pass over the group's pending
        entries every few seconds, each call scanning up to 10 x ``room`` of them), else new
        ones, 100 at a time (waiting up to a second for some)."""
        redis, keys = self.fleet.redis, self.fleet.keys
        entries: Any = ()
        if anyio.current_time() >= self._next_pass:
            lease_ms = int(self.fleet.lease * 1000)
            cursor, entries, _ = await redis.xautoclaim(
                keys.queue, GROUP, self.name, lease_ms, self._cursor, count=room
            )
            self._cursor = cursor
            if str(cursor) == "0-0":  # the pass is over: the next in a few seconds
                self._next_pass = anyio.current_time() + min(self.fleet.lease / 3, 5.0)
        if not entries and anyio.current_time() < self._next_pass:
            answer = await redis.xreadgroup(
                GROUP, self.name, {keys.queue: ">"}, count=min(room, _INTAKE), block=1000
            )
            entries = (answer or {}).get(keys.queue, ())
        if entries:
            await self._add([(e.identifier, e.field_values["id"]) for e in entries])

    async def _add(self, entries: list[tuple[str, str]]) -> None:
        redis, keys = self.fleet.redis, self.fleet.keys
        settings = await redis.hmget(keys.ids, [task_id for _, task_id in entries])
        gone = []
        for (entry, task_id), raw in zip(entries, settings, strict=True):
            if raw is None:  # ended since (or forgotten): the entry is stale
                gone.append(entry)
                continue
            if task_id in self._owned:
                self._owned[task_id] = entry  # (handed back and re-taken: the newer entry)
                continue
            self._owned[task_id] = entry
            fields: dict[str, Any] = json.loads(raw)
            watch = await self._watch(
                fields.get("interval") or self.interval, fields.get("timeout")
            )
            watch.add(task_id)
        if gone:
            await redis.xack(keys.queue, GROUP, gone)
            await redis.xdel(keys.queue, gone)

    async def _watch(self, interval: float, timeout: float | None) -> Watcher:  # noqa: ASYNC109
        key = (interval, timeout)
        if (watch := self._watches.get(key)) is None:
            watch = self.client.watch(interval=interval, timeout=timeout, keep_open=True)
            self._watches[key] = await self._stack.enter_async_context(watch)
            self._group.start_soon(self._drain, watch)
        return watch

    async def _drain(self, watch: Watcher) -> None:
        async for transition in watch:
            self._outbox.append(transition)

    # Publishing and renewing.

    async def _flush(self) -> None:
        outage = Outage("publishing transitions")
        while True:
            await anyio.sleep(_FLUSH_EVERY)
            try:
                await self._publish()
            except UNREACHABLE as exc:
                await outage.failed(exc)
            except coredis.exceptions.StreamConsumerGroupError:
                await self._join()  # Redis lost its data (`_take` may wait for room); kept
            else:
                outage.recovered()

    async def _publish(self) -> None:
        redis, keys = self.fleet.redis, self.fleet.keys
        script = redis.register_script(PUBLISH)
        while self._outbox:
            batch, self._outbox = self._outbox[:_BATCH], self._outbox[_BATCH:]
            args: list[Any] = [self.name, self.fleet.events, self.fleet.keep]
            for transition in batch:
                entry = self._owned.get(transition.task_id)
                if entry is None:
                    continue  # lost since
                final = "1" if transition.is_final else "0"
                args += [transition.task_id, entry, final, _codec.dumps(transition)]
            queue_keys = [keys.queue, keys.ids, keys.state, keys.ended, keys.events, keys.published]
            try:
                lost = cast("list[str]", await script(keys=queue_keys, args=args))
            except BaseException:
                self._outbox[:0] = batch  # kept for the next attempt
                raise
            self._forget(lost)
            for transition in batch:
                if transition.is_final and self._owned.pop(transition.task_id, None) is not None:
                    self._room.set()

    async def _renew(self) -> None:
        outage = Outage("renewing leases")
        while True:
            if not outage.failures:  # (after a failure: again on the backoff alone, before
                await anyio.sleep(self.fleet.lease / 3)  # the leases run out)
            try:
                await self._renew_all()
            except UNREACHABLE as exc:
                await outage.failed(exc)
            except coredis.exceptions.StreamConsumerGroupError:
                await self._join()  # Redis lost its data (`_take` may wait for room)
                await anyio.sleep(self.fleet.lease / 3)
            else:
                outage.recovered()

    async def _renew_all(self) -> None:
        redis, keys = self.fleet.redis, self.fleet.keys
        script = redis.register_script(RENEW)
        keys_ = [keys.queue, keys.workers]
        owned = list(self._owned.items())
        beat = json.dumps({"owned": len(owned), "at": time.time(), "pid": os.getpid()})
        for start in range(0, max(len(owned), 1), _BATCH):
            args: list[Any] = [self.name, beat]
            for task_id, entry in owned[start : start + _BATCH]:
                args += [task_id, entry]
            self._forget(cast("list[str]", await script(keys=keys_, args=args)))

    async def _share_forever(self) -> None:
        outage = Outage("sharing the rate budget")
        while True:
            await anyio.sleep(RATE_SYNC)
            try:
                await self._share()
            except UNREACHABLE as exc:
                await outage.failed(exc)  # (the share it has holds meanwhile)
            else:
                outage.recovered()

    async def _share(self) -> None:
        """Tell Redis this worker's demand and 429s; take its share of the namespace's rate."""
        assert self.rate_limit is not None  # noqa: S101
        redis, keys = self.fleet.redis, self.fleet.keys
        demand = sum(watch.watching / interval for (interval, _), watch in self._watches.items())
        rate_limited = self.client.stats.rate_limited
        args: list[Any] = [self.name, self.rate_limit, demand, rate_limited - self._rate_limited]
        args += [RATE_DECREASE, RATE_FLOOR, RATE_RECOVERY, 3 * RATE_SYNC]
        script = redis.register_script(RATE)
        share, _ = cast("list[str]", await script(keys=[keys.rate, keys.demand], args=args))
        self._rate_limited = rate_limited
        self.client.rate_limit = max(float(share), _LEAST_SHARE)

    def _forget(self, lost: list[str]) -> None:
        """Tasks another worker owns now: stop polling them here."""
        if not lost:
            return
        logger.warning(
            "lost %d task(s) to other workers (this one paused past its lease?)", len(lost)
        )
        for task_id in lost:
            if self._owned.pop(task_id, None) is not None:
                for watch in self._watches.values():
                    watch.discard(task_id)
        gone = set(lost)
        self._outbox = [t for t in self._outbox if t.task_id not in gone]
        self._room.set()

    async def _hand_back(self) -> None:
        redis, keys = self.fleet.redis, self.fleet.keys
        script = redis.register_script(HAND_BACK)
        keys_ = [keys.queue, keys.ids, keys.workers]
        while cast("int", await script(keys=keys_, args=[self.name, _BATCH])):
            pass  # (in batches: a script blocks Redis while it runs)
        self._owned.clear()
