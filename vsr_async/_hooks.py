"""Instrumentation: `Hooks` the client calls as it works, each with a frozen details object.

A client given ``hooks=`` calls them synchronously, in the task doing the work, for every HTTP
attempt, poll, retry, status change, watch and create; nothing is computed for them when there
are none. A hook that raises is logged (once per hook) and ignored: watching goes on. The
OpenTelemetry support (`vsr_async.otel`) is built on them, and so can a user's Prometheus or
StatsD counters be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from pathlib import Path

    from ._errors import VSRError
    from ._models import Task, TaskStatus

logger = logging.getLogger("vsr_async")


@attrs.frozen
class RequestDetails:
    """One HTTP attempt of the client: to the API, or to a storage host for a download.

    Attributes:
        method: ``"GET"`` or ``"POST"``.
        endpoint: Which endpoint, never the full URL (no task ID, no signed query):
            ``"/v1/result/{id}"``, ``"/v1/super-resolution/videos"``, or ``"download"``.
        status_code: The answer's HTTP status; ``None`` when none came (a connection error,
            a timeout).
        error: The error the attempt raised, if any: a non-2xx answer of the API included; a
            download's answer is judged by the download (see `DownloadDetails`), so this is
            ``None`` once its headers came, whatever their status.
        rate_wait: Seconds it waited for the rate budget (0.0 when a token was free), once it
            had a connection slot.
        duration: Seconds from its token to the whole answer (or the error); for a download,
            to the answer's headers.
        allowed_rate: The requests per second the client allows once it was answered
            (`AsyncVSRClient.current_rate`), ``None`` with neither a limit nor a learnt quota.
    """

    method: str
    endpoint: str
    status_code: int | None
    error: VSRError | None
    rate_wait: float
    duration: float
    allowed_rate: float | None


@attrs.frozen
class PollDetails:
    """One poll of a watched task, answered or failed.

    Attributes:
        task_id: The task polled.
        attempt: Polls of it that failed in a row just before this one (0 normally).
        started: When it was sent, in seconds since the epoch (``time.time()``).
        duration: Seconds from its dispatch to its answer, rate-budget wait included.
        lateness: Seconds past the moment it was due (its interval, or its retry's delay).
        task: The task as answered; ``None`` when the poll failed.
        error: Why it failed; ``None`` when it was answered.
        watchers: The watches (`Watcher` objects) it was for; compare with ``is``.
    """

    task_id: str
    attempt: int
    started: float
    duration: float
    lateness: float
    task: Task | None
    error: VSRError | None
    watchers: tuple[object, ...] = ()

    @property
    def status_code(self) -> int | None:
        """The answer's HTTP status: 200 for a task read (the API answers 200), the error's
        status for an error answer, ``None`` when no answer came."""
        if self.error is None:
            return 200
        return getattr(self.error, "status_code", None)


@attrs.frozen
class RetryDetails:
    """A failed request or poll that will be tried again.

    Attributes:
        what: What is retried, without secrets: ``"GET /v1/result/{id}"``,
            ``"POST /v1/super-resolution/videos"``, ``"download"``.
        task_id: The task, for a poll or a query; ``None`` for a create or a download.
        attempt: The retry's number, from 1.
        delay: Seconds until it is tried again.
        error: The failure.
        watchers: For a poll, the watches (`Watcher` objects) it is for; else empty.
        at: When it failed, in seconds since the epoch.
    """

    what: str
    task_id: str | None
    attempt: int
    delay: float
    error: VSRError
    watchers: tuple[object, ...] = ()
    at: float = attrs.field(factory=time.time)


@attrs.frozen
class TransitionDetails:
    """A task's status changed, or was seen for the first time.

    Told once per change by each scheduler polling the task: a client opened with
    ``async with`` has one for all its watches and waits; a watch given ``max_concurrency``,
    or of a client not opened, has its own. A task watched again after its last watch let it
    go is seen for the first time again.

    Attributes:
        task_id: The task.
        previous: Its status before, ``None`` at its first sighting.
        task: The task now.
        watchers: The watches (`Watcher` objects) following it; compare with ``is``.
    """

    task_id: str
    previous: TaskStatus | str | None
    task: Task
    watchers: tuple[object, ...] = ()


@attrs.frozen
class WatchDetails:
    """A watch (or a ``wait``) starts or stops following a task.

    ``on_watch`` is called when it starts, in the task that called ``watch``, ``add`` or
    ``wait`` (so a hook can capture that task's context), and again when it stops, with
    ``ended`` set: the task ended, was given up, or the watch let it go.

    Attributes:
        task_id: The task.
        watcher: The `Watcher` following it (a ``wait`` uses one too); compare with ``is``.
        ended: Whether it stopped following the task.
        task: When ended, the last task seen, if any.
        error: When ended, why it was given up (`WaitTimeoutError`, `TaskNotFoundError`...),
            or ``None`` if it ended (``task.is_terminal``) or was let go.
    """

    task_id: str
    watcher: object
    ended: bool = False
    task: Task | None = None
    error: Exception | None = None


@attrs.frozen
class CreateDetails:
    """A ``create_task`` call that ended.

    Attributes:
        started: When it was called, in seconds since the epoch.
        duration: Seconds it took, retries included.
        retries: Its retries, in order (a create is retried only when nothing was processed).
        task: The task created; ``None`` if it failed.
        error: Why it failed (its cancellation included); ``None`` if it succeeded.
    """

    started: float
    duration: float
    retries: tuple[RetryDetails, ...]
    task: Task | None
    error: BaseException | None


@attrs.frozen
class DownloadDetails:
    """A ``download`` that ended, saved or not.

    Attributes:
        task_id: The task, when known (not for a bare URL).
        path: Where the file is (or was to be) saved.
        received: Bytes received from the storage host, resumed transfers included.
        duration: Seconds it took.
        error: Why it failed (its cancellation included); ``None`` if the file was saved.
    """

    task_id: str | None
    path: Path
    received: int
    duration: float
    error: BaseException | None


class Hooks:
    """Instrumentation: subclass it and override what you need; each method is a no-op here.

    Pass an instance (or several) as ``AsyncVSRClient(hooks=...)``. Each is called in the task
    doing the work, synchronously: it must not block (hand slow work to a queue). An exception
    it raises is logged and ignored.
    """

    def on_request(self, details: RequestDetails) -> None:
        """An HTTP attempt was answered, or failed."""

    def on_poll(self, details: PollDetails) -> None:
        """A poll of a watched task was answered, or failed."""

    def on_retry(self, details: RetryDetails) -> None:
        """A request or a poll failed and will be tried again."""

    def on_transition(self, details: TransitionDetails) -> None:
        """A watched task's status changed."""

    def on_watch(self, details: WatchDetails) -> None:
        """A watch started (``ended`` false) or stopped (``ended`` true) following a task."""

    def on_create(self, details: CreateDetails) -> None:
        """A ``create_task`` call ended."""

    def on_download(self, details: DownloadDetails) -> None:
        """A ``download`` ended."""


class Guarded(Hooks):
    """The user's hooks as the client calls them: each in turn, an exception logged (once per
    hook and method) and ignored, so a broken counter never stops a watch."""

    def __init__(self, hooks: Sequence[Hooks]) -> None:
        self.hooks = tuple(hooks)
        self._reported: set[tuple[int, str]] = set()

    def _call(self, method: str, details: object) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(details)
            except Exception:
                if (id(hook), method) not in self._reported:
                    self._reported.add((id(hook), method))
                    logger.exception("%s.%s raised; ignored", type(hook).__name__, method)

    def on_request(self, details: RequestDetails) -> None:
        self._call("on_request", details)

    def on_poll(self, details: PollDetails) -> None:
        self._call("on_poll", details)

    def on_retry(self, details: RetryDetails) -> None:
        self._call("on_retry", details)

    def on_transition(self, details: TransitionDetails) -> None:
        self._call("on_transition", details)

    def on_watch(self, details: WatchDetails) -> None:
        self._call("on_watch", details)

    def on_create(self, details: CreateDetails) -> None:
        self._call("on_create", details)

    def on_download(self, details: DownloadDetails) -> None:
        self._call("on_download", details)


def guarded(hooks: Hooks | Sequence[Hooks] | None) -> Guarded | None:
    """The client's ``hooks=`` argument, checked, as called; ``None`` for none."""
    if hooks is None:
        return None
    many: object = (hooks,) if isinstance(hooks, Hooks) else hooks  # (a caller may err)
    if not isinstance(many, Sequence) or not all(isinstance(h, Hooks) for h in many):
        raise TypeError(f"hooks must be a Hooks instance or a list of them, not {hooks!r}")
    return Guarded(many) if many else None
