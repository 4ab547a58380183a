"""The ``aiohttp`` extra: aiohttp's own requests for the API, httpx-aiohttp's transport for
downloads, with aiohttp's errors told apart as httpx would.

Imported only for ``AsyncVSRClient(transport="aiohttp")``. `AiohttpWire` sends the API's
requests with aiohttp's own request and response: httpx's objects and httpx-aiohttp's
adaptation around aiohttp's were a sixth of a poll's CPU. Downloads (streamed, through the
httpx client) keep httpx-aiohttp's transport.

httpx-aiohttp maps every aiohttp connection error, a server hanging up mid-answer included, to
``httpx.ConnectTimeout``, which says the request never left, and lets others (a malformed
answer) out unmapped. A billed create is retried only when the request never left, so the
difference matters: here a connection that could not be made is a ``ConnectError``, a timeout
keeps its kind, a body that cannot be decoded is a ``DecodingError`` (as httpx's decoders
say), and anything else that went wrong on the wire is a ``ReadError`` or
``RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

try:
    import aiohttp
    from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
    from httpx_aiohttp import AiohttpTransport
except ImportError as error:
    raise ImportError(
        "transport='aiohttp' needs the aiohttp extra: pip install 'vsr-async[aiohttp]'"
    ) from error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping


class Answer(NamedTuple):
    """An answer `AiohttpWire.send` read: its body up to the bound, and whether that is all."""

    status: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive, every value of a repeated header kept
    content: bytes
    whole: bool


class AiohttpWire:
    """The API's requests over one `aiohttp.ClientSession`, its headers and timeouts set once.

    Made outside an event loop if need be: the session is opened by the first request (in the
    loop it will serve). It reads no proxy from the environment, as httpx-aiohttp's transport
    under our httpx client did not (aiohttp's ``trust_env`` would look one up per request).
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        limits: httpx.Limits,
        timeout: httpx.Timeout,
        deadline: float,
        max_bytes: int,
    ) -> None:
        self._headers = dict(headers)
        self._limits = limits
        # As httpx-aiohttp maps them: sock_connect and sock_read per connection attempt and
        # read, and aiohttp's connect (the wait for a pooled connection, then connecting) the
        # pool's. The total is the whole attempt's ``deadline``, kept by the timer aiohttp runs
        # anyway (a cancel scope around each request was a twentieth of a poll's CPU).
        self._timeout = aiohttp.ClientTimeout(
            total=None if math.isinf(deadline) else deadline,
            connect=timeout.pool,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
        )
        self._max_bytes = max_bytes
        self._ssl = httpx.create_ssl_context()  # the CAs httpx trusts (certifi, SSL_CERT_FILE)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, method: str, url: str, json: Any = None) -> Answer:
        """Send ``json`` (if not ``None``, encoded as httpx encodes it), follow no redirect,
        and read the answer's decoded body up to ``max_bytes``. aiohttp's errors become
        httpx's (see the module docstring); past the ``deadline``, a `TimeoutError`."""
        session = self._session or self._open()
        body = headers = None
        if json is not None:
            text = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = text.encode()
            headers = _JSON
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                content, whole = await _read_bounded(response, self._max_bytes)
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            raise _from_aiohttp(exc) from exc
        except asyncio.TimeoutError as exc:  # (not the builtin one on Python 3.10)
            raise TimeoutError("the attempt's deadline passed") from exc
        return Answer(response.status, response.reason or "", response.headers, content, whole)

    async def aclose(self) -> None:
        """Close the session's connections, if it was opened."""
        if self._session is not None:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),  # as httpx's transport: no cookies kept
            trust_env=False,
        )
        return self._session


_JSON = {"Content-Type": "application/json"}


async def _read_bounded(response: aiohttp.ClientResponse, bound: int) -> tuple[bytes, bool]:
    """The start of ``response``'s decoded body, up to ``bound`` bytes, and whether that is
    all of it. A ``Content-Length`` over the bound is not read at all."""
    length = response.content_length
    if length is not None and length > bound:
        return b"", False
    if length is not None and "Content-Encoding" not in response.headers:
        return await response.read(), True  # as sent: no more than its length is read
    chunks: list[bytes] = []
    size = 0
    while size <= bound:  # one byte over says it is larger
        chunk = await response.content.read(bound + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:bound], size <= bound


def aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport with a pool of ``limits.max_connections``, for asyncio only."""
    return _Transport(limits=limits)


class _Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _precise_errors():
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101 (it builds one)
        response.stream = _Stream(response.stream)
        return response


class _Stream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _precise_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        with _precise_errors():
            await self._stream.aclose()


@contextlib.contextmanager
def _precise_errors() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout as exc:
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ServerTimeoutError) or not isinstance(cause, Exception):
            raise  # a real connect (or pool) timeout: the request never left
        raise _from_aiohttp(cause) from cause
    except aiohttp.ClientError as exc:  # left unmapped by httpx-aiohttp
        raise _from_aiohttp(exc) from exc


def _from_aiohttp(exc: Exception) -> httpx.TransportError | httpx.DecodingError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # connecting, or waiting for a connection
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # no connection: nothing was sent
        return httpx.ConnectError(message)
    if _caused_by(exc, ContentEncodingError):
        return httpx.DecodingError(message)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)  # an answer that is not HTTP, say


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception it was raised from (or while handling) is a ``kind``."""
    seen = 0
    while exc is not None and seen < 10:  # (a chain that loops ends too)
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
