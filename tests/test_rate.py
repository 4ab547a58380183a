"""The rate budget (``rate_limit=``): a token bucket shared by every request, AIMD on 429s.

The arithmetic is checked on a fake clock; the rest over a real loopback socket, counting
the requests the server sees in each time window.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
import trio
from _helpers import KEY, Proxy, Seen, json_answer, serve

import vsr_async._rate
import vsr_async._retry
from vsr_async import AsyncVSRClient, Task, TaskStatus
from vsr_async._config import (
    MAX_RETRY_AFTER,
    RATE_BURST,
    RATE_DECREASE,
    RATE_FLOOR,
    RATE_RECOVERY,
)
from vsr_async._rate import RateBudget
from vsr_async.testing import Emulator, Timeline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

FOREVER = Timeline(((0.0, "queued"),))
DONE = Timeline.completed(queued=0, processing=0)


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def greedy_count(budget: RateBudget, clock: FakeClock, seconds: float, step: float) -> int:
    """Tokens a caller taking every one it can gets in ``seconds``, looking every ``step``."""
    taken = 0
    end = clock.now + seconds
    while clock.now < end:
        while budget.try_acquire() == 0:
            taken += 1
        clock.now += step
    return taken


def most_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    return max(
        (sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0
    )


def api_arrivals(proxy: Proxy) -> list[float]:
    return [s.arrived for s in proxy.seen]


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff after a 429 without Retry-After in milliseconds, not seconds."""
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_MAX", 0.05)


# 1. The arithmetic, on a fake clock.


@pytest.mark.parametrize("limit", [0.5, 4.0, 40.0, 400.0])
def test_bucket_never_exceeds_rate_plus_burst(limit: float) -> None:
    """A greedy caller gets at most ``limit * T + max(1, limit * RATE_BURST)`` tokens in any
    T seconds, and does get the budget: the bucket neither leaks nor hoards."""
    clock = FakeClock()
    budget = RateBudget(limit, clock=clock)
    burst = max(1.0, limit * RATE_BURST)
    seconds = max(10.0, 20 / limit)
    taken = greedy_count(budget, clock, seconds, step=0.05 / limit)
    assert limit * seconds <= taken <= limit * seconds + burst + 1
    # Full again after a pause, and no fuller than the burst.
    clock.now += 60.0
    assert greedy_count(budget, clock, 0.0001 / limit, step=1e-6 / limit) == math.floor(burst)


def test_try_acquire_says_how_long_to_wait() -> None:
    """An empty bucket says when the next token is due, at the rate allowed now."""
    clock = FakeClock()
    budget = RateBudget(4.0, clock=clock)  # a bucket of one
    assert budget.try_acquire() == 0
    assert budget.try_acquire() == pytest.approx(0.25)
    clock.now += 0.1
    assert budget.try_acquire() == pytest.approx(0.15)
    budget.slow_down(sent_at=clock.now)  # 2/s: the missing 0.6 token takes 0.3 s
    assert budget.try_acquire() == pytest.approx(0.3)
    clock.now += 0.3
    assert budget.try_acquire() == 0


def test_aimd_cuts_once_per_round_and_creeps_back() -> None:
    """A 429 halves the rate; a 429 to a request that left before the cut does not cut it
    again; the floor holds; successes bring the budget back at RATE_RECOVERY of it per second
    of traffic at the rate allowed."""
    clock = FakeClock()
    budget = RateBudget(40.0, clock=clock)
    sent = clock.now
    clock.now += 0.01
    budget.answered(sent, 429)
    assert budget.current == 40.0 * RATE_DECREASE
    budget.answered(sent, 429)  # the same round: old news
    assert budget.current == 40.0 * RATE_DECREASE
    budget.answered(clock.now, 429)  # sent after the cut: cut again
    assert budget.current == 40.0 * RATE_DECREASE**2
    for _ in range(20):
        budget.slow_down(clock.now)
        clock.now += 0.001
    assert budget.current == 40.0 * RATE_FLOOR
    budget.answered(clock.now, 404)  # neither a 429 nor a success: no news
    assert budget.current == 40.0 * RATE_FLOOR
    # Back up from one cut, with successes arriving at the rate allowed.
    budget = RateBudget(40.0, clock=clock)
    budget.slow_down(clock.now)
    elapsed = 0.0
    while budget.current < 40.0:
        elapsed += 1 / budget.current
        budget.answered(clock.now, 200)
    expected = (1 - RATE_DECREASE) / RATE_RECOVERY  # seconds, at full traffic
    assert expected * 0.8 <= elapsed <= expected * 1.2
    budget.answered(clock.now, 200)
    assert budget.current == 40.0  # never above the budget


def test_retry_after_pauses_every_token() -> None:
    """A Retry-After stops all tokens until it has passed, capped at MAX_RETRY_AFTER; on an
    answer other than a 429 it pauses without cutting the rate."""
    clock = FakeClock()
    budget = RateBudget(400.0, clock=clock)  # a bucket of 20, full
    budget.answered(clock.now, 200, "5")  # a success's Retry-After means nothing
    assert budget.try_acquire() == 0
    budget.answered(clock.now, 503, "0.5")
    assert budget.current == 400.0
    assert budget.try_acquire() == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.try_acquire() == 0
    sent = clock.now
    clock.now += 0.01
    budget.answered(sent, 429, "3600")
    assert budget.current == 200.0
    assert budget.try_acquire() == pytest.approx(MAX_RETRY_AFTER)
    budget.answered(sent, 429, "not a number")  # same round: no cut, and no pause
    assert budget.current == 200.0
    assert budget.try_acquire() == pytest.approx(MAX_RETRY_AFTER)


def test_a_clock_going_back_never_starves_the_bucket() -> None:
    """A clock that jumps back (a new event loop's) earns no tokens and owes none: the bucket
    gives the next token at its rate, and a pause keeps only what it had left."""
    clock = FakeClock()
    budget = RateBudget(4.0, clock=clock)  # a bucket of one, a token every 0.25 s
    assert budget.try_acquire() == 0
    budget.pause(2.0)
    clock.now -= 50_000.0
    assert budget.try_acquire() == pytest.approx(2.0)  # not 50,002 s
    clock.now += 2.0
    assert budget.try_acquire() == 0
    assert budget.try_acquire() == pytest.approx(0.25)
    sent = clock.now
    clock.now -= 1_000.0
    budget.answered(sent, 429)  # a request of the old clock's: still news
    assert budget.current == 4.0 * RATE_DECREASE
    clock.now += 0.5
    assert budget.try_acquire() == 0


class _OffsetLoop(asyncio.SelectorEventLoop):
    offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


class _OffsetClock(trio.abc.Clock):
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.monotonic() + self.offset

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


def run_with_clock_at(
    backend: str, offset: float, function: Callable[[], Awaitable[object]]
) -> None:
    """Run ``function`` in a new event loop of ``backend`` whose clock reads ``offset`` more
    than the monotonic clock."""
    if backend == "trio":
        anyio.run(function, backend="trio", backend_options={"clock": _OffsetClock(offset)})
    else:
        loop_class = type("Loop", (_OffsetLoop,), {"offset": offset})
        anyio.run(function, backend="asyncio", backend_options={"loop_factory": loop_class})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_client_across_event_loops_with_clocks_far_apart(backend: str) -> None:
    """One client with a rate budget, used from successive event loops whose clocks are far
    apart (trio gives each run a clock of its own): the second loop's requests go at the
    budget's pace (2 a second), not once its clock has caught up with the first's (a day)."""
    emulator = Emulator(api_key=KEY)
    task_id = emulator.add_task(FOREVER)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(emulator))
    client = AsyncVSRClient(
        KEY, base_url=f"http://127.0.0.1{emulator.prefix}", http_client=http, rate_limit=2
    )

    async def poll() -> None:
        with anyio.fail_after(60):  # four polls take 1.5 s; the defect waited a day
            for _ in range(4):
                await client.get_task(task_id)

    run_with_clock_at(backend, 86_400.0, poll)
    run_with_clock_at(backend, 0.0, poll)
    anyio.run(http.aclose)
    assert len(emulator.requests) == 8


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_invalid_rate_limit_is_refused(value: object, error: type[Exception]) -> None:
    """rate_limit must be a positive, finite number: anything else is refused by name."""
    with pytest.raises(error, match="rate_limit"):
        AsyncVSRClient(KEY, rate_limit=value)  # type: ignore[arg-type]


def test_current_rate_without_and_with_a_budget() -> None:
    """No budget by default; with one, `current_rate` starts at the budget."""
    assert AsyncVSRClient(KEY).current_rate is None
    assert AsyncVSRClient(KEY).rate_limit is None
    client = AsyncVSRClient(KEY, rate_limit=7)
    assert client.rate_limit == 7.0
    assert client.current_rate == 7.0


async def test_tokens_go_first_come_first_served() -> None:
    """Waiters get their tokens in the order they asked, so a watch's oldest-due poll goes
    first; and a cancelled waiter takes no token."""
    budget = RateBudget(50.0)  # a bucket of 2.5: two at once, then one every 20 ms
    order: list[int] = []

    async def take(n: int) -> None:
        await budget.acquire()
        order.append(n)

    async with anyio.create_task_group() as task_group:
        for n in range(8):
            task_group.start_soon(take, n)
            await anyio.sleep(0.001)  # start (and queue) in this order
        with anyio.move_on_after(0.01):
            await budget.acquire()  # cancelled while queued
    assert order == list(range(8))
    start = anyio.current_time()
    await budget.acquire()
    assert anyio.current_time() - start < 0.03  # the cancelled waiter took nothing extra


# 2. Over a socket: the server's count.


async def test_server_never_sees_more_than_the_budget() -> None:
    """A watch of 30 tasks at a 50 ms interval (600 polls/s wanted) plus get_task() calls
    beside it, at rate_limit=40: the server never counts more than the budget (plus the
    burst) in any half second, and the budget is used."""
    rate, window = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(30)]
    proxy = Proxy(emulator)
    async with serve(proxy, rate_limit=rate) as client:

        async def query() -> None:
            for task_id in itertools.islice(itertools.cycle(ids), 15):
                await client.get_task(task_id)

        start = time.monotonic()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(query)
                async with client.watch(ids, interval=0.05, timeout=2.0) as watcher:
                    async for _ in watcher:
                        pass
        elapsed = time.monotonic() - start
    arrivals = api_arrivals(proxy)
    burst = max(1.0, rate * RATE_BURST)
    assert most_in_window(arrivals, window) <= rate * window * 1.05 + burst + 1
    assert most_in_window(arrivals, 1.0) <= rate * 1.05 + burst + 1
    assert len(arrivals) >= 0.85 * rate * (elapsed - 0.2)  # the budget is used


@pytest.mark.parametrize(
    ("count", "interval"),
    [(20, 0.1), (5, 0.4)],  # N / rate = 0.5 s > interval; N / rate = 0.125 s < interval
    ids=["budget-bound", "interval-bound"],
)
async def test_polls_are_spread_fairly(count: int, interval: float) -> None:
    """With N tasks at rate_limit=40, every task's gap between two polls stays within
    1.2 x max(interval, N / rate) (plus a little for the loopback): no task starves while
    others are polled again and again."""
    rate = 40.0
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(count)]
    async with (
        serve(emulator, rate_limit=rate) as client,
        client.watch(ids, interval=interval, timeout=2.4) as watcher,
    ):
        with anyio.fail_after(10):
            async for _ in watcher:
                pass
    bound = 1.2 * max(interval, count / rate) + 0.08
    gaps = []
    for task_id in ids:
        times = [r.time for r in emulator.polls(task_id)]
        assert len(times) >= 4
        gaps += [after - before for before, after in itertools.pairwise(times)]
    assert max(gaps) <= bound


async def test_429_halves_the_rate_then_it_creeps_back(
    fast_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 429s in a row (no Retry-After) cut the rate the server sees to well under half
    for the next half second; successes then bring it back to the budget."""
    monkeypatch.setattr(vsr_async._rate, "RATE_RECOVERY", 0.5)  # back in ~2 s, not ~10
    rate, window = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(30)]
    limited = json_answer(429, {"message": "Too many requests"})
    proxy = Proxy(emulator, lambda _task_id, n: limited if 21 <= n <= 23 else None)
    lowest: list[float] = []
    async with serve(proxy, rate_limit=rate) as client:

        async def sample() -> None:
            while True:
                lowest.append(client.current_rate or math.inf)
                await anyio.sleep(0.01)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(sample)
                async with client.watch(ids, interval=0.05, timeout=3.0) as watcher:
                    async for _ in watcher:
                        pass
                task_group.cancel_scope.cancel()
        final = client.current_rate
    hits: list[Seen] = [s for s in proxy.seen if s.status_code == 429]
    assert len(hits) == 3
    cut = hits[-1].answered
    after = [s.arrived for s in proxy.seen if cut + 0.05 <= s.arrived < cut + 0.05 + window]
    before = [s.arrived for s in proxy.seen if cut - 0.6 <= s.arrived < cut - 0.1]
    end = max(s.arrived for s in proxy.seen)
    last = [s.arrived for s in proxy.seen if end - window < s.arrived <= end]
    assert len(before) >= 0.8 * rate * window
    assert len(after) <= 0.5 * len(before)
    assert min(lowest) <= rate * RATE_DECREASE**2
    assert len(last) >= 0.8 * rate * window
    assert final is not None
    assert final >= 0.9 * rate


async def test_retry_after_holds_polls_queued_for_a_token() -> None:
    """After a 429 with Retry-After, the polls already queued for a token wait it out too:
    none reaches the server during the pause, so the rate is cut once, not once per queued
    poll; then the watch resumes."""
    rate, retry_after = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(20)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"0.5"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 15 else None)
    rates: list[float] = []
    async with serve(proxy, rate_limit=rate) as client:

        async def sample() -> None:
            while True:
                rates.append(client.current_rate or math.inf)
                await anyio.sleep(0.01)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(sample)
                async with client.watch(ids, interval=0.05, timeout=1.5) as watcher:
                    async for _ in watcher:
                        pass
                task_group.cancel_scope.cancel()
    (hit,) = [s for s in proxy.seen if s.status_code == 429]
    during = [s for s in proxy.seen if hit.answered < s.arrived < hit.answered + retry_after]
    assert len(during) <= 1  # at most one that had its token before the 429 came back
    assert all(s.arrived < hit.answered + 0.05 for s in during)
    assert min(rates) == rate * RATE_DECREASE
    assert sum(s.arrived > hit.answered + retry_after for s in proxy.seen) >= 0.5 * rate * 0.5


async def test_downloads_take_a_token_per_request(tmp_path: Path) -> None:
    """A download is one request to the budget, not one per byte: three downloads and their
    queries at rate_limit=4 leave at most a token every 0.25 s after the first."""
    emulator = Emulator()
    ids = [emulator.add_task(DONE) for _ in range(3)]
    async with serve(emulator, rate_limit=4.0) as client:
        tasks: list[Task] = []
        with anyio.fail_after(10):
            for task_id in ids:
                tasks.append(await client.get_task(task_id))  # noqa: PERF401
            assert all(task.status is TaskStatus.COMPLETED for task in tasks)
            for task in tasks:
                await client.download(task, tmp_path)
    times = sorted(r.time for r in emulator.requests)
    assert len(times) == 6
    gaps = [after - before for before, after in itertools.pairwise(times)]
    assert min(gaps) >= 0.25 - 0.02


async def test_no_budget_sends_at_once() -> None:
    """Without rate_limit, nothing waits for a token: 20 queries go in well under a second."""
    emulator = Emulator()
    ids = [emulator.add_task(DONE) for _ in range(20)]
    async with serve(emulator) as client:
        start = time.monotonic()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for task_id in ids:
                    task_group.start_soon(client.get_task, task_id)
        assert time.monotonic() - start < 0.5
