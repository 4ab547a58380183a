"""Durable results: one JSON line per transition, appended, flushed, and fsynced when final.

The line written when ``create`` makes a task also holds what it was made from: ``input_url``
(the video URL sent) and ``model``. With ``--download``, one line per finished download too,
fsynced: ``"event": "downloaded"`` with the file's absolute ``path`` and its ``bytes``, or
``"event": "download_failed"`` with the ``error`` (transitions have no ``event``).

A rerun reads the file back: it skips the tasks it holds as ``completed`` or ``failed``, the
downloads it holds as done and (``create``) the video URLs it holds a task for, and starts each
other task from its last recorded status. A last line torn by a crash is cut off; any other
line that is not one of our records makes the file refused, so a wrong path never gets written
to (or cut).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio

from vsr_async import Transition

if TYPE_CHECKING:
    from pathlib import Path

    from vsr_async import Task, VSRError

    from ._tally import Saved

#: Statuses after which a task never changes: a rerun skips tasks recorded with one.
TERMINAL = frozenset({"completed", "failed"})
#: The ``event`` of a download record.
DOWNLOADED_EVENT = "downloaded"
DOWNLOAD_FAILED_EVENT = "download_failed"
#: How every record we write starts, which tells a torn record from someone else's file.
_RECORD_START = b'{"task_id": '

if sys.platform != "win32":
    import fcntl


class ResultsFileError(Exception):
    """The results file cannot be used: unreadable, in use, or not ours."""


def task_fields(task: Task | None) -> dict[str, Any]:
    """What a record says of a task snapshot, with the API's own field names."""
    if task is None:
        return {"status": None, "video_url": None, "actualDuration": None, "error": None}
    return {
        "status": str(task.status),
        "video_url": task.video_url,
        "actualDuration": task.actual_duration,
        "error": None if task.error is None else str(task.error),
    }


def transition_record(transition: Transition) -> dict[str, Any]:
    """One line of the results file.

    ``client_error`` says why the watch gave the task up (not found, past ``--timeout``...);
    ``error`` is the task's own failure reason.
    """
    previous = transition.previous
    return {
        "task_id": transition.task_id,
        "previous": None if previous is None else str(previous),
        **task_fields(transition.task),
        "client_error": _describe(transition.error),
        "observed_at": _now(),
    }


def created_record(task: Task, video_url: str, model: str) -> dict[str, Any]:
    """The line recording a new task: its first transition, and the ``input_url`` and ``model``
    it was created from, by which a rerun of ``create`` knows not to create it again."""
    return {
        **transition_record(Transition(task.id, None, task)),
        "input_url": video_url,
        "model": model,
    }


def download_record(saved: Saved) -> dict[str, Any]:
    """The line saying how a task's download ended: its file, or why there is none."""
    return {
        "task_id": saved.task_id,
        "event": DOWNLOADED_EVENT if saved.ok else DOWNLOAD_FAILED_EVENT,
        "path": None if saved.path is None else str(saved.path.absolute()),
        "bytes": saved.size,
        "error": None if saved.ok else f"{saved.status}: {saved.detail}",
        "observed_at": _now(),
    }


def query_record(task_id: str, task: Task | None, error: VSRError | None) -> dict[str, Any]:
    """One line of ``status --json``."""
    created = None if task is None or task.created_at is None else task.created_at.isoformat()
    return {
        "task_id": task_id,
        **task_fields(task),
        "created": created,
        "client_error": _describe(error),
    }


def _describe(error: VSRError | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ResultsFile:
    """An append-only JSONL file of transitions. `open` it before use, `close` it after.

    What it holds is read by `open` and kept up to date by `append`.

    Attributes:
        task_ids: Every task the file has a record of, in the order first written.
        statuses: The last status recorded of each task.
        finished: The last terminal record of each task the file holds as ended.
        downloaded: The ``downloaded`` record of each task whose result the file holds as saved.
        inputs: The ``(model, input_url)`` each task was created from, of the tasks that
            ``create`` recorded.
        cut_torn_line: Whether `open` cut off a last line torn by a crash.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.task_ids: dict[str, None] = {}  # a set that keeps the order
        self.statuses: dict[str, str] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self.downloaded: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, tuple[str, str]] = {}
        self.cut_torn_line = False
        self._file: BinaryIO | None = None

    def open(self) -> None:
        """Read the records already there, cut a torn last line, and open for appending.

        Raises:
            ResultsFileError: The file is unreadable, used by another run, or not ours.
        """
        existed = self.path.exists()
        try:
            file = self.path.open("a+b")
        except OSError as exc:
            raise ResultsFileError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            _lock(file, self.path)
            self._read(file)
            if not existed:
                _fsync_directory(self.path)
        except BaseException:
            file.close()
            raise
        self._file = file

    async def append(self, record: dict[str, Any], *, durable: bool) -> None:
        """Write one record and flush it; with ``durable``, also wait until it is on disk."""
        assert self._file is not None  # noqa: S101
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line.encode())
        self._file.flush()
        self._index(record)
        if durable:
            await anyio.to_thread.run_sync(os.fsync, self._file.fileno())

    def close(self) -> None:
        """Sync and close. Idempotent."""
        if self._file is not None:
            file, self._file = self._file, None
            with file:
                os.fsync(file.fileno())

    def _read(self, file: BinaryIO) -> None:
        file.seek(0)
        offset = 0
        for number, line in enumerate(file, 1):
            if not line.endswith(b"\n"):
                self._end_without_newline(file, line, offset, number)
                return
            self._take(line, number)
            offset += len(line)

    def _end_without_newline(self, file: BinaryIO, line: bytes, offset: int, number: int) -> None:
        try:
            json.loads(line)
        except ValueError:
            # A crash mid-write leaves a prefix of a record, maybe padded with NULs by the disk.
            start = line.rstrip(b"\0")[: len(_RECORD_START)]
            if start != _RECORD_START[: len(start)]:
                raise self._not_ours(number) from None
            file.truncate(offset)
            os.fsync(file.fileno())
            self.cut_torn_line = True
        else:  # a whole record, only its newline missing
            self._take(line, number)
            file.write(b"\n")
            file.flush()

    def _take(self, line: bytes, number: int) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("task_id"), str):
            raise self._not_ours(number)
        self._index(record)

    def _index(self, record: dict[str, Any]) -> None:
        task_id = record["task_id"]
        self.task_ids[task_id] = None
        event, status = record.get("event"), record.get("status")
        if event == DOWNLOADED_EVENT:
            self.downloaded[task_id] = record
        elif event is None and isinstance(status, str):  # a transition
            self.statuses[task_id] = status
            if status in TERMINAL:
                self.finished[task_id] = record
        input_url, model = record.get("input_url"), record.get("model")
        if isinstance(input_url, str) and isinstance(model, str):
            self.inputs[task_id] = (model, input_url)

    def _not_ours(self, number: int) -> ResultsFileError:
        return ResultsFileError(
            f"{self.path}, line {number}: not a vsr-async result record (is this the right file?)"
        )


def _lock(file: BinaryIO, path: Path) -> None:
    """Refuse a file another run is appending to: their lines would interleave with ours."""
    if sys.platform == "win32":  # pragma: no cover
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ResultsFileError(f"{path} is in use by another vsr-async run") from None


def _fsync_directory(path: Path) -> None:
    """Make a new file's directory entry durable too (POSIX only)."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path.absolute().parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
