"""`AsyncVSRClient`: one shared ``httpx.AsyncClient``, typed calls, retries."""

from __future__ import annotations

import itertools
import logging
import math
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import httpx
import sniffio

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
    MAX_RESPONSE_BYTES,
    USER_AGENT,
)
from ._converter import parse_task
from ._download import download
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ResponseValidationError,
    TaskFailedError,
    VSRError,
    WaitTimeoutError,
    mask,
)
from ._models import Model, Task, TaskStatus
from ._rate import RateBudget
from ._retry import is_transient, retry_delay
from ._validate import (
    check_api_key,
    check_base_url,
    check_count,
    check_http_url,
    check_model,
    check_seconds,
    check_task_id,
)
from ._watch import Watcher

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path
    from types import TracebackType

    from ._schedule import Schedule
    from ._watch import Transition

logger = logging.getLogger("vsr_async")
#: Where httpx's ``send()`` logs each request; our own client's polls skip ``send()``.
_httpx_logger = logging.getLogger("httpx")

#: Errors raised before the request left us: safe to retry even for a billed create.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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
            (``pip install 'vsr-async[aiohttp]'``). Not with ``http_client``.
        rate_limit: Requests per second, shared by everything the client sends (polls,
            queries, creates, downloads); ``None`` (the default) sets no budget. A 429 halves
            it for a while (see `current_rate`).
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
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        check_api_key(api_key)
        self.base_url = check_base_url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
        self.max_retries = check_count("max_retries", max_retries, minimum=0)
        self.max_connections = check_count("max_connections", max_connections, minimum=1)
        self._rate = None if rate_limit is None else RateBudget(rate_limit)
        self.rate_limit = None if self._rate is None else self._rate.limit
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if transport not in ("httpx", "aiohttp"):
            raise ValueError(f"transport must be 'httpx' or 'aiohttp', not {transport!r}")
        if transport == "aiohttp" and http_client is not None:
            raise ValueError("transport='aiohttp' is for the client we create, not http_client=")
        self._asyncio_only = transport == "aiohttp"  # until checked in an event loop
        if self._asyncio_only:
            self._check_asyncio()  # made in one already? (else the first request checks)
        self._owns_http_client = http_client is None
        if http_client is None:
            # Headers and timeout set once on our own client keep them off every request's path.
            limits = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            http_client = httpx.AsyncClient(
                headers=headers,
                timeout=timeout,
                limits=limits,
                transport=_aiohttp_transport(limits) if transport == "aiohttp" else None,
            )
            self._request_headers: httpx.Headers | None = None
            self._request_timeout: httpx.Timeout | httpx._client.UseClientDefault = (
                httpx.USE_CLIENT_DEFAULT
            )
            timeouts = http_client.timeout
        else:
            # The caller's client keeps its own timeout unless ours was asked for.
            self._request_headers = httpx.Headers(headers)  # its repr hides the key
            if timeout is DEFAULT_TIMEOUT:
                self._request_timeout = httpx.USE_CLIENT_DEFAULT
                timeouts = http_client.timeout
            else:
                self._request_timeout = timeouts = httpx.Timeout(timeout)
        self._http = http_client
        # Our own client's API requests go straight to its transport (the one httpx picked for
        # the base URL: a proxy from the environment still applies), skipping send()'s work.
        self._transport = (
            http_client._transport_for_url(httpx.URL(self.base_url))  # noqa: SLF001 (as send)
            if self._owns_http_client
            else None
        )
        self._timeout_extension = http_client.timeout.as_dict()
        # A task's query URL is the base URL's, with the ID appended to this (encoded) path.
        self._result_url = httpx.URL(f"{self.base_url}/v1/result/")
        self._fast_urls = _appending_works(self._result_url)
        # httpx's read timeout is per read: a server trickling bytes never trips it.
        self._attempt_timeout = _attempt_seconds(timeouts)
        # In front of httpx, so a thousand callers queue here instead of timing out in its pool.
        self._limiter = anyio.CapacityLimiter(max_connections)
        # Only httpx's own transport has httpcore's pool (and its trace events).
        self._pool_gate = (
            anyio.Lock(fast_acquire=True)
            if type(self._transport) is httpx.AsyncHTTPTransport
            else None
        )
        self._closed = False
        self._unknown_statuses: set[str] = set()

    @property
    def current_rate(self) -> float | None:
        """The requests per second allowed now: ``rate_limit``, or less after 429s; ``None``
        without a ``rate_limit``."""
        return None if self._rate is None else self._rate.current

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncVSRClient base_url={self.base_url!r} {state}>"

    async def __aenter__(self) -> AsyncVSRClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, unless the ``http_client`` was the caller's. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns_http_client:
                await self._http.aclose()

    async def get_task(self, task_id: str) -> Task:
        """Query a task once, retrying transient failures.

        Raises:
            ValueError: ``task_id`` is not a valid ID.
            TaskNotFoundError: No task has this ID.
            VSRError: Any other failure (see the exception tree).
        """
        url = self._task_url(check_task_id(task_id))
        return self._parse(await self._request("GET", url, retry_if=is_transient), task_id)

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
        check_http_url("video_url", video_url)
        body = {"model": check_model(model), "videoUrl": video_url}
        url = f"{self.base_url}/v1/super-resolution/videos"
        response = await self._request("POST", url, json=body, retry_if=_never_sent)
        return self._parse(response, None, status=TaskStatus.QUEUED)

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
        with anyio.move_on_after(deadline):
            async with self.watch([task_id], interval=interval, max_concurrency=1) as watcher:
                async for last in watcher:  # noqa: B007 (the last one is the answer)
                    pass
        if last is None or not last.is_final:
            raise WaitTimeoutError(task_id, deadline, None if last is None else last.task)
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
            max_concurrency: Polls in flight at once; at most (and by default)
                ``max_connections``.
            keep_open: Keep watching, even with nothing left, until `Watcher.done_adding`.

        Raises:
            ValueError: An ID or an argument is invalid (before anything is sent).
            RuntimeError: The client is closed.

        Iterating raises `AuthenticationError` or `PermissionDeniedError` for a refused key,
        and the `APIStatusError` (a `RateLimitError` for a 429) of an answer whose
        ``Retry-After`` is longer than 60 s: either ends the whole watch.
        """
        self._check_open()
        return Watcher(
            self,
            task_ids,
            interval=interval,
            timeout=timeout,
            max_concurrency=self.max_connections if max_concurrency is None else max_concurrency,
            keep_open=keep_open,
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
        self._check_open()
        return await download(self, source, dest, overwrite=overwrite, progress=progress)

    # The single-attempt layer: the watcher calls these and schedules its own retries.

    def _task_url(self, task_id: str) -> httpx.URL:
        """The URL querying ``task_id``, built from the parsed base URL: no parsing per poll
        (unless this httpx's URLs are not built as we expect, checked once at start)."""
        segment = quote(task_id, safe="")
        if self._fast_urls:
            return _appended(self._result_url, segment)
        return httpx.URL(f"{self._result_url}{segment}")

    async def _fetch_task(self, task_id: str) -> Task:
        return self._parse(await self._send("GET", self._task_url(task_id)), task_id)

    async def _send(self, method: str, url: str | httpx.URL, *, json: Any = None) -> bytes:
        """One attempt: the body of a 2xx answer (decoded, as sent); else a `VSRError`."""
        self._check_open()
        request = self._build_request(method, url, json)
        try:
            async with self._limiter:
                # The token after the slot: a token kept while waiting for a slot would let
                # requests bunch up behind a busy pool and leave together, over the budget.
                sent_at = None if self._rate is None else await self._rate.acquire()
                with anyio.fail_after(self._attempt_timeout):
                    response = await self._transmit(request)
                    try:
                        content, whole = await _read_bounded(response)
                    finally:
                        await response.aclose()
        except TimeoutError as exc:  # our deadline for the whole attempt
            seconds = self._attempt_timeout
            raise APITimeoutError(
                f"{method} {url} timed out (no whole answer in {seconds:g} s)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"{method} {url} timed out ({type(exc).__name__})") from exc
        except httpx.DecodingError as exc:  # a broken Content-Encoding: garbage, not a task
            reason = f"the answer could not be decoded ({exc})"
            raise ResponseValidationError(reason, snippet="") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if not whole:
            reason = f"the answer is larger than {MAX_RESPONSE_BYTES} bytes, the most we read"
            if response.is_success:
                raise ResponseValidationError.from_body(reason, content, secret=self._secret())
            content = b""  # the status is the error; a body that size would say nothing more
        status = response.status_code
        if self._rate is not None and sent_at is not None:
            self._rate.answered(sent_at, status, response.headers.get("retry-after"))
        if not httpx.codes.is_success(status):
            raise APIStatusError.from_response(_with_content(response, content))
        return content  # no Response rebuilt around it: the caller only parses it

    def _build_request(self, method: str, url: str | httpx.URL, json: Any) -> httpx.Request:
        if self._transport is None:  # the caller's client merges in its own settings
            return self._http.build_request(
                method, url, headers=self._request_headers, json=json, timeout=self._request_timeout
            )
        # Ours holds only our headers and timeout: nothing to merge (and no cookies are kept).
        extensions = {"timeout": self._timeout_extension}
        return httpx.Request(
            method, url, headers=self._http.headers, json=json, extensions=extensions
        )

    async def _transmit(self, request: httpx.Request) -> httpx.Response:
        """The streamed response: through the caller's client's ``send()``, so its hooks and
        auth apply, or straight through our own client's transport."""
        hooks = self._http.event_hooks  # on ours too, should someone have hooked it
        if self._transport is None or hooks["request"] or hooks["response"]:
            return await self._http.send(request, stream=True)
        response = await self._through_pool(self._transport, request)
        response.request = request
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line send() would have logged
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    async def _through_pool(
        self, transport: httpx.AsyncBaseTransport, request: httpx.Request
    ) -> httpx.Response:
        """``transport``'s answer, the request entering httpcore's pool one at a time.

        httpcore hands a new request the first idle connection, which stays idle until its
        request gets going a few scheduling steps later: requests arriving together are handed
        the same connection, all but one find it taken and queue again, and every pass over
        the queue checks every connection (a third of a poll's CPU went there). So a request
        holds `_pool_gate` until httpcore's first trace event: by then its connection is taken
        (or being opened), and the next request is handed another.
        """
        gate = self._pool_gate
        if gate is None:
            return await transport.handle_async_request(request)
        await gate.acquire()
        holding = True

        async def on_trace(_name: str, _info: object) -> None:
            nonlocal holding
            if holding:
                holding = False
                gate.release()
            request.extensions.pop("trace", None)  # (httpcore's dict: no more events)

        request.extensions["trace"] = on_trace
        try:
            return await transport.handle_async_request(request)
        finally:
            if holding:  # an error, or a transport that does not trace
                holding = False
                gate.release()

    def _parse(self, content: bytes, task_id: str | None, **defaults: Any) -> Task:
        """The task in a success answer, if it is the one asked for (``task_id``, unless it is a
        create's answer). The data is kept as sent; only what an error or a log line quotes has
        the key masked, should the server echo it (an echo proxy, a debug page)."""
        refused: str | None = None
        try:
            task = parse_task(content, **defaults)
        except ResponseValidationError as exc:
            refused = exc.reason
        else:
            if task_id is not None and task.id != task_id:  # a proxy's cache, a mixed-up answer
                refused = f"asked for task {task_id!r}, the answer is about task {task.id!r}"
        if refused is not None:  # (raised out here, where nothing chained quotes the body)
            raise ResponseValidationError.from_body(refused, content, secret=self._secret())
        status = task.status.casefold()
        if not isinstance(task.status, TaskStatus) and status not in self._unknown_statuses:
            self._unknown_statuses.add(status)
            shown = mask(task.status, self._secret())
            logger.warning("unknown task status %r: treated as still running", shown)
        return task

    def _secret(self) -> str:
        """The API key, to mask in what errors and log lines quote."""
        headers = self._http.headers if self._request_headers is None else self._request_headers
        return str(headers.get("authorization", "")).partition(" ")[2]

    async def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        retry_if: Callable[[VSRError], bool],
        json: Any = None,
    ) -> bytes:
        """`_send`, retried up to ``max_retries`` times while ``retry_if`` says so."""
        for attempt in itertools.count():
            try:
                return await self._send(method, url, json=json)
            except VSRError as exc:
                if attempt == self.max_retries or not retry_if(exc):
                    raise
                delay = retry_delay(exc, attempt)
                logger.warning(
                    "%s %s: retry %d in %.2f s after %s", method, url, attempt + 1, delay, exc
                )
                await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncVSRClient is closed; open a new one")
        if self._asyncio_only:
            self._check_asyncio()

    def _check_asyncio(self) -> None:
        """Refuse a transport made for asyncio on another event loop (checked once, in one)."""
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return  # not in an event loop yet: the first request checks
        if library != "asyncio":
            raise RuntimeError(
                f"transport='aiohttp' runs on asyncio only, not {library}: "
                "use the default transport='httpx'"
            )
        self._asyncio_only = False


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    from ._aiohttp import aiohttp_transport  # noqa: PLC0415 (the aiohttp extra is optional)

    return aiohttp_transport(limits)


def _attempt_seconds(timeout: httpx.Timeout) -> float:
    """Seconds one attempt may take in all: ``connect + read``, unbounded if either is."""
    if timeout.connect is None or timeout.read is None:
        return math.inf
    return timeout.connect + timeout.read


async def _read_bounded(response: httpx.Response) -> tuple[bytes, bool]:
    """The start of a streamed response's decoded body, up to `MAX_RESPONSE_BYTES`, and
    whether that is all of it. A ``Content-Length`` over the bound is not read at all."""
    length = response.headers.get("content-length", "").lstrip("0")  # maybe garbage, or several
    huge = len(length) > len(str(MAX_RESPONSE_BYTES))  # (too many digits for int() even)
    if length.isascii() and length.isdigit() and (huge or int(length) > MAX_RESPONSE_BYTES):
        return b"", False
    chunks: list[bytes] = []
    size = 0
    # Leaving the loop early would leave httpx's nested body iterators suspended, for the
    # garbage collector (trio warns about each). Cancelling ends them from inside instead:
    # the next read from the network raises, and they all unwind and close the connection.
    with anyio.CancelScope() as stop:
        async for chunk in response.aiter_bytes():
            if not stop.cancel_called:
                chunks.append(chunk[: MAX_RESPONSE_BYTES - size])
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    stop.cancel()
    return b"".join(chunks), size <= MAX_RESPONSE_BYTES


#: An ID with every kind of character the URL must encode, to check the fast URLs against.
_ODD_ID = "a b?#%é[]@:;=+&$,!~*'()"


def _appended(url: httpx.URL, segment: str) -> httpx.URL:
    """``url`` with ``segment`` (percent-encoded) appended to its path, without parsing it:
    httpx parsing a URL string was most of the cost of building a poll's request."""
    parts = url._uri_reference  # noqa: SLF001 (httpx's parsed URL, a named tuple)
    appended = httpx.URL.__new__(httpx.URL)
    appended._uri_reference = parts._replace(path=parts.path + segment)  # noqa: SLF001
    return appended


def _appending_works(url: httpx.URL) -> bool:
    """Whether `_appended` builds the URL httpx would parse, in the httpx installed."""
    segment = quote(_ODD_ID, safe="")
    try:
        fast = _appended(url, segment)
    except AttributeError:  # pragma: no cover (an httpx whose URLs are built otherwise)
        return False
    parsed = httpx.URL(f"{url}{segment}")
    return str(fast) == str(parsed) and fast.raw_path == parsed.raw_path


#: Headers describing the body as it came over the wire, not the decoded one we keep.
_WIRE_HEADERS = (b"content-encoding", b"content-length", b"transfer-encoding")


def _with_content(response: httpx.Response, content: bytes) -> httpx.Response:
    """The closed, streamed ``response`` rebuilt around its decoded ``content``."""
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=response.request,
        extensions=response.extensions,
    )


def _never_sent(exc: VSRError) -> bool:
    """Whether the request failed before it left us: the only safe retry of a billed create."""
    return isinstance(exc.__cause__, _NOT_SENT)
