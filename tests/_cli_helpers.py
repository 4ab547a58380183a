"""Shared by the CLI tests: the emulator served from a thread, scripted tasks, result files,
the CLI as a subprocess (run to its end, or steered by the test), creates logged and held."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import attrs

from vsr_async.testing import Emulator, EmulatorServer, Timeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from anyio.abc import ByteReceiveStream, Process

    from vsr_async.testing import RecordedRequest

KEY = "emulator-key"
CLI = [sys.executable, "-m", "vsr_async"]
#: Any escape sequence: colours, cursor moves, erasing.
CONTROL = re.compile(r"\x1b[\[\]()#;?0-9]*[A-Za-z]")


@contextlib.contextmanager
def serve_in_thread(emulator: Emulator) -> Iterator[str]:
    """Serve ``emulator`` on a loopback port from a thread of its own; yields the base URL.

    For tests whose own thread blocks: in-process CLI runs (which start their own event
    loop) and pseudo-terminals driven by pexpect.
    """
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(EmulatorServer(emulator)) as server,
    ):
        yield server.base_url


def add_tasks(
    emulator: Emulator,
    outcomes: str,
    *,
    first: float = 0.3,
    step: float = 0.2,
    prefix: str = "task",
) -> list[str]:
    """One task per letter (``c`` completes, ``f`` fails, ``r`` runs forever), ending in turn.

    Task ``i`` ends ``first + i * step`` seconds after now; its ID is ``{prefix}_{i:03d}_{letter}``.
    """
    ids = []
    for index, outcome in enumerate(outcomes):
        ends = first + index * step
        if outcome == "c":
            timeline = Timeline.completed(queued=ends / 3, processing=ends * 2 / 3)
        elif outcome == "f":
            timeline = Timeline.failed(queued=ends / 3, processing=ends * 2 / 3, error="Bad input")
        else:
            timeline = Timeline(((0.0, "processing"),))
        ids.append(emulator.add_task(timeline, task_id=f"{prefix}_{index:03d}_{outcome}"))
    return ids


def cli_env(base_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: ours, less what changes the output, plus the key."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES")
        and not name.startswith("VSR_")
    }
    env["VSR_API_KEY"] = KEY
    if base_url is not None:
        env["VSR_BASE_URL"] = base_url
    env.update(extra)
    return env


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a results file, parsed (a torn line fails the test)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def readable_records(path: Path) -> list[dict[str, Any]]:
    """The whole records of a results file another process may be appending to (a line being
    written is skipped)."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def terminal_counts(path: Path) -> collections.Counter[str]:
    """How many terminal records each task has in a results file."""
    return collections.Counter(
        record["task_id"]
        for record in readable_records(path)
        if record.get("status") in ("completed", "failed")
    )


class SlowFiles(Emulator):
    """The emulator, pausing ``pause`` seconds before each block of a result file it sends, so
    that a download is still running when the test looks (or kills); it counts the file
    responses in flight."""

    pause = 0.01
    in_flight = 0
    most_in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/files/"):
            await super().__call__(scope, receive, send)
            return

        async def slowly(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                await anyio.sleep(self.pause)
            await send(message)

        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await super().__call__(scope, receive, slowly)
        finally:
            self.in_flight -= 1


def file_requests(emulator: Emulator, task_id: str) -> list[RecordedRequest]:
    """The requests for a task's result file."""
    return [r for r in emulator.requests if r.path == f"/files/{task_id}.mp4"]


@attrs.frozen
class Finished:
    """How a CLI subprocess ended."""

    returncode: int
    stdout: str
    stderr: str


async def _drain(stream: ByteReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    async for chunk in stream:
        into.extend(chunk)


async def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    *,
    until: Callable[[], bool] | None = None,
    then: signal.Signals = signal.SIGINT,
    within: float = 30,
) -> Finished:
    """Run the CLI to its end; if ``until`` is given, send ``then`` once it is true."""
    out, err = bytearray(), bytearray()
    with anyio.fail_after(within):
        async with (
            await anyio.open_process([*CLI, *args], env=env, stdin=subprocess.DEVNULL) as process,
            anyio.create_task_group() as task_group,
        ):
            task_group.start_soon(_drain, process.stdout, out)
            task_group.start_soon(_drain, process.stderr, err)
            if until is not None:
                while not until():
                    assert process.returncode is None, f"ended first:\n{out.decode()}"
                    await anyio.sleep(0.02)
                process.send_signal(then)
            returncode = await process.wait()
    return Finished(returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def steer(
    args: Sequence[str], env: dict[str, str], *, within: float = 60
) -> AsyncIterator[Steered]:
    """Run the CLI while the block steers it; leaving the block waits for the process to end
    (or kills it, if the block failed)."""
    with anyio.fail_after(within):
        async with (
            await anyio.open_process([*CLI, *args], env=env, stdin=subprocess.DEVNULL) as process,
            anyio.create_task_group() as task_group,
        ):
            steered = Steered(process)
            task_group.start_soon(_drain, process.stdout, steered.out)
            task_group.start_soon(_drain, process.stderr, steered.err)
            try:
                yield steered
            except BaseException:
                with contextlib.suppress(ProcessLookupError):  # it may have ended already
                    process.kill()
                raise
            await process.wait()


class Steered:
    """A CLI process that a test steers: it waits for conditions, sends signals, and reads
    what the process printed so far."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.out, self.err = bytearray(), bytearray()

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; fail if the process ended first."""
        while not condition():
            assert self.process.returncode is None, f"ended first:\n{self.stderr}"
            await anyio.sleep(0.02)

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)


class Clock:
    """The emulator's clock, moved by the test: tasks change status when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CreateLog(Emulator):
    """The emulator, logging the ``(model, video URL)`` of each create as it arrives.

    It answers the first ``free`` creates and holds the others in flight until the test calls
    `release`, and answers 400 to a create of a video URL in ``refuse`` (as to a bad URL).
    """

    def __init__(self, *, free: float = math.inf, refuse: Iterable[str] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.free = free
        self.refuse = set(refuse)
        self.creates: list[tuple[str, str]] = []
        self._released: anyio.Event | None = None

    def release(self) -> None:
        """Answer the creates held, and every one to come."""
        self.free = math.inf
        if self._released is not None:
            self._released.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        self.creates.append((data["model"], data["videoUrl"]))
        if len(self.creates) > self.free:
            if self._released is None:
                self._released = anyio.Event()
            await self._released.wait()
        if data["videoUrl"] in self.refuse:
            body = bytearray(json.dumps({**data, "videoUrl": "refused"}).encode())
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await super().__call__(scope, replay, send)


def transitions_by_task(path: Path) -> dict[str, list[tuple[str | None, str | None]]]:
    """The ``(previous, status)`` of each transition record of a results file, by task."""
    found: dict[str, list[tuple[str | None, str | None]]] = collections.defaultdict(list)
    for record in records(path):
        if "event" not in record:
            found[record["task_id"]].append((record["previous"], record["status"]))
    return dict(found)
