"""`AsyncVSRClient.watch`: many tasks at once, over a real loopback socket to the emulator."""

from __future__ import annotations

import gc
import itertools
import logging
import math
import statistics
import time
import types
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from _helpers import (
    DROP,
    HTTPX_LEAVES_ITS_ITERATORS,
    KEY,
    Answer,
    Proxy,
    by_task,
    dedupe,
    json_answer,
    record_sends,
    request_driven,
    serve,
    still_polling,
)

import vsr_async._rate
import vsr_async._retry
import vsr_async._scheduler
from vsr_async import (
    AsyncVSRClient,
    AuthenticationError,
    Hooks,
    Model,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    RetryDetails,
    TaskNotFoundError,
    TaskStatus,
    Transition,
    WaitTimeoutError,
    Watcher,
)
from vsr_async._config import (
    JITTER,
    MAX_FAILING_INTERVALS,
    MAX_MALFORMED,
    QUICK_RETRIES,
    QUICK_RETRY_BURST,
    QUICK_RETRY_SHARE,
    RETRY_AFTER_JITTER,
)
from vsr_async.testing import Emulator, Faults, Timeline

if TYPE_CHECKING:
    import random

pytestmark = pytest.mark.anyio

FOREVER = Timeline(((0.0, "queued"),))
STUCK = Timeline(((0.0, "queued"), (0.05, "processing")))
DONE = Timeline(((0.0, "completed"),))
#: In requests answered, for `request_driven` emulators: with a few tasks polled in turn, each
#: is seen queued and processing before it completes, however slow the machine.
QUICK = Timeline.completed(queued=12, processing=12)


def short_timeline(rng: random.Random) -> Timeline:
    """Queued, processing, then completed or failed; each step long enough to be seen."""
    queued, processing = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
    if rng.random() < 0.8:
        return Timeline.completed(queued=queued, processing=processing)
    return Timeline.failed(queued=queued, processing=processing)


async def collect(client: AsyncVSRClient, ids: list[str], **options: object) -> list[Transition]:
    """Watch ``ids`` to the end (of the watch, or of patience) and return what it yielded."""
    with anyio.fail_after(30):
        async with client.watch(ids, **options) as watcher:  # type: ignore[arg-type]
            return [transition async for transition in watcher]


def assert_well_formed(task_id: str, transitions: list[Transition]) -> None:
    """One task's transitions: first sighting, then changes only (or the error that gave the
    task up), each chained to the last, the final one last."""
    assert transitions[0].previous is None
    for before, after in itertools.pairwise(transitions):
        assert after.previous == before.status
        assert after.status != before.status or after.error is not None
    assert [t.is_final for t in transitions] == [False] * (len(transitions) - 1) + [True]
    assert all(t.task_id == task_id for t in transitions)
    assert all(t.task is None or t.task.id == task_id for t in transitions)


# 1. Each status change once, in order.


def counted_timeline(rng: random.Random) -> Timeline:
    """Queued, processing, then completed or failed, each for 100 to 250 requests answered:
    with 50 tasks polled in turn, each status is seen about two to five times."""
    queued, processing = rng.uniform(100, 250), rng.uniform(100, 250)
    if rng.random() < 0.8:
        return Timeline.completed(queued=queued, processing=processing)
    return Timeline.failed(queued=queued, processing=processing)


async def test_each_status_change_is_yielded_once_in_order() -> None:
    """Per task: the first sighting, every change and the end, once each and in order; exactly
    the changes in what the server answered."""
    emulator = request_driven(seed=11, timeline=counted_timeline)
    ids = [emulator.add_task() for _ in range(50)]
    proxy = Proxy(emulator)
    async with serve(proxy) as client:
        transitions = await collect(client, ids, interval=0.05)

    grouped = by_task(transitions)
    assert sorted(grouped) == sorted(ids)
    for task_id, mine in grouped.items():
        assert_well_formed(task_id, mine)
        assert [str(t.status) for t in mine] == dedupe(proxy.statuses(task_id))
        final = mine[-1]
        assert final.error is None
        assert final.task is not None
        assert final.task.is_terminal
        assert final.status == TaskStatus(emulator.status_of(task_id))
    # Each status lasts two rounds of polls or more: most tasks were seen in all three.
    assert sum(len(mine) == 3 for mine in grouped.values()) >= 40


async def test_same_status_in_another_case_is_not_a_change() -> None:
    """Known statuses in any case (a loose server) are one status: no repeated transitions."""
    emulator = request_driven(loose=True, timeline=Timeline.completed(queued=15, processing=15))
    ids = [emulator.add_task() for _ in range(5)]
    async with serve(emulator) as client:
        transitions = await collect(client, ids, interval=0.03)
    for task_id, mine in by_task(transitions).items():
        assert_well_formed(task_id, mine)
        assert [t.status for t in mine] == [
            TaskStatus.QUEUED,
            TaskStatus.PROCESSING,
            TaskStatus.COMPLETED,
        ]


# 2. When the watch ends; add(); keep_open.


async def test_add_extends_a_running_watch_and_ignores_duplicates() -> None:
    """add() during the run watches one more task; an ID already watched (or listed twice)
    is watched once; the watch ends by itself when all have ended."""
    emulator = request_driven(timeline=QUICK)
    first, second = emulator.add_task(), emulator.add_task()
    transitions = []
    async with serve(emulator) as client, client.watch([first, first], interval=0.03) as watcher:
        assert watcher.watching == 1
        async for transition in watcher:
            transitions.append(transition)
            if len(transitions) == 1:
                watcher.add(second)
                watcher.add(second)
                watcher.add(first)
                assert watcher.watching == 2
        assert watcher.watching == 0
    grouped = by_task(transitions)
    assert sorted(grouped) == sorted([first, second])
    for task_id, mine in grouped.items():
        assert_well_formed(task_id, mine)
        assert mine[-1].status is TaskStatus.COMPLETED


async def test_add_on_the_last_final_transition_extends_the_watch() -> None:
    """A follow-up added while handling the last task's final transition is still watched:
    the watch is not over until the consumer has seen everything."""
    emulator = request_driven()
    first = emulator.add_task(DONE)
    follow_up = emulator.add_task(QUICK)
    transitions = []
    async with serve(emulator) as client, client.watch([first], interval=0.03) as watcher:
        with anyio.fail_after(10):
            async for transition in watcher:
                transitions.append(transition)
                if transition.task_id == first:
                    await anyio.sleep(0.1)  # let the watch notice it has nothing left
                    watcher.add(follow_up)
    grouped = by_task(transitions)
    assert [t.status for t in grouped[first]] == [TaskStatus.COMPLETED]
    assert_well_formed(follow_up, grouped[follow_up])
    assert grouped[follow_up][-1].status is TaskStatus.COMPLETED


async def test_add_after_the_end_raises() -> None:
    """Once the watch has ended (by itself, or by leaving the block), add() is an error."""
    emulator = Emulator()
    task_id = emulator.add_task(DONE)
    async with serve(emulator) as client:
        async with client.watch([task_id], interval=0.03) as watcher:
            assert [t.status async for t in watcher] == [TaskStatus.COMPLETED]
            with pytest.raises(RuntimeError, match="ended"):
                watcher.add(emulator.add_task())
        with pytest.raises(RuntimeError, match="ended"):
            watcher.add(emulator.add_task())
        assert [t async for t in watcher] == []  # iterating a finished watch just stops


async def test_an_empty_watch_ends_at_once() -> None:
    """Nothing to watch (and no keep_open): the iteration ends without a request."""
    emulator = Emulator()
    async with serve(emulator) as client:
        with anyio.fail_after(5):
            assert await collect(client, [], interval=0.03) == []
    assert emulator.requests == []


async def test_keep_open_pipeline_creates_and_adds_while_iterating() -> None:
    """keep_open=True keeps the watch going with nothing left to watch, until done_adding();
    tasks created while iterating are watched as they come."""
    emulator = request_driven(timeline=QUICK)
    first_batch_done = anyio.Event()
    created: list[str] = []
    transitions: list[Transition] = []
    watching_when_idle = []

    async def produce(client: AsyncVSRClient, watcher: Watcher) -> None:
        for _ in range(3):
            task = await client.create_task(
                "https://example.com/a.mp4", model=Model.SUPER_RESOLUTION_720P_LOWFPS
            )
            created.append(task.id)
            watcher.add(task.id)
        await first_batch_done.wait()
        for _ in range(3):
            task = await client.create_task(
                "https://example.com/b.mp4", model="superResolution-4k-highfps"
            )
            created.append(task.id)
            watcher.add(task.id)
        watcher.done_adding()

    async with (
        serve(emulator) as client,
        client.watch(interval=0.03, keep_open=True) as watcher,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(produce, client, watcher)
        with anyio.fail_after(20):
            async for transition in watcher:
                transitions.append(transition)
                finals = sum(t.is_final for t in transitions)
                if finals == 3 and not first_batch_done.is_set():
                    watching_when_idle.append(watcher.watching)
                    first_batch_done.set()

    assert watching_when_idle == [0]  # nothing left, and still open
    grouped = by_task(transitions)
    assert sorted(grouped) == sorted(created)
    assert len(created) == 6
    for task_id, mine in grouped.items():
        assert_well_formed(task_id, mine)
        assert mine[-1].status is TaskStatus.COMPLETED


async def test_done_adding_ends_an_idle_kept_open_watch() -> None:
    """With keep_open=True a watch with nothing left waits (the consumer blocked in the
    `async for`) until done_adding() is called, then ends."""
    emulator = Emulator()
    task_id = emulator.add_task(DONE)
    done_adding_at = math.inf

    async def finish_later(watcher: Watcher) -> None:
        nonlocal done_adding_at
        await anyio.sleep(0.3)  # the consumer is waiting in the `async for` by now
        done_adding_at = time.monotonic()
        watcher.done_adding()

    transitions = []
    async with (
        serve(emulator) as client,
        client.watch([task_id], interval=0.03, keep_open=True) as watcher,
        anyio.create_task_group() as task_group,
    ):
        with anyio.fail_after(10):
            async for transition in watcher:
                transitions.append(transition)
                task_group.start_soon(finish_later, watcher)
        ended_at = time.monotonic()
    assert [t.status for t in transitions] == [TaskStatus.COMPLETED]
    assert ended_at >= done_adding_at


async def test_add_of_an_ended_task_watches_it_again() -> None:
    """add() of a task that already ended in this watch watches it again, from its first
    sighting (as documented), rather than being lost."""
    emulator = Emulator()
    task_id = emulator.add_task(DONE)
    transitions = []
    async with (
        serve(emulator) as client,
        client.watch([task_id], interval=0.03, keep_open=True) as watcher,
    ):
        with anyio.fail_after(10):
            async for transition in watcher:
                transitions.append(transition)
                if len(transitions) == 1:
                    watcher.add(task_id)
                else:
                    watcher.done_adding()
    assert [(t.previous, t.status) for t in transitions] == [(None, TaskStatus.COMPLETED)] * 2


# 3. Polling schedule.


async def test_first_poll_is_immediate() -> None:
    """Every task is polled at once when the watch starts, not one interval later."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(10)]
    async with serve(emulator) as client, client.watch(ids, interval=60.0) as watcher:
        with anyio.fail_after(10):
            seen = {(await watcher.__anext__()).task_id for _ in ids}
    assert seen == set(ids)
    assert sorted(r.task_id for r in emulator.requests) == sorted(ids)


async def test_polls_every_interval_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first poll, each task is polled every `interval` times a jitter factor drawn
    from ``1 ± JITTER``. The draws are watched, and answered with factors of 0.5 and 1.5 so
    their effect shows through a busy machine's delays: from an answer to the next poll of
    that task, some gaps are shorter than the interval (a plain sleep can only make them
    longer), none is shorter than the smallest factor allows, and they average near the
    interval. (Timed on the client's side, between events it saw: a busy machine can only
    stretch a gap.)"""
    interval = 0.25
    drawn: list[tuple[float, float]] = []
    factors = itertools.cycle([0.5, 1.5])

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return next(factors)

    monkeypatch.setattr(vsr_async._scheduler, "random", types.SimpleNamespace(uniform=uniform))
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(10)]
    events: dict[str, list[tuple[str, float]]] = {task_id: [] for task_id in ids}

    async def on_request(request: httpx.Request) -> None:
        events[request.url.path.rpartition("/")[2]].append(("sent", time.monotonic()))

    async def on_response(response: httpx.Response) -> None:
        events[response.request.url.path.rpartition("/")[2]].append(("answer", time.monotonic()))

    async with serve(emulator) as client:
        client._session._http.event_hooks = {"request": [on_request], "response": [on_response]}
        transitions = await collect(client, ids, interval=interval, timeout=2.0)
    assert all(isinstance(t.error, WaitTimeoutError) for t in transitions if t.is_final)
    gaps = []
    for mine in events.values():
        gaps += [
            sent - answer
            for (kind, answer), (next_kind, sent) in itertools.pairwise(mine)
            if (kind, next_kind) == ("answer", "sent")
        ]
    assert set(drawn) == {(1 - JITTER, 1 + JITTER)}
    assert len(gaps) >= 3 * len(ids)  # (about 8 per task on an idle machine)
    assert min(gaps) >= interval * 0.5
    assert any(gap < interval for gap in gaps)  # 0.125 s of slack for a busy machine
    assert interval * 0.9 <= statistics.mean(gaps) <= interval * 1.5


# 4. Bounded concurrency.


async def test_in_flight_requests_never_exceed_max_concurrency() -> None:
    """With 200 tasks and max_concurrency=5, the server never has more than 5 polls in flight
    (and does have 5: the bound is used)."""
    emulator = Emulator(faults=Faults(latency=0.02))
    ids = [emulator.add_task(DONE) for _ in range(200)]
    proxy = Proxy(emulator)
    async with serve(proxy) as client:
        transitions = await collect(client, ids, interval=0.05, max_concurrency=5)
    assert sorted(t.task_id for t in transitions) == sorted(ids)
    assert proxy.max_in_flight == 5


async def test_small_pool_many_ids_no_pool_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """300 tasks through a pool of 2 connections with a tiny pool timeout, asking for more
    pollers than connections, while 50 get_task() calls share the client: requests queue in
    front of httpx, and none fails with PoolTimeout."""
    caplog.set_level(logging.DEBUG, logger="vsr_async")
    emulator = Emulator(timeline=Timeline.completed(queued=0.05, processing=0.05))
    emulator.faults.latency = 0.003
    ids = [emulator.add_task() for _ in range(300)]
    proxy = Proxy(emulator)
    timeout = httpx.Timeout(10.0, pool=0.005)
    fetched = []

    async def get(client: AsyncVSRClient, task_id: str) -> None:
        fetched.append(await client.get_task(task_id))

    async with (
        serve(proxy, max_connections=2, timeout=timeout) as client,
        anyio.create_task_group() as task_group,
    ):
        for task_id in ids[:50]:
            task_group.start_soon(get, client, task_id)
        transitions = await collect(client, ids, interval=0.05, max_concurrency=30)
    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(t.error is None and t.status is TaskStatus.COMPLETED for t in finals)
    assert len(fetched) == 50
    assert proxy.max_in_flight <= 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or "fail" in r.message]
    assert "PoolTimeout" not in caplog.text


# 5. Transient failures.


async def test_transient_failures_never_end_a_watch(fast_backoff: None) -> None:
    """5xx, 429, malformed bodies and dropped connections are retried: every task still ends
    in its real terminal state, exactly once, with no error."""
    emulator = Emulator(
        seed=5,
        timeline=short_timeline,
        faults=Faults(error_rate=0.2, rate_limit_rate=0.05, retry_after=0.02, malformed_rate=0.03),
    )
    ids = [emulator.add_task() for _ in range(30)]
    proxy = Proxy(emulator, lambda _task_id, n: DROP if n % 17 == 0 else None)
    async with serve(proxy) as client:
        transitions = await collect(client, ids, interval=0.05)
    grouped = by_task(transitions)
    assert sorted(grouped) == sorted(ids)
    for task_id, mine in grouped.items():
        assert_well_formed(task_id, mine)
        assert mine[-1].error is None
        assert mine[-1].status == TaskStatus(emulator.status_of(task_id))
        assert mine[-1].status.is_terminal
    assert set(emulator.stats.faults) == {"5xx", "429", "malformed"}
    assert any(s.status_code == 200 and s.status is None for s in proxy.seen)  # dropped


@HTTPX_LEAVES_ITS_ITERATORS
async def test_undecodable_body_is_transient(fast_backoff: None) -> None:
    """A body that cannot be decoded (a proxy's broken gzip) is a garbage answer like any
    other: it is retried, and the watch completes."""
    broken: Answer = (200, [(b"content-encoding", b"gzip")], b"not gzip at all")
    emulator = request_driven(timeline=QUICK)
    ids = [emulator.add_task() for _ in range(5)]
    polls: dict[str | None, int] = {}

    def answer(task_id: str | None, _: int) -> Answer | None:
        polls[task_id] = polls.get(task_id, 0) + 1
        return broken if polls[task_id] % 2 == 0 else None  # every other answer, per task

    proxy = Proxy(emulator, answer)
    async with serve(proxy) as client:
        with anyio.fail_after(20):
            transitions = await collect(client, ids, interval=0.03)
    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(t.status is TaskStatus.COMPLETED for t in finals)
    assert any(count >= 2 for count in polls.values())  # garbage was served


async def test_a_failed_poll_is_retried_soon_then_no_sooner_than_the_interval(
    fast_backoff: None,
) -> None:
    """A poll that failed is retried after the backoff alone, sooner than a long interval, for
    QUICK_RETRIES failures in a row: a blip costs the task a moment, not an interval. After
    more, no sooner than the interval either: a struggling server's load is not multiplied."""
    emulator = Emulator()
    task_id = emulator.add_task(Timeline.completed(queued=0, processing=0))
    busy = json_answer(503, {"message": "busy"})
    failing = QUICK_RETRIES + 1
    proxy = Proxy(emulator, lambda _task_id, n: busy if n <= failing else None)
    interval = 4.0
    async with serve(proxy) as client:
        with anyio.fail_after(60):
            transitions = await collect(client, [task_id], interval=interval)
    assert [t.status for t in transitions if t.is_final] == [TaskStatus.COMPLETED]
    sent = [s.arrived for s in proxy.seen]
    assert len(sent) == failing + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert all(gap < interval / 2 for gap in gaps[:QUICK_RETRIES]), gaps  # backoff: ms
    assert gaps[QUICK_RETRIES] >= interval * (1 - JITTER) - 1e-3, gaps


async def test_a_failing_tasks_backoff_stops_at_two_intervals_but_a_retry_after_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task failing many times in a row is polled again after its backoff, but never more
    than MAX_FAILING_INTERVALS of its interval later (the defect: 4 s, then 8 s, at an
    interval of 0.3 s); a server's Retry-After is waited out whole. Backoff drawn at its
    longest; the delays are the scheduler's own, as told to the hooks."""
    monkeypatch.setattr(vsr_async._retry.backoff, "full_jitter", lambda value: value)
    emulator = Emulator()
    task_id = emulator.add_task(Timeline.completed(queued=0, processing=0))
    busy = json_answer(503, {"message": "busy"})
    later = json_answer(503, {"message": "busy"}, (b"retry-after", b"2"))
    failing = QUICK_RETRIES + 4
    proxy = Proxy(
        emulator, lambda _task_id, n: later if n == failing else busy if n < failing else None
    )
    delays: list[float] = []

    class Delays(Hooks):
        def on_retry(self, details: RetryDetails) -> None:
            delays.append(details.delay)

    interval = 0.3
    async with serve(proxy, hooks=Delays()) as client:
        with anyio.fail_after(60):
            transitions = await collect(client, [task_id], interval=interval)
    assert [t.status for t in transitions if t.is_final] == [TaskStatus.COMPLETED]
    assert len(delays) == failing
    longest = MAX_FAILING_INTERVALS * interval * (1 + JITTER)
    assert all(interval * (1 - JITTER) <= d <= longest for d in delays[:-1]), delays
    assert 2.0 <= delays[-1] <= 2.0 * (1 + RETRY_AFTER_JITTER), delays


@pytest.mark.parametrize("fault", ["5xx", "dropped"])
async def test_an_outage_is_not_met_with_quick_retries(fast_backoff: None, fault: str) -> None:
    """When every poll fails (every answer a 5xx, or every connection dropped), quick retries
    stay within the retry budget: before their interval, 40 tasks are polled about once each
    (at most QUICK_RETRY_BURST more, and QUICK_RETRY_SHARE of the polls), not 1 + QUICK_RETRIES
    times each, which made an outage's first interval 4x the load. Decided once every task's
    next poll is scheduled an interval after its last, not on time."""
    tasks, interval = 40, 60.0
    faults = Faults(error_rate=1.0) if fault == "5xx" else Faults(drop_rate=1.0)
    emulator = Emulator(faults=faults)
    ids = [emulator.add_task(FOREVER) for _ in range(tasks)]
    async with serve(emulator) as client:
        scheduler = client._scheduler
        start = anyio.current_time()

        def every_task_waits_its_interval() -> bool:
            due = [
                when
                for when, _, item, version in scheduler._due
                if isinstance(item, vsr_async._scheduler._Record) and scheduler._live(item, version)
            ]
            return len(due) == tasks and min(due) >= start + interval * (1 - JITTER)

        with anyio.fail_after(30):
            async with client.watch(ids, interval=interval) as watcher:
                while not every_task_waits_its_interval():  # noqa: ASYNC110 (no event for it)
                    await anyio.sleep(0.01)
                polls = watcher.stats.polls
    assert len(emulator.requests) == polls  # every one failed, none is left in flight
    budget = QUICK_RETRY_BURST + QUICK_RETRY_SHARE * tasks  # what the first polls allow ...
    most = tasks + budget / (1 - QUICK_RETRY_SHARE)  # ... and the quick retries earn more
    assert tasks <= polls <= most, polls  # 62 (the defect: 4 each, 160)


async def test_a_short_retry_after_is_lengthened_a_little(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tasks refused together with a short Retry-After come back spread over up to
    RETRY_AFTER_JITTER more of it, never sooner than asked: drawn here at its longest, each
    one's next poll arrives that much after its 429 (the defect: all of them after exactly the
    Retry-After, in one herd)."""
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(vsr_async._scheduler, "random", types.SimpleNamespace(uniform=uniform))
    tasks, retry_after = 10, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(tasks)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"0.5"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n <= tasks else None)
    async with serve(proxy) as client:
        with anyio.fail_after(30):
            async with client.watch(ids, interval=60.0) as watcher:
                seen = set()
                async for transition in watcher:  # each task's first answer, after its 429
                    seen.add(transition.task_id)
                    if len(seen) == tasks:
                        break
    for task_id in ids:
        refused, answered = [s for s in proxy.seen if s.task_id == task_id]
        assert refused.status_code == 429
        assert answered.arrived - refused.answered >= retry_after * (1 + RETRY_AFTER_JITTER)
    assert (1, 1 + RETRY_AFTER_JITTER) in drawn


# 6. A long Retry-After pauses the whole watcher.


@pytest.mark.parametrize("max_concurrency", [1, 5])
async def test_a_long_retry_after_pauses_every_poller(
    max_concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 429 with a Retry-After of PAUSE_RETRY_AFTER or more (0.5 s here, for a short
    test), no poll of any task reaches the server until it has passed (beyond the ones already
    in flight); then the watch resumes and completes."""
    monkeypatch.setattr(vsr_async._rate, "PAUSE_RETRY_AFTER", 0.5)
    retry_after = 0.5
    emulator = request_driven(timeline=Timeline.completed(queued=40, processing=40))
    ids = [emulator.add_task() for _ in range(20)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"0.5"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 30 else None)
    async with serve(proxy) as client:
        transitions = await collect(client, ids, interval=0.05, max_concurrency=max_concurrency)

    (hit,) = [s for s in proxy.seen if s.status_code == 429]
    during = [s for s in proxy.seen if hit.answered < s.arrived < hit.answered + retry_after]
    # Polls sent before the client read the 429 may still arrive; nothing sent after it.
    assert len(during) <= max_concurrency - 1
    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(t.status is TaskStatus.COMPLETED for t in finals)


async def test_a_retry_after_past_the_cap_ends_the_watch() -> None:
    """A Retry-After longer than MAX_RETRY_AFTER ends the watch with the RateLimitError
    carrying it, as it fails get_task: a batch job catches it, sleeps and resumes, instead of
    a watch gone silent for a day."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(3)]
    limited = json_answer(429, {"message": "quota"}, (b"retry-after", b"86400"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 5 else None)
    async with serve(proxy) as client:
        with anyio.fail_after(30), pytest.raises(RateLimitError) as info:
            await collect(client, ids, interval=0.02)
        assert info.value.retry_after == 86400
        proxy.answer = lambda _task_id, _n: limited
        with anyio.fail_after(30), pytest.raises(RateLimitError):  # wait() too, at once
            await client.wait(ids[0], interval=0.02, timeout=None)


async def test_timeouts_fire_during_a_pause() -> None:
    """Tasks past their timeout are given up while a Retry-After pauses the watch, not when
    the pause ends; nothing is polled during the pause."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(3)]
    limited = json_answer(429, {"message": "slow down"}, (b"retry-after", b"50"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 4 else None)
    async with serve(proxy) as client:
        with anyio.fail_after(30):  # the pause is 50 s; each timeout 0.5 s after a first poll
            transitions = await collect(
                client, ids, interval=0.02, timeout=0.5, max_concurrency=len(ids)
            )
    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(isinstance(t.error, WaitTimeoutError) for t in finals)
    assert all(t.status is TaskStatus.QUEUED for t in finals)  # each was seen once at least
    (hit,) = [s for s in proxy.seen if s.status_code == 429]
    # Polls sent before the client read the 429 may still arrive; none sent after it.
    assert len([s for s in proxy.seen if s.arrived > hit.answered]) <= len(ids) - 1


async def test_a_poll_caught_by_a_pause_in_flight_still_times_out() -> None:
    """A poll already on its way when another request's Retry-After pauses the client (here
    queued for the one connection) waits out the pause in the session, not in the heap: it is
    still given up at its task's deadline, not 50 s later."""
    emulator = Emulator()
    (task_id,) = [emulator.add_task(FOREVER)]
    blocker = emulator.add_task(FOREVER)
    release = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(f"/{blocker}"):
            await release.wait()  # holds the client's only connection until the poll queues
            status, headers, body = json_answer(429, {}, (b"retry-after", b"50"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await emulator(scope, receive, send)

    app.prefix = emulator.prefix  # type: ignore[attr-defined]
    async with serve(app, max_connections=1) as client:  # type: ignore[arg-type]
        with anyio.fail_after(30):
            async with client.watch([task_id], interval=0.05, timeout=1.0) as watcher:
                first = await watcher.__anext__()  # its first poll: the deadline is 1 s away
                async with anyio.create_task_group() as group:
                    group.start_soon(client.get_task, blocker)
                    while watcher.stats.in_flight == 0:  # noqa: ASYNC110 (a counter, no event)
                        await anyio.sleep(0.01)  # until the next poll waits for the connection
                    release.set()  # the 429 pauses the client for 50 s, the poll inside it
                    last = await watcher.__anext__()
                    group.cancel_scope.cancel()  # (the get_task waits out its Retry-After)
    assert first.previous is None
    assert isinstance(last.error, WaitTimeoutError)
    assert len(emulator.polls(task_id)) == 1


async def test_a_deadline_fires_on_time_while_the_only_worker_is_stuck_in_a_poll() -> None:
    """Two tasks due at once and one connection: the worker polls the first, then takes the
    second from the heap itself, and that poll hangs. The first task's deadline still gives
    it up when it comes (the defect: the dispatcher, waiting for a worker to come free for
    the second, slept without a timer until the hung poll ended)."""
    emulator = Emulator()
    quick, stuck = emulator.add_task(FOREVER), emulator.add_task(FOREVER)
    release = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(f"/{stuck}"):
            await release.wait()  # the poll hangs until the test is over
        await emulator(scope, receive, send)

    app.prefix = emulator.prefix  # type: ignore[attr-defined]
    async with serve(app, max_connections=1) as client:  # type: ignore[arg-type]
        with anyio.fail_after(30):  # the hung poll's own deadline is 40 s
            async with (
                client.watch([quick], interval=60.0, timeout=1.0) as watcher,
                client.watch([stuck], interval=60.0),
            ):
                first = await watcher.__anext__()
                last = await watcher.__anext__()
                release.set()
    assert first.previous is None
    assert isinstance(last.error, WaitTimeoutError)
    assert len(emulator.polls(quick)) == 1


@pytest.mark.parametrize("limit", ["concurrency", "rate"])
async def test_no_task_is_given_up_before_its_first_poll(limit: str) -> None:
    """Far more tasks than the concurrency (or the rate budget) can poll within the timeout:
    the timeout counts from each task's first poll, so every one is polled, found completed
    and reported, none given up unasked."""
    emulator = Emulator()
    ids = [emulator.add_task(DONE) for _ in range(40)]
    options = {"max_connections": 1} if limit == "concurrency" else {"rate_limit": 40.0}
    async with serve(emulator, **options) as client:  # type: ignore[arg-type]
        transitions = await collect(client, ids, interval=0.05, timeout=0.01)
    assert sorted(t.task_id for t in transitions) == sorted(ids)
    assert all(t.error is None and t.status is TaskStatus.COMPLETED for t in transitions)
    assert all(len(emulator.polls(task_id)) == 1 for task_id in ids)


# 7. One bad ID never stops the others.


async def test_unknown_id_ends_alone_with_not_found() -> None:
    """A 404 ID yields one Transition carrying TaskNotFoundError and is not polled again;
    the others complete."""
    emulator = request_driven(timeline=QUICK)
    ids = [emulator.add_task() for _ in range(5)]
    async with serve(emulator) as client:
        transitions = await collect(client, [*ids, "no-such-task"], interval=0.03)
    grouped = by_task(transitions)
    (missing,) = grouped.pop("no-such-task")
    assert isinstance(missing.error, TaskNotFoundError)
    assert missing.previous is None
    assert missing.task is None
    assert missing.status is None
    assert missing.is_final
    assert len(emulator.polls("no-such-task")) == 1
    assert sorted(grouped) == sorted(ids)
    assert all(mine[-1].status is TaskStatus.COMPLETED for mine in grouped.values())


async def test_repeatedly_malformed_id_is_given_up_alone(fast_backoff: None) -> None:
    """A task whose answers are never readable is given up with ResponseValidationError after
    a few tries (carrying its last good snapshot); the others complete."""
    emulator = Emulator(timeline=Timeline.completed(queued=0.3, processing=0.3))
    ids = [emulator.add_task() for _ in range(5)]
    bad = emulator.add_task(FOREVER)
    html: Answer = (200, [(b"content-type", b"text/html")], b"<html>502 Bad Gateway</html>")
    polls_of_bad = 0

    def answer(task_id: str | None, _: int) -> Answer | None:
        nonlocal polls_of_bad
        if task_id == bad:
            polls_of_bad += 1
            if polls_of_bad > 1:  # the first poll is answered, then only garbage
                return html
        return None

    proxy = Proxy(emulator, answer)
    async with serve(proxy) as client:
        transitions = await collect(client, [bad, *ids], interval=0.03)
    grouped = by_task(transitions)
    first, given_up = grouped.pop(bad)
    assert first.status is TaskStatus.QUEUED
    assert isinstance(given_up.error, ResponseValidationError)
    assert "502 Bad Gateway" in given_up.error.snippet
    assert given_up.task == first.task
    assert given_up.previous is TaskStatus.QUEUED
    assert MAX_MALFORMED <= polls_of_bad - 1 <= MAX_MALFORMED + 1  # a few garbage answers
    assert sorted(grouped) == sorted(ids)
    assert all(mine[-1].status is TaskStatus.COMPLETED for mine in grouped.values())


async def test_readable_errors_break_a_run_of_malformed_answers(fast_backoff: None) -> None:
    """Only unreadable answers *in a row* give a task up: garbage alternating with 503s is
    retried for as long as it lasts, and the task then completes."""
    emulator = Emulator(timeline=Timeline.completed(queued=0.2, processing=0.2))
    task_id = emulator.add_task()
    html: Answer = (200, [(b"content-type", b"text/html")], b"<html>oops</html>")
    unavailable = json_answer(503, {"message": "busy"})
    polls = 0

    def answer(_task_id: str | None, _: int) -> Answer | None:
        nonlocal polls
        polls += 1
        if polls <= 4 * MAX_MALFORMED:
            return html if polls % 2 else unavailable
        return None

    async with serve(Proxy(emulator, answer)) as client:
        transitions = await collect(client, [task_id], interval=0.03)
    assert polls > 4 * MAX_MALFORMED
    assert transitions[-1].error is None
    assert transitions[-1].status is TaskStatus.COMPLETED


# 8. 401/403 end the whole watch.


async def test_revoked_key_ends_the_whole_watch() -> None:
    """A 401 mid-watch raises AuthenticationError from the `async for` (not an ExceptionGroup,
    not one error per task), promptly, after only a handful of requests with the bad key."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(50)]
    seen = 0
    revoked = math.inf

    async def watch_and_revoke(client: AsyncVSRClient) -> None:
        nonlocal seen, revoked
        async with client.watch(ids, interval=0.05, max_concurrency=5) as watcher:
            async for _ in watcher:
                seen += 1
                if seen == len(ids):  # every task seen once: now the key stops working
                    revoked = time.monotonic()
                    emulator.api_key = "rotated-key"

    async with serve(emulator) as client:
        sent = record_sends(client)
        with pytest.raises(AuthenticationError) as info, anyio.fail_after(10):
            await watch_and_revoke(client)
        ended = time.monotonic()
        await anyio.sleep(0.3)
    assert type(info.value) is AuthenticationError
    assert info.value.status_code == 401
    assert seen == len(ids)
    # Polls already sent or handed to a worker may still go out, then nothing.
    assert 1 <= sum(r.status_code == 401 for r in emulator.requests) <= 5 + 1
    assert sum(at >= revoked for at in sent) <= 5 + 1
    assert all(at <= ended for at in sent)


async def test_forbidden_ends_the_whole_watch() -> None:
    """A 403 mid-watch raises PermissionDeniedError from the `async for` the same way."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(20)]
    forbidden = json_answer(403, {"message": "Forbidden"})
    proxy = Proxy(emulator, lambda _task_id, n: forbidden if n > 40 else None)
    async with serve(proxy) as client:
        sent = record_sends(client)
        with pytest.raises(PermissionDeniedError) as info, anyio.fail_after(10):
            await collect(client, ids, interval=0.05, max_concurrency=4)
        ended = time.monotonic()
        await anyio.sleep(0.3)
    assert type(info.value) is PermissionDeniedError
    assert 1 <= sum(s.status_code == 403 for s in proxy.seen) <= 4 + 1
    assert all(at <= ended for at in sent)


# 9. Leaving early stops everything.


class BoomError(Exception):
    pass


@pytest.mark.parametrize("how", ["break", "raise", "cancel", "unentered"])
async def test_leaving_early_stops_every_poller(how: str) -> None:
    """Leaving the block early (break, an exception in the body, a cancelled enclosing scope,
    or no iteration at all) stops every poller at once, polls in flight included: no request
    afterwards, no task left running, no connection left busy, no warning; the body's
    exception comes out unchanged."""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(30)]
    proxy = Proxy(emulator)
    boom = BoomError("stop")
    leaving = math.inf

    async def until_a_poll_is_stuck() -> float:
        """Make the server take 3 s per answer; return once a poll is waiting for one."""
        emulator.faults = Faults(latency=3.0)
        await proxy.next_request()
        return time.monotonic()

    async with serve(proxy) as client:
        sent = record_sends(client)
        transport = client._session._http._transport
        assert isinstance(transport, httpx.AsyncHTTPTransport)
        with anyio.fail_after(10):
            if how == "break":
                async with client.watch(ids, interval=0.03) as watcher:
                    async for _ in watcher:
                        leaving = await until_a_poll_is_stuck()
                        break
                assert [t async for t in watcher] == []  # a watch left early stays ended
            elif how == "raise":

                async def fail_in_the_body() -> None:
                    nonlocal leaving
                    async with client.watch(ids, interval=0.03) as watcher:
                        async for _ in watcher:
                            leaving = await until_a_poll_is_stuck()
                            raise boom

                with pytest.raises(BoomError) as info:
                    await fail_in_the_body()
                assert info.value is boom
                assert info.type is BoomError
            elif how == "cancel":
                with anyio.move_on_after(30) as scope:
                    async with client.watch(ids, interval=0.03) as watcher:
                        async for _ in watcher:
                            if leaving == math.inf:
                                leaving = await until_a_poll_is_stuck()
                                scope.deadline = anyio.current_time()  # the deadline passes
                assert scope.cancelled_caught
            else:
                async with client.watch(ids, interval=0.03):
                    leaving = await until_a_poll_is_stuck()
        left = time.monotonic()
        assert left - leaving < 2.5  # it did not wait out the 3 s answers in flight
        assert still_polling(client) == []
        pool = transport._pool
        assert all(
            connection.is_idle() or connection.is_closed() for connection in pool.connections
        )
        assert sent
        assert all(at <= left for at in sent)  # nothing sent after leaving
    assert pool.connections == []
    gc.collect()


# 10. Unknown statuses.


async def test_unknown_status_is_yielded_polled_normally_and_timed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A status the library does not know is kept verbatim, yielded once, not terminal,
    polled at the normal interval (no hot loop), logged once, and given up at the timeout."""
    caplog.set_level(logging.WARNING, logger="vsr_async")
    emulator = request_driven()
    paused = emulator.add_task(Timeline(((0.0, "queued"), (1.0, "paused"))))  # in requests
    async with serve(emulator) as client:
        start = time.monotonic()
        transitions = await collect(client, [paused], interval=0.1, timeout=1.2)
        elapsed = time.monotonic() - start
    queued, pause, given_up = transitions
    assert queued.status is TaskStatus.QUEUED
    assert pause.status == "paused"
    assert not isinstance(pause.status, TaskStatus)
    assert pause.previous is TaskStatus.QUEUED
    assert pause.task is not None
    assert not pause.task.is_terminal
    assert not pause.is_final
    assert isinstance(given_up.error, WaitTimeoutError)
    assert given_up.previous == "paused"
    assert given_up.task is not None
    assert given_up.task.status == "paused"
    polls = len(emulator.polls(paused))
    assert 3 <= polls <= elapsed / (0.1 * 0.9) + 2  # (a busy machine only polls less)
    assert [r.getMessage() for r in caplog.records if "paused" in r.getMessage()] == [
        "unknown task status 'paused': treated as still running"
    ]


async def test_status_case_variants_map_to_the_enum() -> None:
    """Statuses in another case ("Processing") are the known statuses, and end the watch."""
    emulator = Emulator()
    steps = ((0.0, "QUEUED"), (0.1, "Processing"), (0.2, "Completed"))
    task_id = emulator.add_task(Timeline(steps))
    async with serve(emulator) as client:
        transitions = await collect(client, [task_id], interval=0.02)
    assert_well_formed(task_id, transitions)
    assert transitions[-1].status is TaskStatus.COMPLETED
    assert all(isinstance(t.status, TaskStatus) for t in transitions)


async def test_unknown_status_in_varying_case_is_one_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown status whose case varies from answer to answer (a loose server) is still one
    status: yielded once, logged once, not a transition on every poll."""
    caplog.set_level(logging.WARNING, logger="vsr_async")
    emulator = request_driven(seed=3, loose=True)
    steps = ((0.0, "queued"), (1.0, "paused"), (30.0, "completed"))  # in requests answered
    task_id = emulator.add_task(Timeline(steps))
    proxy = Proxy(emulator)
    async with serve(proxy) as client:
        transitions = await collect(client, [task_id], interval=0.01)
    sent = [s.status for s in proxy.seen if s.status and s.status.lower() == "paused"]
    assert len(sent) >= 20
    assert len(set(sent)) > 1  # the server did vary its case
    paused = [t for t in transitions if str(t.status).lower() == "paused"]
    assert len(paused) == 1, [t.status for t in transitions]
    assert transitions[-1].status is TaskStatus.COMPLETED
    assert len([r for r in caplog.records if "paused" in r.getMessage().lower()]) == 1


# 11. Per-task timeout.


async def test_timeout_gives_up_only_the_stuck_task() -> None:
    """A task that never ends is given up at `timeout` with a WaitTimeoutError carrying its
    last snapshot; the others complete normally, and the stuck one is not polled after."""
    emulator = request_driven()  # six tasks in turn: each status lasts a round of polls
    ids = [emulator.add_task(Timeline.completed(queued=6, processing=6)) for _ in range(5)]
    stuck = emulator.add_task(Timeline(((0.0, "queued"), (1.0, "processing"))))
    given_up_at = math.inf
    async with serve(emulator) as client:
        start = time.monotonic()
        with anyio.fail_after(30):
            async with client.watch([stuck, *ids], interval=0.03, timeout=2.0) as watcher:
                transitions = []
                async for transition in watcher:
                    transitions.append(transition)
                    if transition.task_id == stuck and transition.is_final:
                        given_up_at = time.monotonic()
        ended = time.monotonic()
    grouped = by_task(transitions)
    mine = grouped.pop(stuck)
    assert_well_formed(stuck, mine)
    final = mine[-1]
    assert isinstance(final.error, WaitTimeoutError)
    assert final.error.task_id == stuck
    assert final.error.timeout == 2.0
    assert final.error.task is final.task
    assert final.task is not None
    assert final.task.status is TaskStatus.PROCESSING
    assert final.previous is TaskStatus.PROCESSING
    assert ended - start >= 2.0
    assert all(r.time < given_up_at for r in emulator.polls(stuck))  # none after
    assert sorted(grouped) == sorted(ids)
    assert all(
        m[-1].status is TaskStatus.COMPLETED and m[-1].error is None for m in grouped.values()
    )


# 13. In process.


async def test_watch_through_asgi_transport() -> None:
    """The watch works in process, through httpx.ASGITransport, with a caller's http_client
    (left open for the caller)."""
    emulator = request_driven(timeline=QUICK)
    ids = [emulator.add_task() for _ in range(5)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as http:
        base_url = "http://127.0.0.1" + emulator.prefix
        async with AsyncVSRClient(KEY, base_url=base_url, http_client=http) as client:
            transitions = await collect(client, ids, interval=0.03)
        assert not http.is_closed
    grouped = by_task(transitions)
    assert sorted(grouped) == sorted(ids)
    for task_id, mine in grouped.items():
        assert_well_formed(task_id, mine)
        assert mine[-1].status is TaskStatus.COMPLETED


# 14. Misuse.


def bad_ids() -> object:
    yield "fine"
    yield "a/b"


@pytest.mark.parametrize(
    ("args", "options", "error"),
    [
        (["fine", "a/b"], {}, ValueError),
        (["fine", ".."], {}, ValueError),
        (["fine", ""], {}, ValueError),
        (["fine", 42], {}, TypeError),
        ("task_123", {}, TypeError),
        (None, {}, TypeError),
        (["fine"], {"max_concurrency": 0}, ValueError),
        (["fine"], {"max_concurrency": 2.5}, TypeError),
        (["fine"], {"interval": 0}, ValueError),
        (["fine"], {"interval": -1.0}, ValueError),
        (["fine"], {"interval": math.nan}, ValueError),
        (["fine"], {"interval": math.inf}, ValueError),
        (["fine"], {"timeout": 0}, ValueError),
        (["fine"], {"timeout": math.nan}, ValueError),
    ],
)
async def test_invalid_arguments_raise_before_any_request(
    args: object, options: dict[str, object], error: type[Exception]
) -> None:
    """Invalid IDs (one bad one in a list, a bare string) and invalid options raise when the
    watch is made, before anything is sent."""
    sent: list[httpx.Request] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(sent.append))
    async with http, AsyncVSRClient(KEY, http_client=http) as client:
        with pytest.raises(error):
            client.watch(args, **options)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="invalid task ID"):
            client.watch(bad_ids())  # type: ignore[arg-type]
    assert sent == []


async def test_watcher_misuse() -> None:
    """A Watcher is iterated inside its block, entered once, and refuses a closed client."""
    sent: list[httpx.Request] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(sent.append))
    async with http:
        client = AsyncVSRClient(KEY, http_client=http)
        watcher = client.watch()
        with pytest.raises(RuntimeError, match="async with"):
            await watcher.__anext__()
        async with watcher:
            with pytest.raises(RuntimeError, match="once"):
                await watcher.__aenter__()
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            client.watch(["fine"])
    assert sent == []


async def test_add_before_entering_is_watched() -> None:
    """IDs added before the block is entered are watched with the others."""
    emulator = Emulator(timeline=DONE)
    first, second = emulator.add_task(), emulator.add_task()
    async with serve(emulator) as client:
        watcher = client.watch([first], interval=0.03)
        watcher.add(second)
        watcher.done_adding()  # harmless without keep_open
        with pytest.raises(ValueError, match="invalid task ID"):
            watcher.add("../x")
        async with watcher:
            statuses = {t.task_id: t.status async for t in watcher}
    assert statuses == {first: TaskStatus.COMPLETED, second: TaskStatus.COMPLETED}


async def test_polls_that_keep_failing_are_logged_once(
    fast_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that cannot be reached is not silent: one warning once a task's polls have
    failed a few times in a row, not one per failure (the rest stay at debug level)."""
    caplog.set_level(logging.DEBUG, logger="vsr_async")
    async with AsyncVSRClient("key", base_url="http://127.0.0.1:9/api") as client:
        with anyio.move_on_after(1.0):
            async with client.watch(["a", "b"], interval=0.02) as watcher:
                async for _ in watcher:
                    pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1
    assert "polls keep failing" in warnings[0].getMessage()
    assert len(debug) >= 3


async def test_an_answer_about_another_task_counts_as_unreadable() -> None:
    """A poll answered with another task's state (a proxy's cache, a mix-up) is not taken as
    this task's: it counts as an unreadable answer, and the task is given up at the third."""
    emulator = Emulator(timeline=Timeline.completed(queued=0, processing=0))
    mixed, right = emulator.add_task(), emulator.add_task()
    other = json_answer(200, {"id": right, "status": "completed", "video_url": "http://x/y"})
    proxy = Proxy(emulator, lambda task_id, _: other if task_id == mixed else None)
    async with serve(proxy) as client, client.watch([mixed, right], interval=0.01) as watcher:
        finals = {t.task_id: t async for t in watcher if t.is_final}
    assert isinstance(finals[mixed].error, ResponseValidationError)
    assert "about task" in str(finals[mixed].error)
    assert finals[right].error is None
    assert len(proxy.statuses(mixed)) == MAX_MALFORMED


async def test_failing_polls_warn_at_most_once_a_minute(
    fast_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Polls failing in runs, with good answers in between, give one warning, not one per run:
    a long watch through a bad spell keeps its log readable."""
    emulator = Emulator(timeline=Timeline([(0, "processing")]))
    ids = [emulator.add_task() for _ in range(3)]
    busy = json_answer(503, {"message": "busy"})
    proxy = Proxy(emulator, lambda _task_id, n: None if n % 10 == 0 else busy)
    caplog.set_level(logging.WARNING, logger="vsr_async")
    async with serve(proxy) as client:
        with anyio.move_on_after(1.5):
            async with client.watch(ids, interval=0.01) as watcher:
                async for _ in watcher:
                    pass
    assert sum(s.status_code == 200 for s in proxy.seen) >= 3  # the runs were broken up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "polls keep failing" in warnings[0]


async def test_transitions_not_taken_before_leaving_are_dropped() -> None:
    """Leaving a watch with transitions still queued (first sightings of tasks the body never
    took): iterating it afterwards yields nothing, not what was left in the queue."""
    emulator = request_driven()
    ids = [emulator.add_task(FOREVER) for _ in range(5)]
    async with serve(emulator) as client:
        async with client.watch(ids, interval=60) as watcher:
            await watcher.__anext__()
            with anyio.fail_after(30):
                while len(emulator.requests) < len(ids):  # noqa: ASYNC110 (no event to wait on)
                    await anyio.sleep(0.005)
        assert [t async for t in watcher] == []
