"""What instrumentation costs a poll: the library before `Hooks`, ``hooks=None``, a no-op hook,
and `OpenTelemetryHooks` on the OpenTelemetry SDK.

Each variant is a process of its own (this module with ``--child``) with one client (as
shipped: its default pool) and a fast fake API of its own (``_fleet_server.py``, workload
``throughput``: each task completed at its 100th poll). A run is a watch of ``--tasks`` new
tasks polled every 1 ms until each has ended: as fast as the client can poll, where what a hook
adds is the largest share of a poll. Its figure is the process's CPU time (user + system, every
thread: the span processor's included) during the watch, over its polls; the servers' counts of
requests are checked against the polls the tasks need, so no retried poll goes uncounted.

How the variants are compared. On a shared machine the CPU time of the same work moves by a
factor of two from one second to the next (other work, the host), and two runs one after the
other differ by 15% or so; two processes doing the same work at the same time on the same CPU
differ by about 1%. So the ``before`` process and another variant's each run a watch **at the
same time**, both clients pinned to one CPU and the servers to another (when there are two),
and the figure is the ratio of the two runs' CPU per poll. In each round every variant is paired
with ``before`` once, in an order rotated each round. A process has a bias of its own (two
processes of the same code differ by a percent or two), so the processes are started afresh for
each of ``--sessions`` sessions, of ``--rounds`` rounds each. ``before`` is also paired with a
second ``before`` process: that A/A ratio shows the noise of the run. Cells: median over the
pairs (and the range of the sessions' medians).

Python function calls per poll, counted by cProfile in one profiled watch of each process of the
first session (in the event loop's thread), all of them and those into ``vsr_async``'s own code,
are a second figure, which the machine's load moves little (the library's own not at all).

Variants:

- ``before``: the library at `BEFORE`, the last commit before `Hooks` (``git archive`` of its
  ``vsr_async`` into a temporary folder, put first on the child's ``sys.path``, as
  ``PYTHONPATH`` would be if ``python -m`` did not put the working directory before it; the
  child reports which ``vsr_async`` it imported, and that is checked): the baseline;
- ``none``: the library now, as shipped (``hooks=None``);
- ``noop``: ``hooks=`` a `Hooks` subclass that overrides nothing: every details object built
  and passed to a method that does nothing;
- ``otel``: ``OpenTelemetryHooks`` on the SDK as a user sets it up: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` and a ``MeterProvider`` with a ``PeriodicExportingMetricReader`` (every
  60 s, the SDK's default), exporting to exporters that drop what they are given;
- ``otel-metrics``: the same metrics, spans off (``trace.NoOpTracerProvider()``).

Target (from the issue): ``none`` <= 1.02x ``before``'s CPU per poll. The old library is
taken as both its processes, the one in every pair and the A/A one, since each has a bias of
its own: the median of ``none``'s ratios over the square root of the A/A pairs' median (their
geometric mean). The others' ratios are reported without a target.

``python -m tests.bench.hooks [--sessions 6] [--rounds 2] [--tasks 5] [--warm 10]
[--variants before,none,noop,otel,otel-metrics]``
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._fleet_client import cpu_seconds
from tests.bench._fleet_server import FakeAPI, task_id
from tests.bench._report import Report, cli, spread, table, verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
#: The last commit of the library before `Hooks` (f4c1787, on main).
BEFORE = "f4c17871b024d1b37bc5755a30505a9bb3e2f464"
TARGET = 1.02  # CPU per poll with hooks=None, times the library's before hooks
POLLS_EACH = 100  # the fake API's throughput workload: each task completed at its 100th poll
INTERVAL = 0.001

BASELINE = "before"
AGAIN = "before-again"  # a second process of the baseline: the A/A pair
AS_SHIPPED = "none"
VARIANTS = (BASELINE, AS_SHIPPED, "noop", "otel", "otel-metrics")
LABELS = {
    BASELINE: f"before Hooks ({BEFORE[:7]}) (baseline)",
    AGAIN: "before Hooks, a second process (A/A: the noise)",
    AS_SHIPPED: "hooks=None (as shipped)",
    "noop": "a Hooks subclass overriding nothing",
    "otel": "OpenTelemetryHooks, SDK: traces and metrics",
    "otel-metrics": "OpenTelemetryHooks, SDK: metrics only",
}


# The measured process.


def make_hooks(variant: str) -> tuple[Any, list[Any]]:
    """The ``hooks=`` of a variant (imported here: ``before`` has no `Hooks`), and the providers
    to shut down once measured."""
    if variant in (BASELINE, AGAIN, AS_SHIPPED):
        return None, []
    from vsr_async import Hooks  # noqa: PLC0415

    if variant == "noop":

        class Nothing(Hooks):
            pass

        return Nothing(), []
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from vsr_async.otel import OpenTelemetryHooks  # noqa: PLC0415

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 0, **_: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 0) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 0, **_: Any) -> None:
            pass

    meters = MeterProvider(metric_readers=[PeriodicExportingMetricReader(DropMetrics())])
    if variant == "otel-metrics":
        no_spans = trace.NoOpTracerProvider()
        return OpenTelemetryHooks(tracer_provider=no_spans, meter_provider=meters), [meters]
    tracers = TracerProvider()
    tracers.add_span_processor(BatchSpanProcessor(DropSpans()))
    return OpenTelemetryHooks(tracer_provider=tracers, meter_provider=meters), [tracers, meters]


async def _watch(client: Any, ids: list[str]) -> int:
    """Watch ``ids`` to their end; how many ended completed."""
    completed = 0
    async with client.watch(ids, interval=INTERVAL) as watcher:
        async for transition in watcher:
            if transition.is_final and transition.status == "completed":
                completed += 1
    return completed


async def child(args: argparse.Namespace) -> None:
    """Warm up, print the ``vsr_async`` imported (as a JSON line), then for each line ``run
    FIRST COUNT`` (or ``profile FIRST COUNT``) read from stdin watch that range of tasks and
    print a JSON line of figures, until stdin ends."""
    import anyio  # noqa: PLC0415

    import vsr_async  # noqa: PLC0415 (from the folder child_main put first)

    package = str(Path(vsr_async.__file__).parent)
    hooks, providers = make_hooks(args.variant)
    options = {} if hooks is None else {"hooks": hooks}
    warm = [task_id(index) for index in range(args.warm)]
    async with vsr_async.AsyncVSRClient(api_key="bench", base_url=args.base_url, **options) as c:
        if await _watch(c, warm) != len(warm):  # connections open, caches warm
            raise RuntimeError("the warm-up's tasks did not all complete")
        print(json.dumps({"library": vsr_async.__file__}), flush=True)
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            command, first, count = line.split()
            ids = [task_id(index) for index in range(int(first), int(first) + int(count))]
            profile = cProfile.Profile() if command == "profile" else None
            gc.collect()
            cpu, start = cpu_seconds(), time.monotonic()
            if profile is not None:
                profile.enable()
            completed = await _watch(c, ids)
            if profile is not None:
                profile.disable()
            cpu, wall = cpu_seconds() - cpu, time.monotonic() - start
            if completed != len(ids):
                raise RuntimeError(f"{completed} of {len(ids)} tasks completed")
            figures = {"cpu": cpu, "wall": wall, "polls": len(ids) * POLLS_EACH}
            if profile is not None:
                stats = pstats.Stats(profile)
                figures["calls"] = stats.total_calls
                figures["own_calls"] = sum(
                    calls
                    for (path, _, _), (_, calls, *_) in stats.stats.items()
                    if path.startswith(package)
                )
            print(json.dumps(figures), flush=True)
    for provider in providers:
        provider.shutdown()


def child_main(argv: Sequence[str]) -> int:
    import anyio  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m tests.bench.hooks --child")
    parser.add_argument("variant", choices=[*VARIANTS, AGAIN])
    parser.add_argument("--library", type=Path, required=True, help="imported from here")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--warm", type=int, required=True)
    args = parser.parse_args(argv)
    if "vsr_async" in sys.modules:
        raise RuntimeError("vsr_async was imported before its folder was chosen")
    sys.path.insert(0, str(args.library))
    anyio.run(child, args)
    return 0


# The runner.


def extract(commit: str, folder: Path) -> Path | None:
    """The library's package at ``commit``, in ``folder``; None without git or the commit (a
    shallow clone)."""
    try:
        archive = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "vsr_async"],  # noqa: S607
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.10.12 on
            tar.extractall(folder, filter="data")
        else:  # pragma: no cover
            tar.extractall(folder)  # noqa: S202 (our own repository's archive)
    return folder


def cpus() -> tuple[set[int], set[int]] | None:
    """The CPU for the clients and the one for the servers (the same one when there is only
    one); None where processes cannot be pinned."""
    if not hasattr(os, "sched_getaffinity"):  # pragma: no cover - Linux has it
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return {allowed[-1]}, {allowed[0]}


class Child:
    """One variant's process and its fake API, watching a range of tasks when told."""

    def __init__(self, variant: str, library: Path, args: argparse.Namespace, tasks: int) -> None:
        self.variant = variant
        self.next = args.warm  # the first task of the next watch
        self.server = FakeAPI(args.warm + tasks, workload="throughput")
        command = [sys.executable, "-m", "tests.bench.hooks", "--child", variant]
        command += ["--library", str(library), "--base-url", self.server.base_url]
        command += ["--warm", str(args.warm)]
        self.library = library
        self.process = subprocess.Popen(  # noqa: S603
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ready(self) -> None:
        """Wait for its warm-up, and check which library it imported."""
        imported = Path(self.answer()["library"]).resolve()
        if not imported.is_relative_to(self.library.resolve()):
            raise RuntimeError(f"{self.variant}: imported {imported}, not {self.library}'s")

    def pin(self, where: tuple[set[int], set[int]] | None) -> None:
        if where is not None:
            os.sched_setaffinity(self.process.pid, where[0])
            os.sched_setaffinity(self.server.process.pid, where[1])

    def start(self, tasks: int, command: str = "run") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command} {self.next} {tasks}\n")
        self.process.stdin.flush()
        self.next += tasks

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.variant}: the process ended (exit {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """End the process, and check that its server answered no poll more than needed."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            if self.process.wait(timeout=60):
                raise RuntimeError(f"{self.variant}: exit {self.process.returncode}")
            requests, expected = self.server.count(), self.next * POLLS_EACH
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.server.close()
        if requests != expected:
            raise RuntimeError(f"{self.variant}: {requests} requests answered, not {expected}")


@dataclasses.dataclass(frozen=True)
class Run:
    """One watch of one process."""

    cpu: float
    wall: float
    polls: int

    @property
    def cpu_per_poll(self) -> float:  # microseconds
        return self.cpu / self.polls * 1e6


@dataclasses.dataclass(frozen=True)
class Pair:
    """A variant's run and the baseline's, at the same time on the same CPU."""

    session: int
    variant: str
    baseline: Run
    other: Run
    load: float

    @property
    def ratio(self) -> float:
        return self.other.cpu_per_poll / self.baseline.cpu_per_poll


@dataclasses.dataclass
class Measured:
    pairs: list[Pair] = dataclasses.field(default_factory=list)
    calls: dict[str, float] = dataclasses.field(default_factory=dict)  # per poll, session 1
    own_calls: dict[str, float] = dataclasses.field(default_factory=dict)  # into vsr_async
    pinned: bool = False


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.hooks")
    parser.add_argument("--sessions", type=int, default=6, help="of fresh processes")
    parser.add_argument("--rounds", type=int, default=2, help="of every pair, in a session")
    parser.add_argument("--tasks", type=int, default=5, help=f"a run's, {POLLS_EACH} polls each")
    parser.add_argument("--warm", type=int, default=10, help="tasks watched first, not measured")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    return parser.parse_args(argv)


def _pair(a: Child, b: Child, tasks: int, *, b_first: bool) -> tuple[Run, Run]:
    """Both watch ``tasks`` new tasks at the same time: their runs."""
    for child in (b, a) if b_first else (a, b):
        child.start(tasks)
    runs = [a.answer(), b.answer()]
    return Run(**runs[0]), Run(**runs[1])


def session(
    number: int, chosen: list[str], libraries: dict[str, Path], args: argparse.Namespace
) -> tuple[list[Pair], dict[str, float], dict[str, float]]:
    """Fresh processes, ``--rounds`` rounds of pairs, and (in the first session) a profiled
    watch of each: the pairs, the calls per poll, and those of them into ``vsr_async``."""
    others = [v for v in chosen if v != BASELINE] + [AGAIN]
    where = cpus()
    # Runs of each process: its pairs, and a profiled one.
    runs = {v: args.rounds * (len(others) if v == BASELINE else 1) + 1 for v in [*chosen, AGAIN]}
    children: dict[str, Child] = {}
    pairs: list[Pair] = []
    calls: dict[str, float] = {}
    own: dict[str, float] = {}
    try:
        for variant in [*chosen, AGAIN]:
            library = libraries[BASELINE if variant == AGAIN else variant]
            children[variant] = Child(variant, library, args, runs[variant] * args.tasks)
        for child in children.values():  # started together, pinned once warm
            child.ready()
            child.pin(where)
        base = children[BASELINE]
        for round_ in range(args.rounds):
            shift = round_ % len(others)
            for variant in others[shift:] + others[:shift]:
                load = os.getloadavg()[0]
                one, other = _pair(base, children[variant], args.tasks, b_first=bool(round_ % 2))
                pairs.append(Pair(number, variant, one, other, load))
                print(
                    f"session {number} round {round_ + 1}/{args.rounds}  {LABELS[variant]:<48}"
                    f" {pairs[-1].ratio:6.3f}x  ({other.cpu_per_poll:5.0f} against"
                    f" {one.cpu_per_poll:5.0f} us/poll)  load {load:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        for variant, child in children.items() if number == 1 else ():
            child.start(args.tasks, "profile")
            profiled = child.answer()
            calls[variant] = profiled["calls"] / profiled["polls"]
            own[variant] = profiled["own_calls"] / profiled["polls"]
    finally:
        for child in children.values():
            child.close()
    return pairs, calls, own


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    chosen = [v for v in VARIANTS if v in args.variants.split(",")]
    started, load = time.monotonic(), os.getloadavg()[0]
    measured = Measured(pinned=cpus() is not None)
    with tempfile.TemporaryDirectory(prefix="vsr-before-hooks-") as folder:
        before = extract(BEFORE, Path(folder))
        if before is not None and BASELINE in chosen and len(chosen) > 1:
            libraries = dict.fromkeys(chosen, ROOT) | {BASELINE: before}
            for number in range(1, args.sessions + 1):
                pairs, calls, own = session(number, chosen, libraries, args)
                measured.pairs += pairs
                measured.calls |= calls
                measured.own_calls |= own
    took = time.monotonic() - started
    return report(measured, chosen, args, took=took, load=(load, os.getloadavg()[0]))


def _by_session(pairs: list[Pair]) -> str:
    """The median ratio over ``pairs``, and the range of their sessions' medians."""
    median = statistics.median(pair.ratio for pair in pairs)
    sessions = sorted({pair.session for pair in pairs})
    medians = [statistics.median(p.ratio for p in pairs if p.session == s) for s in sessions]
    if len(medians) == 1:
        return f"{median:.3f}x"
    return f"{median:.3f}x ({min(medians):.3f}x-{max(medians):.3f}x)"


def report(
    measured: Measured,
    chosen: list[str],
    args: argparse.Namespace,
    *,
    took: float,
    load: tuple[float, float],
) -> Report:
    headers = ["Variant", "Pairs", "CPU us/poll", "x before", "Calls/poll", "into vsr_async"]
    rows = []
    pairs_of = {v: [p for p in measured.pairs if p.variant == v] for v in [*chosen, AGAIN]}
    for variant in [BASELINE, AGAIN, *(v for v in chosen if v != BASELINE)]:
        pairs = pairs_of.get(variant, [])
        if variant == BASELINE:
            per_poll = [p.baseline.cpu_per_poll for p in measured.pairs]
        else:
            per_poll = [p.other.cpu_per_poll for p in pairs]
        if not per_poll:
            continue
        calls, own = measured.calls.get(variant), measured.own_calls.get(variant)
        rows.append(
            [
                LABELS[variant],
                str(len(pairs)) if pairs else "-",
                spread(per_poll, "{:.0f}"),
                _by_session(pairs) if pairs else "-",
                "-" if calls is None else f"{calls:,.1f}",
                "-" if own is None else f"{own:,.1f}",
            ]
        )
    loads = [pair.load for pair in measured.pairs]
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("httpx", "anyio", "opentelemetry-api", "opentelemetry-sdk")
    )
    pinned = (
        "both clients pinned to one CPU and both servers to another"
        if measured.pinned
        else "not pinned (this platform cannot)"
    )
    lines = [
        "### Instrumentation",
        "",
        (
            f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs, load"
            f" {load[0]:.2f} at the start, {load[1]:.2f} at the end"
            f" ({min(loads, default=0):.2f}-{max(loads, default=0):.2f} as each pair"
            f" started); {took:.0f} s in all. A process per variant, each with one client (as"
            f" shipped) warmed up by a watch of {args.warm} tasks; a run is a watch of"
            f" {args.tasks} new tasks of its own fast fake API, polled every"
            f" {INTERVAL * 1e3:g} ms until each ends at its {POLLS_EACH}th poll"
            f" ({args.tasks * POLLS_EACH:,} polls, checked against the server's count), and"
            " its CPU time (user + system, every thread) over its polls. Each variant's run is"
            f" paired with a run of the library before `Hooks` at the same time, {pinned};"
            f" x before is the ratio within a pair. {args.sessions} sessions of fresh"
            f" processes, {args.rounds} rounds of every pair each, in an order rotated each"
            " round. CPU us/poll: median (min-max) of the runs, two clients sharing a CPU;"
            " x before: median of the pairs (the range of the sessions' medians). Calls/poll:"
            " Python function calls (and coroutine resumptions) that cProfile counted in one"
            " watch of each process of the first session, in the event loop's thread, and"
            " those of them into the library's own code."
        ),
        "",
        table(headers, rows),
    ]
    others = [
        f"{LABELS[v]} {_by_session(pairs_of[v])}"
        for v in chosen
        if v not in (BASELINE, AS_SHIPPED) and pairs_of[v]
    ]
    if others:
        lines += ["", "CPU per poll against the library before `Hooks` (no target): "]
        lines[-1] += "; ".join(others) + "."
    checks = []
    if AS_SHIPPED in chosen:
        if found := pairs_of[AS_SHIPPED]:
            median = statistics.median(pair.ratio for pair in found)
            text = f"hooks=None: CPU per poll {_by_session(found)} the library's before Hooks"
            text += f" ({BEFORE[:7]}), run at the same time"
            if again := pairs_of[AGAIN]:
                # The baseline's process, in every pair, has a bias of its own, as the A/A
                # pair's process has: the old library is both of them, their geometric mean.
                twin = statistics.median(pair.ratio for pair in again)
                median /= math.sqrt(twin)
                text += f"; {median:.3f}x the mean of its two processes (A/A {_by_session(again)})"
            checks.append((f"{text} (target <= {TARGET}x)", median <= TARGET))
        else:
            text = f"hooks=None against the library before Hooks ({BEFORE[:7]}): not measured"
            checks.append((text, False))
    lines += ["", "Targets:", ""]
    lines += [f"- {text}: {verdict(met)}." for text, met in checks]
    return Report("\n".join(lines), targets_met=all(met for _, met in checks))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(cli(run))
