"""`AsyncVSRClient`, the facade: it wires a `Session`, the task calls, watches and downloads.

Each method checks its arguments, documents the behaviour and hands the work to the layer that
owns it (see docs/architecture.md)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import anyio

from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_TRANSPORT,
    DEFAULT_WAIT_TIMEOUT,
)
from ._download import download
from ._errors import TaskFailedError, WaitTimeoutError
from ._hooks import guarded
from ._models import TaskStatus
from ._retry import RetryPolicy
from ._scheduler import Scheduler
from ._session import Session
from ._tasks import Tasks
from ._validate import (
    check_api_key,
    check_base_url,
    check_count,
    check_rate,
    check_seconds,
    check_task_id,
)
from ._watch import Watcher

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from types import TracebackType

    import httpx
    from anyio.abc import TaskGroup

    from ._hooks import Hooks
    from ._models import Model, Task
    from ._schedule import Schedule
    from ._scheduler import WatchStats
    from ._watch import Transition


class AsyncVSRClient:
    """A client for the VSR API, sharing one ``httpx.AsyncClient`` between all its calls.

    Open one per application (in a web app, in its lifespan) and share it::

        async with AsyncVSRClient() as client:
            task = await client.create_task(url, model=Model.SUPER_RESOLUTION_1080P_LOWFPS)
            task = await client.wait(task.id)

    Args:
        api_key: The Bearer key; defaults to ``$VSR_API_KEY``. Never shown in reprs,
            logs or errors.
        base_url: The API's root; defaults to ``$VSR_BASE_URL``, then the provider's URL.
        timeout: Per request, seconds or an ``httpx.Timeout``. A caller's ``http_client``
            keeps its own timeout unless this is given. Its read timeout limits each wait for
            data; each API attempt as a whole, from connecting to the answer's last byte, is
            also limited to ``connect + read`` seconds (40 s by default; no limit if either is
            ``None``), so a server trickling its answer cannot hold a call. Past it comes an
            `APITimeoutError`, retried like any timeout.
        max_retries: Retries of a failed query (connection errors, timeouts, 429, 5xx).
            A create is retried only when the request never left (connect errors).
        max_connections: Requests in flight at once; the size of the pool we create.
        http_client: An ``httpx.AsyncClient`` to send through; its hooks and settings
            apply, and we never close it.
        transport: For the client we create: ``"httpx"`` (the default, asyncio and trio) or
            ``"aiohttp"``, a cheaper transport for asyncio only, from the ``aiohttp`` extra
            (``pip install 'vsr-async[aiohttp]'``); it reads no proxy from the environment
            (``HTTP_PROXY`` and the like). Not with ``http_client``.
        rate_limit: Requests per second, shared by everything the client sends (polls,
            queries, creates, downloads): a ceiling. With it or without (``None``, the
            default), the client learns the server's quota from its 429s and keeps under it
            (see `current_rate`).
        hooks: `Hooks` (one, or several in order) called for every HTTP attempt, poll, retry,
            status change, watch, create and download, with a frozen details object: for
            metrics and traces (`vsr_async.otel.OpenTelemetryHooks` is one). None by default,
            and then nothing is spent on them.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        http_client: httpx.AsyncClient | None = None,
        transport: str = DEFAULT_TRANSPORT,
        rate_limit: float | None = None,
        hooks: Hooks | Sequence[Hooks] | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        check_api_key(api_key)
        self.base_url = check_base_url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
        self.max_retries = check_count("max_retries", max_retries, minimum=0)
        self.max_connections = check_count("max_connections", max_connections, minimum=1)
        rate_limit = None if rate_limit is None else check_rate("rate_limit", rate_limit)
        if transport not in ("httpx", "aiohttp"):
            raise ValueError(f"transport must be 'httpx' or 'aiohttp', not {transport!r}")
        if transport == "aiohttp" and http_client is not None:
            raise ValueError("transport='aiohttp' is for the client we create, not http_client=")
        self._session = Session(
            api_key,
            base_url=self.base_url,
            # A caller's client keeps its own timeout unless one is given.
            timeout=None if timeout is DEFAULT_TIMEOUT and http_client is not None else timeout,
            retry=RetryPolicy(max_retries=self.max_retries),
            max_connections=self.max_connections,
            http_client=http_client,
            transport=transport,
            rate_limit=rate_limit,
            hooks=guarded(hooks),
        )
        self._tasks = Tasks(self._session)
        self._scheduler = Scheduler(self._tasks, workers=self.max_connections)
        self._polling: TaskGroup | None = None  # runs the scheduler while the client is open

    @property
    def rate_limit(self) -> float | None:
        """Requests per second, shared by everything the client sends; ``None`` for no limit.

        Settable while the client runs: the rate allowed now becomes the new limit (a fleet
        worker sets its share of the namespace's budget this way, every second).
        """
        return self._session.budget.limit

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        self._session.budget.set_limit(None if value is None else check_rate("rate_limit", value))

    @property
    def current_rate(self) -> float | None:
        """The requests per second allowed now: ``rate_limit``, or less once 429s taught the
        server's quota; ``None`` while there is neither."""
        return self._session.budget.current

    def __repr__(self) -> str:
        state = "closed" if self._session.closed else "open"
        return f"<AsyncVSRClient base_url={self.base_url!r} {state}>"

    @property
    def stats(self) -> WatchStats:
        """The counters of the client's shared scheduler (every watch and wait of a client
        opened with ``async with``): tasks watched, polls in flight and sent, retries, 429s,
        the poll rate and the allowed rate."""
        return self._scheduler.stats()

    async def __aenter__(self) -> AsyncVSRClient:
        """Open the client: its watches and waits share one scheduler, polled in a task group
        of the client's until it is closed (enter and leave it in one task, as any task group:
        an app's lifespan, say)."""
        self._session.check_open()
        if self._polling is not None:
            raise RuntimeError("this AsyncVSRClient is already open in an `async with` block")
        self._polling = anyio.create_task_group()
        await self._polling.__aenter__()
        self._polling.start_soon(self._scheduler.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        polling, self._polling = self._polling, None
        try:
            if polling is not None:
                polling.cancel_scope.cancel()
                await polling.__aexit__(None, None, None)  # (the scheduler raises nothing)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, unless the ``http_client`` was the caller's. Idempotent."""
        await self._session.aclose()

    async def get_task(self, task_id: str) -> Task:
        """Query a task once, retrying transient failures.

        Raises:
            ValueError: ``task_id`` is not a valid ID.
            TaskNotFoundError: No task has this ID.
            VSRError: Any other failure (see the exception tree).
        """
        return await self._tasks.get(task_id)

    async def create_task(self, video_url: str, *, model: Model | str) -> Task:
        """Create a task enhancing ``video_url`` with ``model``.

        The create is billed and has no idempotency key, so it is retried only when the
        request never reached the server (connect errors), never after a timeout or a 5xx.

        Args:
            video_url: A public ``http(s)`` URL of the input video.
            model: A `Model`, or the model's name as a string (for models newer than this
                library).

        Raises:
            ValueError: ``video_url`` or ``model`` is malformed.
            BadRequestError: The API refused them.
            VSRError: Any other failure.
        """
        return await self._tasks.create(video_url, model)

    async def wait(
        self,
        task_id: str,
        *,
        interval: float | Schedule = DEFAULT_INTERVAL,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,  # noqa: ASYNC109 (a deadline, by design)
        raise_on_failure: bool = True,
    ) -> Task:
        """Poll a task until it is ``completed`` or ``failed``, and return it.

        Transient failures are retried with backoff until the deadline.

        Args:
            task_id: The task to wait for.
            interval: Seconds between polls (with a little jitter), or a `Schedule` such as
                `Stretching`.
            timeout: Seconds before giving up (30 minutes by default); ``None`` waits forever.
            raise_on_failure: Raise `TaskFailedError` if the task fails, else return it.

        Raises:
            TaskFailedError: The task failed (and ``raise_on_failure`` is true).
            WaitTimeoutError: ``timeout`` passed first; carries the last task seen.
            TaskNotFoundError: No task has this ID.
            VSRError: A failure that is not transient (an authentication error, say).
        """
        task_id = check_task_id(task_id)
        deadline = math.inf if timeout is None else check_seconds("timeout", timeout, finite=False)
        last: Transition | None = None
        async with self.watch([task_id], interval=interval) as watcher:
            with anyio.move_on_after(deadline):
                async for last in watcher:  # noqa: B007 (the last one is the answer)
                    pass
            if last is None or not last.is_final:
                timed_out = WaitTimeoutError(task_id, deadline, None if last is None else last.task)
                watcher.discard(task_id, error=timed_out)
                raise timed_out
        if last.error is not None:
            raise last.error
        assert last.task is not None  # noqa: S101 (a final transition without error has a task)
        if raise_on_failure and last.task.status is TaskStatus.FAILED:
            raise TaskFailedError(last.task)
        return last.task

    def watch(
        self,
        task_ids: Iterable[str] = (),
        *,
        interval: float | Schedule = DEFAULT_INTERVAL,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        keep_open: bool = False,
    ) -> Watcher:
        """Watch many tasks at once; yields each task's `Transition`s until it ends.

        Use it as an async context manager, then iterate::

            async with client.watch(ids) as transitions:
                async for t in transitions:
                    print(t.task_id, t.previous, "->", t.status)

        Args:
            task_ids: The tasks to watch; more can come with `Watcher.add`.
            interval: Seconds between two polls of one task (with a little jitter), or a
                `Schedule` that says how long, such as `Stretching` (5 s at first, up to 10 s
                for a task that keeps one status for long).
            timeout: Seconds after a task's first poll when, still running, it is given up (its
                last transition carries a `WaitTimeoutError`); ``None`` never gives up.
            max_concurrency: Give this watch a pool of pollers of its own, this many at
                most (and at most ``max_connections``). By default a watch of a client opened
                with ``async with`` shares the client's scheduler: a task many watch is polled
                once per interval (the shortest asked); without ``async with``, each watch
                polls for itself with up to ``max_connections`` polls in flight.
            keep_open: Keep watching, even with nothing left, until `Watcher.done_adding`.

        Raises:
            ValueError: An ID or an argument is invalid (before anything is sent).
            RuntimeError: The client is closed.

        Iterating raises `AuthenticationError` or `PermissionDeniedError` for a refused key,
        and the `APIStatusError` (a `RateLimitError` for a 429) of an answer whose
        ``Retry-After`` is longer than 60 s: either ends the whole watch.
        """
        self._session.check_open()
        return Watcher(
            self._tasks,
            task_ids,
            interval=interval,
            timeout=timeout,
            max_concurrency=max_concurrency,
            keep_open=keep_open,
            scheduler=None if self._polling is None else self._scheduler,
        )

    async def download(
        self,
        source: Task | str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Callable[[int, int | None], object] | None = None,
    ) -> Path:
        """Save a task's result video to ``dest`` and return the file's path.

        The body is streamed to ``<file>.part`` and renamed into place once complete and
        fsynced: the file is either absent or whole. A broken transfer resumes where it stopped
        (``Range`` and ``If-Range``), now or in a later call that finds the part; transient
        failures are retried like queries. The API key is never sent with it, nor with a
        redirect. While it runs, a download holds one of the ``max_connections`` slots.

        Args:
            source: A `Task`, a task ID (queried first) or a result URL. A URL that expired is
                fetched afresh once, by querying the task again, unless only the URL was given.
            dest: A file path (its directory must exist), an existing directory, or a string
                ending with a separator (``"out/"``): a directory, created with its parents if
                need be. In a directory the file is named after the task ID (or the URL's last
                segment) with the URL's extension, reduced to ``[A-Za-z0-9._-]`` so it stays
                inside the directory.
            overwrite: Replace an existing file instead of raising `FileExistsError`.
            progress: Called as ``progress(bytes_done, bytes_total)`` as the file grows; the
                total is ``None`` when the server does not send one.

        Raises:
            FileExistsError: The file exists and ``overwrite`` is false.
            ResultNotReadyError: The task is still queued or processing.
            TaskFailedError: The task failed: it has no result.
            ResultExpiredError: The result URL was refused (403, 404, 410), even afresh.
            DownloadError: The transfer kept breaking off, was redirected somewhere refused, or
                the server sent only part of the file when asked for all of it.
            VSRError: Any other failure, after retries.
        """
        self._session.check_open()
        return await download(self._tasks, source, dest, overwrite=overwrite, progress=progress)
