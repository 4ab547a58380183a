"""One measured watch of many tasks, in a fresh process so its CPU time and memory are its own.

``python -m tests.bench._fleet_client VARIANT WORKLOAD --port P --t0 T --tasks N ...`` builds
the task IDs and its client, records its resident set size (RSS), sleeps until ``t0`` (the
instant the server's schedule starts from) and watches every task until each has ended
(``fleet``, ``throughput``) or ``--seconds`` have passed (``idle``). It prints one JSON line:
CPU seconds and wall time of the watch, RSS before and at the end of it, and for ``fleet`` the
detection latency of each task (the instant it yielded the terminal status, less the instant
the server's schedule made it terminal).

The variants:

- ``ours``: ``AsyncVSRClient(...).watch(ids, interval=...)`` as shipped: no
  ``max_connections`` (the library's default), with ``rate_limit=`` when the library has it
  and the workload has a budget (that is the workload, not tuning).
- ``ours-aiohttp``: the same with ``transport="aiohttp"`` (when the library has it).
- ``httpx``: a tuned hand-written poller: one shared ``httpx.AsyncClient`` (a pool of
  ``--connections``, 2 by default, headers set once, URLs built before the clock starts), a
  coroutine per ID (what users write), an ``asyncio.Semaphore`` in front of the pool (so
  100,000 waiters queue there, not in httpcore's pool, which scans its queue on every
  release), and for a budget a shared pacer handing out one slot every ``1/rate`` seconds,
  taken inside the semaphore (taken before it, slots pile up behind the semaphore and go out
  in bursts).
- ``aiohttp``: the same design on one ``aiohttp.ClientSession`` (``TCPConnector(limit=...)``).

Every variant runs in the same environment, the library's (``sniffio`` and ``trio``
importable, as they are wherever the library is installed): none hides a package.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from typing import Any

from tests.bench._fleet_server import PREFIX, finish_offsets, task_id

_STATUS = "/proc/self/status"
TERMINAL = ("completed", "failed")


def rss_kib() -> int:
    with open(_STATUS, encoding="ascii") as status:  # noqa: PTH123
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Pacer:
    """A rate budget as a user writes it: one slot every ``1/rate`` s, handed out in order."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self.next)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


class _Run:
    """What every variant shares: the IDs, the schedule, the clock and the latencies."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ids = [task_id(index) for index in range(args.tasks)]
        self.base_url = f"http://127.0.0.1:{args.port}{PREFIX}"
        self.urls = [f"{self.base_url}/v1/result/{tid}" for tid in self.ids]
        self.finish: dict[str, float] = {}
        if args.workload == "fleet":
            offsets = finish_offsets(args.seed, args.tasks)
            self.finish = {tid: args.t0 + off for tid, off in zip(self.ids, offsets, strict=True)}
        self.latencies: list[float] = []
        self.ended = 0
        self.errors: list[str] = []
        self.headers = {"Authorization": "Bearer bench", "Accept": "application/json"}
        self.rate = args.rate if args.rate > 0 else None
        self.until = args.t0 + args.seconds if args.workload == "idle" else None

    def final(self, tid: str, status: str) -> None:
        self.ended += 1
        if status not in TERMINAL:
            self.errors.append(f"{tid}: ended as {status}")
        elif tid in self.finish:
            self.latencies.append(time.monotonic() - self.finish[tid])

    async def start(self) -> dict[str, Any]:
        gc.collect()
        before = {"rss_before_kib": rss_kib()}
        await asyncio.sleep(max(0.0, self.args.t0 - time.monotonic()))
        before["cpu"] = cpu_seconds()
        before["start"] = time.monotonic()
        return before

    def finish_run(self, before: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        end = time.monotonic()
        return {
            "cpu": cpu_seconds() - before["cpu"],
            "wall": end - before["start"],
            "end": end,
            "rss_before_kib": before["rss_before_kib"],
            "rss_end_kib": rss_kib(),
            "latencies": self.latencies,
            "ended": self.ended,
            "errors": self.errors[:5],
            **extra,
        }


async def ours(run: _Run, transport: str | None) -> dict[str, Any]:
    # Each variant imports only what it uses.
    import inspect  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    from vsr_async import AsyncVSRClient  # noqa: PLC0415

    params = inspect.signature(AsyncVSRClient).parameters
    options: dict[str, Any] = {}  # as shipped: the default pool and cap on requests in flight
    if transport is not None:
        options["transport"] = transport
    if run.rate is not None and "rate_limit" in params:
        options["rate_limit"] = run.rate
    extra: dict[str, Any] = {"rate_limited": "rate_limit" in options}
    async with AsyncVSRClient(api_key="bench", base_url=run.base_url, **options) as client:
        before = await run.start()
        async with client.watch(run.ids, interval=run.args.interval) as watcher:
            deadline = None if run.until is None else run.until - time.monotonic()
            with anyio.move_on_after(deadline):
                async for transition in watcher:
                    if transition.is_final:
                        run.final(transition.task_id, str(transition.status))
            stats = getattr(watcher, "stats", None)
            if stats is not None:  # `Watcher.stats`, when the library has it
                extra["stats"] = repr(stats)
            result = run.finish_run(before, extra)
    return result


async def httpx_poller(run: _Run) -> dict[str, Any]:
    import httpx  # noqa: PLC0415

    args = run.args
    limits = httpx.Limits(
        max_connections=args.connections, max_keepalive_connections=args.connections
    )
    gate = asyncio.Semaphore(args.connections)
    pacer = _Pacer(run.rate) if run.rate else None
    async with httpx.AsyncClient(headers=run.headers, limits=limits, timeout=30.0) as client:

        async def watch(tid: str, url: str) -> None:
            while True:
                async with gate:
                    if pacer is not None:  # inside the gate: a slot is used as soon as given
                        await pacer.wait()
                    response = await client.get(url)
                status = json.loads(response.content)["status"]
                if status in TERMINAL:
                    run.final(tid, status)
                    return
                await asyncio.sleep(args.interval)

        return await _gather(run, watch)


async def aiohttp_poller(run: _Run) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    args = run.args
    gate = asyncio.Semaphore(args.connections)
    pacer = _Pacer(run.rate) if run.rate else None
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(headers=run.headers, connector=connector) as session:

        async def watch(tid: str, url: str) -> None:
            while True:
                async with gate:
                    if pacer is not None:
                        await pacer.wait()
                    async with session.get(url) as response:
                        content = await response.read()
                status = json.loads(content)["status"]
                if status in TERMINAL:
                    run.final(tid, status)
                    return
                await asyncio.sleep(args.interval)

        return await _gather(run, watch)


async def _gather(run: _Run, watch: Any) -> dict[str, Any]:
    before = await run.start()
    tasks = [
        asyncio.create_task(watch(tid, url)) for tid, url in zip(run.ids, run.urls, strict=True)
    ]
    if run.until is None:
        await asyncio.gather(*tasks)
        return run.finish_run(before, {})
    await asyncio.sleep(max(0.0, run.until - time.monotonic()))
    result = run.finish_run(before, {})
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=["ours", "ours-aiohttp", "httpx", "aiohttp"])
    parser.add_argument("workload", choices=["fleet", "idle", "throughput"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=2, help="the baselines' pool")
    args = parser.parse_args()
    run = _Run(args)
    if args.variant == "ours":
        result = asyncio.run(ours(run, None))
    elif args.variant == "ours-aiohttp":
        result = asyncio.run(ours(run, "aiohttp"))
    elif args.variant == "httpx":
        result = asyncio.run(httpx_poller(run))
    else:
        result = asyncio.run(aiohttp_poller(run))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
