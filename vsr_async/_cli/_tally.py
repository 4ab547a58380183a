"""What a batch knows of each task: counts for the display, outcomes for the summary, exit code."""

from __future__ import annotations

import collections
import signal
import time
from typing import TYPE_CHECKING, Any

import attrs

from ._exits import exit_code

if TYPE_CHECKING:
    from pathlib import Path

    from vsr_async import Transition

WAITING = "waiting"  # not seen yet
GAVE_UP = "gave up"  # the watch stopped watching it: not found, past --timeout...
#: The order of the display's counts; statuses this library does not know come before the last 3.
LABELS = (WAITING, "queued", "processing", "completed", "failed", GAVE_UP)


def signal_name(signum: signal.Signals) -> str:
    """A stop signal as the user knows it: Ctrl-C for SIGINT, else its name (SIGTERM)."""
    return "Ctrl-C" if signum == signal.SIGINT else signum.name


def printable(text: object) -> str:
    """``text`` with control characters escaped: what a server sent never drives the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


@attrs.frozen
class Outcome:
    """How a task ended: ``completed``, ``failed`` or ``gave up``, and the URL or the reason."""

    task_id: str
    status: str
    detail: str | None


#: How a download ended well: saved now, or found already there (and left as it was).
DOWNLOADED = "downloaded"
EXISTS = "exists"


@attrs.frozen
class Saved:
    """How one task's download ended: `DOWNLOADED` or `EXISTS` with the file and its size, or
    why not (``failed``, ``not ready``, ``not found``, ``expired``, ``error``) and the reason.
    ``resumed`` is how many bytes of a file saved now an earlier run's ``.part`` held."""

    task_id: str
    status: str
    path: Path | None = None
    size: int | None = None
    detail: str | None = None
    resumed: int = 0

    @property
    def ok(self) -> bool:
        """Whether the file is there, whole."""
        return self.status in (DOWNLOADED, EXISTS)


@attrs.define
class Saving:
    """The downloads of a batch (``--download``).

    Attributes:
        directory: Where the files go.
        waiting: Completed tasks queued for a download slot.
        active: Bytes so far of each download in flight.
        saved: The files saved this run (or found already there).
        resumed: Files the results file holds as downloaded by an earlier run.
        failures: The downloads that failed this run.
    """

    directory: Path
    waiting: int = 0
    active: dict[str, int] = attrs.field(factory=dict)
    saved: list[Saved] = attrs.field(factory=list)
    resumed: int = 0
    failures: list[Saved] = attrs.field(factory=list)


@attrs.define
class Tally:
    """Every task of a batch, by its latest status, and how the batch ended.

    Attributes:
        current: Each task's latest status (or `WAITING`, or `GAVE_UP`), in the order added.
        counts: Tasks per latest status.
        outcomes: The tasks that ended, this run or in the results file of an earlier one.
        resumed: How many outcomes came from the results file.
        ended: Final transitions seen this run (one per task, if the watch keeps its word).
        create_failures: ``(video_url, reason)`` of each create that failed.
        abandoned: The video URL of each create given up in flight, by a second signal.
        saving: The downloads, with ``--download``.
        interrupted: The signal that stopped the batch (SIGINT for Ctrl-C, or SIGTERM), if any.
        fatal: Why the whole batch stopped (a refused key), if it did.
    """

    started: float = attrs.field(factory=time.monotonic)
    current: dict[str, str] = attrs.field(factory=dict)
    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    outcomes: dict[str, Outcome] = attrs.field(factory=dict)
    resumed: int = 0
    ended: int = 0
    create_failures: list[tuple[str, str]] = attrs.field(factory=list)
    abandoned: list[str] = attrs.field(factory=list)
    saving: Saving | None = None
    interrupted: signal.Signals | None = None
    fatal: str | None = None

    @property
    def total(self) -> int:
        """Tasks known to this batch."""
        return len(self.current)

    @property
    def elapsed(self) -> float:
        """Seconds since the batch started."""
        return time.monotonic() - self.started

    def expect(self, task_id: str) -> None:
        """Count a task that is yet to be seen."""
        if task_id not in self.current:
            self._set(task_id, WAITING)

    def resume(self, task_id: str, record: dict[str, Any]) -> None:
        """Count a task as ended the way a terminal record of the results file says."""
        status = str(record["status"])
        detail = record.get("video_url") if status == "completed" else record.get("error")
        self._set(task_id, status)
        self.outcomes[task_id] = Outcome(
            task_id, status, None if detail is None else printable(detail)
        )
        self.resumed += 1

    def observe(self, transition: Transition) -> None:
        """Count a transition; a final one becomes the task's outcome."""
        task, error = transition.task, transition.error
        status = GAVE_UP if error is not None else str(transition.status)
        self._set(transition.task_id, status)
        if not transition.is_final:
            return
        self.ended += 1
        if error is not None:
            detail: object = error
        elif task is not None and status == "completed":
            detail = task.video_url
        else:
            detail = task.error if task is not None and task.error else "no reason given"
        self.outcomes[transition.task_id] = Outcome(
            transition.task_id, status, None if detail is None else printable(detail)
        )

    def exit_code(self, *, watched: bool = True) -> int:
        """128 + the signal's number if one stopped the batch, 3 if the key was refused, 1 if a
        create or a download failed or (when ``watched``) a task did not complete, else 0."""
        every_one_completed = not watched or (
            len(self.outcomes) == self.total
            and all(outcome.status == "completed" for outcome in self.outcomes.values())
        )
        download_failed = self.saving is not None and bool(self.saving.failures)
        failed = bool(self.create_failures) or not every_one_completed or download_failed
        return exit_code(interrupted=self.interrupted, fatal=self.fatal is not None, failed=failed)

    def labels(self) -> list[str]:
        """The statuses to show, in flow order, with any unknown ones before the terminal ones."""
        unknown = sorted(label for label in self.counts if label not in LABELS)
        return [*LABELS[:3], *unknown, *LABELS[3:]]

    def _set(self, task_id: str, status: str) -> None:
        old = self.current.get(task_id)
        if old is not None:
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.current[task_id] = status
        self.counts[status] += 1
