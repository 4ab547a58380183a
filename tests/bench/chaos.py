"""Under the chaos mix: detection latency and request amplification, against fault-free.

Each repetition runs ``tests/chaos.py`` in a fresh process: tasks arriving at ``--rate`` per
second, each added to one watch (interval 1 s) as it is created, served by the emulator with
every fault at once (20% 5xx, 5% 429 with ``Retry-After: 1``, dropped connections, malformed
bodies, latency spikes, and a restart in the middle), then the same tasks without faults. Its
figures: the seconds from each task's end to its final transition (detection), and the
requests the chaos run sent per request of the fault-free run (amplification).

The arrival rate is chosen so that this machine keeps up: a watch that cannot poll each task
once an interval sees every end late, faults or not, and its amplification then measures the
machine (``nox -s chaos``, 20,000 tasks at 400 a second, is that stress test). The fault-free
median says whether it kept up: about half an interval.

Targets (from the issue): detection p50 <= 2x and p99 <= 4x fault-free's, amplification
<= 1.3, each the median over the repetitions, on asyncio and trio.

``python -m tests.bench chaos [--tasks 1500] [--rate 100] [--reps 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._charts import IMAGES, distributions, write
from tests.bench._report import Report, cli, spread, table, verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("asyncio", "trio")
P50_RATIO, P99_RATIO, AMPLIFICATION = 2.0, 4.0, 1.3  # as in tests/chaos.py


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench chaos")
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks arriving per second")
    parser.add_argument("--reps", type=int, default=3)
    return parser.parse_args(argv)


def one_pair(args: argparse.Namespace, backend: str, seed: int) -> dict[str, Any]:
    """One chaos run and its fault-free twin, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        command = [sys.executable, "tests/chaos.py", "--tasks", str(args.tasks)]
        command += ["--rate", repr(args.rate), "--backend", backend, "--seed", str(seed)]
        command += ["--json", str(out)]
        done = subprocess.run(  # noqa: S603
            command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
        )
        if not out.exists():
            raise RuntimeError(f"chaos, {backend}: {done.stderr.strip()[-2000:]}")
        [figures] = json.loads(out.read_text())
    if figures["problems"]:  # a lost transition is a bug, not a figure
        raise RuntimeError(f"chaos, {backend}: {figures['problems'][:5]}")
    return dict(figures)


def quantile(lags: Sequence[float], q: float) -> float:
    """As ``tests/chaos.py`` takes them: of the sorted lags."""
    return lags[int(q * (len(lags) - 1))]


def both(pairs: Sequence[Sequence[float]], fmt: str) -> str:
    """``chaos / fault-free``, each as ``median (min-max)`` over the repetitions."""
    return " / ".join(spread([pair[i] for pair in pairs], fmt) for i in (0, 1))


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    started, load = time.monotonic(), os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for rep in range(args.reps):  # the backends take turns, so each meets the same machine
        for backend in BACKENDS:
            figures = one_pair(args, backend, seed=rep + 1)
            runs[backend].append(figures)
            faulty, clean = figures["requests"]
            print(
                f"chaos {backend:<8} rep {rep + 1}: requests {faulty} / {clean}"
                f" = {faulty / clean:.2f}",
                file=sys.stderr,
                flush=True,
            )
    return report(runs, args, took=time.monotonic() - started, load=load)


def report(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, *, took: float, load: float
) -> Report:
    versions = ", ".join(f"{name} {version(name)}" for name in ("httpx", "anyio", "trio"))
    lines = [
        "### Under the chaos mix",
        "",
        (
            f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs, load"
            f" {load:.2f} at the start; {took:.0f} s in all. `python tests/chaos.py --tasks"
            f" {args.tasks} --rate {args.rate:g}` on each backend, {args.reps} repetitions"
            " (seeds 1 to"
            f" {args.reps}), the backends taking turns: {args.tasks:,} tasks arriving"
            f" {args.rate:g} a second into one watch (interval 1 s), through every fault at once"
            " and a restart, then the same tasks without faults. Detection: seconds from a"
            " task's end to its final transition. Each cell: median (min-max) over the"
            " repetitions."
        ),
        "",
    ]
    headers = ["Backend", "Detection p50 s, chaos / fault-free", "x", "p99 s", "x"]
    headers += ["Requests, chaos / fault-free", "Amplification", "Wall s, chaos / fault-free"]
    rows, targets, met_all, series = [], [], True, []
    for backend, pairs in runs.items():
        p50 = [[statistics.median(lags) for lags in pair["lags"]] for pair in pairs]
        p99 = [[quantile(lags, 0.99) for lags in pair["lags"]] for pair in pairs]
        amplification = [pair["requests"][0] / pair["requests"][1] for pair in pairs]
        p50_x = [f / c for f, c in p50]
        p99_x = [f / c for f, c in p99]
        rows.append(
            [
                backend,
                both(p50, "{:.2f}"),
                spread(p50_x, "{:.2f}x"),
                both(p99, "{:.2f}"),
                spread(p99_x, "{:.2f}x"),
                both([pair["requests"] for pair in pairs], "{:,.0f}"),
                spread(amplification, "{:.2f}"),
                both([pair["seconds"] for pair in pairs], "{:.1f}"),
            ]
        )
        checks = [
            (f"detection p50 {statistics.median(p50_x):.2f}x fault-free's", P50_RATIO, p50_x),
            (f"detection p99 {statistics.median(p99_x):.2f}x fault-free's", P99_RATIO, p99_x),
            (
                f"request amplification {statistics.median(amplification):.2f}",
                AMPLIFICATION,
                amplification,
            ),
        ]
        for text, most, values in checks:
            met = statistics.median(values) <= most
            met_all &= met
            unit = "" if most == AMPLIFICATION else "x"
            targets.append(f"- {backend}: {text} (target <= {most:g}{unit}): {verdict(met)}.")
        last = pairs[-1]["lags"]
        series += [(f"fault-free, {backend}", [lag * 1e3 for lag in last[1]])]
        series += [(f"chaos, {backend}", [lag * 1e3 for lag in last[0]])]
    lines += [table(headers, rows), ""]
    chart = "detection.svg"
    write(
        IMAGES / chart,
        distributions("From a task's end to its final transition", "ms", series, log=True),
    )
    lines += [
        f"![Detection, chaos against fault-free (the last repetition)](img/bench/{chart})",
        "",
        "Targets:",
        "",
        *targets,
        "",
    ]
    return Report("\n".join(lines), met_all)


if __name__ == "__main__":
    sys.exit(cli(run))
