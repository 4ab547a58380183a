"""Polling schedules (`Stretching`) and a watch's counters (`Watcher.stats`, and the CLI line
that shows them), over a real loopback socket to the emulator where timing matters."""

from __future__ import annotations

import io
import math
import random
from typing import Any

import anyio
import httpx
import pytest
from _helpers import KEY, by_task, serve
from rich.console import Console

from vsr_async import (
    AsyncVSRClient,
    Schedule,
    Stretching,
    Task,
    TaskStatus,
    Transition,
    Watcher,
    WatchStats,
)
from vsr_async._cli._display import LiveDisplay
from vsr_async._cli._tally import Tally
from vsr_async._config import RATE_WINDOW
from vsr_async.testing import Emulator, Faults, Timeline

# The schedule itself.


def test_stretching_goes_linearly_from_start_to_stop() -> None:
    """`Stretching` answers ``start`` at 0 s, ``stop`` from ``over`` on, a straight line between;
    the defaults stay inside the provider's 5-10 s advice."""
    schedule = Stretching(start=2.0, stop=6.0, over=100.0)
    assert schedule.next_interval(0.0) == 2.0
    assert schedule.next_interval(-5.0) == 2.0  # a clock that went back is not a shorter wait
    assert schedule.next_interval(25.0) == pytest.approx(3.0)
    assert schedule.next_interval(50.0) == pytest.approx(4.0)
    assert schedule.next_interval(100.0) == 6.0
    assert schedule.next_interval(1e9) == 6.0
    assert Stretching(start=5.0, stop=5.0).next_interval(10.0) == 5.0  # stop == start: constant
    default = Stretching()
    assert (default.start, default.stop, default.over) == (5.0, 10.0, 300.0)
    assert all(5.0 <= default.next_interval(t) <= 10.0 for t in range(0, 1000, 7))
    assert isinstance(default, Schedule)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"start": 0}, ValueError),
        ({"start": -1.0}, ValueError),
        ({"stop": math.inf}, ValueError),
        ({"over": math.nan}, ValueError),
        ({"start": 8.0, "stop": 6.0}, ValueError),
        ({"start": "5"}, TypeError),
        ({"over": True}, TypeError),
    ],
)
def test_stretching_refuses_bad_numbers(options: dict[str, object], error: type[Exception]) -> None:
    """Each number must be positive and finite, and ``stop`` not below ``start``."""
    with pytest.raises(error):
        Stretching(**options)  # type: ignore[arg-type]


class _Broken:
    def next_interval(self, elapsed: float) -> float:
        return -1.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("interval", "error"), [(object(), TypeError), ("5", TypeError), (_Broken(), ValueError)]
)
async def test_bad_interval_raises_before_any_request(
    interval: object, error: type[Exception]
) -> None:
    """``interval=`` that is neither seconds nor a schedule, or a schedule whose first answer
    is not a positive number, is refused when the watch (or a wait) is made."""
    sent: list[httpx.Request] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(sent.append))
    async with http, AsyncVSRClient(KEY, http_client=http) as client:
        with pytest.raises(error):
            client.watch(["fine"], interval=interval)  # type: ignore[arg-type]
        with pytest.raises(error):
            await client.wait("fine", interval=interval)  # type: ignore[arg-type]
    assert sent == []


class _Asked:
    """A schedule that notes each question the watch asks it: when (the watch's clock), the
    seconds the task had kept its status, and the answer."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.asked: list[tuple[float, float, float]] = []

    def next_interval(self, elapsed: float) -> float:
        answer = self.schedule.next_interval(elapsed)
        self.asked.append((anyio.current_time(), elapsed, answer))
        return answer


@pytest.mark.anyio
async def test_a_task_processing_for_long_is_polled_less_often() -> None:
    """With `Stretching`, the watch asks the schedule after each poll with the time the task
    has kept its status, counted from the poll that first saw it (again from 0 at a change),
    schedules the next poll when the answer says (with the jitter) and sends it no sooner: so
    the gaps grow from ``start`` to ``stop`` while the task keeps one status, and past
    ``over`` each gap is over four ``start`` intervals, the polls a constant interval would
    have sent. Decided on the watch's own clock; the task turns to processing at its 15th
    poll, not at a time."""
    start, stop, over = 0.02, 0.1, 0.5
    queued_polls = 14  # enough for `over` to pass: each gap is at least 0.9 of the answer
    # The emulator's clock counts the answers sent: this timeline is in polls.
    emulator = Emulator(clock=lambda: float(len(emulator.requests)))
    task_id = emulator.add_task(Timeline(((0.0, "queued"), (queued_polls, "processing"))))
    schedule = _Asked(Stretching(start=start, stop=stop, over=over))
    sent: list[float] = []  # when each poll was sent, on the watch's clock

    def enough() -> bool:
        answers = [answer for _, _, answer in schedule.asked[queued_polls:]]
        return sum(answer == pytest.approx(stop) for answer in answers) >= 4

    async with serve(emulator) as client:
        fetch = client._tasks.fetch

        async def logged_fetch(task_id: str) -> Task:
            sent.append(anyio.current_time())
            return await fetch(task_id)

        client._tasks.fetch = logged_fetch  # type: ignore[method-assign]
        watcher = client.watch([task_id], interval=schedule)
        schedule.asked.clear()  # (watch() asked once, to check the schedule)
        due: list[float] = []  # when the watch schedules each poll, on its clock
        plan = watcher._scheduler._schedule

        def logged_plan(entry: Any, when: float) -> None:
            due.append(when)
            plan(entry, when)

        watcher._scheduler._schedule = logged_plan  # type: ignore[method-assign]
        with anyio.fail_after(60):
            async with watcher, anyio.create_task_group() as group:
                group.start_soon(_drain, watcher)
                while not enough():  # noqa: ASYNC110 (the schedule has no event)
                    await anyio.sleep(0.01)
                group.cancel_scope.cancel()

    statuses = [request.status_code for request in emulator.requests]
    assert statuses == [200] * len(statuses)
    asked = schedule.asked
    turn = queued_polls  # the first answer that said "processing"
    assert len(sent) >= len(asked) > turn
    assert len(due) >= len(asked) + 1  # when added, then after each answer
    for index, (when, elapsed, answer) in enumerate(asked):
        # Counted from the answer to the poll that first saw the status, or later.
        first = 0 if index < turn else turn
        assert elapsed <= when - sent[first], index
        if index not in (0, turn):  # and growing by at least each gap while it lasts
            assert elapsed > asked[index - 1][1] + 0.9 * asked[index - 1][2], index
        # The next poll is due when the answer says, give or take the jitter (not later) ...
        assert due[index + 1] - when <= 1.1 * answer + 1e-9, index
        if index + 1 < len(sent):  # ... and is sent no sooner
            assert sent[index + 1] - sent[index] > 0.9 * answer, index
    answers = [answer for _, _, answer in asked]
    queued, processing = answers[:turn], answers[turn:]
    assert queued == sorted(queued)
    assert queued[-1] == pytest.approx(stop)  # it kept "queued" for longer than `over`
    assert processing[0] < queued[-1]  # a change: back toward `start` (one poll's time in)
    assert processing == sorted(processing)
    at_stop = [index for index, answer in enumerate(answers) if answer == pytest.approx(stop)]
    slow = [sent[index + 1] - sent[index] for index in at_stop if index + 1 < len(sent)]
    assert len(slow) >= 6  # in both statuses
    assert 0.9 * stop > 4 * start
    assert all(gap > 0.9 * stop for gap in slow)


async def _drain(watcher: Watcher) -> None:
    async for _ in watcher:
        pass


# The counters.


@pytest.mark.anyio
async def test_stats_count_what_the_server_saw(fast_backoff: None) -> None:
    """Through 5xx and 429s: `polls` is the server's count of polls, `retries` the failures it
    sent, `rate_limited` its 429s; sampled during the run, `in_flight` never exceeds
    max_concurrency and `rate` is the polls so far over the time since the watch began (in
    its first window); at the end nothing is watched or in flight."""
    emulator = Emulator(
        seed=3,
        timeline=Timeline.completed(queued=0.1, processing=0.1),
        faults=Faults(error_rate=0.15, rate_limit_rate=0.1, retry_after=0, latency=0.005),
    )
    ids = [emulator.add_task() for _ in range(40)]
    samples: list[WatchStats] = []
    sampled_at: list[float] = []  # the watch's clock just after each sample

    async def sample(stop: anyio.CancelScope) -> None:
        with stop:
            while True:
                samples.append(watcher.stats)
                sampled_at.append(anyio.current_time())
                await anyio.sleep(0.005)

    async with serve(emulator) as client, anyio.create_task_group() as task_group:
        sampling = anyio.CancelScope()
        with anyio.fail_after(60):
            began = anyio.current_time()  # (the watch's meter starts a moment later)
            async with client.watch(ids, interval=0.03, max_concurrency=4) as watcher:
                task_group.start_soon(sample, sampling)
                transitions = [t async for t in watcher]
                end = watcher.stats
        sampling.cancel()

    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(t.error is None and t.status is TaskStatus.COMPLETED for t in finals)
    faults = emulator.stats.faults
    # (Seed 3 draws 5xx and 429s among the first 40 requests, the fewest this watch can send:
    # however fast the machine polled.)
    assert faults.get("5xx", 0) > 0
    assert faults.get("429", 0) > 0
    assert end.polls == sum(len(emulator.polls(task_id)) for task_id in ids)
    assert end.retries == faults["5xx"] + faults["429"]
    assert end.rate_limited == faults["429"]
    assert (end.watched, end.in_flight) == (0, 0)
    assert end.allowed_rate == client.current_rate  # (10% of 429s may teach it a quota)
    assert len(samples) > 10
    assert all(0 <= s.in_flight <= 4 for s in samples)
    assert any(s.in_flight > 0 for s in samples)
    assert samples[0].watched == len(ids)
    assert [s.watched for s in samples] == sorted((s.watched for s in samples), reverse=True)
    # In its first window the rate is the polls so far over the seconds since the watch began
    # (at least one): between these two bounds whatever the machine's speed.
    first_window = [
        (s, at - began)
        for s, at in zip(samples, sampled_at, strict=True)
        if at - began < RATE_WINDOW
    ]
    assert any(s.polls for s, _ in first_window)
    for s, seconds in first_window:
        assert s.polls / max(seconds, 1.0) - 1e-9 <= s.rate <= s.polls + 1e-9
    assert [s.polls for s in samples] == sorted(s.polls for s in samples)


@pytest.mark.anyio
async def test_thousands_added_while_running_each_end_once_and_are_not_polled_after() -> None:
    """2,000 IDs added in batches while the watch runs (each added twice): each gets exactly one
    final transition, matching the server's, and no poll of it arrives after the one that saw
    it end; the counters agree with the server."""
    rng = random.Random(7)
    emulator = Emulator()
    ids = [
        emulator.add_task(
            Timeline(((0.0, "completed"),))
            if rng.random() < 0.5
            else Timeline.completed(queued=rng.uniform(0, 0.05), processing=rng.uniform(0, 0.05))
        )
        for _ in range(2000)
    ]
    transitions: list[Transition] = []

    async def add_all() -> None:
        for first in range(0, len(ids), 250):
            for task_id in ids[first : first + 250]:
                watcher.add(task_id)
                watcher.add(task_id)  # being watched: ignored
            await anyio.sleep(0.05)
        watcher.done_adding()

    async with serve(emulator) as client, anyio.create_task_group() as task_group:
        with anyio.fail_after(120):  # (a guard: 5 s here, 20 or more on a busy machine)
            async with client.watch(interval=0.03, keep_open=True) as watcher:
                task_group.start_soon(add_all)
                transitions = [t async for t in watcher]
                end = watcher.stats

    grouped = by_task(transitions)
    assert sorted(grouped) == sorted(ids)
    polls: dict[str | None, list[float]] = {}
    for request in emulator.requests:  # one poll at a time per task: in order
        polls.setdefault(request.task_id, []).append(request.time)
    for task_id, mine in grouped.items():
        assert [t.is_final for t in mine].count(True) == 1
        assert mine[-1].is_final
        assert mine[-1].error is None
        assert mine[-1].status == TaskStatus(emulator.status_of(task_id))
        # Every poll but the last arrived before the task ended: none came after the answer
        # that ended it. (The last may arrive a hair before: the emulator looks at its clock
        # again to answer.)
        ended = emulator.terminal_at(task_id)
        assert ended is not None
        assert all(time < ended for time in polls[task_id][:-1])
    assert end.polls == len(emulator.requests)
    assert (end.watched, end.in_flight, end.retries) == (0, 0, 0)


# The CLI's live display.


def test_the_live_display_shows_the_watch_counters() -> None:
    """During a watch the live display has a line of polls, retries, 429s, rate (and the
    client's allowed rate) and polls in flight; its summary counts polls, retries and 429s."""
    console = Console(file=io.StringIO(), force_terminal=True, width=110, record=True)
    display = LiveDisplay(Tally(), title="Watching", console=console)
    stats = WatchStats(
        watched=7, in_flight=3, polls=120, retries=9, rate_limited=2, rate=4.25, allowed_rate=5.0
    )
    with display:  # leaving it draws the last frame
        display.watching(lambda: stats)
    display.summary()
    screen = console.export_text()
    frame, summary = screen.split("Done after")
    assert "polls  sent 120   retries 9   429s 2   rate 4.2/s (of 5)   in flight 3" in frame
    assert "120 polls, 9 retries, 2 429s" in summary
