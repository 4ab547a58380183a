"""Watching at scale: `AsyncVSRClient.watch` against hand-written pollers, three workloads.

A fast fake of the task API (``_fleet_server.py``: raw asyncio, its own process, its CPU time
reported) serves a deterministic schedule; each watch runs in a fresh process
(``_fleet_client.py``) that reports its own CPU time and memory. The server counts every
request, so polls, rates and gaps are the server's figures, not the client's word.

Workloads (from the issue):

1. ``fleet``: 2,000 tasks finishing 0.5-3.5 s after the start, polled every 0.2 s: requests
   per task, CPU per poll and per task, detection latency p50/p99 (the instant the client
   yields the terminal transition less the instant the server's schedule made it terminal).
2. ``idle``: 100,000 tasks that never end, interval 30 s, rate budget 4,000/s (so the budget
   allows the 3,333 polls a second they want), for ``--idle-seconds`` (40 s by default: a
   cycle and a third, enough to see a wait longer than the target): memory per watched ID
   (RSS growth / IDs), CPU, fairness (the longest wait of any task for a poll, counting t0 to
   its first and its last to the end), the busiest one-second window.
3. ``throughput``: 100 tasks each ending on its 100th poll, interval 1 ms: CPU per poll when
   polling as fast as the client can.

Variants: ``ours`` (default transport), ``ours-aiohttp`` (``transport="aiohttp"``, when the
library has it), and two tuned hand-written baselines, ``httpx`` and ``aiohttp``; see
``_fleet_client.py``. One run of each, in order. The rule (from the issue): every baseline
runs in the same environment as the library (same packages, sniffio included) and as a user
would tune it (a shared client, `CONNECTIONS` connections); the library runs as shipped (its
defaults). The report states the environment.

Targets: memory <= 1 KiB per watched ID and <= 0.45x each baseline; CPU per poll, default
transport <= 0.75x the httpx baseline, aiohttp transport <= 1.5x the aiohttp baseline;
detection p50 <= interval/2 + 50 ms, p99 <= interval + 100 ms; no one-second window over the
rate budget by more than 5%; every task's longest wait <= 1.1 x max(interval, N / rate).

``python -m tests.bench.fleet [--workloads fleet,idle,throughput] [--idle-seconds 40]``
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._charts import IMAGES, bars, write
from tests.bench._report import Report, cli, table, verdict
from vsr_async import AsyncVSRClient

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
CONNECTIONS = 2  # the hand-written pollers' pool; the library keeps its default
MEMORY_TARGET = 1024  # bytes per watched ID
MEMORY_RATIO = 0.45  # times each baseline's
CPU_RATIO = 0.75  # default transport, times the httpx baseline's
FAST_CPU_RATIO = 1.5  # aiohttp transport, times the aiohttp baseline's
RATE_SLACK = 1.05
FAIRNESS_SLACK = 1.1

LABELS = {
    "ours": "client.watch",
    "ours-aiohttp": 'client.watch, transport="aiohttp"',
    "httpx": "httpx poller (baseline)",
    "aiohttp": "aiohttp poller (baseline)",
}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    tasks: int
    interval: float
    rate: float = 0.0
    seconds: float = 0.0
    polls_each: int = 0
    lead: float = 2.0  # seconds for the processes to start before t0


@dataclasses.dataclass
class Result:
    client: dict[str, Any]
    server: dict[str, Any]

    @property
    def polls(self) -> int:
        return int(self.server["requests"])

    @property
    def cpu_per_poll(self) -> float:  # microseconds
        return self.client["cpu"] / max(self.polls, 1) * 1e6


def variants() -> tuple[list[str], list[str]]:
    """The variants this environment can run, and why the others are left out."""
    params = inspect.signature(AsyncVSRClient).parameters
    chosen, missing = ["ours"], []
    if "transport" not in params:
        missing.append('`transport="aiohttp"` (not in this version of the library)')
    elif importlib.util.find_spec("httpx_aiohttp") is None:
        missing.append('`transport="aiohttp"` (httpx-aiohttp is not installed)')
    else:
        chosen.append("ours-aiohttp")
    chosen.append("httpx")
    if importlib.util.find_spec("aiohttp") is None:
        missing.append("the aiohttp baseline (aiohttp is not installed)")
    else:
        chosen.append("aiohttp")
    return chosen, missing


def measure(workload: Workload, variant: str, seed: int) -> Result:
    t0 = time.monotonic() + workload.lead
    server_command = [sys.executable, "-m", "tests.bench._fleet_server"]
    server_command += ["--workload", workload.name, "--tasks", str(workload.tasks)]
    server_command += ["--t0", repr(t0), "--seed", str(seed)]
    server_command += ["--polls-each", str(workload.polls_each)]
    server = subprocess.Popen(  # noqa: S603
        server_command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdin is not None
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        command = [sys.executable, "-m", "tests.bench._fleet_client", variant, workload.name]
        command += ["--port", port, "--t0", repr(t0), "--tasks", str(workload.tasks)]
        command += ["--interval", repr(workload.interval), "--rate", repr(workload.rate)]
        command += ["--seconds", repr(workload.seconds), "--seed", str(seed)]
        if not variant.startswith("ours"):
            command += ["--connections", str(CONNECTIONS)]
        done = subprocess.run(  # noqa: S603
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=workload.seconds + 300,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            problem = done.stderr.strip()[-2000:]
            raise RuntimeError(f"{workload.name}, {variant}: {problem}")
        client = json.loads(lines[-1])
        server.stdin.write(f"report {client['end']!r}\n")
        server.stdin.flush()
        report = json.loads(server.stdout.readline())
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if client["errors"]:
        raise RuntimeError(f"{workload.name}, {variant}: {client['errors']}")
    return Result(client, report)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet")
    parser.add_argument("--workloads", default="fleet,idle,throughput")
    parser.add_argument("--idle-tasks", type=int, default=100_000)
    parser.add_argument(
        "--idle-seconds", type=float, default=40.0, help="a 30 s cycle and a third of the next"
    )
    parser.add_argument("--fleet-tasks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the fleet and throughput workloads, every variant taking its turn in each",
    )
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    workloads = {
        "fleet": Workload("fleet", args.fleet_tasks, 0.2),
        "idle": Workload(
            "idle", args.idle_tasks, 30.0, rate=4000.0, seconds=args.idle_seconds, lead=4.0
        ),
        "throughput": Workload("throughput", 100, 0.001, polls_each=100),
    }
    chosen = [workloads[name] for name in args.workloads.split(",")]
    names, missing = variants()
    started, load = time.monotonic(), os.getloadavg()[0]
    rounds: dict[tuple[str, str], list[Result]] = {}
    for workload in chosen:
        for variant in names * (1 if workload.name == "idle" else args.rounds):
            result = measure(workload, variant, args.seed)
            rounds.setdefault((workload.name, variant), []).append(result)
            print(
                f"{workload.name:<10} {LABELS[variant]:<34} {result.polls:>7} polls"
                f"  {result.client['cpu']:6.2f} s CPU  {result.cpu_per_poll:5.0f} us/poll"
                f"  server {result.server['cpu']:5.2f} s",
                file=sys.stderr,
                flush=True,
            )
    took = time.monotonic() - started
    return report(rounds, chosen, names, missing, took=took, load=load)


def typical(runs: list[Result]) -> Result:
    """The round of median CPU per poll (the lower middle of an even count): a real run."""
    return sorted(runs, key=lambda one: one.cpu_per_poll)[(len(runs) - 1) // 2]


def _ratio(value: float, baseline: float | None) -> str:
    return "-" if not baseline else f"{value / baseline:.2f}x"


def _usage(one: Result) -> list[str]:
    """The watching process's CPU share, and the server's CPU seconds (and share)."""
    wall = one.client["wall"]
    return [
        f"{one.client['cpu'] / wall:.0%}",
        f"{one.server['cpu']:.2f} ({one.server['cpu'] / wall:.0%})",
    ]


class _Tables:
    """One table per workload, and the targets checked on the way."""

    def __init__(self, rounds: dict[tuple[str, str], list[Result]], names: list[str]) -> None:
        self.rounds = rounds
        self.results = {key: typical(runs) for key, runs in rounds.items()}
        self.names = names
        self.checks: list[tuple[str, bool]] = []

    def present(self, workload: Workload) -> list[tuple[str, Result]]:
        return [
            (name, self.results[workload.name, name])
            for name in self.names
            if (workload.name, name) in self.results
        ]

    def baseline(self, workload: Workload, variant: str) -> Result | None:
        return self.results.get((workload.name, variant))

    def per_poll(self, workload: Workload, one: Result) -> list[str]:
        cells = [f"{one.cpu_per_poll:.0f}"]
        for variant in ("httpx", "aiohttp"):
            other = self.baseline(workload, variant)
            cells.append(_ratio(one.cpu_per_poll, other and other.cpu_per_poll))
        return cells

    def check(self, text: str, met: bool) -> None:
        self.checks.append((text, met))

    def fleet(self, workload: Workload) -> str:
        headers = ["Variant", "Polls/task", "CPU us/poll", "x httpx", "x aiohttp"]
        headers += ["CPU ms/task", "x httpx", "x aiohttp", "p50 ms", "p99 ms", "Wall s"]
        headers += ["CPU %", "Server CPU s (%)"]

        def per_task(one: Result | None) -> float | None:
            return None if one is None else one.client["cpu"] / workload.tasks * 1e3

        rows = []
        for name, one in self.present(workload):
            latencies = sorted(one.client["latencies"])
            p50 = statistics.median(latencies) * 1e3
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
            task_ms = per_task(one) or 0.0
            rows.append(
                [
                    LABELS[name],
                    f"{one.polls / workload.tasks:.1f}",
                    *self.per_poll(workload, one),
                    f"{task_ms:.2f}",
                    _ratio(task_ms, per_task(self.baseline(workload, "httpx"))),
                    _ratio(task_ms, per_task(self.baseline(workload, "aiohttp"))),
                    f"{p50:.0f}",
                    f"{p99:.0f}",
                    f"{one.client['wall']:.1f}",
                    *_usage(one),
                ]
            )
            if name.startswith("ours"):
                p50_max = (workload.interval / 2 + 0.05) * 1e3
                p99_max = (workload.interval + 0.1) * 1e3
                self.check(
                    (
                        f"fleet, {LABELS[name]}: detection p50 {p50:.0f} ms (target <="
                        f" {p50_max:.0f}), p99 {p99:.0f} ms (target <= {p99_max:.0f})"
                    ),
                    p50 <= p50_max and p99 <= p99_max,
                )
        return table(headers, rows)

    def idle(self, workload: Workload) -> str:
        headers = ["Variant", "RSS growth MiB", "Bytes/ID", "x httpx", "x aiohttp", "Polls"]
        headers += ["CPU us/poll", "x httpx", "x aiohttp", "Polls/s", "Busiest 1 s"]
        headers += ["Longest wait s", "CPU %", "Server CPU s (%)"]
        budget = workload.rate * RATE_SLACK
        fair = FAIRNESS_SLACK * max(workload.interval, workload.tasks / workload.rate)

        def per_id(one: Result | None) -> float | None:
            if one is None:
                return None
            growth = one.client["rss_end_kib"] - one.client["rss_before_kib"]
            return growth * 1024 / workload.tasks

        baselines = {
            variant: per_id(self.baseline(workload, variant)) for variant in ("httpx", "aiohttp")
        }
        rows = []
        for name, one in self.present(workload):
            memory = per_id(one) or 0.0
            rows.append(
                [
                    LABELS[name],
                    f"{memory * workload.tasks / MiB:.1f}",
                    f"{memory:.0f}",
                    _ratio(memory, baselines["httpx"]),
                    _ratio(memory, baselines["aiohttp"]),
                    str(one.polls),
                    *self.per_poll(workload, one),
                    f"{one.polls / one.client['wall']:.0f}",
                    str(one.server["busiest_second"]),
                    f"{one.server['max_gap']:.1f}",
                    *_usage(one),
                ]
            )
            if not name.startswith("ours"):
                continue
            ratios = [memory / b for b in baselines.values() if b]
            self.check(
                (
                    f"idle, {LABELS[name]}: {memory:.0f} bytes per watched ID (target <="
                    f" {MEMORY_TARGET}), "
                    + ", ".join(f"{r:.2f}x" for r in ratios)
                    + f" the baselines' (target <= {MEMORY_RATIO}x)"
                ),
                memory <= MEMORY_TARGET and all(r <= MEMORY_RATIO for r in ratios),
            )
            limited = "" if one.client.get("rate_limited") else "; no rate budget in this library"
            self.check(
                (
                    f"idle, {LABELS[name]}: busiest one-second window"
                    f" {one.server['busiest_second']} polls (target <= {budget:.0f}){limited}"
                ),
                one.server["busiest_second"] <= budget,
            )
            self.check(
                (
                    f"idle, {LABELS[name]}: longest wait of any task for a poll"
                    f" {one.server['max_gap']:.1f} s (target <= {fair:.0f} s)"
                ),
                one.server["max_gap"] <= fair,
            )
        return table(headers, rows)

    def throughput(self, workload: Workload) -> str:
        headers = ["Variant", "Polls", "CPU us/poll", "x httpx", "x aiohttp", "Polls/s"]
        headers += ["CPU %", "Server CPU s (%)"]
        rows = [
            [
                LABELS[name],
                str(one.polls),
                *self.per_poll(workload, one),
                f"{one.polls / one.client['wall']:.0f}",
                *_usage(one),
            ]
            for name, one in self.present(workload)
        ]
        return table(headers, rows)

    def cpu_targets(self, workload: Workload) -> None:
        for name, variant, limit in (
            ("ours", "httpx", CPU_RATIO),
            ("ours-aiohttp", "aiohttp", FAST_CPU_RATIO),
        ):
            ours, theirs = (
                self.rounds.get((workload.name, name)),
                self.rounds.get((workload.name, variant)),
            )
            if ours is None or theirs is None:
                continue
            # Round by round: each variant met the machine as it was in that round.
            ratios = [a.cpu_per_poll / b.cpu_per_poll for a, b in zip(ours, theirs, strict=True)]
            ratio = statistics.median(ratios)
            each = f" (rounds: {', '.join(f'{r:.2f}x' for r in ratios)})" if len(ratios) > 1 else ""
            self.check(
                (
                    f"{workload.name}, {LABELS[name]}: CPU per poll {ratio:.2f}x the"
                    f" {variant} baseline's{each} (target <= {limit}x)"
                ),
                ratio <= limit,
            )


def report(
    rounds: dict[tuple[str, str], list[Result]],
    workloads: list[Workload],
    names: list[str],
    missing: list[str],
    *,
    took: float,
    load: float,
) -> Report:
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("httpx", "httpcore", "anyio", "sniffio", "trio", "aiohttp", "httpx-aiohttp")
        if importlib.util.find_spec(name.replace("-", "_")) is not None
    )
    shipped = inspect.signature(AsyncVSRClient).parameters["max_connections"].default
    rounds_of = max(len(runs) for runs in rounds.values())
    lines = [
        "<!-- --8<-- [start:fleet] -->",
        "### Watching at scale",
        "",
        (
            f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs, load"
            f" {load:.2f} at the start; {took:.0f} s in all. Each run in a fresh process of"
            " the same environment (every package above importable in each,"
            f" sniffio included). The hand-written pollers share one client with {CONNECTIONS}"
            " connections, as a user would tune them; `client.watch` runs as shipped, its"
            f" default `max_connections={shipped}`. Polls, rates and waits are"
            " counted by the server; CPU is the watching process's (user + system, all"
            " threads) from the start of the watch, CPU % its share of one core; server CPU"
            " is the fake API's. The idle workload runs once per variant; the fleet and"
            f" throughput workloads {rounds_of} rounds, every variant taking its turn in each:"
            " their rows show the round of median CPU per poll, and the targets' ratios are"
            " the median of the rounds' ratios (a shared machine's speed drifts between runs"
            " by more than the margins measured here)."
        ),
    ]
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing) + "."]
    tables = _Tables(rounds, names)
    results = tables.results
    for workload in workloads:
        lines += ["", f"#### {workload.name.capitalize()}", ""]
        lines.append(getattr(tables, workload.name)(workload))
        tables.cpu_targets(workload)
        stats = results.get((workload.name, "ours"))
        if stats is not None and "stats" in stats.client:
            lines += ["", f"`Watcher.stats` at the end: `{stats.client['stats']}`"]
    if "ours-aiohttp" not in names:
        tables.check('CPU per poll with `transport="aiohttp"`: not measured', False)
    write(IMAGES / "cpu-per-poll.svg", cpu_chart(results, workloads, names))
    lines += ["", "![CPU per poll beside the hand-written pollers](img/bench/cpu-per-poll.svg)"]
    lines += ["", "Targets:", ""]
    lines += [f"- {text}: {verdict(met)}." for text, met in tables.checks]
    lines.append("<!-- --8<-- [end:fleet] -->")
    return Report("\n".join(lines), targets_met=all(met for _, met in tables.checks))


def cpu_chart(
    results: dict[tuple[str, str], Result], workloads: list[Workload], names: list[str]
) -> str:
    """CPU per poll of each variant, per workload, with the targets' lines (0.75x the httpx
    poller's for the default transport)."""
    groups = [
        (
            workload.name,
            [
                (LABELS[name], results[workload.name, name].cpu_per_poll)
                for name in names
                if (workload.name, name) in results
            ],
        )
        for workload in workloads
    ]
    targets = [
        None
        if (baseline := results.get((workload.name, "httpx"))) is None
        else CPU_RATIO * baseline.cpu_per_poll
        for workload in workloads
    ]
    return bars(
        "CPU per poll, library and hand-written pollers",
        "µs",
        groups,
        target=(f"target: {CPU_RATIO}x the httpx poller", targets),
    )


if __name__ == "__main__":
    sys.exit(cli(run))
