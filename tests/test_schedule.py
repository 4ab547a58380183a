"""Polling schedules (`Stretching`) and a watch's counters (`Watcher.stats`, and the CLI line
that shows them), over a real loopback socket to the emulator where timing matters."""

from __future__ import annotations

import io
import itertools
import math
import random

import anyio
import httpx
import pytest
from _helpers import KEY, Proxy, by_task, serve
from rich.console import Console

import vsr_async._retry
from vsr_async import (
    AsyncVSRClient,
    Schedule,
    Stretching,
    TaskStatus,
    Transition,
    WaitTimeoutError,
    WatchStats,
)
from vsr_async._cli._display import LiveDisplay
from vsr_async._cli._tally import Tally
from vsr_async.testing import Emulator, Faults, Timeline


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff between retries of a failed poll in milliseconds, not seconds."""
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_MAX", 0.05)


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


@pytest.mark.anyio
async def test_a_task_processing_for_long_is_polled_less_often() -> None:
    """With `Stretching`, the gaps between polls of a task grow from ``start`` to ``stop`` as it
    keeps one status, start again at ``start`` when its status changes, and the task gets far
    fewer polls than with a constant ``start``-second interval (both watches run side by side)."""
    start, stop, over = 0.04, 0.2, 0.4
    timeline = Timeline(((0.0, "queued"), (0.6, "processing")))  # then processes forever
    emulator = Emulator()
    stretched, constant = emulator.add_task(timeline), emulator.add_task(timeline)
    proxy = Proxy(emulator)
    schedule = Stretching(start=start, stop=stop, over=over)
    finals: dict[str, Transition] = {}

    async def watch(task_id: str, interval: float | Schedule) -> None:
        async with client.watch([task_id], interval=interval, timeout=1.6) as watcher:
            async for transition in watcher:
                finals[transition.task_id] = transition

    async with serve(proxy) as client, anyio.create_task_group() as task_group:
        task_group.start_soon(watch, stretched, schedule)
        task_group.start_soon(watch, constant, start)

    assert sorted(finals) == sorted([stretched, constant])
    assert all(isinstance(t.error, WaitTimeoutError) for t in finals.values())
    polls = [(s.arrived, s.status) for s in proxy.seen if s.task_id == stretched]
    turned = next(i for i, (_, status) in enumerate(polls) if status == "processing")
    for index, ((before, _), (after, _)) in enumerate(itertools.pairwise(polls)):
        since = polls[turned if index >= turned else 0][0]  # when the status was first seen
        expected = schedule.next_interval(before - since)
        assert expected * 0.85 < after - before < expected * 1.1 + 0.08, index
    assert polls[turned + 1][0] - polls[turned][0] < 2 * start  # a change: back to `start`
    assert max(b[0] - a[0] for a, b in itertools.pairwise(polls)) > stop * 0.85
    assert len(polls) < len(proxy.statuses(constant)) / 2


# The counters.


@pytest.mark.anyio
async def test_stats_count_what_the_server_saw(fast_backoff: None) -> None:
    """Through 5xx and 429s: `polls` is the server's count of polls, `retries` the failures it
    sent, `rate_limited` its 429s; sampled during the run, `in_flight` never exceeds
    max_concurrency and `rate` is measured; at the end nothing is watched or in flight."""
    emulator = Emulator(
        seed=3,
        timeline=Timeline.completed(queued=0.1, processing=0.1),
        faults=Faults(error_rate=0.15, rate_limit_rate=0.1, retry_after=0, latency=0.005),
    )
    ids = [emulator.add_task() for _ in range(40)]
    samples: list[WatchStats] = []

    async def sample(stop: anyio.CancelScope) -> None:
        with stop:
            while True:
                samples.append(watcher.stats)
                await anyio.sleep(0.005)

    async with serve(emulator) as client, anyio.create_task_group() as task_group:
        sampling = anyio.CancelScope()
        with anyio.fail_after(10):
            async with client.watch(ids, interval=0.03, max_concurrency=4) as watcher:
                task_group.start_soon(sample, sampling)
                transitions = [t async for t in watcher]
                end = watcher.stats
        sampling.cancel()

    finals = [t for t in transitions if t.is_final]
    assert sorted(t.task_id for t in finals) == sorted(ids)
    assert all(t.error is None and t.status is TaskStatus.COMPLETED for t in finals)
    faults = emulator.stats.faults
    assert faults.get("5xx", 0) > 0
    assert faults.get("429", 0) > 0
    assert end.polls == sum(len(emulator.polls(task_id)) for task_id in ids)
    assert end.retries == faults["5xx"] + faults["429"]
    assert end.rate_limited == faults["429"]
    assert (end.watched, end.in_flight) == (0, 0)
    assert end.allowed_rate is None  # the client has no rate budget
    assert len(samples) > 10
    assert all(0 <= s.in_flight <= 4 for s in samples)
    assert any(s.in_flight > 0 for s in samples)
    assert samples[0].watched == len(ids)
    assert [s.watched for s in samples] == sorted((s.watched for s in samples), reverse=True)
    assert max(s.rate for s in samples) > 10  # a few hundred polls in about a second
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
        with anyio.fail_after(20):
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
