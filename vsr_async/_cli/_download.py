"""Saving results: one task's download, and what ``download`` prints as they end.

Each result goes into one directory, named by the library (the task ID and the URL's
extension). A file already there is left as it is unless ``--overwrite``; a ``.part`` file left by
an interrupted run is resumed by the library, and the summary tells those bytes from the ones
fetched now.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import anyio
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from vsr_async import (
    ResultExpiredError,
    ResultNotReadyError,
    TaskFailedError,
    TaskNotFoundError,
    VSRError,
    download_path,
)

from ._display import Shown, describe_saved, downloaded_size, use_live_display
from ._exits import FATAL
from ._tally import DOWNLOADED, EXISTS, Saved, printable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from rich.progress import TaskID

    from vsr_async import AsyncVSRClient, Task

    #: Called as ``progress(bytes_done, bytes_total)`` while a file downloads.
    OnProgress = Callable[[int, int | None], object]


class _Kept:
    """A download's progress callback that also learns how much of the file it started with:
    each request's body is reported from the bytes on disk, so the least ``done`` reported is
    what an earlier run left (0 if the part was dropped and started over)."""

    def __init__(self, forward: OnProgress | None) -> None:
        self.forward = forward
        self.least: int | None = None  # None: nothing fetched, the part held the whole file

    def __call__(self, done: int, total: int | None) -> None:
        self.least = done if self.least is None else min(self.least, done)
        if self.forward is not None:
            self.forward(done, total)

    def resumed(self, size: int) -> int:
        return size if self.least is None else min(self.least, size)


async def save(
    client: AsyncVSRClient,
    source: Task | str,
    directory: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[str, Path], OnProgress | None] | None = None,
) -> Saved:
    """Download the result of ``source`` (a fresh snapshot, or an ID to query) into ``directory``.

    ``progress(task_id, path)``, if given, returns the callback of that file's download.
    A file saved now says how much of it was resumed from a ``.part`` (`Saved.resumed`).
    Raises only for a refused key; any other failure is the returned `Saved`'s.
    """
    task_id = source if isinstance(source, str) else source.id
    try:
        task = await client.get_task(source) if isinstance(source, str) else source
        path = download_path(task, directory)
        if not overwrite and await anyio.Path(path).exists():
            return Saved(task_id, EXISTS, path, (await anyio.Path(path).stat()).st_size)
        kept = _Kept(None if progress is None else progress(task_id, path))
        path = await client.download(task, directory, overwrite=overwrite, progress=kept)
        size = (await anyio.Path(path).stat()).st_size
        return Saved(task_id, DOWNLOADED, path, size, resumed=kept.resumed(size))
    except FATAL:
        raise
    except (VSRError, OSError) as exc:
        status, why = _why(exc)
        return Saved(task_id, status, detail=why)


def _why(exc: Exception) -> tuple[str, str]:
    """Why a task has no file: a status for it, and the reason."""
    if isinstance(exc, TaskNotFoundError):
        return "not found", printable(exc)
    if isinstance(exc, TaskFailedError):
        return "failed", printable(exc.task.error or "no reason given")
    if isinstance(exc, ResultNotReadyError):
        return "not ready", f"the task is {printable(exc.task.status)}"
    return "expired" if isinstance(exc, ResultExpiredError) else "error", printable(exc)


def summary(saved: Sequence[Saved], total: int, directory: Path, *, interrupted: bool) -> str:
    """``download``'s last line: how many files were saved, found, not saved, not finished.

    The size is of the files saved now; when some of it was resumed from ``.part`` files an
    earlier run left, the line says how much was fetched now and how much resumed.
    """
    counts = collections.Counter(each.status for each in saved)
    parts = [f"{counts[DOWNLOADED]} downloaded ({downloaded_size(saved)})"]
    if counts[EXISTS]:
        parts.append(f"{counts[EXISTS]} already there (skipped)")
    if failed := sum(not each.ok for each in saved):
        parts.append(f"{failed} not downloaded")
    if total > len(saved):
        parts.append(f"{total - len(saved)} not finished")
    what = "Interrupted" if interrupted else "Done"
    return f"{what}: {', '.join(parts)}; {total} tasks, into {directory}"


class SavedLines(Shown):
    """``download`` off a terminal: a tab-separated line per task as it ends; the summary on
    stderr, so stdout holds only those lines."""

    def __init__(self, directory: Path, total: int) -> None:
        self.directory = directory
        self.total = total
        self.saved: list[Saved] = []

    def progress(self, task_id: str, path: Path) -> OnProgress | None:  # noqa: ARG002
        """No progress shown: a line when the file is done."""
        return None

    def show(self, saved: Saved) -> None:
        """``ID<TAB>downloaded|exists<TAB>PATH<TAB>BYTES``, or ``ID<TAB>status<TAB>reason``."""
        self.saved.append(saved)
        if saved.ok:
            fields = [saved.task_id, saved.status, str(saved.path), str(saved.size)]
        else:
            fields = [saved.task_id, saved.status, saved.detail or ""]
        click.echo("\t".join(fields))

    def summary(self, *, interrupted: bool) -> None:
        """Count what was saved, on stderr."""
        line = summary(self.saved, self.total, self.directory, interrupted=interrupted)
        click.echo(line, err=True)


class SavedBars(SavedLines):
    """``download`` on a terminal: a bar per file in flight (name, bytes, speed, ETA), and a
    line above them per task as it ends."""

    def __init__(self, directory: Path, total: int, *, console: Console | None = None) -> None:
        super().__init__(directory, total)
        self._console = console or Console(highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._bars: dict[str, TaskID] = {}

    def start(self) -> None:
        """Say where the results go, and start drawing the bars."""
        self._console.print(f"Downloading {self.total} results into {self.directory}", markup=False)
        self._progress.start()

    def stop(self) -> None:
        """Stop drawing the bars."""
        self._progress.stop()

    def progress(self, task_id: str, path: Path) -> OnProgress:
        """A bar for the file, drawn from its first bytes (a resumed one starts part full)."""

        def update(done: int, total: int | None) -> None:
            bar = self._bars.get(task_id)
            if bar is None:
                self._bars[task_id] = self._progress.add_task(
                    printable(path.name), total=total, completed=done
                )
            else:
                self._progress.update(bar, total=total, completed=done)

        return update

    def show(self, saved: Saved) -> None:
        """Drop the file's bar, and say how it ended above the others."""
        self.saved.append(saved)
        bar = self._bars.pop(saved.task_id, None)
        if bar is not None:
            self._progress.remove_task(bar)
        style = "green" if saved.status == DOWNLOADED else "dim" if saved.ok else "red"
        self._console.print(Text(describe_saved(saved, human=True), style=style))

    def summary(self, *, interrupted: bool) -> None:
        """Count what was saved."""
        line = summary(self.saved, self.total, self.directory, interrupted=interrupted)
        self._console.print(Text(line, style="bold"))


def make_printer(directory: Path, total: int, *, plain: bool) -> SavedLines:
    """Bars on a terminal that wants them, else plain lines."""
    if use_live_display(plain=plain):
        return SavedBars(directory, total)
    return SavedLines(directory, total)
