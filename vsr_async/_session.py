"""The session: the one owner of the connections, the slots, the rate budget and the timeouts.

Everything the client sends goes through one `Session`: an API request as one attempt
(`Session.send`) or retried by the policy (`Session.request`), a storage host's answer as a
stream (`Session.stream`). Each takes a slot of the capacity limiter (so a thousand callers
queue here, not in httpx's pool), then a token of the rate budget, and tells the budget how it
was answered. The layers above hold a session and call these; none of them sees httpx's client.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import sniffio

from ._config import DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES, USER_AGENT
from ._errors import APIStatusError, APITimeoutError, ResponseValidationError, VSRError
from ._hooks import RequestDetails, RetryDetails
from ._http import (
    answer_response,
    default_transport,
    error_from_httpx,
    log_answered,
    log_sent,
    read_bounded,
    shown_url,
    text_appender,
    transport_for,
    url_appender,
    with_content,
)
from ._rate import RateBudget
from ._retry import is_transient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Mapping

    from ._aiohttp import AiohttpWire
    from ._hooks import Guarded
    from ._retry import RetryPolicy


class Session:
    """One API account's connections and budgets, from arguments `AsyncVSRClient` checked
    and documents (``timeout`` is ``None`` for a caller's ``http_client`` to keep its own)."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        timeout: float | httpx.Timeout | None,
        retry: RetryPolicy,
        max_connections: int,
        http_client: httpx.AsyncClient | None,
        transport: str,
        rate_limit: float | None,
        hooks: Guarded | None = None,
    ) -> None:
        self.secret = api_key  # to mask wherever an error or a log line quotes a server
        self.base_url = base_url
        self.retry = retry
        self.max_connections = max_connections
        self.budget = RateBudget(rate_limit)
        self.hooks = hooks  # told of every attempt here, and of the layers above's work
        self._asyncio_only = transport == "aiohttp"  # until checked in an event loop
        if self._asyncio_only:
            self._check_asyncio()  # made in one already? (else the first request checks)
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.owns_http_client = http_client is None
        # Per request: nothing for our own client (its headers and timeout are set once, off
        # every request's path); for the caller's, our headers, and our timeout if asked for.
        self._headers: httpx.Headers | None = None
        self._timeout: dict[str, Any] = {}  # passed as build_request(**it): httpx types it so
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        if http_client is None:
            http_client = httpx.AsyncClient(
                headers=headers,
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                limits=limits,
                transport=_aiohttp_transport(limits) if transport == "aiohttp" else None,
            )
            timeouts = http_client.timeout
        else:
            self._headers = httpx.Headers(headers)  # its repr hides the key
            timeouts = http_client.timeout
            if timeout is not None:
                self._timeout["timeout"] = timeouts = httpx.Timeout(timeout)
        self._http = http_client
        # Our own client's API requests go straight to the transport httpx would pick for the
        # base URL, skipping send()'s work; the caller's go through send(), for its hooks.
        self._transport = (
            transport_for(http_client, httpx.URL(self.base_url)) if self.owns_http_client else None
        )
        # ... and if that is httpx's own, to one of these instead (see `_one_connection_each`).
        self._free_slots = (
            _one_connection_each(max_connections)
            if self._transport is not None
            and self._transport is default_transport(http_client)
            and type(self._transport) is httpx.AsyncHTTPTransport
            else []
        )
        self._slots = tuple(self._free_slots)  # to close
        # transport="aiohttp": the API's requests on aiohttp's own request and response, not
        # httpx's around them; downloads keep the httpx client, on httpx-aiohttp's transport.
        # Neither reads a proxy from the environment (httpx mounts none over a transport given).
        self._wire = (
            _aiohttp_wire(headers, limits, http_client.timeout, _attempt_seconds(timeouts))
            if transport == "aiohttp"
            else None
        )
        self._attempt = self._send if self._wire is None else self._send_wire
        self._timeout_extension = http_client.timeout.as_dict()
        # A GET to the API's host: the headers httpx.Request would merge for it, merged once.
        api = httpx.URL(self.base_url)
        self._host = api.netloc
        self._get_headers = httpx.Headers([(b"Host", api.netloc), *http_client.headers.raw])
        # httpx's read timeout is per read: a server trickling bytes never trips it.
        self.attempt_timeout = _attempt_seconds(timeouts)
        # In front of httpx, so a thousand callers queue here instead of timing out in its pool.
        self._limiter = anyio.CapacityLimiter(max_connections)
        results = httpx.URL(f"{self.base_url}/v1/result/")
        # A poll's URL: as aiohttp takes it, text, for the aiohttp wire (no httpx.URL made).
        self.task_url: Callable[[str], str | httpx.URL] = (
            url_appender(results) if self._wire is None else text_appender(results)
        )
        self._task_path = httpx.URL(f"{self.base_url}/v1/result/").path
        self._base_path = httpx.URL(self.base_url).path
        self.closed = False

    async def aclose(self) -> None:
        """Close the connections, unless the ``http_client`` was the caller's. Idempotent."""
        if not self.closed:
            self.closed = True
            if self.owns_http_client:
                async with contextlib.AsyncExitStack() as stack:  # each closed, come what may
                    stack.push_async_callback(self._http.aclose)
                    if self._wire is not None:
                        stack.push_async_callback(self._wire.aclose)
                    for slot in self._slots:
                        stack.push_async_callback(slot.aclose)

    def check_open(self) -> None:
        """Raise `RuntimeError` once closed (or on trio with the asyncio-only transport)."""
        if self.closed:
            raise RuntimeError("this AsyncVSRClient is closed; open a new one")
        if self._asyncio_only:
            self._check_asyncio()

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        retry_if: Callable[[VSRError], bool] = is_transient,
        json: Any = None,
        retried: list[RetryDetails] | None = None,
    ) -> bytes:
        """`send`, retried by the policy while ``retry_if`` says so (each retry appended to
        ``retried``, if given, and told to the hooks)."""
        on_retry = None
        if self.hooks is not None or retried is not None:
            what = f"{method} {self.endpoint(url)}"
            task_id = httpx.URL(url).path.rpartition("/")[2] if method == "GET" else None

            def on_retry(exc: VSRError, attempt: int, delay: float) -> None:
                details = RetryDetails(what, task_id, attempt, delay, exc)
                if retried is not None:
                    retried.append(details)
                if self.hooks is not None:
                    self.hooks.on_retry(details)

        return await self.retry.call(
            lambda: self.send(method, url, json=json),
            f"{method} {url}",
            retry_if=retry_if,
            on_retry=on_retry,
        )

    def endpoint(self, url: str | httpx.URL) -> str:
        """The API endpoint ``url`` is for, without IDs (``"/v1/result/{id}"``): what a metric
        or a log may name."""
        path = httpx.URL(url).path
        if path.startswith(self._task_path):
            return "/v1/result/{id}"
        return path.removeprefix(self._base_path)

    def send(
        self, method: str, url: str | httpx.URL, *, json: Any = None
    ) -> Coroutine[Any, Any, bytes]:
        """One attempt: the body of a 2xx answer (decoded, as sent); else a `VSRError`.

        Without hooks, the attempt's own coroutine: no frame added to each of a poll's awaits."""
        if self.hooks is None:
            return self._attempt(method, url, json, None)
        return self._send_told(method, url, json)

    async def _send_told(self, method: str, url: str | httpx.URL, json: Any) -> bytes:
        """`send`, its attempt told to the hooks."""
        attempt = _Attempt(anyio.current_time())
        try:
            content = await self._attempt(method, url, json, attempt)
        except VSRError as exc:
            self._told(method, self.endpoint(url), attempt, exc)
            raise
        self._told(method, self.endpoint(url), attempt, None)
        return content

    async def _send(  # noqa: C901 (every poll's path, in one frame: no await added)
        self, method: str, url: str | httpx.URL, json: Any, attempt: _Attempt | None
    ) -> bytes:
        self.check_open()
        request = self._build_request(method, url, json)
        free, limiter = self._free_slots, self._limiter
        try:
            # A free slot without `acquire()`'s two checkpoints (an event loop pass): the
            # request's own awaits come next, and a cancellation lands there.
            try:
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await limiter.acquire()
            # A slot of the limiter, a connection of its own: never none left (one each).
            slot = free.pop() if free else None
            try:
                # The token after the slot: a token kept while waiting for a slot would let
                # requests bunch up behind a busy pool and leave together, over the budget.
                if attempt is not None:
                    attempt.started = anyio.current_time()  # the rate wait starts
                sent_at = await self.budget.acquire()
                if attempt is not None:
                    attempt.sent_at = sent_at
                with anyio.fail_after(self.attempt_timeout):
                    response = await self._transmit(request, slot)
                    try:
                        content, whole = await read_bounded(response)
                    finally:
                        await response.aclose()
            finally:
                if slot is not None:
                    free.append(slot)
                limiter.release()
        except TimeoutError as exc:  # our deadline for the whole attempt
            seconds = self.attempt_timeout
            raise APITimeoutError(
                f"{method} {url} timed out (no whole answer in {seconds:g} s)"
            ) from exc
        except httpx.HTTPError as exc:
            raise error_from_httpx(exc, f"{method} {url}") from exc
        if not whole:
            reason = f"the answer is larger than {MAX_RESPONSE_BYTES} bytes, the most we read"
            if response.is_success:
                raise ResponseValidationError.from_body(reason, content, secret=self.secret)
            content = b""  # the status is the error; a body that size would say nothing more
        self._answered(sent_at, response)
        if attempt is not None:
            attempt.status_code = response.status_code
        if not response.is_success:
            raise APIStatusError.from_response(with_content(response, content))
        return content  # no Response rebuilt around it: the caller only parses it

    async def _send_wire(
        self, method: str, url: str | httpx.URL, json: Any, attempt: _Attempt | None
    ) -> bytes:
        """`_send` on aiohttp's own request and response (`AiohttpWire`): the same slot, token,
        deadline (kept by the wire's timer), errors and budget report, without httpx's objects
        (an `httpx.Response` is built only for an error status, for
        `APIStatusError.from_response`).

        A copy of `_send`'s steps rather than a shared helper: a helper's frame would be paid
        on every poll of the default transport too."""
        assert self._wire is not None  # noqa: S101 (chosen only with one)
        self.check_open()
        url = str(url)
        limiter = self._limiter
        try:
            try:  # a free slot without checkpoints, as in `_send`
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await limiter.acquire()
            try:
                if attempt is not None:
                    attempt.started = anyio.current_time()  # the rate wait starts
                sent_at = await self.budget.acquire()
                if attempt is not None:
                    attempt.sent_at = sent_at
                answer = await self._wire.send(method, url, json)
            finally:
                limiter.release()
        except TimeoutError as exc:  # our deadline for the whole attempt
            seconds = self.attempt_timeout
            raise APITimeoutError(
                f"{method} {url} timed out (no whole answer in {seconds:g} s)"
            ) from exc
        except httpx.HTTPError as exc:
            raise error_from_httpx(exc, f"{method} {url}") from exc
        status, reason, headers, content, whole = answer
        log_answered(method, url, status, reason)
        success = 200 <= status < 300
        if not whole:
            why = f"the answer is larger than {MAX_RESPONSE_BYTES} bytes, the most we read"
            if success:
                raise ResponseValidationError.from_body(why, content, secret=self.secret)
            content = b""  # the status is the error; a body that size would say nothing more
        self.budget.answered(sent_at, status, None if success else headers.get("retry-after"))
        if attempt is not None:
            attempt.status_code = status
        if not success:
            request = httpx.Request(method, url, headers=self._http.headers)  # (the key, to mask)
            raise APIStatusError.from_response(
                answer_response(request, status, reason, headers, content)
            )
        return content

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """A GET to a storage host, its answer streamed while the block runs.

        It holds a slot and spends a token like an API request, and its answer is reported to
        the budget; it carries no ``Authorization`` and follows no redirect (the caller checks
        each hop). httpx's errors in sending or reading become our `VSRError`s.
        """
        self.check_open()
        request = self._http.build_request("GET", url, headers=headers, **self._timeout)
        request.headers.pop("Authorization", None)  # the API's key: never for a storage host
        async with self._limiter:
            attempt = _Attempt(anyio.current_time())  # (the rate wait starts)
            attempt.sent_at = await self.budget.acquire()
            try:
                response = await self._http.send(
                    request, stream=True, auth=None, follow_redirects=False
                )
            except httpx.HTTPError as exc:
                error = error_from_httpx(exc, f"GET {shown_url(url)}")
                self._told("GET", "download", attempt, error)
                raise error from exc
            self._answered(attempt.sent_at, response)
            attempt.status_code = response.status_code
            self._told("GET", "download", attempt, None)
            try:
                yield response
            except httpx.HTTPError as exc:  # reading the body
                raise error_from_httpx(exc, f"GET {shown_url(url)}") from exc
            finally:
                await response.aclose()

    def _build_request(self, method: str, url: str | httpx.URL, json: Any) -> httpx.Request:
        if self._transport is None:  # the caller's client merges in its own settings
            return self._http.build_request(
                method, url, headers=self._headers, json=json, **self._timeout
            )
        # Ours holds only our headers and timeout: nothing to merge (and no cookies are kept).
        extensions = {"timeout": self._timeout_extension}
        if method == "GET" and isinstance(url, httpx.URL) and url.netloc == self._host:
            # A poll: the request httpx.Request builds for a GET, its headers merged in advance
            # (merging them was most of what building it cost).
            request = httpx.Request(
                method, url, headers=self._get_headers, stream=_NO_BODY, extensions=extensions
            )
            request.read()  # (as httpx does: a transport may ask for `content`)
            return request
        return httpx.Request(
            method, url, headers=self._http.headers, json=json, extensions=extensions
        )

    def _told(self, method: str, endpoint: str, attempt: _Attempt, error: VSRError | None) -> None:
        """Tell the hooks of an attempt, if there are some."""
        if self.hooks is None:
            return
        now = anyio.current_time()
        sent_at = now if attempt.sent_at is None else attempt.sent_at
        status = attempt.status_code
        if status is None and isinstance(error, APIStatusError):
            status = error.status_code
        self.hooks.on_request(
            RequestDetails(
                method,
                endpoint,
                status,
                error,
                rate_wait=max(sent_at - attempt.started, 0.0),
                duration=max(now - sent_at, 0.0),
                allowed_rate=self.budget.current,
            )
        )

    def _answered(self, sent_at: float, response: httpx.Response) -> None:
        """Tell the budget how the request it gave a token at ``sent_at`` was answered."""
        status = response.status_code
        retry_after = None if 200 <= status < 300 else response.headers.get("retry-after")
        self.budget.answered(sent_at, status, retry_after)

    async def _transmit(
        self, request: httpx.Request, slot: httpx.AsyncBaseTransport | None
    ) -> httpx.Response:
        """The streamed response: through the caller's client's ``send()``, so its hooks and
        auth apply, or straight through our own client's transport (or ``slot``)."""
        hooks = self._http.event_hooks  # on ours too, should someone have hooked it
        if self._transport is None or hooks["request"] or hooks["response"]:
            return await self._http.send(request, stream=True)
        response = await (slot or self._transport).handle_async_request(request)
        response.request = request
        log_sent(request, response)
        return response

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


class _Attempt:
    """What the hooks are told of an attempt, noted as it goes (only when there are hooks)."""

    __slots__ = ("sent_at", "started", "status_code")

    def __init__(self, started: float) -> None:
        self.started = started
        self.sent_at: float | None = None  # when the budget gave its token
        self.status_code: int | None = None


#: A GET's body, shared by every poll (it is read, never consumed).
_NO_BODY = httpx.ByteStream(b"")


def _one_connection_each(slots: int) -> list[httpx.AsyncBaseTransport]:
    """``slots`` transports of one connection each, in place of one pool of ``slots``: each
    request of the API takes a free one for itself.

    On every request and every release httpcore's pool checks each of its connections (is it
    idle, expired, closed by the server: a syscall and anyio's socket attributes each time),
    and requests arriving together are handed the same idle connection and go round the pool
    again. A pool of one, for one request at a time, checks one connection, once each way.
    """
    context = httpx.create_ssl_context()  # what httpx's default transport makes, made once
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return [httpx.AsyncHTTPTransport(verify=context, limits=one) for _ in range(slots)]


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    from ._aiohttp import aiohttp_transport  # noqa: PLC0415 (the aiohttp extra is optional)

    return aiohttp_transport(limits)


def _aiohttp_wire(
    headers: Mapping[str, str], limits: httpx.Limits, timeout: httpx.Timeout, deadline: float
) -> AiohttpWire:
    from ._aiohttp import AiohttpWire  # noqa: PLC0415 (the aiohttp extra is optional)

    return AiohttpWire(
        headers=headers,
        limits=limits,
        timeout=timeout,
        deadline=deadline,
        max_bytes=MAX_RESPONSE_BYTES,
    )


def _attempt_seconds(timeout: httpx.Timeout) -> float:
    """Seconds one attempt may take in all: ``connect + read``, unbounded if either is."""
    if timeout.connect is None or timeout.read is None:
        return math.inf
    return timeout.connect + timeout.read
