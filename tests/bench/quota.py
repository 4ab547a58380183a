"""Under a server's quota: what a watch that wants far more gets, and how often it is refused.

The bundled emulator serves behind its `Quota` (a leaky bucket of ``--quota`` requests a
second with a burst of 5%, as a reverse proxy's limiter), in a process of its own
(``_quota_server.py``) that counts what it answered each second. The client, as shipped (no
``max_connections``, no ``rate_limit``) and with a ``rate_limit`` twice the quota (a guess too
high), watches ``--tasks`` tasks that never end at ``--interval``: with the defaults, 500 tasks
every 0.5 s want 1,000 polls a second, 10 times a quota of 100. Each limiter answers 429 with
an honest ``Retry-After`` (whole seconds), or none (``--quota-no-retry-after``, as a proxy or a
CDN does).

Figures, from the server's counts over the settled part of the run (from ``--settled`` s to
the end): requests accepted a second (and as a share of the quota), the share of requests
answered 429, and fairness (the task polled least, against its fair share: the accepted polls
over the tasks). Targets (from the issue): accepted >= 90% of the quota, <= 5% refused, no
task polled less than half its fair share.

``python -m tests.bench.quota [--quota 100] [--tasks 500] [--interval 0.5] [--seconds 40]
[--settled 10]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from tests.bench._charts import IMAGES, timeline, write
from tests.bench._quota_server import KEY
from tests.bench._report import Report, cli, table, verdict
from vsr_async import AsyncVSRClient

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
LEAD = 2.0  # seconds for the server to start before t0
ACCEPTED_TARGET = 0.9  # of the quota
REFUSED_TARGET = 0.05  # of the requests
FAIRNESS_TARGET = 0.5  # of the fair share, for the task polled least


@dataclasses.dataclass(frozen=True)
class Variant:
    retry_after: bool
    rate_limit: float | None

    @property
    def label(self) -> str:
        header = "Retry-After" if self.retry_after else "no Retry-After"
        limit = "as shipped" if self.rate_limit is None else f"rate_limit={self.rate_limit:g}"
        return f"{header}, {limit}"


@dataclasses.dataclass(frozen=True)
class Result:
    variant: Variant
    accepted: list[int]  # per second since t0
    refused: list[int]
    per_task: list[int]  # accepted polls of each task, settled part
    rates: list[float | None]  # the client's current_rate, each second
    server_cpu: float


async def watch(
    base_url: str, ids: list[str], variant: Variant, args: argparse.Namespace, t0: float
) -> list[float | None]:
    """Watch until ``t0 + seconds``; the rate the client allowed itself, each second."""
    rates: list[float | None] = []
    async with AsyncVSRClient(KEY, base_url=base_url, rate_limit=variant.rate_limit) as client:

        async def sample() -> None:
            while True:
                await anyio.sleep(max(0.0, t0 + len(rates) + 1 - time.monotonic()))
                rates.append(client.current_rate)

        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        with anyio.move_on_after(args.seconds):
            async with (
                client.watch(ids, interval=args.interval) as watcher,
                anyio.create_task_group() as group,
            ):
                group.start_soon(sample)
                async for _ in watcher:
                    pass
    return rates


def measure(variant: Variant, args: argparse.Namespace) -> Result:
    t0 = time.monotonic() + LEAD
    command = [sys.executable, "-m", "tests.bench._quota_server", "--quota", repr(args.quota)]
    command += ["--tasks", str(args.tasks), "--t0", repr(t0), "--settled", repr(args.settled)]
    if not variant.retry_after:
        command.append("--no-retry-after")
    server = subprocess.Popen(  # noqa: S603
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        started = json.loads(server.stdout.readline())
        rates = anyio.run(watch, started["base_url"], started["ids"], variant, args, t0)
        server.stdin.write("report\n")
        server.stdin.flush()
        counts = json.loads(server.stdout.readline())
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    seconds = int(args.seconds)

    def per_second(key: str) -> list[int]:
        return [int(counts[key].get(str(second), 0)) for second in range(seconds)]

    per_task = [int(counts["per_task"].get(task_id, 0)) for task_id in started["ids"]]
    return Result(
        variant, per_second("accepted"), per_second("refused"), per_task, rates, counts["cpu"]
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.quota")
    parser.add_argument("--quota", type=float, default=100.0)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--settled", type=float, default=10.0)
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    started, load = time.monotonic(), os.getloadavg()[0]
    variants = [
        Variant(retry_after, rate_limit)
        for retry_after in (True, False)
        for rate_limit in (None, 2 * args.quota)
    ]
    results = []
    for variant in variants:
        result = measure(variant, args)
        results.append(result)
        settled = slice(int(args.settled), None)
        print(
            f"{variant.label:<34} accepted {sum(result.accepted[settled]):>6}"
            f"  refused {sum(result.refused[settled]):>6}",
            file=sys.stderr,
            flush=True,
        )
    return report(results, args, took=time.monotonic() - started, load=load)


def report(results: list[Result], args: argparse.Namespace, *, took: float, load: float) -> Report:
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("vsr-async", "httpx", "httpcore", "anyio", "sniffio")
    )
    demand = args.tasks / args.interval
    lines = [
        "### Under a server's quota",
        "",
        (
            f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs, load"
            f" {load:.2f} at the start; {took:.0f} s in all. The emulator's `Quota"
            f"({args.quota:g})` (a leaky bucket, burst 5%) in its own process; the client as"
            f" shipped (default connections, asyncio) watches {args.tasks} tasks that never end"
            f" every {args.interval:g} s ({demand:,.0f} polls a second wanted,"
            f" {demand / args.quota:.0f}x the quota) for {args.seconds:g} s. Figures are the"
            f" server's, from {args.settled:g} s on; fair share: the accepted polls over the"
            " tasks."
        ),
        "",
    ]
    headers = ["Limiter, client", "Accepted/s", "x quota", "429 share", "Least polled task"]
    headers += ["Rate allowed at the end", "Server CPU s"]
    rows, checks = [], []
    settled = slice(int(args.settled), None)
    span = args.seconds - int(args.settled)
    for one in results:
        accepted, refused = sum(one.accepted[settled]), sum(one.refused[settled])
        share = refused / max(accepted + refused, 1)
        fair = accepted / args.tasks
        least = min(one.per_task) / fair if fair else 0.0
        end_rate = one.rates[-1] if one.rates else None
        rows.append(
            [
                one.variant.label,
                f"{accepted / span:.1f}",
                f"{accepted / span / args.quota:.0%}",
                f"{share:.1%}",
                f"{least:.2f}x fair",
                "-" if end_rate is None else f"{end_rate:.1f}/s",
                f"{one.server_cpu:.1f}",
            ]
        )
        text = (
            f"{one.variant.label}: {accepted / span / args.quota:.0%} of the quota"
            f" (target >= {ACCEPTED_TARGET:.0%}), {share:.1%} answered 429 (target <="
            f" {REFUSED_TARGET:.0%}), least polled task {least:.2f}x its fair share"
            f" (target >= {FAIRNESS_TARGET})"
        )
        met = accepted / span >= ACCEPTED_TARGET * args.quota and share <= REFUSED_TARGET
        checks.append((text, met and least >= FAIRNESS_TARGET))
    lines.append(table(headers, rows))
    write(IMAGES / "quota.svg", chart(results, args))
    lines += ["", "![Accepted requests and 429s per second](img/bench/quota.svg)"]
    lines += ["", "Targets:", ""]
    lines += [f"- {text}: {verdict(met)}." for text, met in checks]
    return Report("\n".join(lines), targets_met=all(met for _, met in checks))


def chart(results: list[Result], args: argparse.Namespace) -> str:
    """Accepted requests a second, and the share answered 429, each second of each run."""

    def points(values: Sequence[float]) -> list[tuple[float, float]]:
        return [(second + 0.5, value) for second, value in enumerate(values)]

    accepted = [(one.variant.label, points(one.accepted)) for one in results]
    shares = [
        (
            one.variant.label,
            points(
                [
                    100 * r / (a + r) if a + r else 0.0
                    for a, r in zip(one.accepted, one.refused, strict=True)
                ]
            ),
        )
        for one in results
    ]
    wanted = args.tasks / args.interval
    return timeline(
        f"{args.tasks} tasks wanting {wanted:,.0f} polls/s, quota {args.quota:g}/s",
        "seconds since the start",
        accepted,
        y_label="accepted per second",
        reference=(f"quota {args.quota:g}/s", args.quota),
        below=("429 share, %", shares),
    )


if __name__ == "__main__":
    sys.exit(cli(run))
