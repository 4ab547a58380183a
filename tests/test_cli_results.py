"""The results file: append, flush and fsync, read back to resume, torn lines, wrong files."""

from __future__ import annotations

import json

import pytest
from _cli_helpers import KEY, add_tasks, records, serve_in_thread
from click.testing import CliRunner

from vsr_async import Task, Transition
from vsr_async._cli import _app, _jsonl
from vsr_async._cli._jsonl import ResultsFile, ResultsFileError, transition_record
from vsr_async.testing import Emulator

pytestmark = pytest.mark.anyio

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
