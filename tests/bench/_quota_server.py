"""The emulator behind a quota, in a process of its own, counting what it accepted and refused.

``python -m tests.bench._quota_server --quota R [--no-retry-after] --tasks N --t0 T`` serves
the bundled `Emulator` with ``Quota(R)`` (its default burst) on a loopback port, with ``N``
tasks that stay ``queued``. It prints one JSON line: its port and the task IDs. It counts, per
second since ``t0`` (a ``time.monotonic()`` instant: CLOCK_MONOTONIC is system-wide on Linux,
so the client's instants and ours compare), the requests it answered 200 and 429, and per task
the polls it answered 200 from ``--settled`` seconds after ``t0`` on. A line ``report`` on its
stdin prints those counts and its own CPU time as one JSON line, and it exits.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys

import anyio

from vsr_async.testing import Emulator, EmulatorServer, Quota, RecordedRequest, Timeline

KEY = "bench"
FOREVER = Timeline(((0.0, "queued"),))


class Counts:
    """What the server answered: per second since ``t0``, and per task once settled."""

    def __init__(self, t0: float, settled: float) -> None:
        self.t0 = t0
        self.settled = settled
        self.accepted: collections.Counter[int] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()
        self.per_task: collections.Counter[str] = collections.Counter()

    def __call__(self, request: RecordedRequest) -> None:
        second = int(request.time - self.t0)
        if request.status_code == 429:
            self.refused[second] += 1
        elif request.status_code == 200:
            self.accepted[second] += 1
            if request.time >= self.t0 + self.settled and request.task_id is not None:
                self.per_task[request.task_id] += 1

    def report(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "accepted": dict(self.accepted),
            "refused": dict(self.refused),
            "per_task": dict(self.per_task),
            "cpu": usage.ru_utime + usage.ru_stime,
        }


async def serve(args: argparse.Namespace) -> None:
    counts = Counts(args.t0, args.settled)
    quota = Quota(args.quota, retry_after=not args.no_retry_after)
    emulator = Emulator(api_key=KEY, seed=1, quota=quota, history=0, on_request=counts)
    ids = [emulator.add_task(FOREVER) for _ in range(args.tasks)]
    async with EmulatorServer(emulator) as server:
        print(json.dumps({"base_url": server.base_url, "ids": ids}), flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        while (line := await stdin.readline()) and line.strip() != "report":
            pass
    print(json.dumps(counts.report()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quota", type=float, required=True)
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--settled", type=float, required=True)
    anyio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
