"""The rate budget (``rate_limit=``): a token bucket shared by every request, that learns the
server's quota from its 429s.

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
    PAUSE_RETRY_AFTER,
    QUOTA_ANSWERS,
    QUOTA_DECREASE,
    QUOTA_FLOOR,
    QUOTA_RECOVERY,
    QUOTA_WINDOW,
    RATE_BURST,
)
from vsr_async._rate import RateBudget
from vsr_async.testing import Emulator, Quota, Timeline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from _helpers import Answer, Seen

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
    budget.set_limit(2.0)  # 2/s: the missing 0.6 token takes 0.3 s
    assert budget.try_acquire() == pytest.approx(0.3)
    clock.now += 0.3
    assert budget.try_acquire() == 0


def answer_window(
    budget: RateBudget, clock: FakeClock, accepted: int, refused: int, seconds: float = 1.0
) -> None:
    """Requests sent evenly over ``seconds`` and answered at once: ``refused`` of them 429s,
    spread among the ``accepted`` ones."""
    total, start = accepted + refused, clock.now
    for index in range(total):
        clock.now = start + seconds * index / (total - 1)
        refuse = (index + 1) * refused // total > index * refused // total
        budget.answered(clock.now, 429 if refuse else 200)
    clock.now += seconds / (total - 1)  # (the next window's first request after the last)


def test_a_window_of_429s_cuts_to_the_rate_the_server_accepted() -> None:
    """A second in which 60 of 100 requests were refused means the quota is about 40 a second:
    the rate allowed becomes QUOTA_DECREASE of that, with or without a ceiling, and answers to
    requests sent before the cut are not counted again."""
    for limit in (None, 200.0):
        clock = FakeClock()
        budget = RateBudget(limit, clock=clock)
        answer_window(budget, clock, accepted=40, refused=60)
        assert budget.current == pytest.approx(QUOTA_DECREASE * 40, rel=0.03)
        cut = budget.current
        late = clock.now - 0.5  # sent before the cut, answered after: the old rate's news
        for _ in range(100):
            budget.answered(late, 429)
        clock.now += QUOTA_WINDOW
        budget.answered(late, 429)
        assert budget.current == cut


def test_scattered_429s_cut_nothing() -> None:
    """A busy server's 429s, a few among many answers, are not a quota: no cut, and without a
    rate_limit nothing waits for a token."""
    clock = FakeClock()
    budget = RateBudget(None, clock=clock)
    for _ in range(20):
        answer_window(budget, clock, accepted=95, refused=5)
    assert budget.current is None
    assert budget.try_acquire() == 0


def test_a_server_refusing_everything_gets_a_probe_a_second() -> None:
    """A window of nothing but 429s drops the rate to QUOTA_FLOOR; once the server accepts
    again, each success climbs by QUOTA_RECOVERY of the highest rate it accepted, per second
    at full speed, back to the ceiling, and then only the ceiling holds."""
    clock = FakeClock()
    budget = RateBudget(100.0, clock=clock)
    answer_window(budget, clock, accepted=80, refused=0)  # the server accepted 80 a second
    answer_window(budget, clock, accepted=0, refused=QUOTA_ANSWERS)
    assert budget.current == QUOTA_FLOOR
    assert budget.try_acquire() == 0  # the bucket's one token ...
    assert budget.try_acquire() == pytest.approx(1 / QUOTA_FLOOR)  # ... then one a second
    elapsed = 0.0
    while budget.current is not None and budget.current < 100.0:
        elapsed += 1 / budget.current  # successes arriving at the rate allowed
        budget.answered(clock.now, 200)
    expected = (100.0 - QUOTA_FLOOR) / (QUOTA_RECOVERY * 80)  # seconds, at full traffic
    assert expected * 0.9 <= elapsed <= expected * 1.1
    assert budget.current == 100.0
    budget.answered(clock.now, 200)
    assert budget.current == 100.0  # never above the ceiling
    budget.answered(clock.now, 404)  # neither a 429 nor a success: no news
    assert budget.current == 100.0


def test_the_learnt_rate_climbs_only_while_it_holds_the_client_back() -> None:
    """Once a quota is learnt, successes raise the rate only while requests wait for tokens:
    a minute of 10 requests a second, all accepted, under a learnt rate of 34 leaves it where
    it was (the defect: it crept to 60, half again the quota, for a later burst to overshoot); a
    caller then taking every token it can makes it climb again, by about QUOTA_RECOVERY of the
    quota per second."""
    clock = FakeClock()
    budget = RateBudget(None, clock=clock)
    answer_window(budget, clock, accepted=40, refused=60)  # a quota of about 40 a second
    learnt = budget.current
    assert learnt == pytest.approx(QUOTA_DECREASE * 40, rel=0.03)
    for _ in range(600):  # a minute at 10 a second: a token is always there
        assert budget.try_acquire() == 0
        budget.answered(clock.now, 200)
        clock.now += 0.1
    assert budget.current == learnt
    start = clock.now
    while clock.now < start + 10.0:  # ten seconds of a caller that always has a request
        while (wait := budget.try_acquire()) > 0:
            clock.now += wait
        budget.answered(clock.now, 200)
    assert budget.current is not None
    climbed = (budget.current - learnt) / 10.0  # per second
    assert 0.5 * QUOTA_RECOVERY * 40 <= climbed <= 2 * QUOTA_RECOVERY * 40


class Limiter:
    """A server's limiter of ``rate`` requests a second: a leaky bucket holding ``burst``, or
    a window of ``rate`` requests per whole second of the clock."""

    def __init__(self, kind: str, rate: float, burst: float, now: float) -> None:
        self.kind, self.rate, self.burst = kind, rate, burst
        self.tokens, self.refilled = burst, now
        self.second, self.used = math.floor(now), 0

    def admits(self, now: float) -> bool:
        if self.kind == "leaky bucket":
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True
        if math.floor(now) != self.second:
            self.second, self.used = math.floor(now), 0
        self.used += 1
        return self.used <= self.rate


@pytest.mark.parametrize("limiter", ["leaky bucket", "fixed window"])
@pytest.mark.parametrize("limit", [None, 200.0], ids=["no rate_limit", "rate_limit 2x"])
def test_the_budget_settles_under_a_quota(limiter: str, limit: float | None) -> None:
    """Against a server's quota of 100 a second (a leaky bucket with a burst of 5, or a
    fixed window of one second), ten connections that always have a poll to send settle, past
    the first 10 s, at 90% of the quota or more with at most 5% of their requests refused; as
    shipped (no rate_limit) and with a rate_limit twice the quota. Simulated on a fake clock
    (2 ms to the server, 2 ms back): the budget's arithmetic, not this machine's speed."""
    clock = FakeClock()
    start, end, half_trip = clock.now, clock.now + 60.0, 0.002
    budget = RateBudget(limit, clock=clock)
    quota = Limiter(limiter, 100.0, 5.0, clock.now)
    answered: list[tuple[float, int]] = []
    # (when, connection, (sent at, status) of its answer due then, or None: ready to send)
    events: list[tuple[float, int, tuple[float, int] | None]] = [
        (clock.now, connection, None) for connection in range(10)
    ]
    while clock.now < end:
        events.sort(key=lambda event: event[0])
        clock.now, connection, answer = events.pop(0)
        if answer is not None:
            budget.answered(*answer)
            events.append((clock.now, connection, None))
        elif (wait := budget.try_acquire()) > 0:
            events.append((clock.now + wait, connection, None))
        else:
            status = 200 if quota.admits(clock.now + half_trip) else 429
            answered.append((clock.now, status))
            events.append((clock.now + 2 * half_trip, connection, (clock.now, status)))
    settled = [status for at, status in answered if at >= start + 10.0]
    assert settled.count(200) / (end - start - 10.0) >= 0.9 * quota.rate
    assert settled.count(429) / len(settled) <= 0.05


def test_only_a_long_retry_after_pauses_every_token() -> None:
    """A Retry-After shorter than PAUSE_RETRY_AFTER pauses nothing (its request waits it out
    alone); one from PAUSE_RETRY_AFTER to MAX_RETRY_AFTER, on a 429 or any other error, stops
    every token until it has passed; a longer one pauses nothing (it is raised, not waited);
    a success's means nothing; and one 429 cuts no rate."""
    clock = FakeClock()
    budget = RateBudget(400.0, clock=clock)  # a bucket of 20, full
    budget.answered(clock.now, 200, "30")
    budget.answered(clock.now, 429, str(PAUSE_RETRY_AFTER - 1))
    budget.answered(clock.now, 429, str(MAX_RETRY_AFTER + 1))
    budget.answered(clock.now, 429, "not a number")
    assert budget.try_acquire() == 0
    assert budget.current == 400.0
    budget.answered(clock.now, 503, str(PAUSE_RETRY_AFTER))
    assert budget.try_acquire() == pytest.approx(PAUSE_RETRY_AFTER)
    budget.answered(clock.now, 429, str(MAX_RETRY_AFTER))
    assert budget.try_acquire() == pytest.approx(MAX_RETRY_AFTER)
    clock.now += MAX_RETRY_AFTER
    assert budget.try_acquire() == 0
    assert budget.current == 400.0


def test_a_clock_going_back_never_starves_the_bucket() -> None:
    """A clock that jumps back (a new event loop's) earns no tokens and owes none: the bucket
    gives the next token at its rate, a pause keeps only what it had left, and a window of
    answers keeps its age."""
    clock = FakeClock()
    budget = RateBudget(4.0, clock=clock)  # a bucket of one, a token every 0.25 s
    assert budget.try_acquire() == 0
    budget.pause(2.0)
    clock.now -= 50_000.0
    assert budget.try_acquire() == pytest.approx(2.0)  # not 50,002 s
    clock.now += 2.0
    assert budget.try_acquire() == 0
    assert budget.try_acquire() == pytest.approx(0.25)
    # A window of answers open when the clock jumps is judged over the time it was open.
    budget = RateBudget(None, clock=clock)
    answer_window(budget, clock, accepted=20, refused=20, seconds=0.5)  # too young to judge
    clock.now -= 1_000.0
    answer_window(budget, clock, accepted=20, refused=20, seconds=0.6)  # 1.1 s in all
    assert budget.current is not None
    assert QUOTA_DECREASE * 40 / 1.1 <= budget.current <= QUOTA_DECREASE * 40


def test_a_clock_leaping_forward_earns_one_bucket_and_judges_no_window_over_the_leap() -> None:
    """A clock that leaps forward (a machine suspended, a new event loop's clock ahead) earns
    no more than a full bucket, however long the leap; a pause it passed is over; and a window
    of answers it interrupts starts again after it, instead of judging the quota over the
    leap (which would take the leap for the server's slowness, and cut the rate to nothing)."""
    clock = FakeClock()
    budget = RateBudget(400.0, clock=clock)  # a bucket of 20
    for _ in range(20):
        assert budget.try_acquire() == 0
    budget.pause(30.0)
    clock.now += 86_400.0
    taken = 0
    while budget.try_acquire() == 0:
        taken += 1
    assert taken == 20  # one bucket, not 400 a second for a day
    # Half a window's answers, mostly 429s, then the leap, then a window of the same.
    budget = RateBudget(None, clock=clock)
    answer_window(budget, clock, accepted=10, refused=10, seconds=0.5)
    clock.now += 3_600.0
    answer_window(budget, clock, accepted=30, refused=30, seconds=1.0)
    assert budget.current is not None  # judged: the quota is about 30 a second ...
    assert budget.current >= QUOTA_DECREASE * 30 * 0.9  # ... over the second after the leap


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


async def test_a_429_delays_only_the_task_that_met_it() -> None:
    """A 429 with a short Retry-After (2 s) holds back the task that met it, for that long,
    and no other: every other task is polled three more times before it is polled again.
    (The defect paused every poll of the client for the Retry-After.)"""
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(20)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"2"))
    proxy = Proxy(emulator, lambda _task_id, n: limited if n == 25 else None)

    def after_the_429() -> list[Seen]:
        hits = [index for index, seen in enumerate(proxy.seen) if seen.status_code == 429]
        return proxy.seen[hits[0] + 1 :] if hits else []

    def retried() -> bool:
        (hit,) = [s for s in proxy.seen if s.status_code == 429]
        return any(seen.task_id == hit.task_id for seen in after_the_429())

    async with serve(proxy) as client:
        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=0.05) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                await until(lambda: bool(after_the_429()) and retried())
                group.cancel_scope.cancel()
    (hit,) = [s for s in proxy.seen if s.status_code == 429]
    later = after_the_429()
    again = next(i for i, seen in enumerate(later) if seen.task_id == hit.task_id)
    assert later[again].arrived >= hit.answered + 2.0
    others = collections.Counter(seen.task_id for seen in later[:again])
    assert set(others) == set(ids) - {hit.task_id}
    assert min(others.values()) >= 3, others
    assert client.current_rate is None  # one 429 among many answers: no quota learnt


async def test_a_refused_task_keeps_its_place_in_line() -> None:
    """While 40 tasks wait their turn for the budget (rate_limit=20), the first one polled is
    refused (a 429, Retry-After 0.2 s): its Retry-After passed, it is polled ahead of the tasks
    that became due after it, not behind every task due by then (the defect: a refused task
    lost a turn per refusal, so under a quota one was polled a third of its fair share).
    Decided on the order of polls: the budget lets at most 6 go out in 0.24 s, and then only the
    few polls already handed to a worker come before it, on any machine."""
    tasks = 40
    emulator = Emulator()
    ids = [emulator.add_task(FOREVER) for _ in range(tasks)]
    limited = json_answer(429, {"message": "Too many requests"}, (b"retry-after", b"0.2"))
    refused: list[str] = []

    def answer(task_id: str | None, _: int) -> Answer | None:
        if refused or task_id is None:
            return None
        refused.append(task_id)  # the first task polled
        return limited

    proxy = Proxy(emulator, answer)

    def order() -> list[str | None]:
        return [seen.task_id for seen in sorted(proxy.seen, key=lambda seen: seen.arrived)]

    async with serve(proxy, rate_limit=20.0, max_connections=2) as client:
        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=60.0) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                await until(lambda: set(order()) == set(ids) and order().count(refused[0]) == 2)
                group.cancel_scope.cancel()
    polls = order()
    assert polls[0] == refused[0]
    again = polls.index(refused[0], 1)
    due_later = [task_id for task_id in ids if task_id != refused[0]]
    behind = [task_id for task_id in due_later if polls.index(task_id) > again]
    assert len(behind) >= tasks // 2, again  # (about 30; the defect: none)


@pytest.mark.parametrize("retry_after", [True, False], ids=["Retry-After", "no Retry-After"])
async def test_the_client_learns_the_servers_quota(retry_after: bool) -> None:
    """Without a rate_limit, 40 tasks wanting 800 polls a second against the emulator's quota
    of 20 a second: the client learns a rate at or under the quota (what the server accepted,
    cut by QUOTA_DECREASE), then keeps polling every task, with fewer 429s than before it
    learnt. The watch runs until each task has been polled after the cut."""
    quota = Quota(20.0, burst=2.0, retry_after=retry_after)
    emulator = Emulator(quota=quota)
    ids = [emulator.add_task(FOREVER) for _ in range(40)]
    async with serve(emulator) as client:
        log = BudgetLog(client)

        def cut_at() -> float | None:
            learnt = [at for at, _, _, rate in log.answers if rate is not None]
            return learnt[0] if learnt else None

        def every_task_polled_since() -> bool:
            learnt = [monotonic for _, monotonic, _, rate in log.answers if rate is not None]
            polled = {r.task_id for r in emulator.requests if learnt and r.time > learnt[0]}
            return polled >= set(ids)

        with anyio.fail_after(60):
            async with (
                client.watch(ids, interval=0.05) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, watcher)
                await until(every_task_polled_since)
                group.cancel_scope.cancel()
    assert cut_at() is not None
    first_rate = next(rate for *_, rate in log.answers if rate is not None)
    assert first_rate <= quota.rate
    learnt_monotonic = next(m for _, m, _, rate in log.answers if rate is not None)
    before = [r.status_code for r in emulator.requests if r.time <= learnt_monotonic]
    after = [r.status_code for r in emulator.requests if r.time > learnt_monotonic]
    # Refused more before it learnt than after (how many more depends on how fast this machine
    # sent its first polls), and mostly under the quota after.
    assert after.count(429) / len(after) < min(before.count(429) / len(before), 0.25)
    refused = [r for r in emulator.requests if r.status_code == 429]
    assert all(r.fault == "quota" for r in refused)


async def test_a_long_retry_after_pauses_every_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After of PAUSE_RETRY_AFTER or more (here 0.5 s, for a short test) means the
    server is closed to every request for that long: the polls already queued for a token
    wait it out too. The budget gives no token until the pause has passed, so every request
    the server sees during the pause had its token before the 429 came back; then the watch
    resumes."""
    monkeypatch.setattr(vsr_async._rate, "PAUSE_RETRY_AFTER", 0.5)
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


def test_a_ceiling_moving_keeps_what_the_429s_taught() -> None:
    """A fleet worker's share moves every second: a ceiling lowered below the learnt rate
    and raised again leaves the learnt rate in force."""
    clock = FakeClock()
    budget = RateBudget(200.0, clock=clock)
    answer_window(budget, clock, accepted=40, refused=60)
    learnt = budget.current
    assert learnt is not None
    assert learnt < 50
    budget.set_limit(10.0)
    budget.answered(clock.now, 200)
    budget.set_limit(200.0)
    assert budget.current is not None
    assert budget.current < 50


def test_a_clients_rate_limit_is_settable() -> None:
    client = AsyncVSRClient(KEY)
    client.rate_limit = 5
    assert (client.rate_limit, client.current_rate) == (5, 5)
    with pytest.raises(ValueError, match="rate_limit"):
        client.rate_limit = 0
    client.rate_limit = None
    assert client.current_rate is None
