"""The ``aiohttp`` extra: httpx-aiohttp's transport, with its errors told apart as httpx would.

Imported only for ``AsyncVSRClient(transport="aiohttp")``. httpx-aiohttp maps every aiohttp
connection error, a server hanging up mid-answer included, to ``httpx.ConnectTimeout``, which
says the request never left, and lets others (a malformed answer) out unmapped. A billed create
is retried only when the request never left, so the difference matters: here a connection that
could not be made is a ``ConnectError``, a timeout keeps its kind, and anything else that went
wrong on the wire is a ``ReadError`` or ``RemoteProtocolError``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import httpx

try:
    import aiohttp
    from httpx_aiohttp import AiohttpTransport
except ImportError as error:
    raise ImportError(
        "transport='aiohttp' needs the aiohttp extra: pip install 'vsr-async[aiohttp]'"
    ) from error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


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


def _from_aiohttp(exc: Exception) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):  # no connection: nothing was sent
        return httpx.ConnectError(message)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)  # an answer that is not HTTP, say
