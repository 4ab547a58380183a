"""A fast loopback fake of the task API for the fleet benchmark, in a process of its own.

A raw ``asyncio.Protocol`` over HTTP/1.1 keep-alive (no framework, no header parsing beyond
the request line): it answers ``GET <prefix>/v1/result/task_<n>`` with a small JSON task whose
status follows a deterministic schedule, shared with the clients through the command line:

- ``fleet``: task ``n`` is ``processing`` until ``t0 + finish_offset(seed, n)``, then
  ``completed`` (``t0`` is a ``time.monotonic()`` instant: CLOCK_MONOTONIC is system-wide on
  Linux, so the client's instants and ours compare).
- ``idle``: every task stays ``processing``.
- ``throughput``: task ``n`` is ``completed`` from its ``--polls-each``-th request on.

It records the instant and the task of every request (two flat arrays). A line ``count`` on
its stdin prints how many it has answered so far; a line ``report <t_end>`` prints one JSON
line of figures (requests, the busiest one-second window, the longest gap between two polls of
one task, its own CPU time) and exits.

``python -m tests.bench._fleet_server --workload fleet --tasks N --t0 T --seed S`` prints its
port on the first line of stdout.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "/api"
_ID_WIDTH = 24
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def task_id(index: int) -> str:
    return f"task_{index:0{_ID_WIDTH}d}"


def finish_offsets(seed: int, tasks: int, low: float = 0.5, high: float = 3.5) -> list[float]:
    """Seconds after ``t0`` at which each task of the fleet becomes terminal."""
    pick = random.Random(seed)
    return [pick.uniform(low, high) for _ in range(tasks)]


class _State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.workload = args.workload
        self.t0 = args.t0
        self.polls_each = args.polls_each
        tasks = args.tasks
        self.finish = (
            [args.t0 + offset for offset in finish_offsets(args.seed, tasks)]
            if args.workload == "fleet"
            else None
        )
        self.counts = array.array("i", bytes(4 * tasks))
        self.times = array.array("d")
        self.ids = array.array("i")
        self.tasks = tasks

    def answer(self, target: bytes) -> bytes:
        now = time.monotonic()
        slash = target.rfind(b"/")
        try:
            index = int(target[slash + 6 :])  # after "/task_"
        except ValueError:
            return _NOT_FOUND
        if not 0 <= index < self.tasks:
            return _NOT_FOUND
        self.times.append(now)
        self.ids.append(index)
        self.counts[index] += 1
        if self.finish is not None:
            done = now >= self.finish[index]
        elif self.workload == "throughput":
            done = self.counts[index] >= self.polls_each
        else:
            done = False
        name = target[slash + 1 :].decode("ascii")
        if done:
            body = (
                f'{{"id":"{name}","object":"video","status":"completed","created":1764500000,'
                f'"videoUrl":"http://127.0.0.1/r/{name}.mp4","actualDuration":10.0}}'
            )
        else:
            body = f'{{"id":"{name}","object":"video","status":"processing","created":1764500000}}'
        data = body.encode("ascii")
        return b"%s%d\r\n\r\n%s" % (_OK, len(data), data)

    def report(self, t_end: float) -> dict[str, object]:
        times, ids = self.times, self.ids
        # The busiest one-second window, sliding (times are in order: one thread appends them).
        busiest, first = 0, 0
        for last, instant in enumerate(times):
            while instant - times[first] >= 1.0:
                first += 1
            busiest = max(busiest, last - first + 1)
        # Per task: the longest wait for a poll, from t0 to its first, between two, and from
        # its last to the end (a task the client stopped polling shows there).
        previous = [self.t0] * self.tasks
        widest = 0.0
        for instant, index in zip(times, ids, strict=True):
            widest = max(widest, instant - previous[index])
            previous[index] = instant
        ended = [False] * self.tasks
        if self.finish is not None or self.workload == "throughput":
            ended = [True] * self.tasks  # these tasks end: no gap after their last poll
        for index in range(self.tasks):
            if not ended[index]:
                widest = max(widest, t_end - previous[index])
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = [0] * (int(max(t_end - self.t0, 0)) + 1)
        for instant in times:
            second = math.floor(instant - self.t0)
            if 0 <= second < len(seconds):
                seconds[second] += 1
        return {
            "requests": len(times),
            "polled": sum(1 for count in self.counts if count),
            "busiest_second": busiest,
            "per_second": seconds,
            "max_gap": widest,
            "cpu": usage.ru_utime + usage.ru_stime,
        }


class _Connection(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out = []
        while True:  # GETs without bodies: a request ends at its blank line
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            line = buffer[: buffer.find(b"\r\n")]
            buffer = buffer[end + 4 :]
            parts = line.split(b" ")
            out.append(self.state.answer(parts[1]) if len(parts) == 3 else _NOT_FOUND)
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(args: argparse.Namespace) -> None:
    state = _State(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(state), "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, value = line.decode().strip().partition(" ")
        if command == "count":  # the requests answered so far
            print(len(state.times), flush=True)
        elif command == "report":
            server.close()
            print(json.dumps(state.report(float(value))), flush=True)
            return


class FakeAPI:
    """This server in a process of its own, for a benchmark: its URL, and the polls it has
    answered so far (``count``)."""

    def __init__(
        self, tasks: int, *, workload: str = "idle", t0: float | None = None, seed: int = 1
    ) -> None:
        command = [sys.executable, "-m", "tests.bench._fleet_server", "--workload", workload]
        t0 = time.monotonic() if t0 is None else t0
        command += ["--tasks", str(tasks), "--t0", repr(t0), "--seed", str(seed)]
        root = Path(__file__).resolve().parents[2]  # where ``-m tests.bench...`` resolves
        self.process = subprocess.Popen(  # noqa: S603
            command, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}{PREFIX}"

    def count(self) -> int:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--workload", choices=["fleet", "idle", "throughput"], required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--t0", type=float, required=True, help="a time.monotonic() instant")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--polls-each", type=int, default=100)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
