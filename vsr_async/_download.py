"""Saving a result video: streamed, atomic, resumable, and never with the API key attached.

A download writes ``<dest>.part`` beside the destination, and ``<dest>.part.etag`` with the
validator it was fetched under; it fsyncs and renames the part into place at the end, so the
destination is either absent or complete. A later call finding the part resumes it with
``Range`` and ``If-Range``: the server sends the rest only if the file is still the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote

import anyio
import anyio.to_thread
import httpx

from ._config import DOWNLOAD_BUFFER, MAX_NAME_LENGTH, MAX_REDIRECTS
from ._errors import (
    DownloadError,
    ResultExpiredError,
    ResultNotReadyError,
    TaskFailedError,
    VSRError,
    parse_retry_after,
    status_error_class,
)
from ._hooks import DownloadDetails, RetryDetails
from ._http import shown_url
from ._models import Task, TaskStatus
from ._retry import is_transient
from ._validate import check_http_url, check_task_id

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._session import Session
    from ._tasks import Tasks

#: ``progress(bytes_done, bytes_total)``; the total is ``None`` when the server does not say.
Progress = Callable[[int, int | None], object]

#: A storage host's answers for a URL that expired or was never valid.
_EXPIRED = frozenset({403, 404, 410})
#: What makes a string a URL rather than a task ID (``job:42`` is an ID).
_URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://|(?:data|file|javascript|mailto|blob):", re.IGNORECASE
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DEFAULT_EXTENSION = ".mp4"  # the API makes videos
#: What ``link(2)`` answers where the filesystem has no hard links: EPERM on Linux FAT and exFAT
#: (the VFS, for a filesystem without a link operation), ENOSYS from FUSE filesystems without
#: one (sshfs without its hardlink extension) and from Linux CIFS without one, EOPNOTSUPP when
#: an SMB server refuses, ENOTSUP on macOS (xnu's default for a missing operation). Not EXDEV or
#: EMLINK: the part lies beside the destination, and has one link.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
#: Windows says ERROR_INVALID_FUNCTION (FAT, exFAT) or ERROR_NOT_SUPPORTED: Python makes both
#: EINVAL, too vague to go by, so they are told by ``winerror``.
_NO_HARD_LINKS_WINDOWS = frozenset({1, 50})

#: Part files being written by this process: two downloads into one file would interleave.
_active: set[Path] = set()


async def download(
    tasks: Tasks,
    source: Task | str,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool,
    progress: Progress | None,
) -> Path:
    """`AsyncVSRClient.download`, which documents it."""
    task_id, url = await _resolve(tasks, source)
    path = await anyio.to_thread.run_sync(_target, os.fspath(dest), task_id, url)
    if not overwrite and await anyio.Path(path).exists():
        raise _exists(path, "pass overwrite=True to replace it")
    part = Path(await anyio.Path(path.with_name(path.name + ".part")).absolute())
    if part in _active:
        raise RuntimeError(f"{path} is already being downloaded")
    _active.add(part)
    transfer = _Transfer(tasks, task_id, url, part, progress)
    start, error = anyio.current_time(), None
    try:
        await transfer.run()
        await anyio.to_thread.run_sync(_publish, part, path, overwrite)
    except BaseException as exc:  # a cancellation too: told, then raised
        error = exc
        raise
    finally:
        _active.discard(part)
        if (hooks := tasks.session.hooks) is not None:
            duration = anyio.current_time() - start
            hooks.on_download(DownloadDetails(task_id, path, transfer.received, duration, error))
    return path


async def _resolve(tasks: Tasks, source: Task | str) -> tuple[str | None, str]:
    """The task ID (``None`` for a bare URL) and the result URL to fetch."""
    if isinstance(source, str) and not _URL.match(source):
        source = await tasks.get(check_task_id(source))
    return _task_and_url(source)


def _task_and_url(source: Task | str) -> tuple[str | None, str]:
    """The task ID (``None`` for a URL) and the result URL of a `Task` or a result URL."""
    if isinstance(source, str):
        return None, _checked("result URL", source)
    if not isinstance(source, Task):
        raise TypeError(f"download() takes a Task, a task ID or a URL, got {type(source).__name__}")
    return source.id, result_url(source)


def result_url(task: Task) -> str:
    """The task's result URL, or the error saying why it has none."""
    if task.status is TaskStatus.FAILED:
        raise TaskFailedError(task)
    if task.status is not TaskStatus.COMPLETED or task.video_url is None:
        raise ResultNotReadyError(task)
    try:
        return _checked("video_url", task.video_url)
    except ValueError as exc:  # the server's doing, not the caller's
        raise DownloadError(f"task {task.id!r} has a result URL we refuse: {exc}") from None


def _checked(name: str, url: str) -> str:
    """``url`` if it is an http(s) URL; else a `ValueError` quoting it without its query."""
    try:
        return str(check_http_url(name, url))
    except ValueError:  # its message quotes the signature: not raised, nor kept as a context
        pass
    check_http_url(name, shown_url(url))  # refused without its query too: that message will do
    raise ValueError(f"{name} {shown_url(url)!r} is not a URL: its query is malformed")


def download_path(source: Task | str, dest: str | os.PathLike[str]) -> Path:
    """The file `AsyncVSRClient.download` would save ``source``'s result to in ``dest``, found
    without downloading anything: to skip a file already there, or to name a progress bar.

    Args:
        source: A `Task` (completed) or a result URL. A task ID is not enough: query it first.
        dest: As for `AsyncVSRClient.download`; a string ending with a separator names a
            directory (not created here).

    Raises:
        TaskFailedError: The task failed: it has no result.
        ResultNotReadyError: The task is still queued or processing.
        ValueError: ``source`` is neither a `Task` nor an http(s) URL.
        FileNotFoundError: ``dest`` is a file path whose directory does not exist.
    """
    if isinstance(source, str) and not _URL.match(source):
        raise ValueError(
            f"download_path() takes a Task or a result URL, not the task ID {source!r}: "
            "get the task with get_task() first"
        )
    task_id, url = _task_and_url(source)
    return _target(os.fspath(dest), task_id, url, create=False)


def _target(dest: str, task_id: str | None, url: str, *, create: bool = True) -> Path:
    """`destination`, with ``dest`` ending with a separator taken as a directory (created, if
    ``create``): `Path` would drop the separator, and ``out/`` become a file named ``out``."""
    if dest.endswith((os.sep, "/")):
        if not create:
            return Path(dest) / _file_name(task_id, url)
        Path(dest).mkdir(parents=True, exist_ok=True)
    return destination(Path(dest), task_id, url)


def destination(dest: Path, task_id: str | None, url: str) -> Path:
    """``dest`` itself, or a safe file name inside ``dest`` when it is a directory.

    The name is the task ID (or the URL's last path segment) with the URL's extension, reduced
    to ``[A-Za-z0-9._-]``: it cannot climb out of ``dest`` or hide itself. A name that had to
    be changed ends with a hash of the original, so two IDs never share a file.
    """
    if not dest.is_dir():
        if not dest.parent.is_dir():
            raise FileNotFoundError(f"cannot save to {dest}: {dest.parent} is not a directory")
        return dest
    return dest / _file_name(task_id, url)


def _file_name(task_id: str | None, url: str) -> str:
    """The safe name `destination` gives a file inside a directory."""
    url_path = PurePosixPath(unquote(httpx.URL(url).path))
    suffix = url_path.suffix if _EXTENSION.fullmatch(url_path.suffix) else _DEFAULT_EXTENSION
    original = task_id if task_id is not None else url_path.stem
    stem = _UNSAFE.sub("_", original).lstrip("._-") or "result"
    if stem != original or len(stem) + len(suffix) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(original.encode(errors="surrogatepass")).hexdigest()[:12]
        stem = f"{stem[: MAX_NAME_LENGTH - len(suffix) - len(digest) - 1]}-{digest}"
    return stem + suffix.lower()


class _Transfer:
    """Fetches one URL into a part file, resuming and retrying until it is complete."""

    def __init__(
        self,
        tasks: Tasks,
        task_id: str | None,
        url: str,
        part: Path,
        progress: Progress | None,
    ) -> None:
        self.tasks = tasks
        self.session: Session = tasks.session
        self.task_id = task_id  # set: the task may be queried again for a fresh URL
        self.url = url
        self.part = part
        self.etag_file = part.with_name(part.name + ".etag")
        self.progress = progress
        self.done = 0
        self.received = 0  # bytes from the network, in this call
        self.total: int | None = None
        self.encoded = False
        self.etag: str | None = None

    async def run(self) -> None:
        self.etag = await anyio.to_thread.run_sync(self._saved_etag)
        # Retried: transient errors (checked below) and transfers that broke off.
        retries = self.session.retry.retries(
            f"GET {shown_url(self.url)}", retry_if=_any, on_retry=self._on_retry
        )
        while True:
            before = self.done
            try:
                if await self._attempt(self.url):
                    return
                error: VSRError = DownloadError(
                    f"{shown_url(self.url)} broke off at byte {self.done} of {self.total or '?'}"
                )
            except ResultExpiredError:
                if self.task_id is None:
                    raise
                self.url = result_url(await self.tasks.get(self.task_id))
                self.task_id = None  # once
                continue
            except VSRError as exc:
                if not is_transient(exc):
                    raise
                error = exc
            if self.done > before:
                retries.reset()
            await retries.wait(error)

    async def _attempt(self, url: str) -> bool:
        """One request (and its redirects, followed by us: each hop is checked, none has the
        key); whether the part file now holds the whole result."""
        for _ in range(MAX_REDIRECTS + 1):
            async with self.session.stream(url, headers=self._headers()) as response:
                if response.is_redirect:
                    url = self._redirect(response)
                    continue
                if response.status_code == 416:
                    return await self._complete_at(response)
                if response.status_code not in (200, 206):
                    raise _status_error(response)
                if not await self._start(response):
                    return False
                await self._receive(response)
                return self.total is None or self.done == self.total
        raise DownloadError(f"{shown_url(self.url)} redirected more than {MAX_REDIRECTS} times")

    def _redirect(self, response: httpx.Response) -> str:
        """Where a redirect leads, if it is an http(s) URL."""
        try:
            return _checked("redirect", str(response.url.join(response.headers["location"])))
        except ValueError as exc:
            raise DownloadError(
                f"{shown_url(self.url)} redirected to a refused URL: {exc}"
            ) from None

    def _headers(self) -> dict[str, str]:
        """Ask for the rest of the part only if a validator vouches for it (else: all of it)."""
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        if self.done and self.etag is not None:
            headers["Range"] = f"bytes={self.done}-"
            headers["If-Range"] = self.etag
        return headers

    async def _complete_at(self, response: httpx.Response) -> bool:
        """Whether a 416 says the part already holds the whole file; if not, start over."""
        total = response.headers.get("content-range", "").rpartition("/")[2]
        if self.done and total == str(self.done):
            self.total = self.done
            return True
        await anyio.to_thread.run_sync(self._restart)
        return False

    async def _start(self, response: httpx.Response) -> bool:
        """Take the answer's size and validator; whether its body can be appended to the part
        (if not, the part is dropped and the next attempt starts over)."""
        etag = response.headers.get("etag")
        if etag is not None and etag.startswith("W/"):  # weak validators cannot vouch for bytes
            etag = None
        self.encoded = response.headers.get("content-encoding", "identity") != "identity"
        if self.encoded:
            etag = None  # decoded bytes cannot be resumed by a range of encoded ones
        content_range = response.headers.get("content-range", "")
        match = _CONTENT_RANGE.fullmatch(content_range)
        if response.status_code == 200 or _is_whole(match):
            # All of it: a 200, or a 206 of the whole file (some CDNs send one even unasked).
            await anyio.to_thread.run_sync(self._restart)
            length = response.headers.get("content-length")
            if response.status_code == 206 and match:
                length = match[3]
            self.total = int(length) if length and length.isdigit() else None
        elif "range" not in response.request.headers:  # a part, and nothing to append it to
            raise DownloadError(
                f"{shown_url(self.url)} sent a part of the file ({content_range[:80]!r}) "
                "when asked for all of it"
            )
        elif match is None or int(match[1]) != self.done:
            raise DownloadError(f"{shown_url(self.url)} sent a range we did not ask for")
        elif etag is None or etag != self.etag:  # a server ignoring If-Range: the file changed
            await anyio.to_thread.run_sync(self._restart)
            return False
        else:
            self.total = int(match[3]) if match[3] != "*" else None
        if self.encoded:
            self.total = None  # the length is of the encoded bytes
        if etag != self.etag:
            self.etag = etag
            await anyio.to_thread.run_sync(self._save_etag)
        return True

    async def _receive(self, response: httpx.Response) -> None:
        """Append the body to the part: received in batches, each written from a worker thread
        while the next one arrives."""
        file = await anyio.to_thread.run_sync(open, self.part, "ab")
        # Unbuffered: a batch is handed over once the one before is written, so two at most are
        # held (the one being written, the one waiting) and the socket is not read meanwhile.
        batches, to_write = anyio.create_memory_object_stream[list[bytes]]()
        written: list[Exception] = []
        try:
            # Nothing is raised in the group (it would come out wrapped in an exception group):
            # each side hands back its failure.
            async with anyio.create_task_group() as group:
                group.start_soon(self._write_all, file, to_write, written)
                failure = await self._read(response, batches)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.close)
        failure = written[0] if written else failure  # a failed write stopped the reading
        if isinstance(failure, httpx.DecodingError):  # (the session makes httpx's others ours)
            url = shown_url(self.url)
            raise DownloadError(f"GET {url}: the body could not be decoded") from failure
        if failure is not None:
            raise failure

    async def _read(
        self, response: httpx.Response, batches: MemoryObjectSendStream[list[bytes]]
    ) -> Exception | None:
        """Send the body to the writer in batches of `DOWNLOAD_BUFFER` bytes, and what arrived
        before a failure or a cancellation too (kept for a resume); the failure."""
        batch: list[bytes] = []
        pending = 0
        received = self.done
        failure: Exception | None = None
        with batches:
            try:
                self._report(received)
                # Raising out of the loop would leave httpx's nested body iterators suspended,
                # for the garbage collector (trio warns of each). A failure of ours (the writer
                # gone, the progress callback) cancels the next read instead, which unwinds them.
                with anyio.CancelScope() as stop:
                    async for chunk in (
                        response.aiter_bytes() if self.encoded else response.aiter_raw()
                    ):
                        if stop.cancel_called:
                            continue
                        try:
                            batch.append(chunk)
                            pending += len(chunk)
                            received += len(chunk)
                            self.received += len(chunk)
                            self._report(received)
                            if pending >= DOWNLOAD_BUFFER:
                                full, batch, pending = batch, [], 0
                                # Shielded: once handed over it is the writer's (a cancelled
                                # send may have been received), and it waits one write at most.
                                with anyio.CancelScope(shield=True):
                                    await batches.send(full)
                        except Exception as exc:  # noqa: BLE001 - handed back, once unwound
                            failure = exc
                            stop.cancel()
            except Exception as exc:  # noqa: BLE001 - reading the body: handed back
                failure = exc
            finally:
                if batch:
                    with (
                        anyio.CancelScope(shield=True),
                        contextlib.suppress(anyio.BrokenResourceError),
                    ):
                        await batches.send(batch)  # (broken: the writer failed)
        return failure

    async def _write_all(
        self,
        file: BinaryIO,
        to_write: MemoryObjectReceiveStream[list[bytes]],
        failures: list[Exception],
    ) -> None:
        """Write the batches until the reader is done; shielded, so a cancelled download keeps
        what arrived. A failure goes to ``failures`` and closes the stream, stopping the reader."""
        with to_write, anyio.CancelScope(shield=True):
            try:
                async for batch in to_write:
                    self.done += await anyio.to_thread.run_sync(_append, file, batch, self.done)
            except Exception as exc:  # noqa: BLE001 - handed back to _receive
                failures.append(exc)

    def _on_retry(self, error: VSRError, attempt: int, delay: float) -> None:
        if (hooks := self.session.hooks) is not None:
            hooks.on_retry(RetryDetails("download", self.task_id, attempt, delay, error))

    def _report(self, received: int) -> None:
        """Tell ``progress`` of the bytes received: on disk, and waiting to be written."""
        if self.progress is not None:
            self.progress(received, self.total)

    def _restart(self) -> None:
        self.done = 0
        self.part.unlink(missing_ok=True)

    def _save_etag(self) -> None:
        if self.etag is None:
            self.etag_file.unlink(missing_ok=True)
        else:  # never half-written: an empty validator would vouch for nothing
            temporary = self.etag_file.with_name(self.etag_file.name + ".tmp")
            temporary.write_text(self.etag)
            temporary.replace(self.etag_file)

    def _saved_etag(self) -> str | None:
        """The validator of a part left by an earlier call; without one, the part is dropped."""
        try:
            etag = self.etag_file.read_text().strip()
            self.done = self.part.stat().st_size
        except FileNotFoundError:
            self._restart()
            self.etag_file.unlink(missing_ok=True)
            return None
        return etag or None


def _any(_: VSRError) -> bool:
    return True


def _append(file: BinaryIO, batch: list[bytes], offset: int) -> int:
    """Write ``batch`` at the part's end, ``offset``, and start writing it back to the disk now,
    so the fsync at the end waits for the last batch only (and a video does not crowd the page
    cache); its size. Chunk by chunk, not joined: a join would copy every byte once more."""
    file.writelines(batch)
    size = sum(map(len, batch))
    if hasattr(os, "posix_fadvise"):
        file.flush()
        os.posix_fadvise(file.fileno(), offset, size, os.POSIX_FADV_DONTNEED)
    return size


def _is_whole(match: re.Match[str] | None) -> bool:
    """Whether a ``Content-Range`` (matched by `_CONTENT_RANGE`) covers the whole file."""
    if match is None or match[3] == "*":
        return False
    return int(match[1]) == 0 and int(match[2]) + 1 == int(match[3])


def _publish(part: Path, path: Path, overwrite: bool) -> None:
    """fsync the part, then rename it into place (refusing to replace a file that appeared)."""
    with part.open("rb+") as file:
        os.fsync(file.fileno())
    if overwrite:
        part.replace(path)
    else:
        try:
            _rename_new(part, path)
        except FileExistsError:
            raise _exists(
                path, f"it appeared during the download; the result is in {part}"
            ) from None
    part.with_name(part.name + ".etag").unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _rename_new(part: Path, path: Path) -> None:
    """Rename ``part`` to ``path``, or raise `FileExistsError` (keeping ``part``) if it exists."""
    try:
        os.link(part, path)  # fails, atomically, if a file appeared there meanwhile
    except OSError as exc:
        windows_error = getattr(exc, "winerror", None)
        if exc.errno not in _NO_HARD_LINKS and windows_error not in _NO_HARD_LINKS_WINDOWS:
            raise
        # No hard links here. Take the name with an empty file, created only if there is none
        # (so this fails like the link if a file appeared), then rename the part over it. Left
        # open: a process deleting that empty file and writing its own in the instant before
        # the rename loses it; a crash in that instant leaves the empty file (FAT, with no
        # journal, keeps no promise across a crash anyway).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        try:
            part.replace(path)
        except OSError:
            path.unlink(missing_ok=True)
            raise
    else:
        part.unlink()


def _exists(path: Path, advice: str) -> FileExistsError:
    """A `FileExistsError` with ``filename`` set, as the OS would raise it."""
    return FileExistsError(errno.EEXIST, f"{path} exists; {advice}", str(path))


def _status_error(response: httpx.Response) -> VSRError:
    code, url = response.status_code, shown_url(str(response.url))
    if code in _EXPIRED:
        return ResultExpiredError(url, code)
    return status_error_class(code, from_api=False)(
        response.reason_phrase or "error",
        status_code=code,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        method="GET",
        url=url,
    )
