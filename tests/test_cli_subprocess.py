"""The command line as a real process against the emulator on a loopback port: exit codes,
plain output off a terminal, Ctrl-C and SIGTERM (one or two of them), and resuming after SIGINT,
SIGTERM or SIGKILL mid-watch."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _cli_helpers import (
    CLI,
    CONTROL,
    Clock,
    SlowFiles,
    add_tasks,
    cli_env,
    file_requests,
    readable_records,
    records,
    run_cli,
    steer,
    terminal_counts,
)

from vsr_async import AsyncVSRClient
from vsr_async.testing import Emulator, EmulatorServer, Faults

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

#: Ten tasks; one fails.
OUTCOMES = "cccfcccccc"
MODEL = "superResolution-720p-lowfps"
#: What stops a run cleanly: Ctrl-C, and what `docker stop`, systemd and Kubernetes send.
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM]
STOP_IDS = ["SIGINT", "SIGTERM"]
#: How the summary names each signal.
SAID = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this process just serves the emulator; the CLI's own event loop, the
    one under test, is chosen with --backend where it matters."""
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Emulator:
    """The emulator on real time, or on the test's `Clock` if the test asks for one."""
    if "clock" in request.fixturenames:
        return Emulator(seed=11, clock=request.getfixturevalue("clock"))
    return Emulator(seed=11)


@pytest.fixture
async def base_url(emulator: Emulator) -> object:
    """The emulator, served in this test's event loop while the CLI runs."""
    async with EmulatorServer(emulator) as server:
        yield server.base_url


async def test_python_m_vsr_async_is_the_cli() -> None:
    """`python -m vsr_async` is the `vsr-async` command line."""
    result = await run_cli(["--help"], cli_env())
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: vsr-async [OPTIONS] COMMAND [ARGS]...")
    assert "130  interrupted" in result.stdout
    assert "143  stopped by SIGTERM" in result.stdout


@pytest.mark.parametrize(
    ("outcomes", "env", "code"),
    [
        ("cc", {}, 0),
        ("cf", {}, 1),
        ("cc", {"VSR_API_KEY": ""}, 2),
        ("cc", {"VSR_API_KEY": "wrong-key"}, 3),
    ],
    ids=["all completed", "one failed", "no key", "key refused"],
)
async def test_exit_codes(
    emulator, base_url, outcomes: str, env: dict[str, str], code: int
) -> None:
    """0 all completed, 1 one failed, 2 no key (one line, no traceback), 3 key refused."""
    ids = add_tasks(emulator, outcomes, first=0.1, step=0.1)
    result = await run_cli(["watch", "--interval", "0.05", *ids], cli_env(base_url, **env))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if code >= 2:
        assert len(result.stderr.splitlines()) == 1
        assert "wrong-key" not in result.stdout + result.stderr


async def test_off_a_terminal_the_output_is_plain_lines(emulator, base_url) -> None:
    """Through a pipe: a line per transition and the summary, with no control codes at all."""
    ids = add_tasks(emulator, "cf", first=0.2, step=0.1)
    result = await run_cli(["watch", "--interval", "0.05", *ids], cli_env(base_url))
    assert not CONTROL.search(result.stdout + result.stderr)
    assert "\r" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(f"{ids[0]}  " in line and "-> completed  http://" in line for line in lines)
    assert any(f"{ids[1]}  " in line and "-> failed  (Bad input)" in line for line in lines)
    assert "2 of 2 tasks ended: 1 completed, 1 failed" in result.stdout


def _ended(path: Path, at_least: int) -> Callable[[], bool]:
    return lambda: len(terminal_counts(path)) >= at_least


def _all_seen(path: Path, ids: list[str]) -> bool:
    return {record["task_id"] for record in readable_records(path)} == set(ids)


async def _end_the_first(count: int, clock: Clock, results: Path, ids: list[str]) -> None:
    """Once the watch has seen every task, let the first ``count`` of them end."""
    while not _all_seen(results, ids):  # noqa: ASYNC110 (polling another process's file)
        await anyio.sleep(0.02)
    clock.now = count + 0.5


def _check_every_task_ended_once(ids: list[str], results: Path) -> None:
    counts = terminal_counts(results)
    assert counts == dict.fromkeys(ids, 1)
    records(results)  # and every line is whole JSON


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("stop", STOP_SIGNALS, ids=STOP_IDS)
async def test_a_signal_stops_a_watch_cleanly_and_a_rerun_resumes(
    emulator, clock, base_url, tmp_path, *, backend: str, stop: signal.Signals
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (`docker stop`, systemd) mid-watch: the summary so far, a hint
    to resume, exit 130 or 143, every line flushed. Running the same command again watches only
    what had not ended, and the file ends with every task terminal exactly once."""
    ids = add_tasks(emulator, OUTCOMES, first=1.0, step=1.0)  # task i ends at i + 1
    results = tmp_path / "results.jsonl"
    args = ["watch", "--interval", "0.05", "--jsonl", str(results), "--backend", backend, *ids]
    env = cli_env(base_url)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(_end_the_first, 3, clock, results, ids)
        first = await run_cli(args, env, until=_ended(results, 3), then=stop)
    assert first.returncode == 128 + stop, first.stderr
    assert "Interrupted after " in first.stdout
    assert "3 of 10 tasks ended: 3 completed, 7 not finished" in first.stdout
    assert "To resume: run the same command again" in first.stderr
    assert "Traceback" not in first.stderr
    assert set(terminal_counts(results)) == set(ids[:3])
    polls_before = {task_id: len(emulator.polls(task_id)) for task_id in ids[:3]}

    clock.now = 100.0
    second = await run_cli(args, env)
    assert second.returncode == 1  # one task failed
    assert "3 tasks already ended in" in second.stdout
    assert (
        "10 of 10 tasks ended (3 ended in an earlier run): 9 completed, 1 failed" in second.stdout
    )
    _check_every_task_ended_once(ids, results)
    for task_id in ids[:3]:
        assert len(emulator.polls(task_id)) == polls_before[task_id]  # not polled again


async def test_a_killed_watch_loses_nothing_and_a_rerun_finishes(
    emulator, clock, base_url, tmp_path
) -> None:
    """SIGKILL mid-watch (and a torn last line, as a crash mid-write leaves): the rerun cuts the
    torn line, skips what ended, and the file ends with every task terminal exactly once."""
    ids = add_tasks(emulator, OUTCOMES, first=1.0, step=1.0)
    results = tmp_path / "results.jsonl"
    args = ["watch", "--interval", "0.05", "--jsonl", str(results), *ids]
    env = cli_env(base_url)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(_end_the_first, 4, clock, results, ids)
        killed = await run_cli(args, env, until=_ended(results, 4), then=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert set(terminal_counts(results)) == set(ids[:4])  # flushed lines outlive the process
    with results.open("ab") as file:
        file.write(b'{"task_id": "' + ids[-1].encode() + b'", "previous": "proc')

    clock.now = 100.0
    second = await run_cli(args, env)
    assert second.returncode == 1
    assert "torn by an earlier crash" in second.stderr
    assert "4 tasks already ended in" in second.stdout
    _check_every_task_ended_once(ids, results)


async def test_the_emulator_command_serves_until_interrupted(tmp_path) -> None:
    """`vsr-async emulator --port 0` prints an exportable base URL and key, serves the API
    there, and stops cleanly on Ctrl-C (exit 0)."""
    command = [*CLI, "emulator", "--port", "0", "--seed", "1"]
    with anyio.fail_after(20):
        async with await anyio.open_process(
            command, env=cli_env(), stdin=subprocess.DEVNULL
        ) as process:
            assert process.stdout is not None
            text = b""
            while text.count(b"\n") < 2:
                text += await process.stdout.receive()
            url_line, key_line = text.decode().splitlines()[:2]
            assert url_line.startswith("export VSR_BASE_URL=http://127.0.0.1:")
            assert key_line == "export VSR_API_KEY=emulator-key"
            base_url = url_line.partition("=")[2]
            async with AsyncVSRClient("emulator-key", base_url=base_url) as client:
                task = await client.create_task(
                    "https://example.com/a.mp4", model="superResolution-720p-lowfps"
                )
                assert (await client.get_task(task.id)).id == task.id
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


async def test_a_reader_that_goes_away_ends_the_run_quietly(emulator, base_url, tmp_path) -> None:
    """`vsr-async watch ... | head -n 1`: once the reader is gone the run ends, exit 1, no
    traceback, and the results file keeps whole lines."""
    ids = add_tasks(emulator, "ccc", first=0.6, step=0.2)
    results, stderr = tmp_path / "results.jsonl", tmp_path / "stderr.txt"
    watch = shlex.join([*CLI, "watch", "--interval", "0.05", "--jsonl", str(results), *ids])
    script = f'{watch} 2>{shlex.quote(str(stderr))} | head -n 1; exit "${{PIPESTATUS[0]}}"'
    with anyio.fail_after(20):
        result = await anyio.run_process(["bash", "-c", script], env=cli_env(base_url), check=False)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in stderr.read_text()
    records(results)


class _NotingEmulator(Emulator):
    """The emulator, counting creates as they arrive (before its injected latency)."""

    creates_arrived = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.creates_arrived += 1
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_ctrl_c_during_a_create_still_records_the_billed_task(
    tmp_path: Path, backend: str
) -> None:
    """Ctrl-C while a create is in flight: the server creates (and bills) the task anyway, so
    the CLI waits for the answer and records the new ID, then sends no further create."""
    emulator = _NotingEmulator(seed=12, faults=Faults(latency=1.0))
    results = tmp_path / "created.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(3)]
    args = ["create", "-m", "superResolution-720p-lowfps", "--concurrency", "1"]
    args += ["--jsonl", str(results), "--backend", backend, *urls]
    async with EmulatorServer(emulator) as server:
        finished = await run_cli(
            args, cli_env(server.base_url), until=lambda: emulator.creates_arrived >= 1
        )
    assert finished.returncode == 130, finished.stderr
    assert emulator.creates_arrived == 1
    assert len(emulator.task_ids) == 1
    assert [record["task_id"] for record in records(results)] == emulator.task_ids
    assert finished.stdout.split() == emulator.task_ids


class _HeldCreates(Emulator):
    """The emulator, answering the first ``free`` creates at once and holding the others in
    flight until the test sets `release`; it counts creates as they arrive."""

    def __init__(self, *, free: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.free = free
        self.creates_arrived = 0
        self.release = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.creates_arrived += 1
            if self.creates_arrived > self.free:
                await self.release.wait()
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("stop", "watch"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["SIGINT", "SIGTERM", "SIGTERM --watch"],
)
async def test_a_signal_mid_create_records_every_billed_task(
    tmp_path: Path, backend: str, stop: signal.Signals, *, watch: bool
) -> None:
    """SIGTERM (`docker stop`, systemd, Kubernetes) stops `create` as Ctrl-C does: it waits for
    the answers to the creates in flight, so every task the server created (and billed) is on
    stdout and in --jsonl, sends no other create, and prints the summary and a hint to resume;
    exit 143 (130 for Ctrl-C)."""
    emulator = _HeldCreates(seed=13, free=2)
    results = tmp_path / "created.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(10)]
    args = ["create", "-m", MODEL, "--concurrency", "3", "--jsonl", str(results)]
    args += ["--backend", backend, *(["--watch"] if watch else []), *urls]
    async with EmulatorServer(emulator) as server, steer(args, cli_env(server.base_url)) as cli:
        await cli.wait_until(lambda: emulator.creates_arrived >= 5)  # 2 answered, 3 held
        cli.send(stop)
        await cli.wait_until(lambda: "waiting for the answers to 3 creates" in cli.stderr)
        emulator.release.set()
    assert cli.returncode == 128 + stop, cli.stderr
    assert emulator.creates_arrived == 5
    created = sorted(emulator.task_ids)
    assert len(created) == 5
    assert sorted({record["task_id"] for record in records(results)}) == created
    if watch:
        lines = cli.stdout.splitlines()
        assert sorted(line.split()[1] for line in lines if "  created from " in line) == created
        assert "Interrupted after " in cli.stdout
        assert " of 5 tasks ended" in cli.stdout
    else:
        assert sorted(cli.stdout.split()) == created
        assert f"Created 5 tasks before {SAID[stop]}." in cli.stderr
    assert f"To resume: vsr-async create --model {MODEL} " in cli.stderr
    assert f"5 of the 10 video URLs have no task in {results} yet" in cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGINT),
    ],
    ids=["Ctrl-C twice", "SIGTERM twice", "SIGTERM then Ctrl-C"],
)
async def test_a_second_signal_gives_up_the_creates_in_flight_and_prints_the_summary(
    tmp_path: Path, backend: str, first: signal.Signals, second: signal.Signals
) -> None:
    """A second signal while the clean stop waits for creates stops at once, as a second
    Ctrl-C always did, but the summary is still printed, with the video URLs of the creates
    given up (the server may have billed them); the exit code is the first signal's."""
    emulator = _HeldCreates(seed=14, free=1)
    results = tmp_path / "created.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(5)]
    args = ["create", "-m", MODEL, "--concurrency", "2", "--jsonl", str(results)]
    args += ["--backend", backend, *urls]
    async with EmulatorServer(emulator) as server, steer(args, cli_env(server.base_url)) as cli:
        await cli.wait_until(lambda: emulator.creates_arrived >= 3)  # 1 answered, 2 held
        cli.send(first)
        await cli.wait_until(lambda: "waiting for the answers to 2 creates" in cli.stderr)
        cli.send(second)
    assert cli.returncode == 128 + first, cli.stderr
    assert emulator.creates_arrived == 3
    (task_id,) = emulator.task_ids
    assert cli.stdout.split() == [task_id]
    assert [record["task_id"] for record in records(results)] == [task_id]
    assert f"Created 1 tasks before {SAID[first]}." in cli.stderr
    assert "Warning: stopped without the answers to 2 creates" in cli.stderr
    given_up = [line.strip() for line in cli.stderr.splitlines() if line.startswith("  ")]
    assert len(set(given_up)) == 2  # the two held, of the first three sent
    assert set(given_up) <= set(urls[:3])
    assert f"To resume: vsr-async create --model {MODEL} " in cli.stderr
    assert f"4 of the 5 video URLs (the 2 above among them) have no task in {results}" in (
        cli.stderr
    )
    assert "Interrupted." not in cli.stderr  # no KeyboardInterrupt
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_sigterm_mid_download_stops_cleanly(tmp_path: Path, backend: str) -> None:
    """SIGTERM while a file downloads stops `download` as Ctrl-C does: the summary, the hint
    to resume, exit 143."""
    emulator = SlowFiles(seed=21)
    emulator.pause = 3600  # the file's body never comes: the download is in flight until then
    (task_id,) = add_tasks(emulator, "c", first=0)
    args = ["download", "-o", str(tmp_path / "out"), "--backend", backend, task_id]
    async with EmulatorServer(emulator) as server:
        finished = await run_cli(
            args,
            cli_env(server.base_url),
            until=lambda: bool(file_requests(emulator, task_id)),
            then=signal.SIGTERM,
        )
    assert finished.returncode == 143, finished.stderr
    assert finished.stdout == ""
    assert "Interrupted: 0 downloaded (0 bytes), 1 not finished; 1 tasks" in finished.stderr
    assert "To resume: run the same command again" in finished.stderr
    assert "Traceback" not in finished.stderr
