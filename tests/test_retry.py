"""`RetryPolicy` and its predicates: which failures are retried (a create only when it never
left), how many times, and how long the client sleeps in between (capped backoff with full
jitter, or the server's ``Retry-After`` up to its cap). The sleeps are recorded, not slept."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import httpx
import pytest
from _helpers import BASE, MODEL, VIDEO, Script, fail, make_client, reply, serve, task_reply

import vsr_async._retry
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
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    VSRError,
)
from vsr_async._config import DEFAULT_MAX_RETRIES, MAX_RETRY_AFTER
from vsr_async._retry import RetryPolicy, backoff_delay, is_transient
from vsr_async.testing import Emulator, Faults

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("sleeps")]


# The policy itself.


def test_is_transient() -> None:
    """Connection errors, timeouts, 408, 429 and 5xx are worth a retry; nothing else is."""
    request = httpx.Request("GET", BASE)

    def status_error(code: int) -> APIStatusError:
        return APIStatusError.from_response(httpx.Response(code, request=request))

    for code in (408, 429, 500, 502, 503, 504, 599):
        assert is_transient(status_error(code)), code
    for code in (301, 400, 401, 403, 404, 409, 422):
        assert not is_transient(status_error(code)), code
    assert is_transient(APIConnectionError("x"))
    assert is_transient(APITimeoutError("x"))
    assert not is_transient(ResponseValidationError("x", snippet=""))
    assert not is_transient(TaskFailedError(Task(id="t", status=TaskStatus.FAILED)))


def test_backoff_is_capped_exponential_with_full_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delays grow 0.5, 1, 2, 4, 8 s and stop at 8 s; jitter draws from [0, delay]."""
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    assert [backoff_delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(100) == 8.0
    monkeypatch.setattr(random, "uniform", lambda low, _high: low)
    assert backoff_delay(3) == 0.0


def test_backoff_factor_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patching BACKOFF_FACTOR (as tests do for speed) changes the delays."""
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_FACTOR", 0.001)
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    assert backoff_delay(2) == pytest.approx(0.004)


def test_retry_delay() -> None:
    """Retry-After wins over backoff, up to MAX_RETRY_AFTER; beyond it the error is raised."""
    assert RetryPolicy().delay(ServerError("x", status_code=503, retry_after=3.0), 5) == 3.0
    assert 0 <= RetryPolicy().delay(ServerError("x", status_code=503), 0) <= 0.5
    assert 0 <= RetryPolicy().delay(APIConnectionError("x"), 1) <= 1.0
    too_long = RateLimitError("x", status_code=429, retry_after=MAX_RETRY_AFTER + 1)
    with pytest.raises(RateLimitError) as info:
        RetryPolicy().delay(too_long, 0)
    assert info.value is too_long


# Retries of a query.


TRANSIENT = [
    pytest.param(reply(500), ServerError, id="500"),
    pytest.param(reply(502, content=b"<html>bad gateway</html>"), ServerError, id="502"),
    pytest.param(reply(503), ServerError, id="503"),
    pytest.param(reply(429), RateLimitError, id="429"),
    pytest.param(reply(408), APIStatusError, id="408"),
    pytest.param(fail(httpx.ConnectError), APIConnectionError, id="connect-error"),
    pytest.param(fail(httpx.ReadError), APIConnectionError, id="read-error"),
    pytest.param(fail(httpx.RemoteProtocolError), APIConnectionError, id="protocol-error"),
    pytest.param(fail(httpx.ConnectTimeout), APITimeoutError, id="connect-timeout"),
    pytest.param(fail(httpx.ReadTimeout), APITimeoutError, id="read-timeout"),
    pytest.param(fail(httpx.PoolTimeout), APITimeoutError, id="pool-timeout"),
]


@pytest.mark.parametrize(("failure", "error"), TRANSIENT)
async def test_get_task_retries_transient_failures(
    failure: Callable[[httpx.Request], httpx.Response],
    error: type[VSRError],
    sleeps: list[float],
) -> None:
    """A query that fails transiently is sent again, with backoff, until it succeeds."""
    script = Script(failure, failure, task_reply("completed"))
    task = await make_client(script).get_task("task-1")
    assert task.status is TaskStatus.COMPLETED
    assert script.calls == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5
    assert 0 <= sleeps[1] <= 1.0


@pytest.mark.parametrize(("failure", "error"), TRANSIENT)
async def test_get_task_gives_up_after_max_retries(
    failure: Callable[[httpx.Request], httpx.Response],
    error: type[VSRError],
    sleeps: list[float],
) -> None:
    """A query failing every time is sent 1 + max_retries times, then raises the last error."""
    script = Script(failure)
    with pytest.raises(error) as info:
        await make_client(script, max_retries=2).get_task("task-1")
    assert type(info.value) is error
    assert script.calls == 3
    assert len(sleeps) == 2
    if isinstance(info.value, APIConnectionError):
        assert isinstance(info.value.__cause__, httpx.TransportError)


async def test_get_task_default_retries(sleeps: list[float]) -> None:
    """By default a failing query is tried DEFAULT_MAX_RETRIES more times."""
    script = Script(reply(503))
    with pytest.raises(ServerError):
        await make_client(script).get_task("task-1")
    assert script.calls == DEFAULT_MAX_RETRIES + 1
    assert len(sleeps) == DEFAULT_MAX_RETRIES


async def test_get_task_without_retries(sleeps: list[float]) -> None:
    """max_retries=0 sends a query exactly once."""
    script = Script(fail(httpx.ConnectError))
    with pytest.raises(APIConnectionError):
        await make_client(script, max_retries=0).get_task("task-1")
    assert script.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, TaskNotFoundError),
        (409, APIStatusError),
        (422, APIStatusError),
        (301, APIStatusError),
    ],
)
async def test_get_task_never_retries_client_errors(
    status: int, error: type[APIStatusError], sleeps: list[float]
) -> None:
    """A 4xx other than 408/429 (and a redirect) is final: raised after one request."""
    script = Script(reply(status, {"message": "nope"}))
    with pytest.raises(error) as info:
        await make_client(script).get_task("task-1")
    assert type(info.value) is error
    assert info.value.status_code == status
    assert script.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "retry_after", "delay"),
    [(429, "2", 2.0), (503, "0.5", 0.5), (429, "0", 0.0), (429, str(MAX_RETRY_AFTER), 60.0)],
)
async def test_get_task_honours_retry_after(
    status: int, retry_after: str, delay: float, sleeps: list[float]
) -> None:
    """The server's Retry-After (up to MAX_RETRY_AFTER) is the delay before the retry."""
    script = Script(reply(status, headers={"Retry-After": retry_after}), task_reply("queued"))
    await make_client(script).get_task("task-1")
    assert script.calls == 2
    assert sleeps == [delay]


async def test_get_task_honours_retry_after_date(sleeps: list[float]) -> None:
    """A Retry-After given as a past HTTP date means retry at once."""
    script = Script(
        reply(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), task_reply("queued")
    )
    await make_client(script).get_task("task-1")
    assert sleeps == [0.0]


async def test_garbage_retry_after_falls_back_to_backoff(sleeps: list[float]) -> None:
    """An unreadable Retry-After is ignored: the usual backoff applies."""
    script = Script(reply(429, headers={"Retry-After": "soon"}), task_reply("queued"))
    await make_client(script).get_task("task-1")
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 0.5


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitError), (503, ServerError)])
async def test_long_retry_after_raises_without_sleeping(
    status: int, error: type[APIStatusError], sleeps: list[float]
) -> None:
    """A Retry-After above MAX_RETRY_AFTER raises at once, carrying the server's delay."""
    script = Script(reply(status, headers={"Retry-After": str(MAX_RETRY_AFTER + 60)}))
    with pytest.raises(error) as info:
        await make_client(script).get_task("task-1")
    assert info.value.retry_after == MAX_RETRY_AFTER + 60
    assert script.calls == 1
    assert sleeps == []


async def test_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry logs a warning on "vsr_async" naming the request and the failure."""
    caplog.set_level(logging.WARNING, logger="vsr_async")
    script = Script(reply(503, {"message": "busy"}), task_reply("queued"))
    await make_client(script).get_task("task-1")
    (record,) = [r for r in caplog.records if r.name == "vsr_async"]
    assert record.levelno == logging.WARNING
    assert f"GET {BASE}/v1/result/task-1: retry 1 in" in record.getMessage()
    assert "busy" in record.getMessage()


# Retries of a create: only when the request did nothing (it never left, or a 429 refused it).


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        pytest.param(fail(httpx.ConnectError), APIConnectionError, id="connect-error"),
        pytest.param(fail(httpx.ConnectTimeout), APITimeoutError, id="connect-timeout"),
        pytest.param(fail(httpx.PoolTimeout), APITimeoutError, id="pool-timeout"),
    ],
)
async def test_create_retries_only_unsent_requests(
    failure: Callable[[httpx.Request], httpx.Response],
    error: type[VSRError],
    sleeps: list[float],
) -> None:
    """A create that never left (connect error or timeout, pool timeout) is sent again."""
    script = Script(failure, failure, reply(200, {"id": "new-1"}))
    task = await make_client(script).create_task(VIDEO, model=MODEL)
    assert task.id == "new-1"
    assert script.calls == 3
    assert len(sleeps) == 2

    script = Script(failure)
    with pytest.raises(error) as info:
        await make_client(script, max_retries=2).create_task(VIDEO, model=MODEL)
    assert type(info.value) is error
    assert script.calls == 3


@pytest.mark.parametrize(
    ("headers", "waited"),
    [({"Retry-After": "2"}, [2.0, 2.0]), ({}, None)],
    ids=["retry-after", "no-retry-after"],
)
async def test_create_retries_a_429(
    headers: dict[str, str], waited: list[float] | None, sleeps: list[float]
) -> None:
    """A 429 refused the create, so nothing was created: it is sent again after the
    server's ``Retry-After`` (else the usual backoff), as many times as ``max_retries``."""
    refused = reply(429, {"message": "slow down"}, headers=headers)
    script = Script(refused, refused, reply(200, {"id": "new-1"}))
    task = await make_client(script).create_task(VIDEO, model=MODEL)
    assert task.id == "new-1"
    assert script.calls == 3
    assert len(sleeps) == 2
    if waited is not None:
        assert sleeps == waited

    script = Script(refused)
    with pytest.raises(RateLimitError):
        await make_client(script, max_retries=2).create_task(VIDEO, model=MODEL)
    assert script.calls == 3


async def test_create_does_not_wait_out_a_long_retry_after(sleeps: list[float]) -> None:
    """A 429 whose ``Retry-After`` is past the cap (a quota window) is raised at once, with
    ``retry_after`` set, as for any request."""
    late = str(int(MAX_RETRY_AFTER) + 60)
    script = Script(reply(429, headers={"Retry-After": late}), reply(200, {"id": "new-1"}))
    with pytest.raises(RateLimitError) as info:
        await make_client(script).create_task(VIDEO, model=MODEL)
    assert info.value.retry_after == float(late)
    assert script.calls == 1
    assert sleeps == []


async def test_creates_against_a_rate_limiting_server_all_succeed_once() -> None:
    """Over a real socket, an emulator that answers 30% of requests 429: 30 creates all
    succeed, and the emulator made exactly 30 tasks (a refused create made none)."""
    emulator = Emulator(seed=3, faults=Faults(rate_limit_rate=0.3, retry_after=0.0))
    async with serve(emulator, max_retries=20) as client:
        tasks = [await client.create_task(VIDEO, model=MODEL) for _ in range(30)]
    refused = [r for r in emulator.requests if r.method == "POST" and r.fault == "429"]
    assert refused  # (the seed makes some)
    assert len({task.id for task in tasks}) == 30
    assert sorted(emulator.task_ids) == sorted(task.id for task in tasks)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        pytest.param(fail(httpx.ReadTimeout), APITimeoutError, id="read-timeout"),
        pytest.param(fail(httpx.WriteTimeout), APITimeoutError, id="write-timeout"),
        pytest.param(fail(httpx.ReadError), APIConnectionError, id="read-error"),
        pytest.param(fail(httpx.WriteError), APIConnectionError, id="write-error"),
        pytest.param(fail(httpx.RemoteProtocolError), APIConnectionError, id="protocol-error"),
        pytest.param(reply(500), ServerError, id="500"),
        pytest.param(reply(502), ServerError, id="502"),
        pytest.param(reply(503, headers={"Retry-After": "0"}), ServerError, id="503-retry-after"),
        pytest.param(reply(408), APIStatusError, id="408"),
        pytest.param(reply(400, {"message": "bad model"}), BadRequestError, id="400"),
    ],
)
async def test_create_never_retries_once_sent(
    failure: Callable[[httpx.Request], httpx.Response],
    error: type[VSRError],
    sleeps: list[float],
) -> None:
    """A create that may have reached the server is never sent twice (it is billed)."""
    script = Script(failure, reply(200, {"id": "duplicate"}))
    with pytest.raises(error) as info:
        await make_client(script).create_task(VIDEO, model=MODEL)
    assert type(info.value) is error
    assert script.calls == 1
    assert sleeps == []
