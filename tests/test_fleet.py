"""The fleet on a real redis-server: submitting, workers sharing tasks out, followers.

Workers poll the emulator over a real loopback socket; every decision waits on an event (a
transition read, a count in Redis), never on how many polls fit in a second.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
from typing import TYPE_CHECKING

import anyio
import pytest
from _helpers import KEY, request_driven, serve
from _redis import RedisServer, redis_server

coredis = pytest.importorskip("coredis")

from vsr_async import TaskFailedError, TaskStatus, Transition  # noqa: E402
from vsr_async.fleet import RedisFleet  # noqa: E402
from vsr_async.testing import Emulator, Faults, Timeline  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

_names = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test: one server serves them all."""
    return f"test{next(_names)}"


def fleet_of(redis: RedisServer, namespace: str, **options: object) -> RedisFleet:
    return RedisFleet(redis.url, namespace, api_key=KEY, **options)  # type: ignore[arg-type]


async def test_submitting_twice_adds_each_id_once(redis: RedisServer, namespace: str) -> None:
    """Two submitters of overlapping IDs, at once: each ID is queued once."""
    async with fleet_of(redis, namespace) as one, fleet_of(redis, namespace) as two:
        added: list[int] = []

        async def submit(fleet: RedisFleet, ids: list[str]) -> None:
            added.append(await fleet.submit(ids))

        async with anyio.create_task_group() as group:
            group.start_soon(submit, one, [f"t{i}" for i in range(600)])
            group.start_soon(submit, two, [f"t{i}" for i in range(300, 900)])
        assert sum(added) == 900
        assert await one.submit(["t0", "t899", "t900"]) == 1
        assert await one.redis.xlen(one.keys.queue) == 901
        assert (await one.status()).watched == 901


async def test_a_namespace_refuses_another_api_key(redis: RedisServer, namespace: str) -> None:
    async with fleet_of(redis, namespace) as fleet:
        await fleet.redis.set(fleet.keys.fingerprint, "someone else's")
        with pytest.raises(PermissionError, match="another API key"):
            await fleet.submit(["t1"])


async def test_a_worker_polls_what_was_submitted_and_followers_see_it(
    redis: RedisServer, namespace: str
) -> None:
    """One worker, 20 tasks (some failing): a follower sees each task's first sighting, its
    changes and its end once each, in order; `wait` returns a task that ended before it."""
    emulator = request_driven()
    done = [emulator.add_task(Timeline.completed(queued=20, processing=40)) for _ in range(15)]
    failed = [emulator.add_task(Timeline.failed(queued=20, processing=40)) for _ in range(5)]
    ids = done + failed
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        assert await fleet.submit(ids, interval=0.01) == 20
        group.start_soon(fleet.serve, client)
        seen: list[Transition] = []
        with anyio.fail_after(60):
            async with fleet.follow(ids) as transitions:
                seen = [t async for t in transitions]
        assert await fleet.wait(done[0]) == next(
            t.task for t in reversed(seen) if t.task_id == done[0]
        )
        with pytest.raises(TaskFailedError):
            await fleet.wait(failed[0])
        group.cancel_scope.cancel()
    for task_id in ids:
        mine = [t for t in seen if t.task_id == task_id]
        assert mine[0].previous is None
        assert [t.previous for t in mine[1:]] == [t.status for t in mine[:-1]]
        assert mine[-1].is_final
        end = TaskStatus.COMPLETED if task_id in done else TaskStatus.FAILED
        assert mine[-1].status is end
        assert sum(t.is_final for t in mine) == 1


async def until(condition: Callable[[], object], seconds: float = 60.0) -> None:
    """Wait for ``condition()`` (awaited if it returns an awaitable) to be true, failing after
    a generous deadline."""
    with anyio.fail_after(seconds):
        while True:
            met = condition()
            if inspect.isawaitable(met):
                met = await met
            if met:
                return
            await anyio.sleep(0.01)


async def test_three_workers_end_each_task_exactly_once(redis: RedisServer, namespace: str) -> None:
    """300 tasks through three workers of one client each: every task's end is published
    once, and the workers shared them out (each took some)."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=50, processing=100)) for _ in range(300)]
    async with (
        serve(emulator) as one,
        serve(emulator) as two,
        serve(emulator) as three,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.01)
        for name, client in (("w1", one), ("w2", two), ("w3", three)):
            group.start_soon(lambda c=client, n=name: fleet.serve(c, name=n, concurrency=120))
        with anyio.fail_after(120):
            async with fleet.follow(ids) as transitions:
                ends = [t async for t in transitions if t.is_final]
        events = await fleet.redis.xrange(fleet.keys.events)
        group.cancel_scope.cancel()
    assert sorted(t.task_id for t in ends) == sorted(ids)
    finals = [e for e in events if '"completed"' in e.field_values["data"]]
    assert sorted(e.field_values["id"] for e in finals) == sorted(ids)  # once each
    assert all(client.stats.polls for client in (one, two, three))


async def test_a_stopped_worker_hands_its_tasks_back_at_once(
    redis: RedisServer, namespace: str
) -> None:
    """A worker cancelled (SIGTERM in the CLI) hands its tasks back to the queue: another
    takes them at once, long before the lease (an hour here) could run out."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline(((0.0, "queued"),))) for _ in range(10)]
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace, lease=3600) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.05)
        first = anyio.CancelScope()

        async def serve_until_cancelled() -> None:
            with first:
                await fleet.serve(client, name="first")

        group.start_soon(serve_until_cancelled)
        await until(lambda: _owned_by(fleet, "first", 10))
        first.cancel()
        await until(lambda: _owned_by(fleet, "first", 0))
        group.start_soon(lambda: fleet.serve(client, name="second"))
        await until(lambda: _owned_by(fleet, "second", 10))
        assert "first" not in (await fleet.status()).workers
        group.cancel_scope.cancel()


async def _owned_by(fleet: RedisFleet, worker: str, count: int) -> bool:
    try:
        pending = await fleet.redis.xpending(
            fleet.keys.queue, "workers", "-", "+", 1000, consumer=worker
        )
    except coredis.exceptions.StreamConsumerGroupError:  # no worker has come yet
        return False
    return len(pending) == count  # type: ignore[arg-type]


async def test_a_dead_workers_tasks_are_taken_over_after_its_lease(
    redis: RedisServer, namespace: str
) -> None:
    """Tasks owned by a worker that died (taken, never renewed) go to a live worker once their
    lease has run out, and end."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=5, processing=5)) for _ in range(5)]
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace, lease=0.5) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.01)
        with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
            await fleet.redis.xgroup_create(fleet.keys.queue, "workers", "0")
        taken = await fleet.redis.xreadgroup("workers", "dead", {fleet.keys.queue: ">"}, count=10)
        assert taken is not None
        group.start_soon(lambda: fleet.serve(client, name="alive"))
        with anyio.fail_after(60):
            async with fleet.follow(ids) as transitions:
                ends = [t.task_id async for t in transitions if t.is_final]
        group.cancel_scope.cancel()
    assert sorted(ends) == sorted(ids)


async def test_a_worker_that_lost_its_lease_publishes_nothing_more(
    redis: RedisServer, namespace: str
) -> None:
    """Fencing: a worker paused past its lease whose tasks another took over publishes
    nothing for them (the publish script checks ownership), and stops polling them."""
    emulator = request_driven()
    task_id = emulator.add_task(Timeline(((0.0, "queued"), (30.0, "processing"))))
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit([task_id], interval=0.01)
        group.start_soon(lambda: fleet.serve(client, name="stale"))
        await until(lambda: _owned_by(fleet, "stale", 1))
        (entry,) = await fleet.redis.xpending(fleet.keys.queue, "workers", "-", "+", 10)  # type: ignore[misc]
        # Another worker takes it over, as XAUTOCLAIM would once the lease ran out.
        await fleet.redis.xclaim(fleet.keys.queue, "workers", "other", 0, [entry.identifier])
        before = await fleet.redis.xlen(fleet.keys.events)
        # It polls on, sees "processing" and publishes it: the script finds the task is not
        # its own any more, publishes nothing, and the worker stops polling it.
        await until(lambda: client.stats.watched == 0)
        events = await fleet.redis.xrange(fleet.keys.events)
        group.cancel_scope.cancel()
    published = [e for e in events[before:] if e.field_values["id"] == task_id]
    assert published == []


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own with the append-only file on: it keeps its data over a restart."""
    yield from redis_server(tmp_path, appendonly=True)


# coredis 6.9 leaves the memory streams of a connection attempt that failed unclosed.
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_a_redis_restart_loses_nothing(
    durable_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarts while a worker polls and a follower follows: both warn, reconnect and
    go on; every task ends, and the follower sees each end once."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=100, processing=200)) for _ in range(10)]
    async with (
        serve(emulator) as client,
        fleet_of(durable_redis, namespace) as fleet,
        fleet_of(durable_redis, namespace) as follower,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.02)
        group.start_soon(fleet.serve, client)
        ended: list[str] = []

        async def follow() -> None:
            async with follower.follow(ids) as transitions:
                ended.extend([t.task_id async for t in transitions if t.is_final])

        group.start_soon(follow)
        await until(lambda: len(emulator.requests) >= 50)  # all seen, none ended
        assert not ended
        await anyio.to_thread.run_sync(durable_redis.stop)
        # Redis is away while the tasks move on (processing from the 100th request): the
        # worker keeps polling, and holds what it cannot publish.
        await until(lambda: len(emulator.requests) >= 150)
        await anyio.to_thread.run_sync(durable_redis.start)
        await until(lambda: len(ended) == len(ids), seconds=120)
        group.cancel_scope.cancel()
    assert sorted(ended) == sorted(ids)
    assert "Redis unreachable" in caplog.text
    assert "Redis reachable again" in caplog.text
    gc.collect()  # (coredis's unclosed streams, in cycles: while the warning is ignored)


FOREVER = Timeline(((0.0, "processing"),))


async def test_three_workers_hold_one_rate_limit_together(
    redis: RedisServer, namespace: str
) -> None:
    """`rate_limit=20` for the namespace: three workers that each want far more send about
    20 requests a second together, not 60 (each gets its share by demand)."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(90)]
    async with (
        serve(emulator) as one,
        serve(emulator) as two,
        serve(emulator) as three,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.05)
        for index, client in enumerate((one, two, three)):
            group.start_soon(
                lambda c=client, i=index: fleet.serve(
                    c, name=f"w{i}", concurrency=30, rate_limit=20
                )
            )
        await until(lambda: all(c.stats.polls >= 10 for c in (one, two, three)))
        start = len(emulator.requests)
        await until(lambda: len(emulator.requests) >= start + 100)
        window = emulator.requests[start:]
        group.cancel_scope.cancel()
    seconds = window[-1].time - window[0].time
    # 100 requests at 20/s take 5 s; the bucket's bursts and a share's lag allow a little more.
    assert len(window) / seconds <= 20 * 1.25, f"{len(window)} requests in {seconds:.2f} s"


async def test_a_429_met_by_one_worker_slows_every_worker(
    redis: RedisServer, namespace: str
) -> None:
    """One worker's API answers 429s: the namespace's rate is cut, and so is the share of
    the other worker, whose API never refused anything."""
    refusing = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=None))
    fine = Emulator()
    ids = [fine.add_task(FOREVER) for _ in range(20)]
    for task_id in ids:
        refusing.add_task(FOREVER, task_id=task_id)
    async with (
        serve(refusing) as slowed,
        serve(fine) as other,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.05)
        group.start_soon(lambda: fleet.serve(slowed, name="a", concurrency=10, rate_limit=100))
        group.start_soon(lambda: fleet.serve(other, name="b", concurrency=10, rate_limit=100))
        await until(lambda: slowed.stats.rate_limited > 0)
        await until(lambda: _rate(fleet), seconds=60)  # cut by half, at least
        now = await fleet.status()
        assert now.rate_limit == 100
        assert now.rate is not None
        rate = now.rate
        await until(lambda: other.rate_limit is not None and other.rate_limit <= rate * 1.01)
        group.cancel_scope.cancel()
    assert other.stats.rate_limited == 0


async def _rate(fleet: RedisFleet) -> bool:
    rate = await fleet.redis.hget(fleet.keys.rate, "rate")
    return rate is not None and float(rate) <= 50


async def test_a_follower_drops_events_older_than_the_state_it_read(
    redis: RedisServer, namespace: str
) -> None:
    """A follower that starts reads each task's state, then the events after the stream's
    end as it noted it: an event published before the state it read (numbered lower) comes
    after it, and is dropped, not taken for a change back."""
    emulator = request_driven()
    task_id = emulator.add_task(Timeline(((0.0, "queued"), (5.0, "processing"))))
    async with serve(emulator) as client, fleet_of(redis, namespace) as fleet:
        await fleet.submit([task_id], interval=0.01)
        async with anyio.create_task_group() as group:  # a worker, until it is stopped
            group.start_soon(fleet.serve, client)
            await until(lambda: _state_is(fleet, task_id, "2 "))  # processing, the 2nd
            group.cancel_scope.cancel()
        state = str(await fleet.redis.hget(fleet.keys.state, task_id))
        older = "1 " + state.partition(" ")[2].replace('"processing"', '"queued"')
        newer = "3 " + state.partition(" ")[2].replace('"processing"', '"completed"')
        async with fleet.follow([task_id]) as transitions:
            first = await transitions.__anext__()
            for data in (older, newer):
                await fleet.redis.xadd(fleet.keys.events, {"id": task_id, "data": data})
            rest = [t async for t in transitions]
    assert (first.previous, str(first.status)) == (None, "processing")
    assert [(str(t.previous), str(t.status)) for t in rest] == [("processing", "completed")]


async def _state_is(fleet: RedisFleet, task_id: str, prefix: str) -> bool:
    state = await fleet.redis.hget(fleet.keys.state, task_id)
    return state is not None and str(state).startswith(prefix)


async def test_a_follower_behind_the_capped_stream_still_sees_every_end(
    redis: RedisServer, namespace: str
) -> None:
    """The events stream is capped: a follower that stops reading while hundreds of events
    are trimmed unread notices (a ``seq`` missing between two events it reads), rereads the
    state hash, and still sees every task's end once."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=200, processing=200)) for _ in range(150)]
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace, events=10) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.01)
        async with fleet.follow(ids) as transitions:
            group.start_soon(fleet.serve, client)
            first = await transitions.__anext__()  # then nothing read for a while
            ended = lambda: fleet.redis.zcard(fleet.keys.ended)  # noqa: E731
            await until(lambda: _equals(ended(), len(ids)))
            assert await fleet.redis.xlen(fleet.keys.events) < 2 * len(ids)  # trimmed: many lost
            rest = [t async for t in transitions]
        group.cancel_scope.cancel()
    finals = [t.task_id for t in [first, *rest] if t.is_final]
    assert sorted(finals) == sorted(ids)


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def _server_info(fleet: RedisFleet, field: str) -> int:
    """A counter from ``INFO`` (``blocked_clients``, ``cmdstat_xread``...)."""
    info = await fleet.redis.info("all")
    value = info.get(field, 0)
    return int(value["calls"]) if isinstance(value, dict) else int(value)  # type: ignore[arg-type]


async def test_followers_of_one_fleet_share_one_read_of_redis(
    redis: RedisServer, namespace: str
) -> None:
    """100 followers in one process (a web app's open waits) hold one blocking read of the
    events stream between them, not one each: on a client of 4 connections they all follow,
    and each sees its own task end."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=0, processing=0)) for _ in range(100)]
    small = coredis.Redis.from_url(redis.url, decode_responses=True, max_connections=4)
    async with (
        serve(emulator) as client,
        small,
        fleet_of(redis, namespace) as fleet,
        RedisFleet(small, namespace, api_key=KEY) as shared,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids)
        following, ends = [0], []

        async def follow(task_id: str) -> None:
            async with shared.follow([task_id]) as transitions:
                following[0] += 1
                ends.extend([t.task_id async for t in transitions if t.is_final])

        for task_id in ids:
            group.start_soon(follow, task_id)
        await until(lambda: following[0] == len(ids))
        await until(lambda: _equals(_server_info(fleet, "blocked_clients"), 1))
        reads = await _server_info(fleet, "cmdstat_xread")
        await anyio.sleep(2.5)  # (time for every follower to read, if each read for itself)
        assert await _server_info(fleet, "blocked_clients") <= 1
        assert await _server_info(fleet, "cmdstat_xread") - reads <= 5  # (each blocks 1 s)
        group.start_soon(fleet.serve, client)
        await until(lambda: len(ends) == len(ids))
        group.cancel_scope.cancel()
    assert sorted(ends) == sorted(ids)


async def test_followers_that_leave_while_others_wait_stall_none_of_them(
    redis: RedisServer, namespace: str
) -> None:
    """Of 40 followers waiting in one process, all but the last 5 are cancelled (the one
    reading for all, and those next in line to read, among them): the 5 still see their
    tasks end."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=0, processing=0)) for _ in range(40)]
    async with (
        serve(emulator) as client,
        fleet_of(redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids)
        scopes, ends = [], []

        async def follow(task_id: str, scope: anyio.CancelScope) -> None:
            with scope:
                async with fleet.follow([task_id]) as transitions:
                    ends.extend([t.task_id async for t in transitions if t.is_final])

        for task_id in ids:
            scopes.append(scope := anyio.CancelScope())
            group.start_soon(follow, task_id, scope)
        await until(lambda: _equals(_server_info(fleet, "blocked_clients"), 1))
        for scope in scopes[:-5]:
            scope.cancel()
        group.start_soon(fleet.serve, client)
        await until(lambda: len(ends) == 5)
        group.cancel_scope.cancel()
    assert sorted(ends) == sorted(ids[-5:])


async def test_a_follower_that_misses_nothing_reads_the_state_once(
    redis: RedisServer, namespace: str
) -> None:
    """A follower that starts on a new namespace (no events yet) and keeps up reads the
    state hash once, at its start: never again, as if it had fallen behind."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=20, processing=20)) for _ in range(20)]
    async with serve(emulator) as client, fleet_of(redis, namespace) as fleet:
        await fleet.submit(ids, interval=0.01)
        await fleet.redis.config_resetstat()
        async with fleet.follow(ids) as transitions, anyio.create_task_group() as group:
            group.start_soon(fleet.serve, client)
            seen = [t async for t in transitions]
            group.cancel_scope.cancel()
        reads = await _server_info(fleet, "cmdstat_xrevrange")  # (one as each read starts)
        published = await fleet.redis.xlen(fleet.keys.events)
    assert sum(t.is_final for t in seen) == len(ids)
    assert len(seen) == published  # none missed
    assert reads == 1


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own without persistence: a restart loses every key."""
    yield from redis_server(tmp_path)


@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_followers_go_on_after_redis_loses_its_data(
    volatile_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarts empty (no persistence) while a worker polls and a follower follows:
    once the tasks are submitted again (safe to rerun), the follower sees each end once,
    though their transitions are numbered from 1 again."""
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=100, processing=200)) for _ in range(10)]
    async with (
        serve(emulator) as client,
        fleet_of(volatile_redis, namespace, lease=3) as fleet,
        fleet_of(volatile_redis, namespace) as follower,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.02)
        group.start_soon(fleet.serve, client)
        seen: list[Transition] = []

        async def follow() -> None:
            async with follower.follow(ids) as transitions:
                async for transition in transitions:
                    seen.append(transition)  # noqa: PERF401 (as they come)

        group.start_soon(follow)
        await until(lambda: len(emulator.requests) >= 150)  # all processing, none ended
        assert not any(t.is_final for t in seen)
        await anyio.to_thread.run_sync(volatile_redis.restart)
        assert await fleet.submit(ids, interval=0.02) == len(ids)
        await until(lambda: sum(t.is_final for t in seen) == len(ids), seconds=120)
        group.cancel_scope.cancel()
    assert sorted(t.task_id for t in seen if t.is_final) == sorted(ids)
    for task_id in ids:
        statuses = [str(t.status) for t in seen if t.task_id == task_id]
        assert statuses[-1] == "completed"
        assert len(statuses) == len(set(statuses))  # (processing: not seen again)
    assert "no consumer group" in caplog.text  # (the worker's word for it)
    gc.collect()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server that speaks TLS only, with a certificate from a CA of its own."""
    yield from redis_server(tmp_path_factory.mktemp("tls"), tls=True)


async def test_a_fleet_works_over_tls(tls_redis: RedisServer, namespace: str) -> None:
    """``rediss://`` with the server's CA named in the URL (``?ssl_ca_certs=``): submitting,
    a worker and a follower all go through TLS."""
    assert tls_redis.url.startswith("rediss://")
    emulator = request_driven()
    ids = [emulator.add_task(Timeline.completed(queued=5, processing=5)) for _ in range(5)]
    async with (
        serve(emulator) as client,
        fleet_of(tls_redis, namespace) as fleet,
        anyio.create_task_group() as group,
    ):
        await fleet.submit(ids, interval=0.01)
        group.start_soon(fleet.serve, client)
        async with fleet.follow(ids) as transitions:
            ended = [t.task_id async for t in transitions if t.is_final]
        group.cancel_scope.cancel()
    assert sorted(ended) == sorted(ids)


async def test_a_follower_that_stays_connected_goes_on_after_its_namespace_is_emptied(
    redis: RedisServer, namespace: str
) -> None:
    """The namespace's keys vanish under a connected follower (a failover to an empty
    replica, without a broken connection). Resubmitted, the task is numbered from 1 again by
    a new worker, and ends at the number the follower saw last, all before the follower
    reads again: it still sees the end, once."""
    emulator = request_driven()
    task_id = emulator.add_task(Timeline.completed(queued=5, processing=100))
    async with serve(emulator) as client, fleet_of(redis, namespace) as fleet:
        await fleet.submit([task_id], interval=0.01)
        async with fleet.follow([task_id]) as transitions:
            async with anyio.create_task_group() as group:  # a worker, until it is stopped
                group.start_soon(fleet.serve, client)
                seen = [await transitions.__anext__(), await transitions.__anext__()]
                group.cancel_scope.cancel()
            keys = await fleet.redis.keys(f"{{{namespace}}}:*")
            await fleet.redis.delete(list(keys))
            assert await fleet.submit([task_id], interval=0.01) == 1
            async with anyio.create_task_group() as group:  # another, until the task ends
                group.start_soon(fleet.serve, client)
                await until(lambda: _state_is(fleet, task_id, "2 "))  # (processing, completed)
                group.cancel_scope.cancel()
            with anyio.fail_after(60):
                seen += [t async for t in transitions]
    assert [str(t.status) for t in seen] == ["queued", "processing", "completed"]
