"""Draws docs/img/trace.svg, the picture of a trace on docs/observability.md.

Runs the scenario of tests/test_hooks.py against the emulator on a loopback socket: a create
refused once with a 429, a watch of a task that completes after a 503 and a 429 and of one that
fails, and a download. It runs under a span of the caller's (``request``), with
`vsr_async.otel.OpenTelemetryHooks` on the OpenTelemetry SDK and its in-memory span exporter,
then draws the spans as a waterfall (``bench/_charts.py``): one row per span, indented under its
parent, a bar from its start to its end, its transitions and retries as ticks, error spans in
red. The timelines are shorter than the test's and the backoff is 0.05 s instead of 0.5 s, so
that every poll has a row of its own in a picture a page can show.

``python tests/trace_picture.py [--out docs/img/trace.svg] [--backend asyncio|trio]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import anyio
from bench._charts import Span, waterfall, write
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from test_hooks import scenario

import vsr_async._retry
from vsr_async.otel import OpenTelemetryHooks
from vsr_async.testing import Timeline

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "trace.svg"
#: In requests answered by the emulator (its clock): a few polls of each task, not forty.
COMPLETES = Timeline.completed(queued=8, processing=4)
FAILS = Timeline.failed(queued=4, processing=6, error="unsupported codec")
INTERVAL = 0.02
BACKOFF_FACTOR = 0.05
#: The events drawn, with their legend; a failed span's ``exception`` event is left out (it
#: is at its end, and its red says it).
EVENTS = [("vsr.transition", "vsr.transition event"), ("vsr.retry", "vsr.retry event")]


async def record() -> list[ReadableSpan]:
    """The scenario's spans, under the caller's ``request`` span, as the SDK exports them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hooks = OpenTelemetryHooks(tracer_provider=provider)
    caller = provider.get_tracer("your.app").start_as_current_span("request")
    with (
        mock.patch.object(vsr_async._retry, "BACKOFF_FACTOR", BACKOFF_FACTOR),
        tempfile.TemporaryDirectory() as folder,
    ):
        await scenario(
            Path(folder),
            hooks,
            completes=COMPLETES,
            fails=FAILS,
            interval=INTERVAL,
            within=caller,
        )
    provider.shutdown()
    return list(exporter.get_finished_spans())


def rows(spans: Sequence[ReadableSpan]) -> list[Span]:
    """The spans in tree order (each parent before its children, siblings by start), with
    times in milliseconds from the first start."""
    ids = {span.context.span_id for span in spans if span.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)
    t0 = min((span.start_time or 0 for span in spans), default=0)

    def ms(nanoseconds: int | None) -> float:
        return ((nanoseconds or t0) - t0) / 1e6

    found: list[Span] = []

    def visit(span: ReadableSpan, depth: int) -> None:
        events = tuple(
            (ms(event.timestamp), event.name) for event in span.events if event.name in dict(EVENTS)
        )
        found.append(
            Span(
                span.name,
                depth,
                ms(span.start_time),
                ms(span.end_time),
                detail=_detail(span),
                error=span.status.status_code is StatusCode.ERROR,
                events=events,
            )
        )
        key = span.context.span_id if span.context is not None else None
        for child in sorted(children.get(key, []), key=lambda s: s.start_time or 0):
            visit(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s.start_time or 0):
        visit(root, 0)
    return found


def _detail(span: ReadableSpan) -> str:
    """What a row says after the span's name: the HTTP status and the task's status of a
    poll, the task and its end of a watch, the retries of a create, the size of a download."""
    attributes = dict(span.attributes or {})
    task = str(attributes.get("vsr.task.id", ""))
    short = f"{task[:10]}…" if len(task) > 11 else task
    if span.name == "vsr.poll":
        words = [attributes.get("http.response.status_code", ""), attributes.get("vsr.task.status")]
        return " ".join(str(word) for word in words if word)
    if span.name == "vsr.watch":
        return f"{short} {attributes.get('vsr.task.status', '')}".strip()
    if span.name == "vsr.create":
        retries = int(str(attributes.get("vsr.create.retries", 0)))
        return f"{short}, {retries} retr{'y' if retries == 1 else 'ies'}"
    if span.name == "vsr.download":
        return f"{int(str(attributes.get('vsr.download.bytes', 0))) / 1000:.0f} kB"
    return ""


def picture(spans: Sequence[ReadableSpan]) -> str:
    """The waterfall of ``spans``, as an SVG document."""
    return waterfall(
        "A trace: create, watch two tasks, download",
        "ms since the caller's span started",
        rows(spans),
        events=EVENTS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/trace_picture.py")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args(argv)
    spans = anyio.run(record, backend=args.backend)
    write(args.out, picture(spans))
    print(f"{len(spans)} spans drawn in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
