"""`download`, and `--download` for `watch` and `create --watch`: whole files in a directory,
tasks without a result reported per ID, downloads while other tasks still run, recorded in the
results file, and finished after Ctrl-C or SIGKILL without fetching anything twice."""

from __future__ import annotations

import collections
import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest
from _cli_helpers import (
    CONTROL,
    KEY,
    SlowFiles,
    add_tasks,
    cli_env,
    file_requests,
    readable_records,
    records,
    run_cli,
    serve_in_thread,
)
from click.testing import CliRunner, Result

from vsr_async._cli import _app
from vsr_async.testing import Emulator, EmulatorServer, Timeline

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FAST = ["--interval", "0.05"]
MIB = 1024 * 1024
#: Big enough to span a few of the library's 1 MiB disk writes.
SIZE = 2 * MIB
MODEL = "superResolution-720p-lowfps"


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this process just runs the CLI; its own event loop is chosen with
    --backend where it matters."""
    return "asyncio"


@pytest.fixture
def emulator() -> SlowFiles:
    """Files sent at full speed unless a test sets ``pause``."""
    emulator = SlowFiles(seed=21, video_size=SIZE)
    emulator.pause = 0
    return emulator


@pytest.fixture
def base_url(emulator: Emulator) -> object:
    with serve_in_thread(emulator) as url:
        yield url


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, base_url: str) -> Callable[..., Result]:
    """Run the CLI in process with the emulator's key and URL in the environment."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
        return runner.invoke(_app.cli, list(args), env=env)

    return invoke


def _fields(result: Result) -> dict[str, list[str]]:
    """``download``'s plain lines, by task ID."""
    return {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}


def _downloads(path: Path) -> list[dict[str, object]]:
    return [record for record in readable_records(path) if "event" in record]


def _check_saved(emulator: Emulator, out: Path, ids: list[str]) -> None:
    """Each task's file is whole, and nothing else (no part file) is left."""
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{i}.mp4" for i in ids)
    for task_id in ids:
        assert (out / f"{task_id}.mp4").read_bytes() == emulator.video_bytes(task_id)


# -- download


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_download_saves_each_result_whole_into_the_directory(
    invoke, emulator: Emulator, tmp_path: Path, backend: str
) -> None:
    """Off a terminal: the directory is created, each file is the server's bytes, and stdout
    has one `ID<TAB>downloaded<TAB>PATH<TAB>BYTES` line per file and nothing else; exit 0."""
    ids = add_tasks(emulator, "ccc", first=0, step=0)
    out = tmp_path / "new" / "out"
    result = invoke("download", "--backend", backend, "-o", str(out), *ids)
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.splitlines()) == [
        f"{task_id}\tdownloaded\t{out / task_id}.mp4\t{SIZE}" for task_id in ids
    ]
    assert result.stderr.startswith("Done: 3 downloaded (6.3 MB); 3 tasks, into ")
    assert not CONTROL.search(result.output)
    _check_saved(emulator, out, ids)


def test_download_reports_each_task_without_a_result_and_exits_1(
    invoke, emulator: Emulator, tmp_path: Path
) -> None:
    """A failed, a still running and an unknown task each get a line saying why there is no
    file, and exit 1; the completed one is saved all the same."""
    done, failed, running = add_tasks(emulator, "cfr", first=0, step=0)
    result = invoke("download", "-o", str(tmp_path), running, "task_nope", done, failed)
    assert result.exit_code == 1
    lines = _fields(result)
    assert lines[failed] == ["failed", "Bad input"]
    assert lines[running] == ["not ready", "the task is processing"]
    assert lines["task_nope"][0] == "not found"
    assert lines["task_nope"][1].endswith("returned 404: Task not found")
    assert lines[done][0] == "downloaded"
    assert "1 downloaded (2.1 MB), 3 not downloaded; 4 tasks" in result.stderr
    _check_saved(emulator, tmp_path, [done])


def test_download_reports_an_expired_result(invoke, emulator: Emulator, tmp_path: Path) -> None:
    """A result URL the file host refuses even when fetched afresh: `expired`, exit 1."""
    (done,) = add_tasks(emulator, "c", first=0)
    emulator.result_ttl = 0.0
    result = invoke("download", "-o", str(tmp_path), done)
    assert result.exit_code == 1
    status, reason = _fields(result)[done]
    assert status == "expired"
    assert "has expired or was refused (403)" in reason
    assert list(tmp_path.iterdir()) == []


def test_download_skips_a_file_already_there_unless_overwrite(
    invoke, emulator: Emulator, tmp_path: Path
) -> None:
    """A file already there is left alone, never fetched, and counts as saved (exit 0), so a
    rerun just finishes the missing ones; --overwrite fetches it again."""
    mine, missing = add_tasks(emulator, "cc", first=0, step=0)
    (tmp_path / f"{mine}.mp4").write_bytes(b"mine")
    result = invoke("download", "-o", str(tmp_path), mine, missing)
    assert result.exit_code == 0
    assert _fields(result)[mine] == ["exists", str(tmp_path / f"{mine}.mp4"), "4"]
    assert _fields(result)[missing][0] == "downloaded"
    assert "1 downloaded (2.1 MB), 1 already there (skipped); 2 tasks" in result.stderr
    assert (tmp_path / f"{mine}.mp4").read_bytes() == b"mine"
    assert file_requests(emulator, mine) == []

    result = invoke("download", "--overwrite", "-o", str(tmp_path), mine)
    assert result.exit_code == 0
    assert _fields(result)[mine] == ["downloaded", str(tmp_path / f"{mine}.mp4"), str(SIZE)]
    _check_saved(emulator, tmp_path, [mine, missing])


def test_a_resumed_download_counts_what_was_fetched_now_apart(
    invoke, emulator: Emulator, tmp_path: Path
) -> None:
    """A ``.part`` an earlier run left is resumed, not fetched again: the line gives the whole
    file's size, the summary the bytes fetched now and those resumed; a part of another version
    of the file is dropped, and all of it counts as fetched now."""
    kept = 1_000_000
    resumed, stale, fresh = add_tasks(emulator, "ccc", first=0, step=0)
    (tmp_path / f"{resumed}.mp4.part").write_bytes(emulator.video_bytes(resumed)[:kept])
    (tmp_path / f"{resumed}.mp4.part.etag").write_text(emulator.etag(resumed))
    result = invoke("download", "-o", str(tmp_path), resumed)
    assert result.exit_code == 0, result.output
    assert _fields(result)[resumed] == ["downloaded", str(tmp_path / f"{resumed}.mp4"), str(SIZE)]
    (request,) = file_requests(emulator, resumed)
    assert request.headers["range"] == f"bytes={kept}-"
    assert result.stderr.startswith(
        "Done: 1 downloaded (2.1 MB: 1.1 MB fetched now, 1.0 MB resumed); 1 tasks, into "
    )

    (tmp_path / f"{stale}.mp4.part").write_bytes(b"x" * kept)
    (tmp_path / f"{stale}.mp4.part.etag").write_text('"an-older-version"')
    result = invoke("download", "-o", str(tmp_path), stale, fresh)
    assert result.exit_code == 0, result.output
    assert "Done: 2 downloaded (4.2 MB); 2 tasks" in result.stderr
    _check_saved(emulator, tmp_path, [resumed, stale, fresh])


def test_watch_download_counts_what_was_fetched_now_apart(
    invoke, emulator: Emulator, tmp_path: Path
) -> None:
    """``watch --download`` says the same in its summary: a file resumed from an earlier
    run's ``.part`` is not counted as fetched now."""
    kept = 1_000_000
    (task_id,) = add_tasks(emulator, "c", first=0, step=0)
    (tmp_path / f"{task_id}.mp4.part").write_bytes(emulator.video_bytes(task_id)[:kept])
    (tmp_path / f"{task_id}.mp4.part.etag").write_text(emulator.etag(task_id))
    result = invoke("watch", "--interval", "0.05", "--download", str(tmp_path), task_id)
    assert result.exit_code == 0, result.output
    assert (
        f"Results in {tmp_path}: 1 saved (2.1 MB downloaded: 1.1 MB fetched now, 1.0 MB resumed)"
        in result.stdout
    )
    _check_saved(emulator, tmp_path, [task_id])


def test_download_checks_every_id_before_creating_anything(tmp_path: Path) -> None:
    """IDs from --from-file are checked like the other commands' (named by file and line),
    before the directory is created or anything is sent: exit 2."""
    ids = tmp_path / "ids.txt"
    ids.write_text("task_ok\nbad/id\n")
    out = tmp_path / "out"
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": "http://127.0.0.1:9/api"}
    result = CliRunner().invoke(
        _app.cli, ["download", "-o", str(out), "--from-file", str(ids)], env=env
    )
    assert result.exit_code == 2
    assert f"{ids}, line 2: invalid task ID 'bad/id'" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("output", "error"),
    [("file", "is a file"), ("file/sub", "cannot use {out} as the download directory: ")],
)
def test_a_directory_that_cannot_be_used_is_a_usage_error(
    tmp_path: Path, output: str, error: str
) -> None:
    """-o naming a file, or a directory that cannot be made: exit 2 before anything is sent."""
    (tmp_path / "file").write_text("")
    out = tmp_path / output
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": "http://127.0.0.1:9/api"}
    for command in (["download", "-o"], ["watch", "--download"]):
        result = CliRunner().invoke(_app.cli, [*command, str(out), "task_a"], env=env)
        assert result.exit_code == 2
        assert error.format(out=out) in result.stderr


def test_download_help_documents_the_exit_codes() -> None:
    """`download --help` says a file already there is skipped, and lists the exit codes with
    downloads in them."""
    result = CliRunner().invoke(_app.cli, ["download", "--help"])
    text = " ".join(result.stdout.split())
    assert (
        "1 some task failed, was given up, or could not be created, queried or downloaded" in text
    )
    assert "130 interrupted" in text
    assert "already there (skipped, and counted as saved)" in text


@pytest.mark.parametrize("command", ["download", "watch"])
def test_downloads_are_bounded_by_their_concurrency(
    invoke, emulator: SlowFiles, tmp_path: Path, command: str
) -> None:
    """Six results to fetch at once: never more than the concurrency asked for in flight."""
    emulator.pause = 0.005
    ids = add_tasks(emulator, "cccccc", first=0, step=0)
    if command == "download":
        args = ["download", "--concurrency", "2", "-o", str(tmp_path)]
    else:
        args = ["watch", *FAST, "--download-concurrency", "2", "--download", str(tmp_path)]
    result = invoke(*args, *ids)
    assert result.exit_code == 0, result.output
    assert emulator.most_in_flight == 2
    _check_saved(emulator, tmp_path, ids)


# -- watch --download, create --watch --download


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_downloads_each_result_while_the_others_still_run(
    invoke, emulator: Emulator, tmp_path: Path, backend: str
) -> None:
    """A task's file is saved, and recorded with its path and size, as soon as it completes,
    before the last task has even ended; a plain line says where; exit 0."""
    ids = add_tasks(emulator, "cccc", first=0.2, step=0.3)
    out, results = tmp_path / "out", tmp_path / "results.jsonl"
    args = ["watch", *FAST, "--backend", backend, "--jsonl", str(results), "--download", str(out)]
    result = invoke(*args, *ids)
    assert result.exit_code == 0, result.output
    _check_saved(emulator, out, ids)
    lines = records(results)
    saved = [index for index, r in enumerate(lines) if r.get("event") == "downloaded"]
    last_ended = next(
        index
        for index, r in enumerate(lines)
        if r["task_id"] == ids[-1] and r.get("status") == "completed"
    )
    assert lines[saved[0]]["task_id"] == ids[0]
    assert saved[0] < last_ended
    for task_id in ids:
        (record,) = [r for r in lines if r["task_id"] == task_id and "event" in r]
        assert record["path"] == str(out / f"{task_id}.mp4")
        assert record["bytes"] == SIZE
        assert record["error"] is None
    assert f"{ids[0]}  downloaded {out / ids[0]}.mp4 ({SIZE} bytes)" in result.stdout
    assert f"Results in {out}: 4 saved (8.4 MB downloaded)" in result.stdout


def test_a_failed_download_is_recorded_and_a_rerun_retries_only_it(
    invoke, emulator: Emulator, tmp_path: Path
) -> None:
    """One download fails (its part file cannot be written): the watch goes on, the failure is
    listed and recorded with its error, exit 1. The rerun fetches that file alone."""
    ids = add_tasks(emulator, "ccc", first=0.1, step=0.1)
    out, results = tmp_path / "out", tmp_path / "results.jsonl"
    out.mkdir()
    blocker = out / f"{ids[1]}.mp4.part"
    blocker.mkdir()
    args = ["watch", *FAST, "--jsonl", str(results), "--download", str(out), *ids]
    first = invoke(*args)
    assert first.exit_code == 1
    assert "3 of 3 tasks ended: 3 completed" in first.stdout
    assert f"{ids[1]}  not downloaded (error): " in first.stdout
    assert f"not downloaded  {ids[1]}  error: " in first.stdout
    failure = next(r for r in records(results) if r.get("event") == "download_failed")
    assert failure["task_id"] == ids[1]
    assert failure["path"] is None
    assert failure["error"].startswith("error: ")

    blocker.rmdir()
    emulator.reset_stats()
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "1 of them completed without a download: downloading." in second.stdout
    assert f"Results in {out}: 1 saved (2.1 MB downloaded), 2 in an earlier run" in second.stdout
    assert file_requests(emulator, ids[0]) == file_requests(emulator, ids[2]) == []
    _check_saved(emulator, out, ids)
    saved = collections.Counter(r["task_id"] for r in _downloads(results) if r["error"] is None)
    assert saved == dict.fromkeys(ids, 1)


def test_a_refused_key_stops_the_downloads_with_exit_3(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    """A rerun that only has downloads left, with a key the API refuses: one error line,
    exit 3, nothing saved, the key nowhere."""
    ids = add_tasks(emulator, "cc", first=0, step=0)
    results = tmp_path / "results.jsonl"
    results.write_text(
        "".join(json.dumps({"task_id": i, "status": "completed"}) + "\n" for i in ids)
    )
    secret = "sk-live-do-not-print-0123456789"
    args = ["watch", "--jsonl", str(results), "--download", str(tmp_path / "out")]
    result = CliRunner().invoke(_app.cli, [*args, "--api-key", secret, "--base-url", base_url])
    assert result.exit_code == 3
    assert "Error: the API refused the key: " in result.stderr
    assert secret not in result.output + results.read_text()
    assert list((tmp_path / "out").iterdir()) == []
    assert _downloads(results) == []


def test_create_watch_downloads_the_new_tasks(invoke, emulator: Emulator, tmp_path: Path) -> None:
    """create --watch --download saves each new task's result; --download without --watch is
    a usage error that creates nothing."""
    emulator._timeline = Timeline.completed(queued=0.05, processing=0.1)
    out = tmp_path / "out"
    urls = [f"https://example.com/{n}.mp4" for n in range(3)]
    refused = invoke("create", "-m", MODEL, "--download", str(out), *urls)
    assert refused.exit_code == 2
    assert "--download needs --watch" in refused.stderr
    assert emulator.task_ids == []

    result = invoke("create", "--watch", "-m", MODEL, *FAST, "--download", str(out), *urls)
    assert result.exit_code == 0, result.output
    assert len(emulator.task_ids) == 3
    _check_saved(emulator, out, emulator.task_ids)


# -- real processes: exit codes, Ctrl-C, SIGKILL


def _part(out: Path, at_least: int) -> Path | None:
    """A part file holding at least ``at_least`` bytes, if there is one."""
    for path in out.glob("*.part"):
        try:
            if path.stat().st_size >= at_least:
                return path
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return None


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("outcomes", "env", "code"),
    [("cc", {}, 0), ("cf", {}, 1), ("cc", {"VSR_API_KEY": "wrong-key"}, 3)],
    ids=["all saved", "one failed", "key refused"],
)
async def test_download_exit_codes(
    emulator: Emulator, base_url: str, tmp_path: Path, *, outcomes: str, env: dict, code: int
) -> None:
    """As a process: 0 every file saved, 1 a task had none, 3 the key was refused (one error
    line, no traceback)."""
    ids = add_tasks(emulator, outcomes, first=0, step=0)
    result = await run_cli(["download", "-o", str(tmp_path), *ids], cli_env(base_url, **env))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if code == 3:
        assert "Error: the API refused the key: " in result.stderr
        assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_ctrl_c_mid_download_keeps_the_part_and_a_rerun_resumes_it(
    emulator: SlowFiles, base_url: str, tmp_path: Path
) -> None:
    """SIGINT mid-file: exit 130 with the summary and a hint, the part file kept; the same
    command again asks only for the rest of it (a Range from where it stopped)."""
    emulator.pause = 0.03  # about 1 s a file
    (task_id,) = add_tasks(emulator, "c", first=0)
    args, env = ["download", "-o", str(tmp_path), task_id], cli_env(base_url)
    first = await run_cli(args, env, until=lambda: _part(tmp_path, MIB) is not None)
    assert first.returncode == 130, first.stderr
    assert first.stdout == ""
    assert "Interrupted: 0 downloaded (0 bytes), 1 not finished; 1 tasks" in first.stderr
    assert "To resume: run the same command again" in first.stderr
    kept = (tmp_path / f"{task_id}.mp4.part").stat().st_size
    assert MIB <= kept < SIZE

    emulator.pause = 0
    emulator.reset_stats()
    second = await run_cli(args, env)
    assert second.returncode == 0, second.stderr
    (request,) = file_requests(emulator, task_id)
    assert request.headers["range"] == f"bytes={kept}-"
    assert f"MB resumed); 1 tasks, into {tmp_path}" in second.stderr
    assert request.status_code == 206
    _check_saved(emulator, tmp_path, [task_id])


class Clock:
    """The emulator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_a_killed_watch_download_resumes_without_fetching_anything_twice(
    tmp_path: Path,
) -> None:
    """SIGKILL while the second of three downloads runs, then the result URLs expire: the rerun
    with the same --jsonl watches nothing again, leaves the saved file alone, queries the tasks
    for fresh URLs, resumes the part file with a Range and fetches the third; each task ends
    up with exactly one download record."""
    clock = Clock()
    emulator = SlowFiles(seed=22, video_size=SIZE, clock=clock, result_ttl=10)
    emulator.pause = 0.03
    ids = add_tasks(emulator, "ccc", first=0, step=0)
    out, results = tmp_path / "out", tmp_path / "results.jsonl"
    args = ["watch", *FAST, "--jsonl", str(results), "--download", str(out)]
    args += ["--download-concurrency", "1", *ids]

    def one_saved_one_half_way() -> bool:
        return len(_downloads(results)) == 1 and _part(out, MIB) is not None

    async with EmulatorServer(emulator) as server:
        env = cli_env(server.base_url)
        killed = await run_cli(args, env, until=one_saved_one_half_way, then=signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL
        (saved,) = _downloads(results)
        part = _part(out, MIB)
        assert part is not None
        resumed, kept = part.name.removesuffix(".mp4.part"), part.stat().st_size

        clock.now = 100.0  # every URL handed out so far has expired
        emulator.pause = 0
        emulator.reset_stats()
        second = await run_cli(args, env)
    assert second.returncode == 0, second.stderr
    assert "3 tasks already ended in" in second.stdout
    assert "2 of them completed without a download: downloading." in second.stdout
    assert file_requests(emulator, str(saved["task_id"])) == []
    (request,) = file_requests(emulator, resumed)
    assert request.headers["range"] == f"bytes={kept}-"
    assert request.status_code == 206
    _check_saved(emulator, out, ids)
    counts = collections.Counter(r["task_id"] for r in _downloads(results))
    assert counts == dict.fromkeys(ids, 1)
    records(results)  # and every line is whole JSON


# -- on a terminal


def test_on_a_terminal_each_file_in_flight_has_a_bar(emulator: SlowFiles, tmp_path: Path) -> None:
    """`download` on a terminal: a bar per file in flight, with its name, bytes, speed and
    ETA; a line per file as it ends; the summary last."""
    pytest.importorskip("pexpect")
    pytest.importorskip("pyte")
    from test_cli_pty import Terminal  # noqa: PLC0415 - it needs pexpect and pyte

    emulator.pause = 0.02
    ids = add_tasks(emulator, "ccc", first=0, step=0)
    with serve_in_thread(emulator) as url:
        terminal = Terminal(
            ["download", "--concurrency", "2", "-o", str(tmp_path), *ids], cli_env(url)
        )

        def two_bars(screen: str) -> bool:
            bars = [line for line in screen.splitlines() if ".mp4 " in line and "ETA" in line]
            return len(bars) == 2 and all("/2.1 MB" in bar for bar in bars)

        terminal.wait_for(two_bars)
        assert terminal.finish() == 0
    screen = terminal.text
    assert f"Downloading 3 results into {tmp_path}" in screen
    for task_id in ids:
        assert f"{task_id}  downloaded {tmp_path / task_id}.mp4 (2.1 MB)" in screen
    assert "Done: 3 downloaded (6.3 MB); 3 tasks" in screen
    assert "ETA" not in screen  # no bar is left behind
    _check_saved(emulator, tmp_path, ids)


def test_watch_download_counts_downloads_on_the_live_display(
    emulator: SlowFiles, tmp_path: Path
) -> None:
    """`watch --download` on a terminal: a line counting downloads saved, in flight (with their
    bytes), waiting and failed, then a summary line on them."""
    pytest.importorskip("pexpect")
    pytest.importorskip("pyte")
    from test_cli_pty import Terminal  # noqa: PLC0415 - it needs pexpect and pyte

    emulator.pause = 0.02
    ids = add_tasks(emulator, "ccc", first=0, step=0)
    args = ["watch", *FAST, "--download-concurrency", "1", "--download", str(tmp_path), *ids]
    with serve_in_thread(emulator) as url:
        terminal = Terminal(args, cli_env(url))
        terminal.wait_for(lambda screen: "in flight 1 (" in screen and "waiting 2" in screen)
        assert terminal.finish() == 0
    assert "downloads  saved 3   in flight 0 (0 bytes)   waiting 0   failed 0" in terminal.text
    assert f"Results in {tmp_path}: 3 saved (6.3 MB downloaded)" in terminal.text
