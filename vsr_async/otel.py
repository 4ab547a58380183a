"""OpenTelemetry traces and metrics, from the ``otel`` extra (``opentelemetry-api`` only).

Pass `OpenTelemetryHooks` as ``AsyncVSRClient(hooks=...)``; the SDK, the exporters and the
providers stay your choice (the global ones by default). It is built on `vsr_async.Hooks`,
like anything a user may write for Prometheus or StatsD, and costs nothing to a client
without it. See docs/observability.md for the span tree and the metric names.
"""

from __future__ import annotations

import collections
import time
import weakref
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context, metrics, trace
    from opentelemetry.metrics import Observation
except ImportError as exc:  # pragma: no cover - the extra is installed wherever this is tested
    raise ImportError("vsr_async.otel needs the otel extra: pip install 'vsr-async[otel]'") from exc

from . import Hooks, TaskStatus, __version__

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import CallbackOptions, MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from . import (
        CreateDetails,
        DownloadDetails,
        PollDetails,
        RequestDetails,
        RetryDetails,
        TransitionDetails,
        VSRError,
        WatchDetails,
    )

__all__ = ["OpenTelemetryHooks"]

#: The instrumentation scope's name, for tracers and meters.
SCOPE = "vsr_async"


class OpenTelemetryHooks(Hooks):
    """Spans and metrics for a client: ``AsyncVSRClient(hooks=OpenTelemetryHooks())``.

    Spans:
        ``vsr.create``: one per ``create_task`` call, its retries as events.
        ``vsr.watch``: one per task a watch (or a ``wait``) follows, from ``watch()``,
            ``add()`` or ``wait()`` to the task's end; a child of the span current where
            that was called, its status changes as ``vsr.transition`` events and its failed
            polls' retries as ``vsr.retry`` events; an error if the task failed or was
            given up.
        ``vsr.poll``: one per poll, a child of the task's ``vsr.watch`` span (the first
            watch's, when several follow it), with the HTTP status and the retry number.
        ``vsr.download``: one per ``download``.

    Metrics (no task ID, URL or key among their attributes): see docs/observability.md.

    The rate gauge sums, per meter provider, the rate each live instance's client allows
    (as last answered): give each client its own instance.

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Where metrics go; the global provider by default.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self._watched = meter.create_up_down_counter(
            "vsr.watched",
            unit="{task}",
            description="Tasks followed, once per watch or wait following each.",
        )
        self._requests = meter.create_counter(
            "vsr.requests", unit="{request}", description="HTTP attempts, by endpoint and status."
        )
        self._rate_limited = meter.create_counter(
            "vsr.rate_limited", unit="{request}", description="HTTP attempts answered 429."
        )
        self._polls = meter.create_counter(
            "vsr.polls", unit="{poll}", description="Polls of watched tasks, by outcome."
        )
        self._retries = meter.create_counter(
            "vsr.retries", unit="{retry}", description="Requests and polls tried again."
        )
        self._transitions = meter.create_counter(
            "vsr.transitions", unit="{transition}", description="Status changes, by new status."
        )
        self._rate_wait = meter.create_histogram(
            "vsr.rate_budget.wait",
            unit="s",
            description="Waits for the client's rate budget.",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        self._lateness = meter.create_histogram(
            "vsr.poll.lateness",
            unit="s",
            description="How late polls were sent.",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        self._downloaded = meter.create_counter(
            "vsr.download.bytes", unit="By", description="Bytes received by downloads."
        )
        self._allowed_rate: float | None = None
        _rate_gauge(meter, meter_provider or metrics.get_meter_provider()).add(self)
        # Each task's open vsr.watch spans, by watcher, in the order they came.
        self._spans: dict[str, dict[int, Span]] = collections.defaultdict(dict)

    # Traces and metrics of the watches.

    def on_watch(self, details: WatchDetails) -> None:
        key = id(details.watcher)
        if not details.ended:
            self._spans[details.task_id][key] = self._tracer.start_span(
                "vsr.watch",
                context=context.get_current(),  # the caller's: add() runs in its task
                attributes={"vsr.task.id": details.task_id},
            )
            self._watched.add(1)
            return
        spans = self._spans.get(details.task_id, {})
        if (span := spans.pop(key, None)) is None:
            return
        if not spans:
            del self._spans[details.task_id]
        self._watched.add(-1)
        if details.task is not None:
            span.set_attribute("vsr.task.status", str(details.task.status))
        task = details.task
        if details.error is not None:
            _failed(span, details.error)
        elif task is not None and task.status == TaskStatus.FAILED:
            span.set_status(trace.StatusCode.ERROR, str(task.error or "failed"))
        elif task is not None and task.is_terminal:
            span.set_status(trace.StatusCode.OK)
        span.end()

    def on_transition(self, details: TransitionDetails) -> None:
        self._transitions.add(1, {"vsr.task.status": _known(details.task.status)})
        event = {"vsr.task.status": str(details.task.status)}
        if details.previous is not None:
            event["vsr.task.previous_status"] = str(details.previous)
        for span in self._watch_spans(details.task_id, details.watchers):
            span.add_event("vsr.transition", event)

    def on_poll(self, details: PollDetails) -> None:
        outcome = _outcome(details.error)
        self._polls.add(1, {"vsr.poll.outcome": outcome})
        self._lateness.record(details.lateness)
        watch = next(iter(self._watch_spans(details.task_id, details.watchers)), None)
        parent = context.get_current() if watch is None else trace.set_span_in_context(watch)
        attributes: dict[str, str | int | float] = {
            "vsr.task.id": details.task_id,
            "vsr.poll.outcome": outcome,
            "vsr.poll.retry": details.attempt,
            "vsr.poll.lateness": details.lateness,
        }
        if details.status_code is not None:
            attributes["http.response.status_code"] = details.status_code
        if details.task is not None:
            attributes["vsr.task.status"] = str(details.task.status)
        span = self._tracer.start_span(
            "vsr.poll",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            start_time=_nanoseconds(details.started),
            attributes=attributes,
        )
        if details.error is not None:
            _failed(span, details.error)
        span.end(end_time=_nanoseconds(details.started + details.duration))

    def on_retry(self, details: RetryDetails) -> None:
        self._retries.add(1, {"vsr.retry.what": details.what})
        if details.task_id is None:
            return
        event: dict[str, str | int | float] = {
            "vsr.retry.number": details.attempt,
            "vsr.retry.delay": details.delay,
            "error.type": type(details.error).__name__,
        }
        for span in self._watch_spans(details.task_id, details.watchers):
            span.add_event("vsr.retry", event)

    # Requests, creates and downloads.

    @property
    def allowed_rate(self) -> float | None:
        """The requests per second its client allowed at its last answer (``None``: no limit)."""
        return self._allowed_rate

    def on_request(self, details: RequestDetails) -> None:
        attributes: dict[str, str | int] = {
            "http.request.method": details.method,
            "vsr.endpoint": details.endpoint,
        }
        if details.status_code is not None:
            attributes["http.response.status_code"] = details.status_code
        else:
            attributes["error.type"] = type(details.error).__name__
        self._requests.add(1, attributes)
        if details.status_code == 429:
            self._rate_limited.add(1, {"vsr.endpoint": details.endpoint})
        self._rate_wait.record(details.rate_wait, {"vsr.endpoint": details.endpoint})
        self._allowed_rate = details.allowed_rate

    def on_create(self, details: CreateDetails) -> None:
        span = self._tracer.start_span(
            "vsr.create",
            kind=trace.SpanKind.CLIENT,
            start_time=_nanoseconds(details.started),
            attributes={"vsr.create.retries": len(details.retries)},
        )
        for retry in details.retries:
            span.add_event(
                "vsr.retry",
                {
                    "vsr.retry.number": retry.attempt,
                    "vsr.retry.delay": retry.delay,
                    "error.type": type(retry.error).__name__,
                },
                timestamp=_nanoseconds(retry.at),
            )
        if details.task is not None:
            span.set_attribute("vsr.task.id", details.task.id)
        if details.error is not None:
            _failed(span, details.error)
        span.end(end_time=_nanoseconds(details.started + details.duration))

    def on_download(self, details: DownloadDetails) -> None:
        self._downloaded.add(details.received)
        end = time.time()  # (called as it ends)
        attributes: dict[str, str | int] = {"vsr.download.bytes": details.received}
        if details.task_id is not None:
            attributes["vsr.task.id"] = details.task_id
        span = self._tracer.start_span(
            "vsr.download",
            kind=trace.SpanKind.CLIENT,
            start_time=_nanoseconds(end - details.duration),
            attributes=attributes,
        )
        if details.error is not None:
            _failed(span, details.error)
        span.end(end_time=_nanoseconds(end))

    def _watch_spans(self, task_id: str, watchers: tuple[object, ...]) -> list[Span]:
        """The open vsr.watch spans of ``task_id`` for ``watchers``, in their order."""
        spans = self._spans.get(task_id, {})
        return [span for w in watchers if (span := spans.get(id(w))) is not None]


#: Histogram buckets for seconds, 5 ms to a minute (the SDK's default ones are milliseconds').
SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

#: The hooks reporting to each meter provider's rate gauge: the SDK keeps the first
#: instrument of a name, so each provider has one gauge, summing the rates of the live clients.
_rate_gauges: weakref.WeakKeyDictionary[Any, weakref.WeakSet[OpenTelemetryHooks]] = (
    weakref.WeakKeyDictionary()
)


def _rate_gauge(meter: metrics.Meter, provider: Any) -> weakref.WeakSet[OpenTelemetryHooks]:
    """The live hooks whose rates ``provider``'s ``vsr.rate_budget.rate`` gauge sums."""
    hooks = _rate_gauges.get(provider)
    if hooks is None:
        hooks = _rate_gauges[provider] = weakref.WeakSet()
        members = hooks  # (the callback holds the set, not the hooks)

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            rates = [h.allowed_rate for h in list(members) if h.allowed_rate is not None]
            return [Observation(sum(rates))] if rates else []

        meter.create_observable_gauge(
            "vsr.rate_budget.rate",
            callbacks=[observe],
            unit="{request}/s",
            description="Requests per second the clients allow now (limits or learnt quotas).",
        )
    return hooks


def _known(status: TaskStatus | str) -> str:
    """A status as a metric attribute: a server's unknown ones are all ``other``."""
    return status.value if isinstance(status, TaskStatus) else "other"


def _outcome(error: VSRError | None) -> str:
    """A poll's outcome, as a metric may name it: ``answered``, ``rate_limited``, the error's
    class otherwise (``ServerError``, ``APIConnectionError``...)."""
    if error is None:
        return "answered"
    if getattr(error, "status_code", None) == 429:
        return "rate_limited"
    return type(error).__name__


def _failed(span: Span, error: BaseException) -> None:
    span.set_status(trace.StatusCode.ERROR, str(error))
    span.set_attribute("error.type", type(error).__name__)
    span.record_exception(error)


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1e9)
