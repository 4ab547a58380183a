"""The exceptions the library raises. Catch `VSRError` for all of them::

    VSRError
    ├── APIConnectionError          no answer: connect error, dropped connection
    │   └── APITimeoutError         no answer in time
    ├── APIStatusError              the server answered with an error status
    │   ├── BadRequestError         400
    │   ├── AuthenticationError     401
    │   ├── PermissionDeniedError   403
    │   ├── TaskNotFoundError       404
    │   ├── RateLimitError          429 (and a Retry-After too long to wait)
    │   └── ServerError             5xx
    ├── ResponseValidationError     a success answer that is not a task (or over 1 MiB)
    ├── TaskFailedError             the task ended ``failed``
    ├── WaitTimeoutError            the deadline passed before the task ended
    └── DownloadError               a result could not be saved
        ├── ResultExpiredError      its URL expired or was refused (403, 404, 410)
        └── ResultNotReadyError     the task is still queued or processing

Misuse (an invalid task ID, a closed client) raises `ValueError` or `RuntimeError`, outside
this tree. No message here ever contains the API key: errors keep the method, the URL and the
status, never the request's headers. Every error pickles (for multiprocessing) with its message
and attributes.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from ._config import SNIPPET_LENGTH

if TYPE_CHECKING:
    from ._models import Task


class VSRError(Exception):
    """The root of every error the API or a task can cause."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle calls cls(*args) by default, which our constructors refuse: rebuild without
        # __init__ instead, then restore the attributes (args keeps the message).
        return _unpickle, (type(self), self.args), self.__dict__


def _unpickle(cls: type[VSRError], args: tuple[Any, ...]) -> VSRError:
    error = cls.__new__(cls)
    error.args = args  # (OSError's __new__, under WaitTimeoutError, leaves args to __init__)
    return error


class APIConnectionError(VSRError):
    """The request got no answer: the connection failed or was dropped."""


class APITimeoutError(APIConnectionError):
    """The request got no answer in time."""


class APIStatusError(VSRError):
    """The server answered with an error status.

    Attributes:
        status_code: The HTTP status.
        message: The server's ``message``, or the reason phrase.
        method: The request's method, and ``url`` its URL.
        request_id: The ``x-request-id`` header, if the server sent one: quote it to support.
        retry_after: The server's ``Retry-After`` in seconds, if any.
        body: The parsed JSON body, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        prefix = f"{method} {url} returned" if method and url else "HTTP"
        super().__init__(f"{prefix} {status_code}: {message}")
        self.message = message
        self.method = method
        self.url = url
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIStatusError:
        """Build the right subclass for an error response, parsing its body once."""
        request = response.request
        token = request.headers.get("authorization", "").partition(" ")[2]
        body = _json_or_none(response)
        if token:  # some servers echo the credential back
            try:
                body = masked(body, token)
            except RecursionError:  # nested too deep to search: drop it rather than leak it
                body = None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            # (HTTP/1.1 servers may send an empty reason phrase: hypercorn does.)
            phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
            message = phrase or "error"
        message = mask(message, token)
        return status_error_class(response.status_code)(
            message,
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            body=body,
            method=request.method,
            url=str(request.url),
        )


class BadRequestError(APIStatusError):
    """400: the request was invalid (an unknown model, a bad video URL)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class TaskNotFoundError(APIStatusError):
    """404: no task has this ID."""


class RateLimitError(APIStatusError):
    """429: too many requests. ``retry_after`` says how long the server asked us to wait."""


class ServerError(APIStatusError):
    """5xx: the server failed. Queries retry these; creates never do (it could duplicate)."""


class ResponseValidationError(VSRError):
    """A success answer that is not a task: not JSON, an HTML page, missing or mistyped fields.

    Attributes:
        reason: Why the answer was refused.
        snippet: The start of the body, for the log.
    """

    def __init__(self, reason: str, *, snippet: str) -> None:
        super().__init__(f"{reason}; body starts: {snippet!r}")
        self.reason = reason
        self.snippet = snippet

    @classmethod
    def from_body(cls, reason: str, content: bytes, *, secret: str = "") -> ResponseValidationError:
        """Build one for ``content``, quoting its start, with ``secret`` (the API key a server
        may echo) masked in both."""
        snippet = mask(content.decode("utf-8", "replace"), secret)
        return cls(mask(reason, secret), snippet=snippet[:SNIPPET_LENGTH])


class TaskFailedError(VSRError):
    """The task ended ``failed``. ``task`` is its final snapshot, ``task.error`` says why."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id!r} failed: {task.error or 'no reason given'}")
        self.task = task


class WaitTimeoutError(VSRError, TimeoutError):
    """The deadline passed before the task ended. ``task`` is the last snapshot seen, if any."""

    def __init__(self, task_id: str, timeout: float, task: Task | None) -> None:
        last = "never answered" if task is None else f"last seen {task.status}"
        super().__init__(f"task {task_id!r} did not finish within {timeout:g} s ({last})")
        self.task_id = task_id
        self.timeout = timeout
        self.task = task


#: What the API means by these statuses (a storage host means other things by some).
_API_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: TaskNotFoundError,
}


def status_error_class(status_code: int, *, from_api: bool = True) -> type[APIStatusError]:
    """The error class of an answer with this error status, from the API or (``from_api``
    false) from another host, such as a storage host serving a result."""
    if from_api and status_code in _API_ERRORS:
        return _API_ERRORS[status_code]
    if status_code == 429:
        return RateLimitError
    return ServerError if status_code >= 500 else APIStatusError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


#: What an error quotes instead of the API key.
MASK = "[secure]"


def mask(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced: for what an error or a log line quotes to a person,
    never for the data a caller gets."""
    return text.replace(secret, MASK) if secret else text


def masked(value: Any, secret: str) -> Any:
    """Parsed JSON ``value`` with ``secret`` replaced in every string, keys included."""
    if isinstance(value, str):
        return mask(value, secret)
    if isinstance(value, list):
        return [masked(item, secret) for item in value]
    if isinstance(value, dict):
        return {masked(key, secret): masked(item, secret) for key, item in value.items()}
    return value


class DownloadError(VSRError):
    """A result could not be saved: the transfer kept breaking off, or was sent somewhere
    refused (a non-http(s) redirect, too many redirects)."""


class ResultExpiredError(DownloadError):
    """The result URL expired or was refused (403, 404 or 410 from the storage host).

    Attributes:
        url: The URL, without its query (signed URLs carry their signature there).
        status_code: The HTTP status.
    """

    def __init__(self, url: str, status_code: int) -> None:
        super().__init__(f"the result URL {url} has expired or was refused ({status_code})")
        self.url = url
        self.status_code = status_code


class ResultNotReadyError(DownloadError):
    """The task has no result yet: it is still queued or processing. ``task`` is the snapshot."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id!r} has no result yet: it is {task.status}")
        self.task = task
