from __future__ import annotations

import pickle
import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from _helpers import URL, error_for

import vsr_async
from vsr_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    Task,
    TaskError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    VSRError,
    WaitTimeoutError,
    _errors,
)
from vsr_async._errors import (
    DownloadError,
    ResultExpiredError,
    ResultNotReadyError,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, TaskNotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (599, ServerError),
        (301, APIStatusError),
        (402, APIStatusError),
        (408, APIStatusError),
        (409, APIStatusError),
        (418, APIStatusError),
        (422, APIStatusError),
    ],
)
def test_status_maps_to_its_class(status: int, error_class: type[APIStatusError]) -> None:
    """Each error status builds its documented class; other statuses the base class."""
    error = error_for(status, json={"message": "nope"})
    assert type(error) is error_class
    assert error.status_code == status


def test_message_names_request_status_and_server_message() -> None:
    """The message says which request failed, with what status, and the server's words."""
    error = error_for(400, json={"message": "videoUrl is not reachable"}, method="POST")
    assert str(error) == f"POST {URL} returned 400: videoUrl is not reachable"


def test_message_attribute_is_the_servers_message() -> None:
    """``message`` is documented as the server's ``message`` (or the reason phrase)."""
    error = error_for(400, json={"message": "videoUrl is not reachable"})
    assert error.message == "videoUrl is not reachable"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(502, b"<html>Bad Gateway</html>", "Bad Gateway", id="html"),
        pytest.param(500, b"", "Internal Server Error", id="empty"),
        pytest.param(404, b'{"error": "gone"}', "Not Found", id="no-message"),
        pytest.param(400, b'{"message": ""}', "Bad Request", id="empty-message"),
        pytest.param(400, b'{"message": 12}', "Bad Request", id="number-message"),
        pytest.param(400, b'["message"]', "Bad Request", id="list-body"),
        pytest.param(403, b"\xff\xfe not utf-8", "Forbidden", id="not-utf8"),
        pytest.param(599, b"", "error", id="no-reason-phrase"),
    ],
)
def test_message_falls_back_to_the_reason_phrase(status: int, body: bytes, expected: str) -> None:
    """Without a usable ``{"message"}`` the reason phrase (or "error") stands in."""
    error = error_for(status, content=body)
    assert str(error).endswith(f"returned {status}: {expected}")


def test_body_is_parsed_once_and_kept() -> None:
    """``body`` is the parsed JSON body, or ``None`` when the body is not JSON."""
    payload = {"message": "slow down", "limit": 10}
    assert error_for(429, json=payload).body == payload
    assert error_for(500, json=[1, 2]).body == [1, 2]
    assert error_for(502, content=b"<html>").body is None


def test_deeply_nested_error_body_still_builds_the_error() -> None:
    """A pathological (too deeply nested) error body still gives an APIStatusError."""
    body = b"[" * 100_000 + b"]" * 100_000
    error = error_for(502, content=body)
    assert type(error) is ServerError
    assert error.body is None


def test_request_id_header() -> None:
    """The ``x-request-id`` header, in any case, is kept for support; absent gives ``None``."""
    assert error_for(500, headers={"X-Request-ID": "req-77"}).request_id == "req-77"
    assert error_for(500).request_id is None


def test_retry_after_is_kept_on_any_status() -> None:
    """``Retry-After`` is parsed on every error status, not only on 429."""
    assert error_for(429, headers={"Retry-After": "7"}).retry_after == 7.0
    assert error_for(503, headers={"Retry-After": "2.5"}).retry_after == 2.5
    assert error_for(429).retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("0", 0.0),
        ("0.25", 0.25),
        (" 3 ", 3.0),
        ("-3", 0.0),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("1e400", None),
        ("soon", None),
        ("5 seconds", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),  # no such day
        ("Wed, 21 Oct 2015 07:28:00 -0000", None),  # a date with no time zone
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds are taken as they are (negative → 0), garbage and non-finite give ``None``."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    """An HTTP date gives the seconds from now until then."""
    when = (datetime.now(timezone.utc) + timedelta(seconds=30)).replace(microsecond=0)
    before = datetime.now(timezone.utc)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    after = datetime.now(timezone.utc)
    assert seconds is not None
    # From the moment it was parsed, whenever that was: bracketed by the clock around it.
    assert seconds >= (when - after).total_seconds()
    assert seconds <= (when - before).total_seconds()


def _documented_tree() -> dict[str, str]:
    """The parent of each class, read from the tree drawn in `_errors`' docstring."""
    assert _errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in _errors.__doc__.splitlines():
        match = re.match(r"^( {4})((?:[│ ]   )*)(?:├── |└── )?([A-Za-z]+Error)\b", line)
        if not match:
            continue
        depth = len(match.group(2)) // 4 + (1 if "── " in line else 0)
        name = match.group(3)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_exception_tree_matches_the_docstring() -> None:
    """The classes subclass exactly as the tree in `_errors`' docstring draws them."""
    parents = _documented_tree()
    assert parents == {
        "APIConnectionError": "VSRError",
        "APITimeoutError": "APIConnectionError",
        "APIStatusError": "VSRError",
        "BadRequestError": "APIStatusError",
        "AuthenticationError": "APIStatusError",
        "PermissionDeniedError": "APIStatusError",
        "TaskNotFoundError": "APIStatusError",
        "RateLimitError": "APIStatusError",
        "ServerError": "APIStatusError",
        "ResponseValidationError": "VSRError",
        "TaskFailedError": "VSRError",
        "WaitTimeoutError": "VSRError",
        "DownloadError": "VSRError",
        "ResultExpiredError": "DownloadError",
        "ResultNotReadyError": "DownloadError",
    }
    for name, parent in parents.items():
        cls = getattr(vsr_async, name)
        assert cls.__bases__[0] is getattr(vsr_async, parent), name


def test_exception_tree_shape() -> None:
    """Transport and status errors are separate branches; the root is a plain Exception."""
    assert VSRError.__bases__ == (Exception,)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert not issubclass(APIConnectionError, APIStatusError)
    assert not issubclass(APIStatusError, APIConnectionError)
    for cls in (ResponseValidationError, TaskFailedError, WaitTimeoutError, DownloadError):
        assert not issubclass(cls, (APIStatusError, APIConnectionError))
    assert issubclass(ResultExpiredError, DownloadError)
    assert issubclass(ResultNotReadyError, DownloadError)
    exported = [
        getattr(vsr_async, name)
        for name in vsr_async.__all__
        if isinstance(getattr(vsr_async, name), type)
        and issubclass(getattr(vsr_async, name), BaseException)
    ]
    assert len(exported) == 16
    assert all(issubclass(cls, VSRError) for cls in exported)


def test_wait_timeout_error_is_a_timeout_error() -> None:
    """`except TimeoutError` catches a wait's deadline, as well as `except VSRError`."""
    error = WaitTimeoutError("t", 2.0, None)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, VSRError)
    with pytest.raises(TimeoutError):
        raise error


def test_wait_timeout_error_message_and_attributes() -> None:
    """The deadline's error names the task, the timeout and the last status seen."""
    never = WaitTimeoutError("t-1", 2.0, None)
    assert str(never) == "task 't-1' did not finish within 2 s (never answered)"
    assert (never.task_id, never.timeout, never.task) == ("t-1", 2.0, None)
    task = Task(id="t-1", status=TaskStatus.PROCESSING)
    seen = WaitTimeoutError("t-1", 90.5, task)
    assert str(seen) == "task 't-1' did not finish within 90.5 s (last seen processing)"
    assert seen.task is task


def test_task_failed_error_message_and_task() -> None:
    """A failed task's error carries the task and quotes its reason."""
    task = Task(id="t-1", status=TaskStatus.FAILED, error=TaskError("corrupt input", code="E7"))
    error = TaskFailedError(task)
    assert error.task is task
    assert str(error) == "task 't-1' failed: corrupt input (E7)"
    bare = TaskFailedError(Task(id="t-2", status=TaskStatus.FAILED))
    assert str(bare) == "task 't-2' failed: no reason given"


def test_response_validation_error_quotes_the_body() -> None:
    """The snippet is the body's start, decoded leniently, and appears in the message."""
    error = ResponseValidationError.from_body("the answer is not JSON", b"<html>\xff")
    assert error.snippet == "<html>\ufffd"
    assert str(error) == "the answer is not JSON; body starts: '<html>\ufffd'"


def _one_of_each_error() -> list[vsr_async.VSRError]:
    task = Task(id="t-1", status=TaskStatus.FAILED, error=TaskError("corrupt input", code="E7"))
    headers = {"X-Request-ID": "req-7", "Retry-After": "3"}
    return [
        VSRError("root"),
        APIConnectionError("GET u failed: ConnectError"),
        APITimeoutError("GET u timed out"),
        APIStatusError("teapot", status_code=418, body=[1, {"a": None}], method="GET", url=URL),
        *(error_for(s, json={"message": "no"}, headers=headers) for s in (400, 401, 403, 404)),
        error_for(429, headers=headers),
        error_for(503, content=b"<html>"),
        ResponseValidationError.from_body("the answer is not JSON", b"<html>\xff"),
        TaskFailedError(task),
        WaitTimeoutError("t-1", 2.5, task),
        WaitTimeoutError("t-2", 60.0, None),
        DownloadError("the transfer kept breaking off"),
        ResultExpiredError("https://files.example.com/t-1.mp4", 403),
        ResultNotReadyError(Task(id="t-1", status=TaskStatus.PROCESSING)),
    ]


def _subclasses(cls: type[VSRError]) -> set[type[VSRError]]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


@pytest.mark.parametrize("protocol", [0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_every_error_pickles_with_its_message_and_attributes(protocol: int) -> None:
    """Each error class (keyword-only constructors included) survives pickle, as
    multiprocessing needs: same class, message, args and attributes."""
    errors = _one_of_each_error()
    in_tree = {c for c in _subclasses(VSRError) if c.__module__ == "vsr_async._errors"}
    assert {type(e) for e in errors} == in_tree  # a new class needs a sample here
    for error in errors:
        loaded = pickle.loads(pickle.dumps(error, protocol=protocol))  # noqa: S301 (our own)
        assert type(loaded) is type(error)
        assert str(loaded) == str(error)
        assert loaded.args == error.args
        assert vars(loaded) == vars(error)
