"""`AsyncVSRClient.wait`: one task to its end, over a real loopback socket to the emulator, and
through scripted answers (``httpx.MockTransport``)."""

from __future__ import annotations

import gc
import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from _helpers import (
    BASE,
    KEY,
    SECRET,
    Answer,
    Proxy,
    Script,
    json_answer,
    make_client,
    record_sends,
    reply,
    request_driven,
    serve,
    still_polling,
    task_reply,
)

from vsr_async import (
    APIStatusError,
    AsyncVSRClient,
    AuthenticationError,
    PermissionDeniedError,
    ResponseValidationError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    WaitTimeoutError,
)
from vsr_async.testing import Emulator, Faults, Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

#: In requests answered, for `request_driven` emulators: seen queued, processing, completed.
QUICK = Timeline.completed(queued=2, processing=8, actual_duration=42.5)
STUCK = Timeline(((0.0, "queued"), (0.05, "processing")))


# Over a loopback socket, to the emulator.


async def test_wait_returns_the_completed_task() -> None:
    """wait() polls until the task completes and returns its final snapshot."""
    emulator = request_driven()
    task_id = emulator.add_task(QUICK)
    async with serve(emulator) as client:
        with anyio.fail_after(10):
            task = await client.wait(task_id, interval=0.02)
    assert task.id == task_id
    assert task.status is TaskStatus.COMPLETED
    assert task.is_terminal
    assert task.actual_duration == 42.5
    assert task.video_url is not None
    assert task.video_url.endswith(".mp4")
    assert len(emulator.polls(task_id)) >= 2
    assert still_polling(client) == []


async def test_wait_raises_task_failed_error_carrying_the_task() -> None:
    """A failed task raises TaskFailedError carrying the failed snapshot and its error."""
    emulator = Emulator()
    task_id = emulator.add_task(Timeline.failed(queued=0.05, processing=0.05, error="bad codec"))
    async with serve(emulator) as client:
        with pytest.raises(TaskFailedError) as info, anyio.fail_after(10):
            await client.wait(task_id, interval=0.02)
    task = info.value.task
    assert task.id == task_id
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.message == "bad codec"
    assert "bad codec" in str(info.value)


async def test_wait_returns_the_failed_task_when_told_not_to_raise() -> None:
    """raise_on_failure=False returns the failed task instead of raising."""
    emulator = Emulator()
    task_id = emulator.add_task(Timeline.failed(queued=0.05, processing=0.05))
    async with serve(emulator) as client:
        with anyio.fail_after(10):
            task = await client.wait(task_id, interval=0.02, raise_on_failure=False)
    assert task.status is TaskStatus.FAILED
    assert task.error is not None


async def test_wait_timeout_carries_the_last_task_seen() -> None:
    """Past `timeout`, wait() raises WaitTimeoutError (also a TimeoutError) carrying the last
    snapshot seen, and stops polling."""
    emulator = request_driven()
    task_id = emulator.add_task(Timeline(((0.0, "queued"), (1.0, "processing"))))  # in requests
    async with serve(emulator) as client:
        sent = record_sends(client)
        start = time.monotonic()
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait(task_id, interval=0.03, timeout=0.4)
        elapsed = time.monotonic() - start
        ended = time.monotonic()
        await anyio.sleep(0.2)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == task_id
    assert info.value.timeout == 0.4
    assert info.value.task is not None
    assert info.value.task.status is TaskStatus.PROCESSING
    assert 0.4 <= elapsed < 0.4 + 2.5  # (an honest margin for a busy machine)
    assert all(at <= ended for at in sent)
    assert still_polling(client) == []


async def test_wait_timeout_is_kept_when_the_server_is_slow() -> None:
    """The deadline holds even when an answer takes longer than the whole timeout: the poll
    in flight is abandoned, and the error says no task was seen."""
    emulator = Emulator(faults=Faults(latency=3.0))
    task_id = emulator.add_task(STUCK)
    async with serve(emulator) as client:
        transport = client._session._http._transport
        assert isinstance(transport, httpx.AsyncHTTPTransport)
        start = time.monotonic()
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait(task_id, interval=0.03, timeout=0.3)
        elapsed = time.monotonic() - start
        assert all(c.is_idle() or c.is_closed() for c in transport._pool.connections)
    assert info.value.task is None
    assert 0.3 <= elapsed < 2.8  # the 3 s answer was not waited for


async def test_wait_timeout_none_waits_until_done() -> None:
    """timeout=None is accepted and means no deadline."""
    emulator = request_driven()
    task_id = emulator.add_task(QUICK)
    async with serve(emulator) as client:
        with anyio.fail_after(10):
            task = await client.wait(task_id, interval=0.02, timeout=None)
    assert task.status is TaskStatus.COMPLETED


async def test_outer_cancellation_is_not_a_wait_timeout() -> None:
    """Cancelling the caller's scope cancels wait() cleanly: it is not turned into a
    WaitTimeoutError, and nothing keeps polling."""
    emulator = Emulator()
    task_id = emulator.add_task(STUCK)
    async with serve(emulator) as client:
        sent = record_sends(client)
        with anyio.move_on_after(0.3) as scope:
            await client.wait(task_id, interval=0.03, timeout=30)
        left = time.monotonic()
        await anyio.sleep(0.2)
    assert scope.cancelled_caught
    assert sent
    assert all(at <= left for at in sent)
    assert still_polling(client) == []


async def test_wait_unknown_id_raises_not_found() -> None:
    """An ID the server does not know raises TaskNotFoundError after one poll."""
    emulator = Emulator()
    async with serve(emulator) as client:
        with pytest.raises(TaskNotFoundError) as info, anyio.fail_after(10):
            await client.wait("no-such-task", interval=0.02)
    assert info.value.status_code == 404
    assert len(emulator.polls("no-such-task")) == 1


async def test_wait_rides_out_transient_failures(fast_backoff: None) -> None:
    """5xx and 429 answers are retried until the task completes."""
    emulator = request_driven(
        seed=2, faults=Faults(error_rate=0.3, rate_limit_rate=0.1, retry_after=0.02)
    )
    task_id = emulator.add_task(QUICK)
    async with serve(emulator) as client:
        with anyio.fail_after(20):
            task = await client.wait(task_id, interval=0.02)
    assert task.status is TaskStatus.COMPLETED
    assert emulator.stats.faults


async def test_wait_gives_up_on_unreadable_answers(fast_backoff: None) -> None:
    """Answers that are never a task end the wait with ResponseValidationError."""
    emulator = request_driven()
    task_id = emulator.add_task(QUICK)
    html: Answer = (200, [(b"content-type", b"text/html")], b"<html>maintenance</html>")
    async with serve(Proxy(emulator, lambda _, __: html)) as client:
        with pytest.raises(ResponseValidationError) as info, anyio.fail_after(10):
            await client.wait(task_id, interval=0.02)
    assert "maintenance" in info.value.snippet


async def test_wait_wrong_key_raises_authentication_error() -> None:
    """A key the server refuses raises AuthenticationError itself (no ExceptionGroup), once."""
    emulator = request_driven(api_key="another-key")
    task_id = emulator.add_task(QUICK)
    async with serve(emulator) as client:
        with pytest.raises(AuthenticationError) as info, anyio.fail_after(10):
            await client.wait(task_id, interval=0.02)
    assert type(info.value) is AuthenticationError
    assert KEY not in str(info.value)
    assert len(emulator.requests) == 1


async def test_wait_forbidden_raises_permission_denied() -> None:
    """A 403 raises PermissionDeniedError itself."""
    emulator = request_driven()
    task_id = emulator.add_task(QUICK)
    forbidden = json_answer(403, {"message": "Forbidden"})
    async with serve(Proxy(emulator, lambda _, __: forbidden)) as client:
        with pytest.raises(PermissionDeniedError) as info, anyio.fail_after(10):
            await client.wait(task_id, interval=0.02)
    assert type(info.value) is PermissionDeniedError


@pytest.mark.parametrize(
    ("task_id", "options", "error"),
    [
        ("", {}, ValueError),
        (" ", {}, ValueError),
        ("a/b", {}, ValueError),
        ("..", {}, ValueError),
        (42, {}, TypeError),
        (None, {}, TypeError),
        ("task_1", {"interval": 0}, ValueError),
        ("task_1", {"interval": -1.0}, ValueError),
        ("task_1", {"interval": math.nan}, ValueError),
        ("task_1", {"interval": math.inf}, ValueError),
        ("task_1", {"interval": "5"}, TypeError),
        ("task_1", {"interval": True}, TypeError),
        ("task_1", {"timeout": 0}, ValueError),
        ("task_1", {"timeout": -5}, ValueError),
        ("task_1", {"timeout": math.nan}, ValueError),
        ("task_1", {"timeout": "60"}, TypeError),
    ],
)
async def test_wait_invalid_arguments_raise_before_any_request(
    task_id: object, options: dict[str, object], error: type[Exception]
) -> None:
    """Invalid IDs and options raise ValueError or TypeError before anything is sent."""
    sent: list[httpx.Request] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(sent.append))
    async with http, AsyncVSRClient(KEY, http_client=http) as client:
        with pytest.raises(error):
            await client.wait(task_id, **options)  # type: ignore[arg-type]
    assert sent == []


# Through scripted answers.


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect garbage after the test, so that a leaked resource warns in the test that leaked
    it (warnings are errors) rather than in whichever test happens to run next."""
    yield
    gc.collect()


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_polls_until_the_task_completes() -> None:
    """wait() polls until the task completes and returns that snapshot."""
    script = Script(
        task_reply("queued"),
        task_reply("processing"),
        task_reply("completed", video_url="https://cdn.example.com/out.mp4"),
    )
    task = await make_client(script).wait("task-1", interval=0.01, timeout=5)
    assert task.status is TaskStatus.COMPLETED
    assert task.video_url == "https://cdn.example.com/out.mp4"
    assert script.calls == 3


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_raises_when_the_task_fails() -> None:
    """A failed task raises TaskFailedError carrying it, unless told to return it."""
    script = Script(task_reply("failed", error="corrupt input"))
    client = make_client(script)
    with pytest.raises(TaskFailedError, match="corrupt input") as info:
        await client.wait("task-1", interval=0.01, timeout=5)
    assert info.value.task.status is TaskStatus.FAILED
    task = await client.wait("task-1", interval=0.01, timeout=5, raise_on_failure=False)
    assert task.status is TaskStatus.FAILED
    assert str(task.error) == "corrupt input"


@pytest.mark.usefixtures("collect_garbage")
@pytest.mark.parametrize(
    ("status", "error"), [(404, TaskNotFoundError), (401, AuthenticationError)]
)
async def test_wait_raises_final_errors(status: int, error: type[APIStatusError]) -> None:
    """wait() raises a final API error (unknown task, bad key) instead of polling on."""
    script = Script(reply(status, {"message": "nope"}))
    with pytest.raises(error):
        await make_client(script).wait("task-1", interval=0.01, timeout=5)
    assert script.calls == 1


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_timeout_carries_the_last_task() -> None:
    """Past its timeout, wait() raises WaitTimeoutError with the last snapshot seen."""
    script = Script(task_reply("processing"))
    with pytest.raises(WaitTimeoutError) as info:
        await make_client(script).wait("task-1", interval=0.01, timeout=0.1)
    assert info.value.task_id == "task-1"
    assert info.value.timeout == 0.1
    assert info.value.task is not None
    assert info.value.task.status is TaskStatus.PROCESSING
    assert script.calls >= 2


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_timeout_when_never_answered() -> None:
    """A server that never answers gives WaitTimeoutError without a task, on time."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(30)
        raise AssertionError("not reached")  # pragma: no cover

    client = AsyncVSRClient(
        SECRET, base_url=BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(hang))
    )
    with anyio.fail_after(5):
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait("task-1", interval=0.01, timeout=0.05)
    assert info.value.task is None
    assert isinstance(info.value, TimeoutError)


async def test_wait_timeout_releases_the_watch() -> None:
    """A wait cut short by its timeout closes the watch's streams: nothing is left to warn."""
    script = Script(task_reply("processing"))
    with pytest.raises(WaitTimeoutError):
        await make_client(script).wait("task-1", interval=0.01, timeout=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_without_timeout() -> None:
    """``timeout=None`` (or an infinite timeout) waits as long as it takes."""
    script = Script(task_reply("processing"), task_reply("completed"))
    task = await make_client(script).wait("task-1", interval=0.01, timeout=None)
    assert task.status is TaskStatus.COMPLETED
    script = Script(task_reply("completed"))
    task = await make_client(script).wait("task-1", interval=0.01, timeout=math.inf)
    assert task.status is TaskStatus.COMPLETED


@pytest.mark.usefixtures("collect_garbage")
@pytest.mark.parametrize(
    ("bad_timeout", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
async def test_wait_timeout_is_validated(bad_timeout: Any, error: type[Exception]) -> None:
    """A wait timeout that is not a positive number is refused before any request."""
    script = Script()
    with pytest.raises(error, match="timeout"):
        await make_client(script).wait("task-1", interval=0.01, timeout=bad_timeout)
    assert script.calls == 0
