"""The example web app under load: thousands of Server-Sent-Events clients, with and without
the client's shared scheduler.

``examples/webapp.py`` is served by hypercorn in a process of its own, against the fast fake
API of the fleet benchmark (``_fleet_server.py``, workload ``idle``: tasks that stay
``processing``, so a stream, once open, sends nothing more and its cost is the polling's). A
load generator (this process, raw asyncio sockets) opens ``--clients`` streams,
``GET /tasks/{id}/events?interval=...``, and waits until each has its first event; after
``--settle`` seconds, the app's CPU time (user + system, from ``/proc``) and the polls the
server answers are counted over ``--seconds`` of steady state. Two workloads:

- ``distinct``: every stream watches a task of its own (``--clients`` tasks);
- ``popular``: ``--viewers`` streams watch each task (a dashboard many people have open).

Two modes of the same app:

- ``shared``: the app as written, its client opened with ``async with`` in the lifespan, so
  every stream's ``client.watch([id])`` subscribes to the client's one scheduler;
- ``unshared``: the same app with a lifespan that does not enter the client, so each stream's
  watch brings a scheduler and workers of its own (as every watch did before the shared one).

The app's ``MIN_INTERVAL`` is set to ``--interval`` (5 s by default, the app's own: the
provider asks for 5 to 10; at 1 s the app saturates a core in either mode, and polls/s then
says more than CPU per poll). Memory per open connection
is the app's RSS growth, from before the first connection to the end of the window, over
``--clients``: hypercorn's share of a connection is in both modes; their difference is the
library's. Each cell is the median (min-max) of ``--reps`` runs (1 by default: the modes
differ by far more than a run's noise); no target (the issue asks for the figures).

``python -m tests.bench.webapp [--clients 2000] [--viewers 200] [--seconds 20] [--settle 2]
[--interval 5] [--reps 1] [--backend asyncio]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._fleet_server import FakeAPI, task_id
from tests.bench._report import Report, cli, spread, table

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
MODES = ("shared", "unshared")
WORKLOADS = ("distinct", "popular")
KB = 1000
#: Connections being opened at once by the load generator (the rest queue behind them).
OPENING = 100
#: Seconds for every stream to open and show its first event before the run is called failed.
WARMUP_LIMIT = 300.0
_TICK = os.sysconf("SC_CLK_TCK")


def _more_files() -> None:
    """Raise this process's open-file limit to its hard limit: a socket per stream."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The app's process.


def _load_webapp() -> Any:
    spec = importlib.util.spec_from_file_location("webapp", ROOT / "examples" / "webapp.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_main(argv: Sequence[str]) -> int:
    import anyio  # noqa: PLC0415
    from hypercorn.config import Config  # noqa: PLC0415

    import vsr_async  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m tests.bench.webapp --child")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args(argv)
    _more_files()
    webapp = _load_webapp()
    webapp.MIN_INTERVAL = args.interval
    if args.mode == "unshared":

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            client = vsr_async.AsyncVSRClient()  # not entered: each watch polls for itself
            app.state.vsr = client
            try:
                yield
            finally:
                await client.aclose()

        webapp.app.router.lifespan_context = lifespan
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # (hypercorn's to close, not ours too)
    config.backlog = 4096
    config.accesslog = None
    config.loglevel = "WARNING"
    print(json.dumps({"port": port, "library": vsr_async.__file__}))
    sys.stdout.flush()
    if args.backend == "trio":
        from hypercorn.trio import serve  # noqa: PLC0415
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]  # noqa: PLC0415

    async def main() -> None:
        await serve(webapp.app, config)

    anyio.run(main, backend=args.backend)
    return 0


# The runner and its load generator.


def _cpu(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime and stime, fields 14 and 15


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("VmRSS")


@dataclasses.dataclass(frozen=True)
class Result:
    mode: str
    workload: str
    clients: int
    tasks: int
    warmup: float  # seconds for every stream to show its first event
    polls: int  # answered by the server in the window
    seconds: float  # the window's
    cpu: float  # the app's, in the window
    growth_kib: int  # the app's RSS, end of the window less before the first connection
    load: float

    @property
    def rate(self) -> float:
        return self.polls / self.seconds

    @property
    def cpu_per_poll(self) -> float | None:  # microseconds
        return self.cpu / self.polls * 1e6 if self.polls else None

    @property
    def kb_per_connection(self) -> float:
        return self.growth_kib * 1024 / KB / self.clients


async def _stream(
    port: int, path: str, opening: asyncio.Semaphore, drains: set[asyncio.Task[None]]
) -> asyncio.StreamWriter:
    """Open one event stream and return once its first event has come (the rest is read and
    dropped by a task added to ``drains``, until the writer is closed)."""
    async with opening:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {head.decode(errors='replace')[:200]}")
        await reader.readuntil(b"\n\n")  # the first event (inside its chunk)

    async def drain() -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    writer.transport.set_write_buffer_limits(0)  # (nothing more is written)
    drains.add(asyncio.get_running_loop().create_task(drain()))
    return writer


async def _load(
    app: int, pid: int, server: FakeAPI, paths: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    rss_before = _rss_kib(pid)
    started = time.monotonic()
    opening = asyncio.Semaphore(OPENING)
    drains: set[asyncio.Task[None]] = set()
    streams = [_stream(app, path, opening, drains) for path in paths]
    writers = await asyncio.wait_for(asyncio.gather(*streams), WARMUP_LIMIT)
    warmup = time.monotonic() - started
    try:
        await asyncio.sleep(args.settle)
        polls, cpu, start = server.count(), _cpu(pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        polls, cpu = server.count() - polls, _cpu(pid) - cpu
        seconds = time.monotonic() - start
        rss_end = _rss_kib(pid)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.gather(*drains)
    return {
        "warmup": warmup,
        "polls": polls,
        "seconds": seconds,
        "cpu": cpu,
        "growth_kib": rss_end - rss_before,
    }


def measure(mode: str, workload: str, args: argparse.Namespace) -> Result:
    viewers = args.viewers if workload == "popular" else 1
    tasks = args.clients // viewers
    ids = [task_id(index % tasks) for index in range(tasks * viewers)]
    paths = [f"/tasks/{tid}/events?interval={args.interval!r}" for tid in ids]
    load = os.getloadavg()[0]
    server = FakeAPI(tasks)
    try:
        env = os.environ | {
            "VSR_API_KEY": "bench",
            "VSR_BASE_URL": server.base_url,
        }
        command = [sys.executable, "-m", "tests.bench.webapp", "--child", mode]
        command += ["--interval", repr(args.interval), "--backend", args.backend]
        app = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # noqa: S603
        try:
            assert app.stdout is not None
            hello = json.loads(app.stdout.readline())
            if not Path(hello["library"]).resolve().is_relative_to(ROOT):
                raise RuntimeError(f"the app imported {hello['library']}, not the one in {ROOT}")
            time.sleep(1.0)  # hypercorn and the app's lifespan starting
            figures = asyncio.run(_load(hello["port"], app.pid, server, paths, args))
        finally:
            app.terminate()
            try:
                app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()
    finally:
        server.close()
    return Result(mode, workload, len(paths), tasks, load=load, **figures)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.webapp")
    parser.add_argument("--clients", type=int, default=2000, help="open event streams")
    parser.add_argument("--viewers", type=int, default=200, help="streams per task, popular")
    parser.add_argument("--seconds", type=float, default=20.0, help="of steady state")
    parser.add_argument("--settle", type=float, default=2.0, help="after the last stream opens")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    _more_files()
    started, load = time.monotonic(), os.getloadavg()[0]
    results: dict[tuple[str, str], list[Result]] = {}
    for rep in range(args.reps):
        for workload in WORKLOADS:
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                one = measure(mode, workload, args)
                results.setdefault((workload, mode), []).append(one)
                per_poll = "-" if one.cpu_per_poll is None else f"{one.cpu_per_poll:.0f}"
                print(
                    f"{workload:<9} {mode:<9} {rep + 1}/{args.reps} {one.rate:7.1f} polls/s"
                    f"  {one.cpu:5.2f} s CPU  {per_poll:>6} us/poll"
                    f"  {one.kb_per_connection:6.1f} KB/connection"
                    f"  warm-up {one.warmup:.1f} s  load {one.load:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    took = time.monotonic() - started
    return report(results, args, took=took, load=(load, os.getloadavg()[0]))


def report(
    results: dict[tuple[str, str], list[Result]],
    args: argparse.Namespace,
    *,
    took: float,
    load: tuple[float, float],
) -> Report:
    headers = ["Workload", "Scheduler", "Streams", "Tasks", "Polls/s", "CPU us/poll", "CPU %"]
    headers += ["KB/connection", "Warm-up s"]
    rows = []
    for (workload, mode), ones in results.items():
        per_poll = [one.cpu_per_poll for one in ones if one.cpu_per_poll is not None]
        rows.append(
            [
                workload,
                mode,
                f"{ones[0].clients:,}",
                f"{ones[0].tasks:,}",
                spread([one.rate for one in ones], "{:.1f}"),
                spread(per_poll) if per_poll else "-",
                spread([one.cpu / one.seconds for one in ones], "{:.0%}"),
                spread([one.kb_per_connection for one in ones], "{:.1f}"),
                spread([one.warmup for one in ones], "{:.1f}"),
            ]
        )
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("vsr-async", "httpx", "anyio", "hypercorn", "starlette")
    )
    loads = [one.load for ones in results.values() for one in ones]
    lines = [
        "### The example web app",
        "",
        (
            f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs, load"
            f" {load[0]:.2f} at the start, {load[1]:.2f} at the end ({min(loads):.2f}-"
            f"{max(loads):.2f} as each run started); {took:.0f} s in all. `examples/webapp.py`"
            f" served by hypercorn ({args.backend}) with {args.clients:,} open"
            f" `/tasks/{{id}}/events` streams (`distinct`: a task each; `popular`:"
            f" {args.viewers} per task), interval {args.interval:g} s, tasks that stay"
            f" processing; {args.seconds:g} s of steady state measured {args.settle:g} s after"
            " the last stream's first event. `shared`: the app as written (its client entered"
            " in the lifespan); `unshared`: the same app, its client not entered, so each"
            " stream's watch polls for itself. Polls are counted by the server; CPU is the app"
            " process's (user + system) in the window, CPU % its share of one core;"
            " KB/connection is the app's RSS growth from before the first connection to the"
            " end of the window, over the streams (1 KB = 1,000 bytes; hypercorn's share is in"
            " both modes)."
        ),
        "",
        table(headers, rows),
    ]
    return Report("\n".join(lines), targets_met=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(cli(run))
