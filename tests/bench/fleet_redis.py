"""The fleet on Redis: what it costs Redis, what a worker holds, how it recovers, the rate it keeps.

Every part is a process: a redis-server of its own (no persistence), the fast fake API of the
fleet benchmark (``_fleet_server.py``, workload ``idle``: tasks that stay ``processing``), and
``vsr-async worker`` processes. This process submits the IDs and reads Redis.

1. **Steady state**: ``--tasks`` IDs through ``--workers`` workers at ``--interval``. Once every
   ID is owned and seen, over ``--seconds``: polls/s (the server's count), Redis commands per
   poll (``MONITOR``'s lines from clients, not the commands scripts run inside), Redis's memory
   per watched ID (``used_memory`` once all are seen, less before the submit) and each
   worker's (its RSS growth from its start, over the IDs it owns).
2. **Recovery**: one worker is SIGKILLed; the seconds until the others own all its IDs, beside
   its lease (``--lease``) plus one interval, the promise.
3. **One rate limit**: 4 workers, ``--rate-limit`` for the namespace, IDs that want 5x that:
   the requests/s the server saw, beside the limit (target: within 5%, never over by more).

``python -m tests.bench.fleet_redis [--tasks 5000] [--workers 2] [--interval 5] [--seconds 20]
[--lease 10] [--rate-limit 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._fleet_server import FakeAPI, task_id
from tests.bench._report import Report, cli, table, verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
KEY = "bench"
KB = 1000
SEED = 1
#: Detection: tasks ending 0.5-3.5 s after a start this far ahead, polled every 0.2 s.
LEAD, DETECT_INTERVAL = 8.0, 0.2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("VmRSS")


class _Redis:
    """A redis-server in a temporary directory, and a client of it."""

    def __init__(self, directory: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the fleet benchmark needs redis-server (apt-get install it)")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = ["redis-server", "--port", str(self.port), "--save", "", "--dir", directory]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 30
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        done = subprocess.run(  # noqa: S603
            ["redis-cli", "-p", str(self.port), *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    def used_memory(self) -> int:
        for line in self.cli("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise LookupError("used_memory")

    def count(self, key: str, command: str = "HLEN") -> int:
        return int(self.cli(command, key) or 0)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _worker(redis: _Redis, server: FakeAPI, namespace: str, *options: str) -> subprocess.Popen[str]:
    env = os.environ | {"VSR_API_KEY": KEY, "VSR_BASE_URL": server.base_url}
    command = [sys.executable, "-m", "vsr_async", "worker", "--redis", redis.url]
    command += ["--namespace", namespace, *options]
    return subprocess.Popen(  # noqa: S603
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )


def _stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()


def _submit(url: str, namespace: str, ids: list[str], interval: float) -> None:
    from vsr_async.fleet import RedisFleet  # noqa: PLC0415

    async def submit() -> None:
        async with RedisFleet(url, namespace, api_key=KEY) as fleet:
            await fleet.submit(ids, interval=interval)

    asyncio.run(submit())


def _until(condition: Any, seconds: float, what: str) -> float:
    """Wait for ``condition()``; return the seconds it took (or fail after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise RuntimeError(f"gave up waiting for {what} after {seconds:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - start


def _owned_by(redis: _Redis, namespace: str) -> dict[str, int]:
    """Each worker's count of owned IDs (pending entries of the group)."""
    lines = redis.cli("XINFO", "CONSUMERS", f"{{{namespace}}}:queue", "workers").splitlines()
    owned, name = {}, None
    for key, value in zip(lines[::2], lines[1::2], strict=False):
        if key == "name":
            name = value
        elif key == "pending" and name is not None:
            owned[name] = int(value)
    return owned


def _monitor(redis: _Redis, seconds: float) -> int:
    """Commands clients sent during ``seconds`` (not those scripts ran inside)."""
    monitor = subprocess.Popen(  # noqa: S603
        ["redis-cli", "-p", str(redis.port), "MONITOR"],  # noqa: S607
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds)
    monitor.terminate()
    out, _ = monitor.communicate(timeout=30)
    return sum(1 for line in out.splitlines() if '"' in line and " lua]" not in line)


def steady(args: argparse.Namespace, redis: _Redis) -> dict[str, Any]:
    namespace = "steady"
    server = FakeAPI(args.tasks, seed=SEED)
    workers: list[subprocess.Popen[str]] = []
    try:
        ids = [task_id(index) for index in range(args.tasks)]
        before = redis.used_memory()
        options = ["--interval", str(args.interval), "--lease", str(args.lease)]
        workers = [_worker(redis, server, namespace, *options) for _ in range(args.workers)]
        time.sleep(2.0)  # started: their RSS before any task
        rss_start = {worker.pid: _rss_kib(worker.pid) for worker in workers}
        _submit(redis.url, namespace, ids, args.interval)
        warmup = _until(
            lambda: redis.count(f"{{{namespace}}}:state") == args.tasks,
            max(300, args.tasks / 100),  # (at 100 polls/s at least)
            "every ID seen",
        )
        time.sleep(args.interval)  # one more round: the steady state
        polls = server.count()
        start = time.monotonic()
        commands = _monitor(redis, args.seconds)
        seconds = time.monotonic() - start
        polls = server.count() - polls
        used = redis.used_memory() - before
        owned = _owned_by(redis, namespace)
        rss = {worker.pid: _rss_kib(worker.pid) - rss_start[worker.pid] for worker in workers}
        # Recovery: kill one; the others take its IDs once its lease has run out.
        victim = workers[0]
        victim_owned = next((n for name, n in owned.items() if f"-{victim.pid}-" in name), 0)
        victim.kill()
        victim.wait()
        recovery = _until(
            lambda: (
                sum(
                    n
                    for name, n in _owned_by(redis, namespace).items()
                    if f"-{victim.pid}-" not in name
                )
                == args.tasks
            ),
            args.lease * 4 + 60,
            "the killed worker's IDs taken over",
        )
    finally:
        _stop(workers)
        server.close()
    return {
        "warmup": warmup,
        "polls": polls,
        "seconds": seconds,
        "commands": commands,
        "bytes_per_id": used / args.tasks,
        "worker_kib_per_id": sum(rss.values()) * 1024 / KB / args.tasks,
        "recovery": recovery,
        "victim_owned": victim_owned,
    }


def rate(args: argparse.Namespace, redis: _Redis) -> dict[str, Any]:
    namespace = "rate"
    tasks = max(100, int(args.rate_limit * 5 * 0.2))  # wanting 5x the limit at 0.2 s
    server = FakeAPI(tasks, seed=SEED)
    workers: list[subprocess.Popen[str]] = []
    try:
        options = ["--interval", "0.2", "--rate-limit", str(args.rate_limit)]
        workers = [_worker(redis, server, namespace, *options) for _ in range(4)]
        _submit(redis.url, namespace, [task_id(index) for index in range(tasks)], 0.2)
        _until(lambda: redis.count(f"{{{namespace}}}:state") == tasks, 300, "every ID seen")
        time.sleep(3.0)  # shares settled
        polls, start = server.count(), time.monotonic()
        time.sleep(args.seconds)
        polls, seconds = server.count() - polls, time.monotonic() - start
    finally:
        _stop(workers)
        server.close()
    return {"tasks": tasks, "rate": polls / seconds}


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _follow(url: str, namespace: str, ids: list[str], seen: dict[str, float]) -> None:
    from vsr_async.fleet import RedisFleet  # noqa: PLC0415

    async with RedisFleet(url, namespace, api_key=KEY) as fleet:
        await fleet.submit(ids, interval=DETECT_INTERVAL)
        async with fleet.follow(ids) as transitions:
            async for t in transitions:
                if t.is_final:
                    seen[t.task_id] = time.monotonic()


async def _waits(url: str, namespace: str, ids: list[str], seen: dict[str, float]) -> None:
    """A web app's way: a `wait()` per task, all at once in one process (one shared read)."""
    import anyio  # noqa: PLC0415

    from vsr_async.fleet import RedisFleet  # noqa: PLC0415

    async def wait(fleet: RedisFleet, task_id: str) -> None:
        await fleet.wait(task_id, raise_on_failure=False)
        seen[task_id] = time.monotonic()

    async with RedisFleet(url, namespace, api_key=KEY) as fleet:
        await fleet.submit(ids, interval=DETECT_INTERVAL)
        async with anyio.create_task_group() as group:
            for task_id in ids:
                group.start_soon(wait, fleet, task_id)


async def _watch(base_url: str, ids: list[str], seen: dict[str, float]) -> None:
    from vsr_async import AsyncVSRClient  # noqa: PLC0415

    client = AsyncVSRClient(KEY, base_url=base_url)
    async with client, client.watch(ids, interval=DETECT_INTERVAL) as watcher:
        async for t in watcher:
            if t.is_final:
                seen[t.task_id] = time.monotonic()


def detection(args: argparse.Namespace, redis: _Redis) -> dict[str, tuple[float, float]]:
    """Seconds from a task's end (on the server) to its final transition in a follower, through
    the fleet (2 workers; one follower of every task, or a `wait()` per task), and in one
    process's `client.watch` for comparison."""
    from tests.bench._fleet_server import finish_offsets  # noqa: PLC0415

    ids = [task_id(index) for index in range(args.detect)]
    offsets = finish_offsets(SEED, args.detect)
    figures: dict[str, tuple[float, float]] = {}
    followers = {"through the fleet": _follow, "through the fleet, a wait() each": _waits}
    for how in [*followers, "one process"]:
        t0 = time.monotonic() + LEAD
        server = FakeAPI(args.detect, workload="fleet", t0=t0, seed=SEED)
        workers: list[subprocess.Popen[str]] = []
        seen: dict[str, float] = {}
        try:
            if how == "one process":
                asyncio.run(_watch(server.base_url, ids, seen))
            else:
                namespace = f"detect{len(figures)}"
                options = ["--interval", str(DETECT_INTERVAL)]
                workers = [_worker(redis, server, namespace, *options) for _ in range(2)]
                asyncio.run(followers[how](redis.url, namespace, ids, seen))
        finally:
            _stop(workers)
            server.close()
        latencies = [seen[tid] - (t0 + offset) for tid, offset in zip(ids, offsets, strict=True)]
        figures[how] = _percentiles(latencies)
    return figures


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet_redis")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--rate-limit", type=float, default=200.0)
    parser.add_argument("--detect", type=int, default=1000, help="tasks, for detection")
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    started, load = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        redis = _Redis(directory)
        try:
            one = steady(args, redis)
            print(f"steady: {one}", file=sys.stderr, flush=True)
            two = rate(args, redis)
            print(f"rate: {two}", file=sys.stderr, flush=True)
            three = detection(args, redis)
            print(f"detection: {three}", file=sys.stderr, flush=True)
            redis_version = redis.cli("INFO", "server").split("redis_version:")[1].split()[0]
        finally:
            redis.close()
    took = time.monotonic() - started
    per_poll = one["commands"] / one["polls"]
    held = two["rate"] / args.rate_limit
    promise = args.lease + args.interval
    rows = [
        ["polls/s, steady state", f"{one['polls'] / one['seconds']:.0f}"],
        ["Redis commands per poll", f"{per_poll:.4f}"],
        ["Redis memory per watched ID", f"{one['bytes_per_id']:.0f} B"],
        ["worker memory per watched ID", f"{one['worker_kib_per_id']:.2f} KB"],
        ["start: submit to every ID seen", f"{one['warmup']:.1f} s"],
        [
            f"recovery of {one['victim_owned']:,} IDs after a SIGKILL (lease {args.lease:g} s)",
            f"{one['recovery']:.1f} s",
        ],
        [
            f"4 workers, rate_limit {args.rate_limit:g} for {two['tasks']:,} IDs at 0.2 s",
            f"{two['rate']:.1f} requests/s ({held:.1%})",
        ],
        *[
            [
                f"detection p50 / p99, {args.detect:,} tasks at {DETECT_INTERVAL:g} s, {how}",
                f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms",
            ]
            for how, (p50, p99) in three.items()
        ],
    ]
    checks = [
        (f"Redis commands per poll {per_poll:.4f} (target <= 0.05)", per_poll <= 0.05),
        (
            f"recovery {one['recovery']:.1f} s (target <= lease + interval, {promise:g} s)",
            one["recovery"] <= promise,
        ),
        (f"rate held at {held:.1%} of the limit (target 95%-105%)", 0.95 <= held <= 1.05),
    ]
    versions = ", ".join(f"{name} {version(name)}" for name in ("vsr-async", "coredis", "httpx"))
    lines = [
        "### The fleet on Redis",
        "",
        (
            f"Python {platform.python_version()}, {versions}, Redis {redis_version}; "
            f"{os.cpu_count()} CPUs, load {load:.2f} at the start; {took:.0f} s in all. "
            f"{args.tasks:,} IDs through {args.workers} `vsr-async worker` processes at"
            f" {args.interval:g} s against the fast fake API (tasks that stay processing),"
            f" {args.seconds:g} s of steady state; commands are those clients sent (`MONITOR`),"
            " not those scripts ran inside; memory per ID: Redis's `used_memory` growth, and"
            " the workers' RSS growth, over the IDs (1 KB = 1,000 bytes)."
        ),
        "",
        table(["Figure", "Value"], rows),
        "",
        "Targets:",
        "",
        *[f"- {text}: {verdict(met)}." for text, met in checks],
    ]
    return Report("\n".join(lines), targets_met=all(met for _, met in checks))


if __name__ == "__main__":
    sys.exit(cli(run))
