"""How a batch shows itself: a live display on a terminal, one plain line per event elsewhere.

Both read the batch's `Tally`; the runner tells them what happened as it happens.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import click
from rich import filesize
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ._tally import DOWNLOADED, GAVE_UP, WAITING, printable, signal_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from rich.console import RenderableType

    from vsr_async import Transition, WatchStats

    from ._tally import Outcome, Saved, Saving, Tally

S = TypeVar("S", bound="Shown")

#: Seconds between two frames of the live display.
REFRESH_INTERVAL = 0.25
#: Transitions the live display keeps on screen.
LATEST = 8
#: Failures the live summary lists; plain output lists them all.
MAX_FAILURES_SHOWN = 20
STYLES = {
    WAITING: "dim",
    "queued": "cyan",
    "processing": "yellow",
    "completed": "green",
    "failed": "red",
    GAVE_UP: "magenta",
}


def use_live_display(*, plain: bool) -> bool:
    """Whether stdout is a terminal that wants the live display (not ``--plain``, ``NO_COLOR``)."""
    return (
        not plain
        and sys.stdout.isatty()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


class Shown:
    """What a run shows, entered around it: `start` on entering, `stop` on leaving (here, both
    do nothing)."""

    def __enter__(self: S) -> S:  # noqa: PYI019 - `Self` needs typing_extensions on 3.10
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""


class Display(Protocol):
    """What the runner tells a display. Used as a context manager around the batch."""

    def __enter__(self) -> Display: ...

    def __exit__(self, *_: object) -> None: ...

    async def refresh_forever(self) -> None:
        """Redraw until cancelled (a live display), or return at once."""

    def note(self, text: str) -> None:
        """Say something about the batch as a whole."""

    def created(self, task_id: str, video_url: str) -> None:
        """A task was created."""

    def create_failed(self, video_url: str, reason: str) -> None:
        """A create failed."""

    def transition(self, transition: Transition) -> None:
        """A watched task changed."""

    def watching(self, stats: Callable[[], WatchStats]) -> None:
        """The watch started: ``stats()`` reads its counters (`Watcher.stats`)."""

    def downloaded(self, saved: Saved) -> None:
        """A download ended (``--download``)."""

    def summary(self) -> None:
        """Show how the batch ended."""


def describe(transition: Transition) -> str:
    """A transition in one line: ``ID  previous -> status  URL-or-reason``."""
    if transition.error is not None:
        return f"{transition.task_id}  gave up: {printable(transition.error)}"
    previous, status = transition.previous or "new", transition.status
    line = f"{transition.task_id}  {printable(previous)} -> {printable(status)}"
    task = transition.task
    if task is not None and task.video_url:
        line += f"  {printable(task.video_url)}"
    if task is not None and task.error:
        line += f"  ({printable(task.error)})"
    return line


def headline(tally: Tally) -> str:
    """The summary's first line: how many tasks ended how, in how long."""
    ended = collections.Counter(outcome.status for outcome in tally.outcomes.values())
    parts = [f"{count} {status}" for status, count in sorted(ended.items())]
    if tally.create_failures:
        parts.append(f"{len(tally.create_failures)} not created")
    unfinished = tally.total - len(tally.outcomes)
    if unfinished:
        parts.append(f"{unfinished} not finished")
    resumed = f" ({tally.resumed} ended in an earlier run)" if tally.resumed else ""
    what = "Interrupted" if tally.interrupted else "Done"
    return (
        f"{what} after {tally.elapsed:.1f} s: {len(tally.outcomes)} of {tally.total} tasks "
        f"ended{resumed}: {', '.join(parts) or 'none'}"
    )


def describe_stats(stats: WatchStats) -> str:
    """The summary's line on requests: ``N polls, M retries, K 429s``."""
    return f"{stats.polls} polls, {stats.retries} retries, {stats.rate_limited} 429s"


def describe_saved(saved: Saved, *, human: bool = False) -> str:
    """A download's end in one line: ``ID  downloaded PATH (N bytes)``, or why not; ``human``
    sizes in kB, MB, GB."""
    if saved.ok:
        how = "downloaded" if saved.status == DOWNLOADED else "exists, skipped:"
        size = filesize.decimal(saved.size or 0) if human else f"{saved.size} bytes"
        return f"{saved.task_id}  {how} {printable(saved.path)} ({size})"
    return f"{saved.task_id}  not downloaded ({saved.status}): {saved.detail}"


def downloaded_size(saved: Iterable[Saved], *, label: str = "") -> str:
    """The size of the files saved now (then ``label``), and, if an earlier run's ``.part``
    files held some of it, how much was fetched now and how much resumed."""
    downloaded = [each for each in saved if each.status == DOWNLOADED]
    size = sum(each.size or 0 for each in downloaded)
    resumed = sum(each.resumed for each in downloaded)
    text = filesize.decimal(size) + label
    if resumed:
        fetched = filesize.decimal(size - resumed)
        text += f": {fetched} fetched now, {filesize.decimal(resumed)} resumed"
    return text


def download_headline(saving: Saving) -> str:
    """The summary's line on downloads: how many files are saved, how many failed."""
    parts = [f"{len(saving.saved)} saved ({downloaded_size(saving.saved, label=' downloaded')})"]
    if saving.resumed:
        parts.append(f"{saving.resumed} in an earlier run")
    if saving.failures:
        parts.append(f"{len(saving.failures)} not downloaded")
    return f"Results in {printable(saving.directory)}: {', '.join(parts)}"


def failures(tally: Tally) -> list[Outcome]:
    """The tasks that ended without completing, in the batch's order."""
    return [
        outcome
        for task_id in tally.current
        if (outcome := tally.outcomes.get(task_id)) and outcome.status != "completed"
    ]


class PlainDisplay(Shown):
    """One line per event on stdout, flushed at once, with no control codes."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    async def refresh_forever(self) -> None:
        """Nothing to redraw."""

    def note(self, text: str) -> None:
        """Print ``text``."""
        click.echo(text)

    def created(self, task_id: str, video_url: str) -> None:
        """Print the new ID and its input."""
        click.echo(f"{self._stamp()}  {task_id}  created from {video_url}")

    def create_failed(self, video_url: str, reason: str) -> None:
        """Print why a create failed."""
        click.echo(f"{self._stamp()}  could not create from {video_url}: {reason}")

    def transition(self, transition: Transition) -> None:
        """Print the transition."""
        click.echo(f"{self._stamp()}  {describe(transition)}")

    def watching(self, stats: Callable[[], WatchStats]) -> None:
        """Plain output shows no counters."""

    def downloaded(self, saved: Saved) -> None:
        """Print where the file is, or why there is none."""
        click.echo(f"{self._stamp()}  {describe_saved(saved)}")

    def summary(self) -> None:
        """Print the headline, then every failure, failed create and download, one per line."""
        tally = self._tally
        click.echo(f"\n{headline(tally)}")
        if tally.saving is not None:
            click.echo(download_headline(tally.saving))
        for outcome in failures(tally):
            click.echo(f"{outcome.status:>9}  {outcome.task_id}  {outcome.detail}")
        for video_url, reason in tally.create_failures:
            click.echo(f"not created  {video_url}  {reason}")
        for saved in [] if tally.saving is None else tally.saving.failures:
            click.echo(f"not downloaded  {saved.task_id}  {saved.status}: {saved.detail}")

    def _stamp(self) -> str:
        return f"{self._tally.elapsed:8.2f}s"


class LiveDisplay(Shown):
    """Counts per status, a progress bar with ETA, the latest transitions, then a summary."""

    def __init__(self, tally: Tally, *, title: str, console: Console | None = None) -> None:
        self._tally = tally
        self._title = title
        self._console = console or Console(highlight=False)
        self._progress = Progress(
            BarColumn(bar_width=40),
            MofNCompleteColumn(),
            TextColumn("finished"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._bar = self._progress.add_task("tasks", total=None)
        self._latest: collections.deque[Text] = collections.deque(maxlen=LATEST)
        self._stats: Callable[[], WatchStats] | None = None
        self._live = Live(console=self._console, get_renderable=self._render, auto_refresh=False)

    def start(self) -> None:
        """Start drawing."""
        self._live.start()

    def stop(self) -> None:
        """Draw the last frame, and leave it on screen."""
        self._live.stop()

    async def refresh_forever(self) -> None:
        """Redraw every `REFRESH_INTERVAL` until cancelled."""
        while True:
            self._live.refresh()
            await anyio.sleep(REFRESH_INTERVAL)

    def note(self, text: str) -> None:
        """Print ``text`` above the display."""
        self._console.print(text, markup=False)

    def created(self, task_id: str, video_url: str) -> None:
        """Print the new ID above the display, so it stays in the scrollback."""
        self._console.print(f"created {task_id} from {video_url}", markup=False)

    def create_failed(self, video_url: str, reason: str) -> None:
        """Print why a create failed, above the display."""
        self._console.print(Text(f"could not create from {video_url}: {reason}", style="red"))

    def transition(self, transition: Transition) -> None:
        """Add the transition to the latest ones."""
        line = Text(
            f"{self._tally.elapsed:7.1f}s  ", style="dim", no_wrap=True, overflow="ellipsis"
        )
        status = self._tally.current.get(transition.task_id, "")
        line.append(describe(transition), style=STYLES.get(status, ""))
        self._latest.append(line)

    def watching(self, stats: Callable[[], WatchStats]) -> None:
        """Show the watch's counters under the progress bar, and sum them up at the end."""
        self._stats = stats

    def downloaded(self, saved: Saved) -> None:
        """Add the download's end to the latest lines."""
        line = Text(
            f"{self._tally.elapsed:7.1f}s  ", style="dim", no_wrap=True, overflow="ellipsis"
        )
        line.append(describe_saved(saved, human=True), style="blue" if saved.ok else "red")
        self._latest.append(line)

    def summary(self) -> None:
        """Print the headline and a table of the failures (the first `MAX_FAILURES_SHOWN`)."""
        tally = self._tally
        self._console.print()
        self._console.print(Text(headline(tally), style="bold"))
        if tally.saving is not None:
            self._console.print(Text(download_headline(tally.saving), style="bold"))
        if self._stats is not None:
            self._console.print(Text(describe_stats(self._stats()), style="dim"))
        rows = [
            (outcome.task_id, Text(outcome.status, STYLES.get(outcome.status, "")), outcome.detail)
            for outcome in failures(tally)
        ]
        rows += [(url, Text("not created", "red"), reason) for url, reason in tally.create_failures]
        rows += [
            (saved.task_id, Text("not downloaded", "red"), f"{saved.status}: {saved.detail}")
            for saved in ([] if tally.saving is None else tally.saving.failures)
        ]
        if rows:
            table = Table("task", "status", "reason", title="Not completed", title_justify="left")
            for row in rows[:MAX_FAILURES_SHOWN]:
                table.add_row(*row)
            self._console.print(table)
            if len(rows) > MAX_FAILURES_SHOWN:
                hidden = len(rows) - MAX_FAILURES_SHOWN
                self._console.print(f"... and {hidden} more (--plain lists them all)")

    def _render(self) -> RenderableType:
        tally = self._tally
        self._progress.update(self._bar, total=tally.total or None, completed=len(tally.outcomes))
        counts = Text()
        for label in tally.labels():
            counts.append(f"{label} ", style=STYLES.get(label, "blue"))
            counts.append(f"{tally.counts[label]}   ", style="bold")
        title = Text(self._title, style="bold")
        latest = [Text("latest:", style="dim"), *self._latest] if self._latest else []
        polls = [] if self._stats is None else [_poll_counts(self._stats())]
        downloads = [] if tally.saving is None else [_download_counts(tally.saving)]
        return Group(title, counts, self._progress, *polls, *downloads, *latest)


def _poll_counts(stats: WatchStats) -> Text:
    """The live display's line on the watch's requests: polls, retries, 429s, rate, in flight."""
    line = Text("polls  ", style="dim")
    rate = f"{stats.rate:.1f}/s"
    if stats.allowed_rate is not None:
        rate += f" (of {stats.allowed_rate:g})"
    for label, value in (
        ("sent", str(stats.polls)),
        ("retries", str(stats.retries)),
        ("429s", str(stats.rate_limited)),
        ("rate", rate),
        ("in flight", str(stats.in_flight)),
    ):
        line.append(f"{label} ", style="dim")
        line.append(f"{value}   ", style="bold")
    return line


def _download_counts(saving: Saving) -> Text:
    """The live display's line on downloads: done, in flight (and their bytes), waiting, failed."""
    line = Text("downloads  ", style="blue")
    in_flight = f"{len(saving.active)} ({filesize.decimal(sum(saving.active.values()))})"
    done = len(saving.saved) + saving.resumed
    for label, value in (
        ("saved", str(done)),
        ("in flight", in_flight),
        ("waiting", str(saving.waiting)),
        ("failed", str(len(saving.failures))),
    ):
        line.append(f"{label} ", style="blue")
        line.append(f"{value}   ", style="bold")
    return line


class CreatedIds(PlainDisplay):
    """``create`` without ``--watch``: each new ID alone on a line of stdout, to pipe on."""

    def created(self, task_id: str, video_url: str) -> None:  # noqa: ARG002 (the Display protocol)
        """Print the new ID."""
        click.echo(task_id)

    def create_failed(self, video_url: str, reason: str) -> None:
        """Say why a create failed, on stderr."""
        click.echo(f"Could not create from {video_url}: {reason}", err=True)

    def summary(self) -> None:
        """Count what was created, on stderr."""
        tally = self._tally
        failed = f"; {len(tally.create_failures)} failed" if tally.create_failures else ""
        stopped = "" if tally.interrupted is None else f" before {signal_name(tally.interrupted)}"
        click.echo(f"Created {tally.total} tasks{stopped}{failed}.", err=True)


def make_display(tally: Tally, *, plain: bool, title: str) -> Display:
    """The live display on a terminal that wants it, else plain lines."""
    if use_live_display(plain=plain):
        return LiveDisplay(tally, title=title)
    return PlainDisplay(tally)
