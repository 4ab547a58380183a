"""Running a batch: create, watch, query and download concurrently, record results, stop cleanly
on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel
import attrs
import click

from vsr_async import (
    APIConnectionError,
    APITimeoutError,
    TaskNotFoundError,
    TaskStatus,
    VSRError,
)
from vsr_async._validate import check_model

from ._download import save
from ._exits import FATAL, exit_code
from ._jsonl import created_record, download_record, transition_record
from ._options import unreachable, wrong_path

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from anyio.abc import TaskGroup

    from vsr_async import AsyncVSRClient, Model, Task, Transition, Watcher
    from vsr_async.fleet import Follower, RedisFleet

    from ._display import Display
    from ._download import SavedLines
    from ._jsonl import ResultsFile
    from ._tally import Tally

T = TypeVar("T")


@attrs.frozen
class Pace:
    """The library's pacing arguments, as given on the command line."""

    interval: float
    timeout: float | None
    concurrency: int


#: The signals that stop a run cleanly: Ctrl-C, and what `docker stop`, systemd and Kubernetes send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_interrupted(
    work: Callable[[TaskGroup], Awaitable[None]],
    *,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
    stopping: Callable[[], None] | None = None,
    hurry: Callable[[], None] | None = None,
) -> signal.Signals | None:
    """Run ``work`` in a task group that the first of ``signals`` cancels: a clean stop.

    ``work`` gets the task group, to start helpers in it and to cancel it. ``stopping`` is
    called at the first signal; at a second one, during the clean stop, ``hurry`` is (to give up
    what the clean stop waits for), and the signals get their default handling back. Returns the
    signal that stopped the run, if one did.
    """
    stopped_by: signal.Signals | None = None

    async def listen(
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        nonlocal stopped_by
        with anyio.open_signal_receiver(*signals) as received:
            task_status.started()
            async for signum in received:
                if stopped_by is not None:
                    if hurry is not None:
                        hurry()
                    return
                stopped_by = signum
                scope.cancel()
                if stopping is not None:
                    stopping()

    async with anyio.create_task_group() as listening:
        with anyio.CancelScope() as working:
            # Signal handlers can only be set from the main thread (and not by asyncio on
            # Windows). They are in place before any work starts: a create is never sent unheard.
            if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
                await listening.start(listen, working)
            async with anyio.create_task_group() as task_group:
                await work(task_group)
                task_group.cancel_scope.cancel()
        listening.cancel_scope.cancel()
    return stopped_by


async def run_batch(
    client: AsyncVSRClient,
    tally: Tally,
    display: Display,
    *,
    pace: Pace,
    ids: Iterable[str] = (),
    creates: Sequence[tuple[str, Model | str]] = (),
    watch: bool = True,
    results: ResultsFile | None = None,
    after_creates: Callable[[], None] | None = None,
    to_download: Iterable[str] = (),
    download_concurrency: int = 1,
    fleet: RedisFleet | None = None,
) -> None:
    """Create tasks from ``creates`` and watch them and ``ids`` until all end, or a signal.

    Everything that happens goes to ``tally``, ``display`` and ``results``; a task that
    ``results`` already holds is watched from its last recorded status. A refused key
    stops the batch with ``tally.fatal`` set. ``after_creates`` is called once every create
    has been answered. With ``tally.saving``, each task's result is downloaded as soon as it
    completes, ``download_concurrency`` at a time, and so are those of ``to_download`` (IDs of
    tasks that completed earlier). A signal stops the batch once every create in flight is
    answered and recorded; a second one gives those up (``tally.abandoned``). The summary is shown
    last, however the batch ended. With a ``fleet``, ``ids`` are submitted to it and followed
    there: its workers poll them, this process sends nothing to the API.
    """
    slots = anyio.CapacityLimiter(download_concurrency)
    recorded = {} if results is None else dict(results.statuses)
    batch = _Batch(client, tally, display, results, pace, slots, recorded=recorded, fleet=fleet)

    async def work(task_group: TaskGroup) -> None:
        batch.stop = task_group.cancel_scope
        task_group.start_soon(display.refresh_forever)
        async with (
            client,
            contextlib.nullcontext() if fleet is None else fleet,
            anyio.create_task_group() as downloads,
        ):
            if tally.saving is not None:
                batch.downloads = downloads
                for task_id in to_download:
                    downloads.start_soon(batch.download, task_id)
            if watch:
                await batch.watch(ids, creates, after_creates)
            else:
                await batch.create_all(creates, None)

    with display, _hint_unreachable(display, str(client.base_url)):
        tally.interrupted = await run_until_interrupted(
            work, stopping=batch.stopping, hurry=batch.hurry
        )
    display.summary()
    if tally.current and batch.foreign_not_found == len(tally.current):
        click.echo(f"Hint: {wrong_path(client.base_url)}", err=True)
    if tally.abandoned:
        click.echo(
            f"Warning: stopped without the answers to {len(tally.abandoned)} creates: the "
            "server may have created (and billed) their tasks, whose IDs are recorded nowhere. "
            "Their video URLs:",
            err=True,
        )
        for video_url in tally.abandoned:
            click.echo(f"  {video_url}", err=True)


class _UnreachableHint(logging.Handler):
    """Once the watch warns that polls keep failing to connect, names the setting to check."""

    def __init__(self, display: Display, base_url: str) -> None:
        super().__init__(logging.WARNING)
        self.display, self.base_url, self.shown = display, base_url, False

    def emit(self, record: logging.LogRecord) -> None:
        if self.shown or not str(record.msg).startswith("polls keep failing"):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        if any(cannot_connect(arg) for arg in args if isinstance(arg, BaseException)):
            self.shown = True
            self.display.note(f"Warning: {unreachable(self.base_url)}")


@contextlib.contextmanager
def _hint_unreachable(display: Display, base_url: str) -> Iterator[None]:
    logger = logging.getLogger("vsr_async")
    handler = _UnreachableHint(display, base_url)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@attrs.define
class _Batch:
    """One run of `run_batch`: what its parts share."""

    client: AsyncVSRClient
    tally: Tally
    display: Display
    results: ResultsFile | None
    pace: Pace
    download_slots: anyio.CapacityLimiter
    stop: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    #: Each task's last recorded status (in the results file, or at its creation) until the
    #: watch first sees it: that sighting is a change only if the status differs.
    recorded: dict[str, str] = attrs.field(factory=dict)
    #: Where downloads run, with ``--download``.
    downloads: TaskGroup | None = None
    #: Tasks given up for a 404 that is not the API's (`foreign_not_found`).
    foreign_not_found: int = 0
    #: The creates in flight: a scope that gives each up, and its video URL.
    in_flight: dict[anyio.CancelScope, str] = attrs.field(factory=dict)
    #: Where the tasks are watched, instead of by this process (``--redis``).
    fleet: RedisFleet | None = None

    async def watch(
        self,
        ids: Iterable[str],
        creates: Sequence[tuple[str, Model | str]],
        after_creates: Callable[[], None] | None,
    ) -> None:
        pace = self.pace
        source: Watcher | Follower
        local: Watcher | None = None  # (a fleet's tasks are created elsewhere)
        if self.fleet is None:
            source = local = self.client.watch(
                ids,
                interval=pace.interval,
                timeout=pace.timeout,
                max_concurrency=pace.concurrency,
                keep_open=bool(creates),
            )
        else:
            ids = list(ids)
            await self.fleet.submit(ids, interval=pace.interval, timeout=pace.timeout)
            source = self.fleet.follow(ids)
        async with source as watcher, anyio.create_task_group() as creators:
            self.display.watching(lambda: watcher.stats)
            if creates and local is not None:
                adding = local

                async def create_then_close() -> None:
                    await self.create_all(creates, adding)
                    if after_creates is not None:
                        after_creates()
                    adding.done_adding()

                creators.start_soon(create_then_close)
            try:
                async for transition in watcher:
                    await self.observe(transition)
            except FATAL as exc:
                self.fail(exc)

    async def observe(self, transition: Transition) -> None:
        self.tally.observe(transition)
        if transition.error is not None and foreign_not_found(transition.error):
            self.foreign_not_found += 1
        change = self.since_recorded(transition)
        if change is not None:
            self.display.transition(change)
            await self.record(change)
        task = transition.task
        if (
            self.downloads is not None
            and transition.error is None
            and task is not None
            and task.status == TaskStatus.COMPLETED
        ):
            self.downloads.start_soon(self.download, task)

    def since_recorded(self, transition: Transition) -> Transition | None:
        """``transition`` as a change from the task's recorded status, or ``None`` if it is none.

        The watch reports a task's first sighting as new (no ``previous``); a task created by
        this run, or held by the results file of an earlier one, is not new.
        """
        if transition.previous is not None:
            return transition
        recorded = self.recorded.pop(transition.task_id, None)
        if recorded is None:
            return transition
        if transition.error is None and str(transition.status).casefold() == recorded.casefold():
            return None
        return attrs.evolve(transition, previous=recorded)

    async def record(self, transition: Transition) -> None:
        if self.results is not None:
            record = transition_record(transition)
            await self.results.append(record, durable=transition.is_final)

    async def create_all(
        self, creates: Iterable[tuple[str, Model | str]], watcher: Watcher | None
    ) -> None:
        """Create the tasks, ``concurrency`` at a time, handing each to ``watcher`` at once."""
        pending = iter(creates)

        async def create() -> None:
            for video_url, model in pending:
                await anyio.lowlevel.checkpoint()  # a signal stops here, before the next create
                # A sent create is billed: a signal waits for its answer so the ID is recorded
                # (the client's timeout bounds the wait); only a second one gives it up.
                with anyio.CancelScope(shield=True):
                    with anyio.CancelScope() as give_up:
                        self.in_flight[give_up] = video_url
                        try:
                            task = await self.client.create_task(video_url, model=model)
                        except FATAL as exc:
                            self.fail(exc)
                            return
                        except VSRError as exc:
                            self.tally.create_failures.append((video_url, str(exc)))
                            self.display.create_failed(video_url, str(exc))
                            continue
                        finally:
                            del self.in_flight[give_up]
                    if give_up.cancelled_caught:
                        return
                    await self.record_created(task, video_url, model)
                if watcher is not None:
                    watcher.add(task.id)

        async with anyio.create_task_group() as task_group:
            for _ in range(self.pace.concurrency):
                task_group.start_soon(create)

    async def record_created(self, task: Task, video_url: str, model: Model | str) -> None:
        """Count, show and durably record a new task, with what it was created from: it is
        billed, its ID must not be lost, and a rerun must not create it again."""
        self.tally.expect(task.id)
        self.display.created(task.id, video_url)
        self.recorded[task.id] = str(task.status)
        if self.results is not None:
            record = created_record(task, video_url, check_model(model))
            await self.results.append(record, durable=True)

    async def download(self, source: Task | str) -> None:
        """Download a task's result once a slot is free; show and durably record how it went."""
        saving = self.tally.saving
        assert saving is not None  # noqa: S101 - downloads are started only then
        task_id = source if isinstance(source, str) else source.id

        def track(done: int, _total: int | None) -> None:
            saving.active[task_id] = done

        saving.waiting += 1
        async with self.download_slots:
            saving.waiting -= 1
            saving.active[task_id] = 0
            try:
                saved = await save(self.client, source, saving.directory, progress=lambda *_: track)
            except FATAL as exc:
                self.fail(exc)
                return
            finally:
                del saving.active[task_id]
        (saving.saved if saved.ok else saving.failures).append(saved)
        self.display.downloaded(saved)
        if self.results is not None:
            await self.results.append(download_record(saved), durable=True)

    def stopping(self) -> None:
        """Say what the clean stop waits for, if anything: the creates in flight."""
        if self.in_flight:
            click.echo(
                f"Stopping: waiting for the answers to {len(self.in_flight)} creates in flight, "
                "to record their tasks. Signal again to stop without them.",
                err=True,
            )

    def hurry(self) -> None:
        """Give up the creates in flight: a second signal wants the run over."""
        for give_up, video_url in list(self.in_flight.items()):
            self.tally.abandoned.append(video_url)
            give_up.cancel()

    def fail(self, exc: VSRError) -> None:
        """Stop everything: the key was refused, so every other request would be too."""
        self.tally.fatal = str(exc)
        self.stop.cancel()


def cannot_connect(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached at all (not merely slow)."""
    return isinstance(exc, APIConnectionError) and not isinstance(exc, APITimeoutError)


def foreign_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is a 404 without the API's JSON ``message``: the server's own, likely for
    a base URL missing its path, rather than the API's word about an unknown task."""
    if not isinstance(exc, TaskNotFoundError):
        return False
    body = exc.body
    return not (isinstance(body, dict) and isinstance(body.get("message"), str))


@attrs.define
class Queried:
    """How a ``status`` or ``download`` run went."""

    failed: int = 0  # failed tasks, IDs that could not be queried, downloads that failed
    fatal: str | None = None
    interrupted: signal.Signals | None = None  # the signal that stopped it, if one did
    unreachable: bool = False  # some query could not connect to the server at all
    foreign_not_found: int = 0  # 404s whose body is not the API's: a wrong base URL?

    def exit_code(self) -> int:
        """128 + the signal's number if one stopped the run, 3 if the key was refused, 1 if
        anything failed, else 0."""
        return exit_code(
            interrupted=self.interrupted, fatal=self.fatal is not None, failed=bool(self.failed)
        )


async def query_all(
    client: AsyncVSRClient,
    ids: Sequence[str],
    *,
    concurrency: int,
    show: Callable[[str, Task | None, VSRError | None], None],
) -> Queried:
    """Query every task once, ``concurrency`` at a time; ``show`` each in input order."""
    outcome = Queried()
    answers: dict[int, tuple[Task | None, VSRError | None]] = {}
    shown = 0

    async def query(item: tuple[int, str]) -> None:
        nonlocal shown
        index, task_id = item
        try:
            answers[index] = (await client.get_task(task_id), None)
        except FATAL:
            raise
        except VSRError as exc:
            answers[index] = (None, exc)
            outcome.unreachable |= cannot_connect(exc)
            outcome.foreign_not_found += foreign_not_found(exc)
        while shown in answers:  # everything before it is shown: show it, and what follows
            task, error = answers.pop(shown)
            outcome.failed += error is not None or (task is not None and task.status == "failed")
            show(ids[shown], task, error)
            shown += 1

    await _each(client, list(enumerate(ids)), concurrency, query, outcome)
    return outcome


async def download_all(
    client: AsyncVSRClient,
    ids: Sequence[str],
    directory: Path,
    *,
    overwrite: bool,
    concurrency: int,
    printer: SavedLines,
) -> Queried:
    """Download each task's result into ``directory``, ``concurrency`` at a time, each shown by
    ``printer`` as it ends."""
    outcome = Queried()

    async def download(task_id: str) -> None:
        saved = await save(
            client, task_id, directory, overwrite=overwrite, progress=printer.progress
        )
        outcome.failed += not saved.ok
        printer.show(saved)

    with printer:
        await _each(client, ids, concurrency, download, outcome)
    return outcome


async def _each(
    client: AsyncVSRClient,
    items: Sequence[T],
    concurrency: int,
    handle: Callable[[T], Awaitable[None]],
    outcome: Queried,
) -> None:
    """``await handle(item)`` for each of ``items``, ``concurrency`` at a time, until all are
    done, a signal stops the run or the key is refused (``outcome`` says which)."""
    pending = iter(items)

    async def worker(stop: anyio.CancelScope) -> None:
        for item in pending:
            try:
                await handle(item)
            except FATAL as exc:
                outcome.fatal = str(exc)
                stop.cancel()
                return

    async def work(task_group: TaskGroup) -> None:
        async with client, anyio.create_task_group() as workers:
            for _ in range(min(concurrency, len(items))):
                workers.start_soon(worker, task_group.cancel_scope)

    outcome.interrupted = await run_until_interrupted(work)
