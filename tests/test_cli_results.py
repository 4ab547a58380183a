"""The results file: append, flush and fsync, read back to resume, torn lines, wrong files;
resuming `create` and `watch` from it, as a user runs them (the CLI as a process, stopped
mid-batch by a signal and run again)."""

from __future__ import annotations

import collections
import json
import shlex
import signal
import sys

import pytest
from _cli_helpers import (
    KEY,
    Clock,
    CreateLog,
    add_tasks,
    cli_env,
    readable_records,
    records,
    run_cli,
    serve_in_thread,
    steer,
    transitions_by_task,
)
from click.testing import CliRunner

from vsr_async import Task, Transition
from vsr_async._cli import _app, _jsonl
from vsr_async._cli._jsonl import (
    ResultsFile,
    ResultsFileError,
    created_record,
    download_record,
    transition_record,
)
from vsr_async._cli._tally import Saved
from vsr_async.testing import Emulator, EmulatorServer, Timeline

pytestmark = pytest.mark.anyio

MODEL = "superResolution-720p-lowfps"
#: Stopping a process with a signal, and reading what it wrote meanwhile, is POSIX.
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

DONE = {"task_id": "task_a", "previous": "processing", "status": "completed"}
RUNNING = {"task_id": "task_b", "previous": None, "status": "processing"}


def lines(*objects: dict[str, object]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def opened(path) -> ResultsFile:
    results = ResultsFile(path)
    results.open()
    return results


@pytest.mark.parametrize(
    "torn",
    [
        b'{"task_id": "task_c", "previous": nu',
        b'{"ta',
        b"{",
        b'{"task_id": "x"\x00\x00\x00',
        b"\x00" * 8,
    ],
)
def test_a_torn_last_line_is_cut_off(tmp_path, torn: bytes) -> None:
    """A crash mid-write leaves a prefix of a record (maybe NUL-padded): it is cut off, the
    records before it are kept, and what is appended next starts on a line of its own."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(lines(DONE, RUNNING) + torn)
    results = opened(path)
    assert results.cut_torn_line
    assert results.finished == {"task_a": DONE}
    assert list(results.task_ids) == ["task_a", "task_b"]
    results.close()
    assert path.read_bytes() == lines(DONE, RUNNING)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path) -> None:
    """A last line that parses is a record, only missing its newline: kept, and terminated."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(lines(RUNNING) + json.dumps(DONE).encode())
    results = opened(path)
    assert not results.cut_torn_line
    assert results.finished == {"task_a": DONE}
    results.close()
    assert path.read_bytes() == lines(RUNNING, DONE)


def test_blank_lines_are_tolerated(tmp_path) -> None:
    """An empty line (someone edited the file) is skipped."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n" + lines(DONE) + b"  \n")
    results = opened(path)
    results.close()
    assert results.finished == {"task_a": DONE}


@pytest.mark.parametrize(
    "content",
    [
        b"task_1\ntask_2\n",  # an ID file given by mistake
        lines(DONE) + b"not json\n" + lines(RUNNING),
        lines(DONE) + b'{"id": "task_x"}\n',
        lines(DONE) + b"[1, 2]\n",
        b"task_1",  # no newline, and not the start of a record
    ],
)
def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, content: bytes) -> None:
    """A line that is not one of our records (other than a torn last one) means the wrong
    file: refused with its line number, never written to or cut."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    with pytest.raises(ResultsFileError, match=r"line \d+: not a vsr-async result record"):
        opened(path)
    assert path.read_bytes() == content


def test_a_file_another_run_appends_to_is_refused(tmp_path) -> None:
    """Two runs appending to one file would interleave their lines: the second is refused."""
    path = tmp_path / "results.jsonl"
    first = opened(path)
    with pytest.raises(ResultsFileError, match="in use by another vsr-async run"):
        opened(path)
    first.close()
    opened(path).close()


def test_an_unopenable_path_is_refused(tmp_path) -> None:
    """A path in a missing folder is a clear error, not a traceback."""
    with pytest.raises(ResultsFileError, match="cannot open"):
        opened(tmp_path / "missing" / "results.jsonl")


async def test_append_flushes_every_line_and_fsyncs_terminal_ones(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line is readable by others as soon as it is appended; a durable one is fsynced
    before append returns."""
    synced: list[int] = []
    real_fsync = _jsonl.os.fsync
    monkeypatch.setattr(_jsonl.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "results.jsonl"
    results = opened(path)
    synced.clear()  # the new file's directory entry
    running = Transition("task_a", None, Task("task_a", "processing"))
    await results.append(transition_record(running), durable=False)
    assert records(path)[0]["status"] == "processing"
    assert synced == []
    done = Transition("task_a", "processing", Task("task_a", "completed", video_url="http://x"))
    await results.append(transition_record(done), durable=True)
    assert len(synced) == 1
    assert records(path)[1]["video_url"] == "http://x"
    results.close()
    results.close()  # idempotent
    assert len(synced) == 2


def test_a_new_results_file_has_its_directory_entry_synced(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the file also fsyncs its directory, so the file itself survives a reboot."""
    synced: list[int] = []
    monkeypatch.setattr(_jsonl.os, "fsync", synced.append)
    results = opened(tmp_path / "results.jsonl")
    assert len(synced) == 1
    results.close()
    synced.clear()
    results = opened(tmp_path / "results.jsonl")  # exists now: nothing more to sync
    assert synced == []
    results.close()


def test_a_rerun_after_a_torn_line_says_so_and_finishes(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI notes the cut line, watches what is left, and leaves a file of whole records."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    emulator = Emulator()
    done, pending = add_tasks(emulator, "cc", first=0.1, step=0.05)
    path = tmp_path / "results.jsonl"
    path.write_bytes(
        lines({"task_id": done, "status": "completed"}) + b'{"task_id": "' + pending.encode()
    )
    with serve_in_thread(emulator) as base_url:
        env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
        args = ["watch", "--interval", "0.05", "--jsonl", str(path), done, pending]
        result = CliRunner().invoke(_app.cli, args, env=env)
    assert result.exit_code == 0
    assert f"Note: cut off the last line of {path}, torn by an earlier crash." in result.stderr
    assert records(path)[-1] == {**records(path)[-1], "task_id": pending, "status": "completed"}


def test_a_wrong_results_file_is_exit_2(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jsonl naming a file that is not ours: one error line, exit 2, the file untouched."""
    monkeypatch.setenv("VSR_BASE_URL", "http://127.0.0.1:9")
    path = tmp_path / "ids.txt"
    path.write_text("task_1\n")
    result = CliRunner().invoke(
        _app.cli, ["watch", "--jsonl", str(path), "task_1"], env={"VSR_API_KEY": KEY}
    )
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: {path}, line 1: not a vsr-async result record (is this the right file?)\n"
    )
    assert path.read_text() == "task_1\n"


async def test_the_file_knows_each_tasks_last_status_and_what_it_was_created_from(
    tmp_path,
) -> None:
    """Read back, and kept up to date by each append: the last status recorded of each task
    (download lines change none), and the task created from each (model, video URL)."""
    path = tmp_path / "results.jsonl"
    results = opened(path)
    queued = Task("task_a", "queued")
    await results.append(created_record(queued, "https://example.com/a.mp4", MODEL), durable=True)
    done = Transition("task_a", "queued", Task("task_a", "completed", video_url="http://x"))
    await results.append(transition_record(done), durable=True)
    saved = Saved("task_a", "downloaded", tmp_path / "task_a.mp4", 8)
    await results.append(download_record(saved), durable=True)
    expected = ({"task_a": "completed"}, {"task_a": (MODEL, "https://example.com/a.mp4")})
    assert (results.statuses, results.inputs) == expected
    results.close()
    again = opened(path)
    assert (again.statuses, again.inputs) == expected
    assert records(path)[0] == {
        **records(path)[0],
        "previous": None,
        "status": "queued",
        "input_url": "https://example.com/a.mp4",
        "model": MODEL,
    }
    again.close()


def test_a_resumed_watch_starts_each_task_from_its_recorded_status(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that moved on while nobody watched gets one line, whose `previous` is the
    status the file holds (and so does the plain output); a task the file does not hold is
    new."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    clock = Clock()
    emulator = Emulator(clock=clock)
    moved = emulator.add_task(Timeline.completed(queued=1, processing=1), task_id="task_moved")
    failed = emulator.add_task(Timeline.failed(queued=1, processing=1), task_id="task_failed")
    new = emulator.add_task(Timeline.completed(queued=1, processing=1), task_id="task_new")
    clock.now = 10.0  # all ended, unwatched
    path = tmp_path / "results.jsonl"
    earlier = [
        {"task_id": moved, "previous": None, "status": "queued"},
        {"task_id": failed, "previous": None, "status": "queued"},
        {"task_id": failed, "previous": "queued", "status": "processing"},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in earlier))
    with serve_in_thread(emulator) as base_url:
        args = ["watch", "--interval", "0.05", "--jsonl", str(path), moved, failed, new]
        result = CliRunner().invoke(_app.cli, args, env=cli_env(base_url))
    assert result.exit_code == 1, result.output
    added = [(r["task_id"], r["previous"], r["status"]) for r in records(path)[len(earlier) :]]
    assert sorted(added) == [
        (failed, "processing", "failed"),
        (moved, "queued", "completed"),
        (new, None, "completed"),
    ]
    assert f"{moved}  queued -> completed  http://" in result.stdout
    assert f"{failed}  processing -> failed  (" in result.stdout
    assert f"{new}  new -> completed  http://" in result.stdout


def _check_each_status_once(path, ids: list[str], statuses: list[str]) -> None:
    """Each task's lines go through ``statuses`` in order, each once, every ``previous`` the
    status of the line before it."""
    chain = list(zip([None, *statuses], statuses, strict=False))
    assert transitions_by_task(path) == dict.fromkeys(ids, chain)


def _each_has(path, ids: list[str], status: str) -> bool:
    seen = {r["task_id"] for r in readable_records(path) if r.get("status") == status}
    return seen >= set(ids)


@posix_signals
async def test_create_then_a_watch_resumed_twice_records_each_status_once(
    tmp_path, anyio_backend: str
) -> None:
    """create --jsonl, then watch --jsonl stopped by Ctrl-C, then the same watch again: each
    task's lines are queued, processing, completed, each once, with `previous` the status
    before it; a task first seen in its recorded status writes (and prints) nothing."""
    clock = Clock()
    steps = [((0, "queued"), (1, "processing"), (2 + index, "completed")) for index in range(4)]
    timelines = iter(map(Timeline, steps))
    emulator = Emulator(seed=31, clock=clock, timeline=lambda _rng: next(timelines))
    path = tmp_path / "results.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(4)]
    watch = ["watch", "--interval", "0.05", "--jsonl", str(path), "--backend", anyio_backend]
    async with EmulatorServer(emulator) as server:
        env = cli_env(server.base_url)
        created = await run_cli(["create", "-m", MODEL, "--jsonl", str(path), *urls], env)
        assert created.returncode == 0, created.stderr
        ids = created.stdout.split()
        clock.now = 1.5  # every task is processing, and nobody watches
        first = await run_cli(watch, env, until=lambda: _each_has(path, ids, "processing"))
        assert first.returncode == 130, first.stderr
        clock.now = 2.5  # the first task completed; the others are still processing
        answered = len(emulator.requests)
        async with steer(watch, env) as second:
            await second.wait_until(
                lambda: {r.task_id for r in emulator.requests[answered:]} >= set(ids)
            )
            clock.now = 100.0  # once each was seen as it was: let them all complete
    assert second.returncode == 0, second.stderr
    _check_each_status_once(path, ids, ["queued", "processing", "completed"])
    assert f"{ids[0]}  processing -> completed  http://" in second.stdout
    assert " new -> " not in second.stdout
    assert " -> processing" not in second.stdout


def _hinted_command(stderr: str) -> list[str]:
    (hint,) = [line for line in stderr.splitlines() if line.startswith("To resume: ")]
    return shlex.split(hint.removeprefix("To resume: "))


@posix_signals
async def test_a_create_stopped_midway_and_run_again_creates_each_video_url_once(
    tmp_path, anyio_backend: str
) -> None:
    """Ctrl-C mid-create: each task created is recorded with its video URL and model, and the
    hint names the same create command and how many URLs are left. That command creates
    exactly those (no URL twice), says how many it skipped, and prints every ID of the batch."""
    emulator = CreateLog(seed=32, free=3)
    path = tmp_path / "created.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(10)]
    args = ["create", "-m", MODEL, "--concurrency", "2", "--jsonl", str(path)]
    args += ["--backend", anyio_backend, *urls]
    async with EmulatorServer(emulator) as server:
        env = cli_env(server.base_url)
        async with steer(args, env) as first:
            await first.wait_until(lambda: len(emulator.creates) >= 5)  # 3 answered, 2 held
            first.send(signal.SIGINT)
            await first.wait_until(lambda: "waiting for the answers to 2 creates" in first.stderr)
            emulator.release()
        assert first.returncode == 130, first.stderr
        assert len(emulator.creates) == 5
        assert {(r["model"], r["input_url"]) for r in records(path)} == set(emulator.creates)
        assert sorted(r["task_id"] for r in records(path)) == sorted(first.stdout.split())
        hinted = _hinted_command(first.stderr)
        assert hinted[:2] == ["vsr-async", "create"]
        assert sorted(hinted[1:]) == sorted("--model" if arg == "-m" else arg for arg in args)
        assert f"5 of the 10 video URLs have no task in {path} yet" in first.stderr

        again = await run_cli(hinted[1:], env)
    assert again.returncode == 0, again.stderr
    assert collections.Counter(emulator.creates) == {(MODEL, url): 1 for url in urls}
    assert f"Note: {path} holds a task for 5 of the 10 video URLs: not created again" in (
        again.stderr
    )
    assert "Created 5 tasks." in again.stderr
    assert sorted(again.stdout.split()) == sorted(emulator.task_ids)
    assert sorted((r["model"], r["input_url"]) for r in records(path)) == sorted(emulator.creates)


@posix_signals
async def test_a_create_watch_stopped_midway_and_run_again_finishes_the_whole_batch(
    tmp_path, anyio_backend: str
) -> None:
    """SIGTERM mid `create --watch`: the same command again creates the video URLs left and
    watches them with the tasks created before, which ended meanwhile; every task ends, each
    status recorded once."""
    clock = Clock()
    timeline = Timeline.completed(queued=1, processing=1)
    emulator = CreateLog(seed=33, free=3, clock=clock, timeline=timeline)
    path = tmp_path / "created.jsonl"
    urls = [f"https://example.com/{index}.mp4" for index in range(10)]
    args = ["create", "--watch", "-m", MODEL, "--concurrency", "2", "--interval", "0.05"]
    args += ["--jsonl", str(path), "--backend", anyio_backend, *urls]
    async with EmulatorServer(emulator) as server:
        env = cli_env(server.base_url)
        async with steer(args, env) as first:
            await first.wait_until(lambda: len(emulator.creates) >= 5)  # 3 answered, 2 held
            first.send(signal.SIGTERM)
            await first.wait_until(lambda: "waiting for the answers to 2 creates" in first.stderr)
            emulator.release()
        assert first.returncode == 143, first.stderr
        assert _hinted_command(first.stderr)[1:2] == ["create"]
        earlier = list(emulator.task_ids)
        clock.now = 10.0  # the 5 tasks created completed, while nobody watched
        async with steer(args, env) as second:
            await second.wait_until(lambda: len(emulator.creates) == 10)
            await second.wait_until(lambda: _each_has(path, earlier, "completed"))
            clock.now = 20.0  # and now the new ones too
    assert second.returncode == 0, second.stderr
    assert collections.Counter(emulator.creates) == {(MODEL, url): 1 for url in urls}
    assert "10 of 10 tasks ended: 10 completed" in second.stdout
    chain = [(None, "queued"), ("queued", "completed")]
    assert transitions_by_task(path) == dict.fromkeys(emulator.task_ids, chain)
