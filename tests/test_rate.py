"""The rate budget (``rate_limit=``): a token bucket shared by every request, AIMD on 429s.

The arithmetic is checked on a fake clock; the rest over a real loopback socket, on what the
server answered and the budget's own record of the tokens it gave and the rates it allowed:
never on how many requests this machine managed to send in a second (on a busy machine, fewer
than the budget allows), and with watches that run until something happened, not for a time.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import trio
from _helpers import KEY, Proxy, json_answer, serve

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

    from vsr_async import Watcher

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


class BudgetLog:
    """What a client's budget did, on its own clock: every token it gave out, and every answer
    it learnt from with the rate allowed after it. The server's count says what arrived; this
    says why, without depending on how fast this machine got the requests there."""

    def __init__(self, client: AsyncVSRClient) -> None:
        budget = client._session.budget
        assert budget is not None
        self.grants: list[float] = []  # when each token was taken
        self.answers: list[tuple[float, float, int, float]] = []
        # (clock just before learning, time.monotonic() then, status code, rate allowed after)
        acquire, answered = budget.acquire, budget.answered

        async def logged_acquire() -> float:
            taken = await acquire()
            self.grants.append(taken)
            return taken

        def logged_answered(
            sent_at: float, status_code: int, retry_after: str | None = None
        ) -> None:
            before = (anyio.current_time(), time.monotonic())
            answered(sent_at, status_code, retry_after)
            self.answers.append((*before, status_code, budget.current))

        budget.acquire = logged_acquire  # type: ignore[method-assign]
        budget.answered = logged_answered  # type: ignore[method-assign]

    @property
    def rates(self) -> list[float]:
        """The rate allowed after each answer, in order."""
        return [rate for *_, rate in self.answers]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``: the caller bounds the wait with a generous deadline."""
    while not condition():  # noqa: ASYNC110 (the counters have no event)
        await anyio.sleep(0.01)


async def drain(watcher: Watcher) -> None:
    """Take a watch's transitions (its pollers wait for a consumer) until it is stopped."""
    async for _ in watcher:
        pass


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
    """A Retry-After stops all tokens until it has passed; one past MAX_RETRY_AFTER pauses
    nothing (it is raised, not waited); on an answer other than a 429 it pauses without
    cutting the rate."""
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
    budget.answered(sent, 429, str(MAX_RETRY_AFTER + 1))
    assert budget.current == 200.0
    assert budget.try_acquire() == 0  # cut, not paused
    budget.answered(sent, 429, str(MAX_RETRY_AFTER))
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
    first; and a cancelled waiter takes no token. The bucket runs on a clock that moves only
    when the test gives one more token's worth of time."""
    clock = FakeClock()
    budget = RateBudget(50.0, clock=clock)  # a bucket of 2.5: two at once, then one every 20 ms
    order: list[int] = []

    async def take(n: int) -> None:
        await budget.acquire()
        order.append(n)

    steps = 0
    with anyio.fail_after(30):
        async with anyio.create_task_group() as task_group:
            for n in range(8):
                task_group.start_soon(take, n)
                await anyio.sleep(0.001)  # start (and queue) in this order
            assert order == [0, 1]  # the rest wait: the clock has not moved
            with anyio.move_on_after(0.05):
                await budget.acquire()  # cancelled while queued
            while len(order) < 8:
                taken = len(order)
                clock.now += 1 / 50  # one token's worth: the next waiter, and only it
                steps += 1
                while len(order) == taken:  # noqa: ASYNC110 (the waiter sleeps, then looks)
                    await anyio.sleep(0.001)
    assert order == list(range(8))
    assert steps == 6  # the cancelled waiter took none of the tokens given
    assert budget.try_acquire() == pytest.approx(0.5 / 50)  # half a token left, as if never asked


# 2. Over a socket: the server's count.


async def test_server_never_sees_more_than_the_budget() -> None:
    """A watch of 30 tasks at a 50 ms interval (600 polls/s wanted) plus get_task() calls
    beside it, at rate_limit=40: the budget never gives more than its rate (plus the burst) in
    any half second, and the server never counts more than that plus the requests that were
    on their way (at most one per connection); every request took a token, at the full
    budget (the rate was never cut without a 429)."""
    rate, window = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(30)]
    proxy = Proxy(emulator)
    async with serve(proxy, rate_limit=rate) as client:
        log = BudgetLog(client)

        async def query() -> None:
            for task_id in itertools.islice(itertools.cycle(ids), 15):
                await client.get_task(task_id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(query)
                async with client.watch(ids, interval=0.05, timeout=2.0) as watcher:
                    async for _ in watcher:
                        pass
    arrivals = api_arrivals(proxy)
    burst = max(1.0, rate * RATE_BURST)
    for seconds in (window, 1.0):
        allowed = rate * seconds + burst + 1  # (one for float rounding)
        assert most_in_window(log.grants, seconds) <= allowed
        # A busy server may read requests sent apart all at once: the window may also hold
        # those given a token before it and still on their way, each holding a connection.
        assert most_in_window(arrivals, seconds) <= allowed + client.max_connections
    # Every request the server saw took one token, and the budget gave them at its full rate:
    # no answer cut it. (A poll still waiting for its token or its answer when its task's
    # timeout came is abandoned: a token may go unused, a request never goes untokened.)
    assert len(log.grants) >= len(arrivals) >= len(log.answers)
    assert len(arrivals) >= len(ids) + 15  # each task polled, each query sent
    assert set(log.rates) == {rate}


@pytest.mark.parametrize(
    ("count", "interval"),
    [(20, 0.1), (5, 0.4)],  # N / rate = 0.5 s > interval; N / rate = 0.125 s < interval
    ids=["budget-bound", "interval-bound"],
)
async def test_polls_are_spread_fairly(count: int, interval: float) -> None:
    """With N tasks at rate_limit=40, the watch polls them in turn: between two polls of one
    task, no other task is polled more than twice, whether the budget or the interval sets the
    pace; no task starves while others are polled again and again. Decided on the order of
    the polls, until every task has had six."""
    rate = 40.0
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(count)]
    async with serve(emulator, rate_limit=rate) as client:
        order: list[str] = []  # the watch's polls, in the order it sent them
        fetch = client._tasks.fetch

        async def logged_fetch(task_id: str) -> Task:
            order.append(task_id)
            return await fetch(task_id)

        client._tasks.fetch = logged_fetch  # type: ignore[method-assign]
        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=interval) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                # (or until one has had far more: a starving watch fails the checks, not
                # the deadline)
                await until(
                    lambda: (
                        all(order.count(task_id) >= 6 for task_id in ids)
                        or len(order) >= 10 * len(ids)
                    )
                )
                group.cancel_scope.cancel()
    for task_id in ids:
        mine = [index for index, polled in enumerate(order) if polled == task_id]
        for before, after in itertools.pairwise(mine):
            between = collections.Counter(order[before + 1 : after])
            assert max(between.values(), default=0) <= 2, (task_id, between)
    assert all(order.count(task_id) >= 6 for task_id in ids)


async def test_429_halves_the_rate_then_it_creeps_back(
    fast_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 429s in a row (no Retry-After) halve the rate allowed at least once (a 429 to a
    request sent before the last cut is old news); in the half second after the cut, the
    budget gives no more tokens than the cut rate earns; then each success raises the rate, a
    step at a time, back to the budget. Decided on the budget's own record, and the watch runs
    until the rate is back, however long this machine takes."""
    monkeypatch.setattr(vsr_async._rate, "RATE_RECOVERY", 0.5)  # back in ~2 s, not ~10
    rate, window = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(30)]
    limited = json_answer(429, {"message": "Too many requests"})
    proxy = Proxy(emulator, lambda _task_id, n: limited if 21 <= n <= 23 else None)
    async with serve(proxy, rate_limit=rate) as client:
        log = BudgetLog(client)

        def back_to_the_budget() -> bool:
            learnt = [status for _, _, status, _ in log.answers]
            return learnt.count(429) == 3 and client.current_rate == rate

        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=0.05) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                await until(back_to_the_budget)
                group.cancel_scope.cancel()
    assert [s.status_code for s in proxy.seen].count(429) == 3
    before = [rate, *log.rates]  # the rate allowed before each answer
    cuts = []
    for index, (_, _, status, after) in enumerate(log.answers):
        if status == 429:
            assert after in (before[index], before[index] * RATE_DECREASE)  # halved, or old news
            if after < before[index]:
                cuts.append(index)
        else:
            assert after >= before[index]  # nothing else cuts it
    assert cuts
    last_cut = cuts[-1]
    cut_at, _, _, cut_rate = log.answers[last_cut]
    assert cut_rate <= rate * RATE_DECREASE
    # The half second after the cut: at most the bucket's one token and what the rate allowed
    # over that time earns (the rate steps up at each success), with one for float rounding.
    steps = [(at, allowed) for at, _, _, allowed in log.answers[last_cut:] if at < cut_at + window]
    earned = sum(
        allowed * (next_at - at)
        for (at, allowed), (next_at, _) in itertools.pairwise([*steps, (cut_at + window, 0.0)])
    )
    given = [at for at in log.grants if cut_at <= at < cut_at + window]
    assert len(given) <= 1 + earned + 1
    # Then back, one success at a time: the rate never drops again, and the climb from a cut
    # to the budget takes many successes, not one.
    climb = log.answers[last_cut + 1 :]
    rates = [allowed for *_, allowed in climb]
    assert rates == sorted(rates)
    assert rates[-1] == rate
    assert sum(200 <= status < 300 for _, _, status, _ in climb) >= 20


async def test_retry_after_holds_polls_queued_for_a_token() -> None:
    """After a 429 with Retry-After, the polls already queued for a token wait it out too: the
    budget gives no token until the pause has passed, so every request the server sees during
    the pause had its token before the 429 came back, and the rate is cut once, not once per
    queued poll; then the watch resumes."""
    rate, retry_after = 40.0, 0.5
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(20)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"0.5"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 15 else None)
    async with serve(proxy, rate_limit=rate) as client:
        log = BudgetLog(client)

        def resumed() -> bool:
            hits = [s for s in proxy.seen if s.status_code == 429]
            return (
                bool(hits)
                and sum(s.arrived > hits[0].answered + retry_after for s in proxy.seen) >= 10
            )

        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=0.05) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                await until(resumed)
                group.cancel_scope.cancel()
    (hit,) = [s for s in proxy.seen if s.status_code == 429]
    (learnt,) = [index for index, (_, _, status, _) in enumerate(log.answers) if status == 429]
    learnt_at, learnt_monotonic, _, _ = log.answers[learnt]
    # The client's side: no token between learning of the 429 and the end of its pause.
    granted_before = [at for at in log.grants if at < learnt_at]
    granted_after = [at for at in log.grants if at >= learnt_at]
    assert granted_after
    assert min(granted_after) >= learnt_at + retry_after - 1e-9
    # The server's side: what arrived during the pause left before the client learnt of the
    # 429 (the 429 was answered before the client learnt of it, and a token given after the
    # pause cannot arrive before it ends).
    assert hit.answered <= learnt_monotonic
    arrived_by_pause_end = [s for s in proxy.seen if s.arrived < hit.answered + retry_after]
    assert len(arrived_by_pause_end) <= len(granted_before)
    # Cut once: the rate after the 429 is half the budget, and nothing cut it again.
    assert min(log.rates) == rate * RATE_DECREASE
    assert sum(s.arrived > hit.answered + retry_after for s in proxy.seen) >= 10  # resumed


async def test_downloads_take_a_token_per_request(tmp_path: Path) -> None:
    """A download is one request to the budget, not one per byte: three downloads and their
    queries at rate_limit=4 take six tokens, one per request, at most one every 0.25 s after
    the first."""
    emulator = Emulator()
    ids = [emulator.add_task(DONE) for _ in range(3)]
    async with serve(emulator, rate_limit=4.0) as client:
        log = BudgetLog(client)
        tasks: list[Task] = []
        with anyio.fail_after(60):
            for task_id in ids:
                tasks.append(await client.get_task(task_id))  # noqa: PERF401
            assert all(task.status is TaskStatus.COMPLETED for task in tasks)
            for task in tasks:
                await client.download(task, tmp_path)
    assert len(emulator.requests) == len(log.grants) == 6
    gaps = [after - before for before, after in itertools.pairwise(log.grants)]
    assert min(gaps) >= 0.25 - 1e-6  # a bucket of one: the budget's own clock


class _Gate:
    """The emulator, holding every answer until ``size`` requests are in at once."""

    def __init__(self, emulator: Emulator, size: int) -> None:
        self.emulator = emulator
        self.prefix = emulator.prefix
        self.size = size
        self.waiting = 0
        self.most = 0
        self._full = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.waiting += 1
            self.most = max(self.most, self.waiting)
            if self.waiting == self.size:
                self._full.set()
            await self._full.wait()
            self.waiting -= 1
            if self.waiting == 0:
                self._full = anyio.Event()  # the next group waits for its own
        await self.emulator(scope, receive, send)


async def test_no_budget_sends_at_once() -> None:
    """Without rate_limit, nothing waits for a token: 20 queries fill every connection at
    once, before the server answers any of them (it holds each answer until they are all in)."""
    emulator = Emulator()
    ids = [emulator.add_task(DONE) for _ in range(20)]
    gate = _Gate(emulator, size=10)
    async with serve(gate) as client:  # type: ignore[arg-type]
        assert client.current_rate is None
        assert client.max_connections == 10
        with anyio.fail_after(60):
            async with anyio.create_task_group() as task_group:
                for task_id in ids:
                    task_group.start_soon(client.get_task, task_id)
    assert gate.most == 10
    assert len(emulator.requests) == 20


def test_the_limit_can_change_while_the_client_runs() -> None:
    """A worker sets its share of a fleet's budget every second: the new limit holds at once
    (the rate allowed now becomes it), from none to some, and back to none."""
    now = [0.0]
    budget = RateBudget(None, clock=lambda: now[0])
    assert budget.try_acquire() == 0.0
    budget.set_limit(10.0)
    assert budget.current == 10.0
    while budget.try_acquire() == 0.0:  # the bucket: at most its size at once
        pass
    assert budget.try_acquire() == pytest.approx(0.1)
    now[0] += 1.0
    budget.set_limit(2.0)  # smaller: the tokens earned are cut to the new bucket
    taken = 0
    while budget.try_acquire() == 0.0:
        taken += 1
    assert taken == 1
    budget.set_limit(None)
    assert budget.try_acquire() == 0.0
    assert budget.current is None


def test_a_clients_rate_limit_is_settable() -> None:
    client = AsyncVSRClient(KEY)
    client.rate_limit = 5
    assert (client.rate_limit, client.current_rate) == (5, 5)
    with pytest.raises(ValueError, match="rate_limit"):
        client.rate_limit = 0
    client.rate_limit = None
    assert client.current_rate is None
