"""One scheduler per client: every watch and wait of a client opened with ``async with``
subscribes to it, and the polls of one task coalesce.

Over a real loopback socket against the emulator. Gaps are measured between the client's own
sends: a busy machine can only stretch them, so a gap shorter than the interval allows is a
second poller, never a slow one.
"""

from __future__ import annotations

import itertools

import anyio
import pytest
from _helpers import KEY, record_sends, serve, still_polling

from vsr_async import AsyncVSRClient, ServerError, TaskStatus, Transition, WaitTimeoutError
from vsr_async._config import JITTER
from vsr_async._scheduler import _Record
from vsr_async.testing import Emulator, Timeline

pytestmark = pytest.mark.anyio

FOREVER = Timeline(((0.0, "queued"),))
#: Moved along by hand: queued, processing from 10, completed from 20.
STEPS = Timeline(((0.0, "queued"), (10.0, "processing"), (20.0, "completed")))


class Hand:
    """An emulator clock moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def until(condition: object, seconds: float = 30.0) -> None:
    """Wait for ``condition()`` (checked every few ms), failing after a generous deadline."""
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.005)


def shortest_gap(sent: list[float]) -> float:
    return min(b - a for a, b in itertools.pairwise(sent))


async def test_many_watches_of_one_task_poll_it_once_per_interval() -> None:
    """50 watches of one task on one open client: one poll per interval reaches the server,
    not 50 (no two sends closer than the interval's jitter allows), and each watch has its
    own first sighting."""
    emulator = Emulator()
    task_id = emulator.add_task(FOREVER)
    interval = 0.1
    async with serve(emulator) as client:
        sent = record_sends(client)
        firsts: list[Transition] = []

        async def one_watch() -> None:
            async with client.watch([task_id], interval=interval) as watcher:
                firsts.append(await watcher.__anext__())
                await anyio.sleep_forever()

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(one_watch)
            await until(lambda: len(sent) >= 8)
            group.cancel_scope.cancel()
    assert len(firsts) == 50
    assert all(t.previous is None and t.status is TaskStatus.QUEUED for t in firsts)
    assert shortest_gap(sent[:8]) >= interval * (1 - JITTER) * 0.99


async def test_concurrent_waits_share_the_polls_and_all_return() -> None:
    """30 concurrent waits on one task share its polls, and each returns the completed task."""
    hand = Hand()
    emulator = Emulator(clock=hand)
    task_id = emulator.add_task(STEPS)
    interval = 0.1
    async with serve(emulator) as client:
        sent = record_sends(client)
        results = []

        async def one_wait() -> None:
            results.append(await client.wait(task_id, interval=interval))

        async with anyio.create_task_group() as group:
            for _ in range(30):
                group.start_soon(one_wait)
            await until(lambda: len(sent) >= 4)
            hand.now = 20.0
    assert [t.status for t in results] == [TaskStatus.COMPLETED] * 30
    assert shortest_gap(sent) >= interval * (1 - JITTER) * 0.99
    assert still_polling(client) == []


async def test_a_subscriber_joining_mid_way_sees_its_own_first_sighting() -> None:
    """A watch started while the task is processing gets a first sighting (previous None) of
    ``processing``, then the same change as the first watch, each exactly once, in order."""
    hand = Hand()
    emulator = Emulator(clock=hand)
    task_id = emulator.add_task(STEPS)
    async with serve(emulator) as client, anyio.create_task_group() as group:
        seen: dict[str, list[Transition]] = {"early": [], "late": []}
        joined = anyio.Event()

        async def watch(name: str) -> None:
            async with client.watch([task_id], interval=0.02) as watcher:
                async for transition in watcher:
                    seen[name].append(transition)
                    if name == "late":
                        joined.set()

        group.start_soon(watch, "early")
        await until(lambda: len(seen["early"]) == 1)
        hand.now = 10.0
        await until(lambda: len(seen["early"]) == 2)
        group.start_soon(watch, "late")
        await joined.wait()
        hand.now = 20.0
    early = [(t.previous, t.status) for t in seen["early"]]
    late = [(t.previous, t.status) for t in seen["late"]]
    assert early == [
        (None, TaskStatus.QUEUED),
        (TaskStatus.QUEUED, TaskStatus.PROCESSING),
        (TaskStatus.PROCESSING, TaskStatus.COMPLETED),
    ]
    assert late == [(None, TaskStatus.PROCESSING), (TaskStatus.PROCESSING, TaskStatus.COMPLETED)]


async def test_one_subscriber_leaving_or_timing_out_leaves_the_others_alone() -> None:
    """Of three watches of one task, one is cancelled and one times out: the third goes on to
    the task's end, its polls undisturbed, and each got what it asked for."""
    hand = Hand()
    emulator = Emulator(clock=hand)
    task_id = emulator.add_task(STEPS)
    async with serve(emulator) as client:
        sent = record_sends(client)
        last: dict[str, Transition] = {}

        async def watch(name: str, give_up_after: float | None = None) -> None:
            async with client.watch([task_id], interval=0.02, timeout=give_up_after) as watcher:
                async for transition in watcher:
                    last[name] = transition

        async with anyio.create_task_group() as group:
            group.start_soon(watch, "stays")
            group.start_soon(watch, "times out", 0.2)
            async with anyio.create_task_group() as leaving:
                leaving.start_soon(watch, "cancelled")
                await until(lambda: len(last) == 3)
                leaving.cancel_scope.cancel()
            await until(lambda: last["times out"].is_final)
            polls = len(sent)
            await until(lambda: len(sent) >= polls + 3)  # the one left still polls
            hand.now = 20.0
    assert last["cancelled"].status is TaskStatus.QUEUED
    assert isinstance(last["times out"].error, WaitTimeoutError)
    assert last["stays"].status is TaskStatus.COMPLETED
    assert last["stays"].error is None


async def test_nothing_is_polled_after_the_last_subscriber_leaves() -> None:
    """Once every watch of a task has left, the client sends no more polls of it, and nothing
    of the scheduler is busy."""
    emulator = Emulator()
    task_id = emulator.add_task(FOREVER)
    async with serve(emulator) as client:
        sent = record_sends(client)
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(watch_until_cancelled, client, task_id)
            await until(lambda: len(sent) >= 3)
            group.cancel_scope.cancel()
        assert still_polling(client) == []
        after = len(sent)
        await anyio.sleep(0.2)  # several intervals: any poll left would show
        assert len(sent) == after


async def watch_until_cancelled(client: AsyncVSRClient, task_id: str) -> None:
    async with client.watch([task_id], interval=0.02) as watcher:
        async for _ in watcher:
            pass


async def test_client_stats_count_every_watch() -> None:
    """`client.stats` is the whole client's: tasks of every watch, polls of all of them."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(5)]
    async with serve(emulator) as client:
        async with (
            client.watch(ids[:3], interval=0.05) as first,
            client.watch(ids[2:], interval=0.05) as second,
        ):
            for watcher in (first, second):
                async for _ in watcher:
                    break
            assert client.stats.watched == 5
            assert first.stats.watched == 3
            assert second.stats.watched == 3
            await until(lambda: client.stats.polls >= 5)
        assert client.stats.watched == 0


async def test_a_watch_of_an_unopened_client_polls_for_itself() -> None:
    """A client used without ``async with`` still watches and waits: each watch brings a
    scheduler of its own, which stops with it."""
    emulator = Emulator()
    task_id = emulator.add_task(Timeline(((0.0, "completed"),)))
    async with serve(emulator) as opened:
        client = AsyncVSRClient(KEY, base_url=opened.base_url)
        try:
            task = await client.wait(task_id, interval=0.02)
            assert task.status is TaskStatus.COMPLETED
            assert client.stats.watched == 0  # (its shared scheduler never ran)
        finally:
            await client.aclose()


async def test_deadlines_of_watches_that_left_do_not_pile_up() -> None:
    """A web app's requests come and go with long timeouts: each one's deadline is an entry in
    the scheduler's heap until it is due, an hour later. Those of requests that left are swept
    out, so the heap stays the size of what is watched, not of every request this hour."""
    emulator = Emulator()
    task_id = emulator.add_task(FOREVER)
    async with serve(emulator) as client, client.watch([task_id], interval=0.01) as keeper:
        await keeper.__anext__()
        for _ in range(100):
            async with client.watch([task_id], interval=0.01, timeout=3600):
                polled = len(emulator.requests)
                # Two more polls: the first since it came has been answered, and its
                # deadline (an hour away) is in the heap.
                await until(lambda: len(emulator.requests) >= polled + 2)  # noqa: B023
        due = client._scheduler._due
        # Live: the task's entry alone (the keeper has no deadline); stale ones are swept
        # when there are more than 2 x (1 task + 1 subscription) + 64.
        assert len(due) <= 2 * (1 + 1) + 64 + 1


async def test_a_poll_failing_after_its_last_subscriber_left_schedules_nothing() -> None:
    """A poll can fail after its task's last subscriber left (on trio, a cancel that comes
    after the answer is delivered at the next checkpoint): the failure is dropped quietly,
    whatever the failures in a row before, instead of asking the schedules of no subscriber
    for an interval (ValueError, which ended every watch of the client)."""
    async with AsyncVSRClient(KEY, base_url="http://127.0.0.1:9/api") as client:
        scheduler = client._scheduler
        for failures in (0, 5):
            record = _Record("task_left", since=anyio.current_time(), failures=failures)
            scheduler._failed(record, ServerError("busy", status_code=503))
            assert record.failures == failures
        assert scheduler._due == []
        assert client.stats.retries == 0
