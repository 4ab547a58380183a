"""Instrumentation: `Hooks` told of every attempt, poll, retry, transition, watch, create and
download, and the OpenTelemetry spans and metrics built on them, over a real socket against the
emulator, on asyncio and trio."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _helpers import KEY, Proxy, json_answer, request_driven, serve
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from vsr_async import (
    AsyncVSRClient,
    CreateDetails,
    DownloadDetails,
    Hooks,
    Model,
    PollDetails,
    RateLimitError,
    RequestDetails,
    RetryDetails,
    ServerError,
    Task,
    TransitionDetails,
    WaitTimeoutError,
    WatchDetails,
)
from vsr_async.otel import OpenTelemetryHooks
from vsr_async.testing import Timeline

if TYPE_CHECKING:
    from pathlib import Path

    from _helpers import Answer
    from opentelemetry.sdk.trace import ReadableSpan

pytestmark = pytest.mark.anyio

#: Set by the test around its calls: a hook reading it runs in the caller's task.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="scheduler")
#: Timelines in requests answered (a request-driven emulator): the same on a busy machine.
COMPLETES = Timeline.completed(queued=20, processing=20)
FAILS = Timeline.failed(queued=20, processing=20, error="unsupported codec")
ENDLESS = Timeline(((0.0, "queued"),))


@pytest.fixture(autouse=True)
def _fast(fast_backoff: None) -> None:
    """Retries after milliseconds, not seconds, in every test here."""


class Recorder(Hooks):
    """Every call, in order, with the caller's context for watches."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.callers: list[str] = []

    def on_request(self, details: RequestDetails) -> None:
        self.events.append(details)

    def on_poll(self, details: PollDetails) -> None:
        self.events.append(details)

    def on_retry(self, details: RetryDetails) -> None:
        self.events.append(details)

    def on_transition(self, details: TransitionDetails) -> None:
        self.events.append(details)

    def on_watch(self, details: WatchDetails) -> None:
        self.events.append(details)
        if not details.ended:
            self.callers.append(CALLER.get())

    def on_create(self, details: CreateDetails) -> None:
        self.events.append(details)

    def on_download(self, details: DownloadDetails) -> None:
        self.events.append(details)

    def of(self, kind: type[Any], task_id: str | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (task_id is None or getattr(e, "task_id", None) == task_id)
        ]


class Script:
    """The proxy's answers: the completing task's 1st poll 503, its 2nd 429 (no Retry-After),
    the first create 429 (Retry-After 0); everything else from the emulator."""

    def __init__(self, retried: str) -> None:
        self.retried = retried
        self.polls = 0
        self.creates = 0

    def __call__(self, task_id: str | None, _: int) -> Answer | None:
        if task_id is None:
            self.creates += 1
            if self.creates == 1:
                return json_answer(429, {"message": "slow down"}, (b"retry-after", b"0"))
            return None
        if task_id == self.retried:
            self.polls += 1
            if self.polls == 1:
                return json_answer(503, {"message": "busy"})
            if self.polls == 2:
                return json_answer(429, {"message": "slow down"})
        return None


async def scenario(
    tmp_path: Path,
    *hooks: Hooks,
    completes: Timeline = COMPLETES,
    fails: Timeline = FAILS,
    interval: float = 0.01,
    within: contextlib.AbstractContextManager[object] | None = None,
) -> tuple[str, str, str]:
    """A create refused once, a watch of a task that completes after a 503 and a 429 and of one
    that fails, and a download: the IDs (completed, failed, created). ``within`` is entered
    around the calls, once the server is up (tests/trace_picture.py draws the scenario, in a
    span of its own, with shorter timelines)."""
    emulator = request_driven(api_key=KEY, timeline=completes)
    done, failed = emulator.add_task(completes), emulator.add_task(fails)
    proxy = Proxy(emulator, Script(done))
    async with serve(proxy, hooks=list(hooks), rate_limit=1000) as client:
        token = CALLER.set("caller")
        try:
            with contextlib.nullcontext() if within is None else within:
                created = await client.create_task(
                    "https://example.com/a.mp4", model=Model.SUPER_RESOLUTION_1080P_LOWFPS
                )
                async with client.watch([done, failed], interval=interval) as watch:
                    transitions = [t async for t in watch]
                await client.download(done, tmp_path)
        finally:
            CALLER.reset(token)
    assert {t.status for t in transitions if t.is_final} == {"completed", "failed"}
    return done, failed, created.id


async def test_hooks_are_told_of_every_step(tmp_path: Path) -> None:
    """Each poll, retry, transition, watch, create, request and download reaches the hook, with
    what happened: the 503 and the 429 as retried polls, the 429 of the create as its retry."""
    recorder = Recorder()
    done, failed, _ = await scenario(tmp_path, recorder)

    polls = recorder.of(PollDetails, done)
    assert [p.status_code for p in polls[:3]] == [503, 429, 200]
    assert [p.attempt for p in polls[:3]] == [0, 1, 2]
    assert isinstance(polls[0].error, ServerError)
    assert isinstance(polls[1].error, RateLimitError)
    assert all(p.duration >= 0 and p.lateness >= 0 and p.started > 0 for p in polls)
    assert polls[-1].task is not None
    assert polls[-1].task.status == "completed"

    retries = recorder.of(RetryDetails, done)
    assert [(r.attempt, type(r.error)) for r in retries] == [(1, ServerError), (2, RateLimitError)]
    assert all(r.what == "GET /v1/result/{id}" for r in retries)

    for task_id, end in ((done, "completed"), (failed, "failed")):
        statuses = [t.task.status for t in recorder.of(TransitionDetails, task_id)]
        assert statuses == ["queued", "processing", end]
        first = recorder.of(TransitionDetails, task_id)[0]
        assert first.previous is None
        watch = recorder.of(WatchDetails, task_id)
        assert [w.ended for w in watch] == [False, True]
        assert watch[0].watcher is watch[1].watcher
        assert watch[1].error is None
        assert watch[1].task.status == end
    assert recorder.callers == ["caller", "caller"]  # on_watch ran in the caller's task

    [create] = recorder.of(CreateDetails)
    assert create.task is not None
    assert create.error is None
    assert [type(r.error) for r in create.retries] == [RateLimitError]
    assert create.retries[0].what == "POST /v1/super-resolution/videos"

    requests = recorder.of(RequestDetails)
    endpoints = {(r.method, r.endpoint, r.status_code) for r in requests}
    assert ("POST", "/v1/super-resolution/videos", 429) in endpoints
    assert ("POST", "/v1/super-resolution/videos", 200) in endpoints
    assert ("GET", "/v1/result/{id}", 503) in endpoints
    assert ("GET", "/v1/result/{id}", 429) in endpoints
    assert ("GET", "download", 200) in endpoints
    assert all(r.rate_wait >= 0 and r.duration >= 0 for r in requests)
    assert all(r.allowed_rate is not None and r.allowed_rate <= 1000 for r in requests)

    [download] = recorder.of(DownloadDetails)
    assert download.task_id == done
    assert download.error is None
    assert download.received == download.path.stat().st_size > 0


async def test_a_watch_given_up_is_told_with_its_error() -> None:
    """A task past its timeout ends its watch with the `WaitTimeoutError`; a task the watch
    lets go ends it with no error."""
    emulator = request_driven(api_key=KEY)
    slow, other = emulator.add_task(ENDLESS), emulator.add_task(ENDLESS)
    recorder = Recorder()
    async with serve(emulator, hooks=recorder) as client:
        with pytest.raises(WaitTimeoutError):
            await client.wait(slow, interval=0.01, timeout=0.2)
        async with client.watch([other], interval=0.01) as watch:
            await watch.__anext__()
    [_, ended] = recorder.of(WatchDetails, slow)
    assert ended.ended
    assert isinstance(ended.error, WaitTimeoutError)
    [_, let_go] = recorder.of(WatchDetails, other)
    assert let_go.ended
    assert let_go.error is None
    assert let_go.task is not None
    assert let_go.task.status == "queued"


class Broken(Hooks):
    def on_poll(self, details: PollDetails) -> None:
        raise ZeroDivisionError


async def test_a_hook_that_raises_is_logged_once_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken hook never stops a watch, and the hooks after it are still called."""
    emulator = request_driven(api_key=KEY)
    task_id = emulator.add_task(COMPLETES)
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="vsr_async"):
        async with serve(emulator, hooks=[Broken(), recorder]) as client:
            task = await client.wait(task_id, interval=0.01)
    assert task.status == "completed"
    assert len(recorder.of(PollDetails)) >= 3
    raised = [r for r in caplog.records if "Broken.on_poll raised" in r.getMessage()]
    assert len(raised) == 1


@pytest.mark.parametrize("hooks", [object(), [Hooks(), "x"], Hooks])
def test_hooks_must_be_hooks(hooks: Any) -> None:
    """Anything but a Hooks instance or a list of them is refused, by name."""
    with pytest.raises(TypeError, match="hooks must be a Hooks instance"):
        AsyncVSRClient("key", hooks=hooks)


# OpenTelemetry, through the SDK's in-memory exporters.


def names(spans: list[ReadableSpan], name: str, task_id: str | None = None) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.name == name
        and (task_id is None or (s.attributes or {}).get("vsr.task.id") == task_id)
    ]


async def test_otel_span_tree_and_metrics(tmp_path: Path) -> None:
    """The span tree (creates, watches and polls under the caller's span, polls under their
    task's watch) and every metric, for a watch with a retry, a 429 and a failed task."""
    hooks, exporter, reader = _otel()
    tracer = TracerProvider().get_tracer("test")  # the app's spans, on a provider of its own
    with tracer.start_as_current_span("request") as root:
        done, failed, created = await scenario(tmp_path, hooks)
    spans = list(exporter.get_finished_spans())
    root_id = root.get_span_context().span_id

    [create] = names(spans, "vsr.create")
    assert create.parent is not None
    assert create.parent.span_id == root_id
    assert (create.attributes or {})["vsr.task.id"] == created
    assert [e.name for e in create.events] == ["vsr.retry"]
    assert create.start_time is not None
    assert create.end_time is not None
    assert create.start_time < create.events[0].timestamp < create.end_time  # when it failed
    assert create.events[0].attributes == {
        "vsr.retry.number": 1,
        "vsr.retry.delay": 0.0,
        "error.type": "RateLimitError",
    }

    for task_id, end, code in (
        (done, "completed", StatusCode.OK),
        (failed, "failed", StatusCode.ERROR),
    ):
        [watch] = names(spans, "vsr.watch", task_id)
        assert watch.parent is not None
        assert watch.parent.span_id == root_id  # captured where watch() was called
        assert watch.status.status_code is code
        if end == "failed":
            assert watch.status.description == "unsupported codec"
        assert (watch.attributes or {})["vsr.task.status"] == end
        transitions = [e for e in watch.events if e.name == "vsr.transition"]
        assert [(e.attributes or {})["vsr.task.status"] for e in transitions] == [
            "queued",
            "processing",
            end,
        ]
        polls = names(spans, "vsr.poll", task_id)
        assert polls
        for poll in polls:
            assert poll.parent is not None
            assert poll.parent.span_id == watch.context.span_id
            assert poll.start_time is not None
            assert watch.start_time is not None
            assert poll.start_time >= watch.start_time
    [watch] = names(spans, "vsr.watch", done)
    assert [
        (e.attributes or {})["vsr.retry.number"] for e in watch.events if e.name == "vsr.retry"
    ] == [1, 2]
    polls = names(spans, "vsr.poll", done)
    codes = [(p.attributes or {})["http.response.status_code"] for p in polls[:3]]
    assert codes == [503, 429, 200]
    assert [(p.attributes or {})["vsr.poll.retry"] for p in polls[:3]] == [0, 1, 2]
    assert [p.status.status_code for p in polls[:2]] == [StatusCode.ERROR, StatusCode.ERROR]
    assert (polls[1].attributes or {})["vsr.poll.outcome"] == "rate_limited"
    [download] = names(spans, "vsr.download", done)
    assert (download.attributes or {})["vsr.download.bytes"] > 0

    metrics = _metrics(reader)
    assert set(metrics) == {
        "vsr.watched",
        "vsr.requests",
        "vsr.rate_limited",
        "vsr.polls",
        "vsr.retries",
        "vsr.transitions",
        "vsr.rate_budget.wait",
        "vsr.rate_budget.rate",
        "vsr.poll.lateness",
        "vsr.download.bytes",
    }
    assert _sum(metrics["vsr.watched"]) == 0  # both watched, both ended
    polls_by = _by(metrics["vsr.polls"], "vsr.poll.outcome")
    assert polls_by["rate_limited"] == 1
    assert polls_by["ServerError"] == 1
    assert polls_by["answered"] == len(names(spans, "vsr.poll")) - 2
    assert _by(metrics["vsr.rate_limited"], "vsr.endpoint") == {
        "/v1/result/{id}": 1,
        "/v1/super-resolution/videos": 1,
    }
    assert _by(metrics["vsr.retries"], "vsr.retry.what") == {
        "GET /v1/result/{id}": 2,
        "POST /v1/super-resolution/videos": 1,
    }
    transitions = _by(metrics["vsr.transitions"], "vsr.task.status")
    assert transitions == {"queued": 2, "processing": 2, "completed": 1, "failed": 1}
    requests = sum(p.value for p in metrics["vsr.requests"])
    assert sum(p.count for p in metrics["vsr.rate_budget.wait"]) == requests
    assert sum(p.count for p in metrics["vsr.poll.lateness"]) == len(names(spans, "vsr.poll"))
    [rate] = metrics["vsr.rate_budget.rate"]
    assert 0 < rate.value <= 1000
    assert _sum(metrics["vsr.download.bytes"]) == (download.attributes or {})["vsr.download.bytes"]

    # No task ID, URL or key in any metric's attributes.
    for points in metrics.values():
        for point in points:
            for value in (point.attributes or {}).values():
                text = str(value)
                assert done not in text
                assert failed not in text
                assert created not in text
                assert "http" not in text
                assert KEY not in text


def _metrics(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _sum(points: list[Any]) -> float:
    return sum(p.value for p in points)


def _by(points: list[Any], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point in points:
        name = (point.attributes or {})[key]
        counts[name] = counts.get(name, 0) + point.value
    return counts


# Found by review: each would fail on the first version of the hooks.


def _otel() -> tuple[OpenTelemetryHooks, InMemorySpanExporter, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return hooks, exporter, reader


async def test_two_watches_with_schedulers_of_their_own_each_see_their_own() -> None:
    """Two watches of one task, each polling for itself (max_concurrency): each watch's span
    gets each status change once, from its own scheduler, and each told change names it."""
    emulator = request_driven(api_key=KEY, timeline=COMPLETES)
    task_id = emulator.add_task(COMPLETES)
    hooks, exporter, _ = _otel()
    recorder = Recorder()
    async with serve(emulator, hooks=[hooks, recorder]) as client:

        async def follow() -> None:
            async with client.watch([task_id], interval=0.01, max_concurrency=1) as watch:
                async for _ in watch:
                    pass

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            group.start_soon(follow)
    watches = names(list(exporter.get_finished_spans()), "vsr.watch")
    assert len(watches) == 2
    for watch in watches:
        statuses = [(e.attributes or {})["vsr.task.status"] for e in watch.events]
        assert statuses == ["queued", "processing", "completed"]
    told = recorder.of(TransitionDetails)
    assert all(len(t.watchers) == 1 for t in told)
    assert len({id(t.watchers[0]) for t in told}) == 2


async def test_rate_wait_is_the_budgets_not_the_pools() -> None:
    """With no limit and no 429 the budget never waits: requests queued for the one
    connection slot are told a rate wait of 0, whatever they waited for the slot."""
    emulator = request_driven(api_key=KEY)
    ids = [emulator.add_task(ENDLESS) for _ in range(20)]
    recorder = Recorder()
    async with serve(emulator, hooks=recorder, max_connections=1) as client:
        async with anyio.create_task_group() as group:
            for task_id in ids:
                group.start_soon(client.get_task, task_id)
        assert client.current_rate is None
    requests = recorder.of(RequestDetails)
    assert len(requests) == len(ids)
    # Queued for the slot, the last waited for 19 answers: had that been counted, the waits
    # would add up to about ten times the answers' durations.
    assert sum(r.rate_wait for r in requests) < sum(r.duration for r in requests)


async def test_a_cancelled_download_or_create_is_told_as_cancelled(tmp_path: Path) -> None:
    """A download cancelled midway is not told as saved, nor a cancelled create as done."""
    emulator = request_driven(api_key=KEY, timeline=COMPLETES, video_size=4_000_000)
    task_id = emulator.add_task(COMPLETES)
    recorder = Recorder()
    cancelled = anyio.get_cancelled_exc_class()
    async with serve(emulator, hooks=recorder) as client:
        await client.wait(task_id, interval=0.01)
        with anyio.CancelScope() as scope:
            await client.download(task_id, tmp_path / "x.mp4", progress=lambda *_: scope.cancel())
        with anyio.CancelScope() as scope:
            scope.cancel()
            await client.create_task("https://example.com/a.mp4", model="m")
    [download] = recorder.of(DownloadDetails)
    assert isinstance(download.error, cancelled)
    assert not (tmp_path / "x.mp4").exists()
    [create] = recorder.of(CreateDetails)
    assert isinstance(create.error, cancelled)
    assert create.task is None


async def test_a_rate_gauge_per_provider_sums_the_live_clients() -> None:
    """Each client's rate counts in the gauge (the SDK keeps one instrument per name), and
    hooks no longer used are not kept alive by it."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    emulator = request_driven(api_key=KEY)
    task_id = emulator.add_task(ENDLESS)
    kept = []
    for rate in (10, 30):
        hooks = OpenTelemetryHooks(tracer_provider=TracerProvider(), meter_provider=meter_provider)
        async with serve(emulator, hooks=hooks, rate_limit=rate) as client:
            await client.get_task(task_id)
        kept.append(hooks)
    [point] = _metrics(reader)["vsr.rate_budget.rate"]
    assert point.value == 40
    gone = weakref.ref(kept.pop())
    del hooks, client  # (the last client holds its hooks)
    gc.collect()
    assert gone() is None
    [point] = _metrics(reader)["vsr.rate_budget.rate"]
    assert point.value == 10


def test_histograms_are_bucketed_in_seconds() -> None:
    """Lateness and rate waits are seconds: a 20 ms and a 4 s lateness fall in different
    buckets (the SDK's default bounds are for milliseconds)."""
    hooks, _, reader = _otel()
    for lateness in (0.02, 4.0):
        hooks.on_poll(PollDetails("t", 0, 0.0, 0.1, lateness, Task(id="t", status="queued"), None))
    [point] = _metrics(reader)["vsr.poll.lateness"]
    assert sum(1 for count in point.bucket_counts if count) == 2
    assert point.explicit_bounds[0] <= 0.005


def test_an_unknown_status_is_other_in_metrics() -> None:
    """A status the library does not know is `other` in a metric (bounded cardinality), and
    verbatim on spans."""
    hooks, _, reader = _otel()
    task = Task(id="t", status="Paused-By-Ops", object="video", created=0)
    hooks.on_transition(TransitionDetails("t", None, task))
    assert _by(_metrics(reader)["vsr.transitions"], "vsr.task.status") == {"other": 1}
