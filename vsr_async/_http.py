"""Wire helpers: what every request does with httpx, written once.

Reading a bounded body, and turning httpx's exceptions into ours, for API calls and downloads
alike. (Statuses become errors in `APIStatusError.from_response`, which parses the body once.)

The bottom section holds every use this package makes of httpx's internals, and nothing else
does: ``tests/test_http.py`` checks each against the httpx installed, so an upgrade that
breaks one fails there, by name, instead of somewhere deep in a poll.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
import httpx

from ._config import MAX_RESPONSE_BYTES
from ._errors import APIConnectionError, APITimeoutError, ResponseValidationError, VSRError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def error_from_httpx(exc: httpx.HTTPError, what: str) -> VSRError:
    """Our error for httpx's ``exc``, raised by ``what`` (``"GET https://..."``, no secrets)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.DecodingError):  # a broken Content-Encoding: garbage, not a task
        return ResponseValidationError(f"the answer could not be decoded ({exc})", snippet="")
    return APIConnectionError(f"{what} failed: {type(exc).__name__}: {exc}")


async def read_bounded(response: httpx.Response) -> tuple[bytes, bool]:
    """The start of a streamed response's decoded body, up to `MAX_RESPONSE_BYTES`, and
    whether that is all of it. A ``Content-Length`` over the bound is not read at all."""
    length = response.headers.get("content-length", "").lstrip("0")  # maybe garbage, or several
    huge = len(length) > len(str(MAX_RESPONSE_BYTES))  # (too many digits for int() even)
    if length.isascii() and length.isdigit() and (huge or int(length) > MAX_RESPONSE_BYTES):
        return b"", False
    stream = response.stream
    if (
        length.isascii()
        and length.isdigit()
        and "content-encoding" not in response.headers
        and not response.is_stream_consumed  # (a caller's response hook may have read it)
        and isinstance(stream, httpx.AsyncByteStream)
    ):
        # A body as sent, of a length within the bound (the transport reads no further):
        # read straight from the transport's stream, without `aiter_bytes`'s layers of
        # generators (decoder, chunkers, `aiter_raw`), a tenth of a poll's CPU.
        response.is_stream_consumed = True
        content = b"".join([chunk async for chunk in stream])
        return content[:MAX_RESPONSE_BYTES], len(content) <= MAX_RESPONSE_BYTES
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


def shown_url(url: str) -> str:
    """``url`` without its query, for messages: signed URLs carry their signature there."""
    return url.partition("?")[0]


#: Headers describing the body as it came over the wire, not the decoded one we keep.
_WIRE_HEADERS = (b"content-encoding", b"content-length", b"transfer-encoding")


def answer_response(
    request: httpx.Request,
    status: int,
    reason: str,
    headers: Mapping[str, str],
    content: bytes,
) -> httpx.Response:
    """A closed `httpx.Response` around an answer read without httpx (aiohttp's): what
    `APIStatusError.from_response` reads. Built only for an error status, which is rare."""
    wire = {name.decode() for name in _WIRE_HEADERS}
    return httpx.Response(
        status,
        headers=[(k, v) for k, v in headers.items() if k.lower() not in wire],
        content=content,
        request=request,
        extensions={"reason_phrase": reason.encode("latin-1", "replace")},
    )


def with_content(response: httpx.Response, content: bytes) -> httpx.Response:
    """The closed, streamed ``response`` rebuilt around its decoded ``content``."""
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=response.request,
        extensions=response.extensions,
    )


def text_appender(url: httpx.URL) -> Callable[[str], str]:
    """`url_appender` for a sender that takes URLs as text (aiohttp's): the text of the URL
    httpx would build, without building one."""
    prefix = str(url)  # (as httpx normalises it, once)

    def appended(segment: str) -> str:
        return prefix + quote(segment, safe="")

    return appended


# -- httpx's internals: each use, and only here ------------------------------------------------

#: Where httpx's ``send()`` logs each request.
_httpx_logger = logging.getLogger("httpx")


def transport_for(client: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport ``client.send()`` would use for ``url`` (a proxy from the environment
    included): sending to it directly skips ``send()``'s per-request work."""
    return client._transport_for_url(url)


def default_transport(client: httpx.AsyncClient) -> httpx.AsyncBaseTransport:
    """The transport ``client`` was made with (``transport_for`` answers it where no mount,
    no proxy, covers the URL)."""
    return client._transport


#: The line httpx's ``send()`` logs for each request.
_SENT_LINE = 'HTTP Request: %s %s "%s %d %s"'


def log_sent(request: httpx.Request, response: httpx.Response) -> None:
    """Log the line httpx's ``send()`` logs, for a request sent to its transport directly."""
    if _httpx_logger.isEnabledFor(logging.INFO):
        _httpx_logger.info(
            _SENT_LINE,
            request.method,
            request.url,
            response.http_version,
            response.status_code,
            response.reason_phrase,
        )


def log_answered(method: str, url: str, status: int, reason: str) -> None:
    """Log the line httpx's ``send()`` logs, for a request sent without httpx (HTTP/1.1)."""
    if _httpx_logger.isEnabledFor(logging.INFO):
        _httpx_logger.info(_SENT_LINE, method, url, "HTTP/1.1", status, reason)


#: An ID with every kind of character the URL must encode, to check the fast URLs against.
_ODD_ID = "a b?#%é[]@:;=+&$,!~*'()"


def url_appender(url: httpx.URL) -> Callable[[str], httpx.URL]:
    """A function appending a segment (percent-encoded here) to ``url``'s path.

    Parsing a URL string was most of the cost of building a poll's request, so it builds on
    ``url``'s parsed parts, if the httpx installed builds URLs as this expects (checked here,
    once); else it parses.
    """

    def parsed(segment: str) -> httpx.URL:
        return httpx.URL(f"{url}{quote(segment, safe='')}")

    def built(segment: str) -> httpx.URL:
        parts = url._uri_reference  # httpx's parsed URL, a named tuple
        appended = httpx.URL.__new__(httpx.URL)
        appended._uri_reference = parts._replace(path=parts.path + quote(segment, safe=""))
        return appended

    try:
        fast, slow = built(_ODD_ID), parsed(_ODD_ID)
    except AttributeError:  # pragma: no cover (an httpx whose URLs are built otherwise)
        return parsed
    works = str(fast) == str(slow) and fast.raw_path == slow.raw_path
    return built if works else parsed  # pragma: no branch
