"""Hostile servers: trickling, silent, huge, chunked-huge, revoking the key mid-watch, and any
answer at all. Real servers are tiny ASGI apps on a loopback socket; the property-based tests
drive the client's real calls through `httpx.MockTransport`."""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import json
import math
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsr_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncVSRClient,
    AuthenticationError,
    Model,
    ResponseValidationError,
    ServerError,
    Task,
    TaskStatus,
    VSRError,
)
from vsr_async._config import MAX_RESPONSE_BYTES
from vsr_async._errors import parse_retry_after
from vsr_async.testing import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio

SECRET = "sk-sentinel-5b0e1c7a9d2f4e63"
PREFIX = "/api"
TASK = b'{"id": "task-1", "status": "processing"}'
MODEL = Model.SUPER_RESOLUTION_1080P_LOWFPS
#: Short timeouts: each attempt may take connect + read = 1 s in all. Each part is long
#: enough that a busy machine's slow turns neither trip the read timeout between two bytes of
#: a trickle (20 ms apart) nor the connect timeout: only the whole attempt's deadline ends it.
SHORT = httpx.Timeout(0.5)
#: Timeouts that no test here waits for.
LONG = httpx.Timeout(5.0)

Message = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


# Tiny servers.


#: The path of the request an `App` handler is answering.
PATH: contextvars.ContextVar[str] = contextvars.ContextVar("PATH")


class App:
    """An ASGI app answering every request with ``handler(send, n)`` (``n`` counts requests
    from 1); it notices when the client hangs up before the answer is complete."""

    def __init__(self, handler: Callable[[Callable[[Message], Awaitable[None]], int], Any]) -> None:
        self.handler = handler
        self.requests = 0
        self.hung_up = 0  # requests whose client left before the whole answer was sent
        self.sent = 0  # body bytes handed to the server

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        PATH.set(scope["path"])

        async def counting_send(message: Message) -> None:
            self.sent += len(message.get("body", b""))
            await send(message)

        async with anyio.create_task_group() as tg:

            async def notice_hang_up() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.hung_up += 1
                tg.cancel_scope.cancel()

            tg.start_soon(notice_hang_up)
            await self.handler(counting_send, self.requests)
            tg.cancel_scope.cancel()


def start(status: int, *headers: tuple[bytes, bytes]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(content: bytes, *, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": content, "more_body": more}


def length(n: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(n).encode())


async def answer(send: Any, status: int = 200, content: bytes = TASK) -> None:
    await send(start(status, length(len(content))))
    await send(body(content))


async def ok(send: Any, _: int = 0) -> None:
    """The task, at once."""
    await answer(send)


async def trickle(send: Any, _: int = 0) -> None:
    """A task, one byte every 20 ms: no single read waits long, the whole takes 20 s."""
    content = TASK + b" " * 1000
    await send(start(200, length(len(content))))
    for byte in content:
        await send(body(bytes([byte]), more=True))
        await anyio.sleep(0.02)


async def silent(send: Any, _: int = 0) -> None:
    """Accepts the request, never answers."""
    await anyio.sleep_forever()


def huge_length(status: int) -> Callable[[Any, int], Awaitable[None]]:
    """Announces a body over the bound, then sends nothing: reading it would hang."""

    async def handler(send: Any, _: int) -> None:
        await send(start(status, length(MAX_RESPONSE_BYTES + 1)))
        await anyio.sleep_forever()

    return handler


def endless(status: int) -> Callable[[Any, int], Awaitable[None]]:
    """A chunked body (no Content-Length) that never ends."""

    async def handler(send: Any, _: int) -> None:
        await send(start(status))
        chunk = b"<html>" + b"x" * 65530
        while True:
            await send(body(chunk, more=True))
            await anyio.lowlevel.checkpoint()

    return handler


@contextlib.asynccontextmanager
async def serving(app: App, **options: Any) -> AsyncIterator[AsyncVSRClient]:
    """``app`` on a loopback socket, and a client of it."""
    async with (
        EmulatorServer(app) as server,  # type: ignore[arg-type]
        AsyncVSRClient(SECRET, base_url=server.url + PREFIX, **options) as client,
    ):
        yield client


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for the server side to catch up with what the client did (in milliseconds; the
    deadline is a guard against a hang)."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (the server's counters have no event)
            await anyio.sleep(0.01)


def pool_is_free(client: AsyncVSRClient) -> bool:
    """No connection is left taken: the client's pool's, nor those of the API's slots."""
    session = client._session
    transports = [session._http._transport, *session._slots]
    assert all(isinstance(t, httpx.AsyncHTTPTransport) for t in transports)
    return all(
        c.is_idle() or c.is_closed()
        for t in transports
        for c in t._pool.connections  # type: ignore[attr-defined]
    )


# A slow or silent server cannot hold a call past the timeouts.


async def test_trickling_answer_times_out_at_connect_plus_read() -> None:
    """A server sending a byte every 20 ms never trips the 0.5 s read timeout, but the
    attempt ends at connect + read = 1 s with APITimeoutError (the deadline's, not the read
    timeout's), and hangs up on it."""
    app = App(trickle)  # 20 s of trickle
    async with serving(app, timeout=SHORT, max_retries=0) as client:
        begun = time.monotonic()
        with anyio.fail_after(30), pytest.raises(APITimeoutError, match=r"no whole answer in 1 s"):
            await client.get_task("task-1")
        elapsed = time.monotonic() - begun
        await until(lambda: app.hung_up == 1)
        assert pool_is_free(client)
    assert elapsed >= 1.0


async def test_silent_server_times_out() -> None:
    """A server that accepts and never answers gives APITimeoutError at the read timeout
    (0.5 s), well before the attempt's deadline (connect + read = 10.5 s)."""
    app = App(silent)
    async with serving(app, timeout=httpx.Timeout(0.5, connect=10.0), max_retries=0) as client:
        begun = time.monotonic()
        with anyio.fail_after(30), pytest.raises(APITimeoutError, match="ReadTimeout"):
            await client.get_task("task-1")
        assert time.monotonic() - begun >= 0.5


async def test_deadline_is_retried_like_any_timeout(fast_backoff: None) -> None:
    """The whole-attempt deadline is transient: a query tries again, max_retries times."""
    app = App(trickle)
    async with serving(app, timeout=SHORT, max_retries=2) as client:
        with anyio.fail_after(60), pytest.raises(APITimeoutError, match="no whole answer"):
            await client.get_task("task-1")
    assert app.requests == 3


async def test_create_is_not_retried_after_the_deadline(fast_backoff: None) -> None:
    """A create cut off by the deadline may have been billed: it is never sent again."""
    app = App(trickle)
    async with serving(app, timeout=SHORT, max_retries=3) as client:
        with anyio.fail_after(60), pytest.raises(APITimeoutError, match="no whole answer"):
            await client.create_task("https://videos.example.com/in.mp4", model=MODEL)
    assert app.requests == 1


@pytest.mark.parametrize(
    ("ours", "theirs", "deadline"),
    [
        pytest.param(None, SHORT, 1.0, id="callers-timeout"),
        pytest.param(httpx.Timeout(0.75, connect=0.5), LONG, 1.25, id="ours-wins"),
    ],
)
async def test_deadline_through_a_callers_http_client(
    ours: httpx.Timeout | None, theirs: httpx.Timeout, deadline: float
) -> None:
    """With the caller's http_client, its timeout sets the deadline unless ours was given:
    the error names the deadline that ended the attempt (LONG's would be 10 s)."""
    app = App(trickle)
    options: dict[str, Any] = {} if ours is None else {"timeout": ours}
    async with (
        EmulatorServer(app) as server,  # type: ignore[arg-type]
        httpx.AsyncClient(timeout=theirs) as http,
        AsyncVSRClient(
            SECRET, base_url=server.url + PREFIX, http_client=http, max_retries=0, **options
        ) as client,
    ):
        begun = time.monotonic()
        with (
            anyio.fail_after(30),
            pytest.raises(APITimeoutError, match=rf"no whole answer in {deadline:g} s"),
        ):
            await client.get_task("task-1")
        elapsed = time.monotonic() - begun
    assert elapsed >= deadline


async def test_wait_outlasts_a_trickling_poll(fast_backoff: None) -> None:
    """wait() is not held by a poll that trickles: the poll is cut off, and the next finds
    the task completed."""

    async def handler(send: Any, n: int) -> None:
        if n == 1:
            await trickle(send)
        else:
            await answer(send, content=b'{"id": "task-1", "status": "completed"}')

    async with serving(App(handler), timeout=SHORT) as client:
        with anyio.fail_after(30):
            task = await client.wait("task-1", interval=0.05)
    assert task.status is TaskStatus.COMPLETED


async def test_watch_outlasts_trickling_polls(fast_backoff: None) -> None:
    """Every task's first poll trickles; each is cut off and retried, and the watch ends."""
    ids = [f"task-{i}" for i in range(5)]

    async def handler(send: Any, n: int) -> None:
        if n <= len(ids):
            await trickle(send)
        else:
            task_id = PATH.get().rpartition("/")[2]
            await answer(send, content=json.dumps({"id": task_id, "status": "completed"}).encode())

    app = App(handler)
    async with serving(app, timeout=SHORT) as client:
        with anyio.fail_after(30):
            async with client.watch(ids, interval=0.05) as watcher:
                finals = [t async for t in watcher if t.is_final]
        await until(lambda: app.hung_up >= len(ids))
    assert sorted(t.task_id for t in finals) == ids
    assert all(t.error is None for t in finals)


async def test_cancelled_call_closes_its_connection() -> None:
    """A call cancelled mid-answer leaves no connection busy: the server sees it hang up."""
    app = App(trickle)
    async with serving(app, timeout=LONG) as client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(client.get_task, "task-1")
                await until(lambda: app.sent > 0)  # the answer has begun (it takes 20 s)
                group.cancel_scope.cancel()
        await until(lambda: app.hung_up == 1)
        assert pool_is_free(client)
    assert app.requests == 1


# Answers over the bound are refused without being read whole.


async def test_huge_content_length_is_refused_unread() -> None:
    """A 200 announcing more than MAX_RESPONSE_BYTES is refused at once, naming the bound,
    and its connection closed (reading it would hang: the server sends nothing more)."""
    app = App(huge_length(200))
    async with serving(app, timeout=LONG, max_retries=0) as client:
        with anyio.fail_after(30), pytest.raises(ResponseValidationError) as info:
            await client.get_task("task-1")
        await until(lambda: app.hung_up == 1)
        assert pool_is_free(client)
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in str(info.value)


async def test_endless_chunked_answer_stops_at_the_bound() -> None:
    """A chunked 200 that never ends is read up to the bound only, then hung up on."""
    app = App(endless(200))
    async with serving(app, timeout=LONG, max_retries=0) as client:
        with anyio.fail_after(30), pytest.raises(ResponseValidationError) as info:
            await client.get_task("task-1")
        await until(lambda: app.hung_up == 1)
        assert pool_is_free(client)
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in str(info.value)
    assert info.value.snippet.startswith("<html>xxx")
    assert app.sent < 64 * MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    ("anyio_backend", "transport"),
    [("asyncio", "httpx"), ("trio", "httpx"), ("asyncio", "aiohttp")],
)
async def test_a_body_longer_than_its_content_length_is_read_to_the_length(
    transport: str,
) -> None:
    """A server sending more than its ``Content-Length`` (here without end) does not make a
    poll read on: a poll's fast read takes what the transport yields, and each transport
    shipped frames the body by the length (httpx's reads the task; aiohttp's refuses the
    bytes beyond as a protocol error). A raw socket: an HTTP server would not send it."""
    if transport == "aiohttp":
        pytest.importorskip("aiohttp")
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % len(TASK)
    junk = b"x" * 65536
    sent = 0

    async def lie(stream: anyio.abc.SocketStream) -> None:
        nonlocal sent
        async with stream:
            await stream.receive()
            await stream.send(head + TASK)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                while sent < 64 * MAX_RESPONSE_BYTES:  # a guard: the client stops reading
                    await stream.send(junk)
                    sent += len(junk)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, lie)
        base_url = f"http://127.0.0.1:{port}"
        options: dict[str, Any] = {"timeout": LONG, "max_retries": 0, "transport": transport}
        async with AsyncVSRClient(SECRET, base_url=base_url, **options) as client:
            with anyio.fail_after(30):
                outcome = await outcome_of(client.get_task("task-1"))
        tg.cancel_scope.cancel()
    if transport == "httpx":  # h11 ends the body at the length
        assert outcome == Task(id="task-1", status=TaskStatus.PROCESSING)
    else:  # aiohttp's parser takes the rest for an answer nobody asked for
        assert isinstance(outcome, APIConnectionError), outcome
        assert "Bad status line" in str(outcome)
    assert sent < 64 * MAX_RESPONSE_BYTES  # the client hung up; the guard never ended it


@pytest.mark.parametrize("handler", [huge_length, endless], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("status", "error"), [(401, AuthenticationError), (503, ServerError), (418, APIStatusError)]
)
async def test_huge_error_answer_keeps_its_status(
    handler: Callable[[int], Any], status: int, error: type[APIStatusError]
) -> None:
    """An error status with a body over the bound still raises its own class, without the
    body (the message falls back to the reason phrase)."""
    app = App(handler(status))
    async with serving(app, timeout=LONG, max_retries=0) as client:
        with anyio.fail_after(30), pytest.raises(APIStatusError) as info:
            await client.get_task("task-1")
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.body is None
    assert info.value.message == httpx.codes.get_reason_phrase(status)


async def test_refused_answers_release_their_connection() -> None:
    """Refused, timed-out and error answers all give their connection back: with a pool of
    one, answers of every kind in turn never wait for a connection."""
    handlers = [ok, huge_length(200), endless(200), huge_length(500), trickle, ok]
    outcomes: list[object] = []

    async def handler(send: Any, n: int) -> None:
        await handlers[(n - 1) % len(handlers)](send, n)

    async with serving(
        App(handler), timeout=httpx.Timeout(0.5, pool=0.05), max_retries=0, max_connections=1
    ) as client:
        for _ in handlers:
            outcomes.append(await outcome_of(client.get_task("task-1")))
            assert pool_is_free(client)
    assert [type(outcome) for outcome in outcomes] == [
        Task,
        ResponseValidationError,
        ResponseValidationError,
        ServerError,
        APITimeoutError,
        Task,
    ]
    assert "no whole answer" in str(outcomes[4])  # the deadline's, not the pool's timeout


# A revoked key ends a watch promptly, without hammering the server.


async def test_revoked_key_ends_a_watch_of_a_thousand_tasks() -> None:
    """When the key stops working mid-watch of 1000 tasks, the watch raises
    AuthenticationError at once: only the polls already in flight (at most max_concurrency)
    meet the 401, the client sends at most those beyond the good ones, not the other 960
    tasks' polls, and nothing after."""
    ids = [f"task-{i}" for i in range(1000)]
    good = 30
    unauthorized = 0

    async def handler(send: Any, n: int) -> None:
        nonlocal unauthorized
        if n <= good:
            await answer(send)
        else:
            unauthorized += 1
            await answer(send, 401, b'{"message": "key revoked"}')

    async def watch_all(client: AsyncVSRClient) -> None:
        async with client.watch(ids, interval=60) as watcher:
            async for _ in watcher:
                pass

    sent: list[float] = []

    async def record(_: httpx.Request) -> None:
        sent.append(time.monotonic())

    app = App(handler)
    async with serving(app, timeout=LONG) as client:
        client._session._http.event_hooks = {"request": [record], "response": []}
        with anyio.fail_after(60), pytest.raises(AuthenticationError):
            await watch_all(client)
        ended = time.monotonic()
        await anyio.sleep(0.2)  # time for anything still on its way to arrive
    assert 1 <= unauthorized <= client.max_connections
    assert app.requests <= len(sent) <= good + client.max_connections
    assert all(at <= ended for at in sent)


# Any answer at all gives a Task or a VSRError.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
task_like = st.fixed_dictionaries(
    {"id": st.text(max_size=8) | st.integers()},
    optional={
        "status": st.sampled_from(["queued", "Processing", "COMPLETED", "failed", "paused"])
        | json_values,
        "created": json_values,
        "actualDuration": json_values,
        "error": json_values,
    },
)


#: Text that often holds the key, as a server echoing it would send it.
echoed_text = st.text(max_size=20) | st.builds(f"{{}}{SECRET}{{}}".format, st.text(), st.text())
echoing_json = st.recursive(
    st.none() | st.integers() | echoed_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(echoed_text, inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    task_like.map(lambda v: json.dumps(v).encode()),
    echoing_json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda a, b: a + SECRET.encode() + b, st.binary(), st.binary()),
)
http_dates = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 (hypothesis takes naive bounds)
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(timezone.utc),
).map(lambda d: format_datetime(d, usegmt=True))
retry_afters = st.one_of(
    st.integers().map(str),
    st.floats().map(str),
    http_dates,
    st.sampled_from(["", "-1", "1e999", "nan", "Wed, 32 Oct 2015 07:28:00 GMT", "soon"]),
    st.text(max_size=40),
)
header_values = st.one_of(
    st.binary(max_size=40),
    retry_afters.map(lambda v: v.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"identity", b"gzip, x-unknown"]),
    st.sampled_from([b"application/json", b"text/html; charset=utf-8", b"application/json; x"]),
    st.integers(min_value=-5, max_value=10**20).map(lambda n: str(n).encode()),
)
header_names = st.sampled_from(
    [
        b"content-type",
        b"retry-after",
        b"x-request-id",
        b"content-encoding",
        b"content-length",
        b"Retry-After",
        b"x-other",
    ]
)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)
statuses = st.integers(min_value=100, max_value=599)


def any_answer(status: int, content: bytes, pairs: Headers, compress: bool) -> httpx.Response:
    if compress:
        content = gzip.compress(content)
        pairs = [*pairs, (b"content-encoding", b"gzip")]
    return httpx.Response(status, headers=pairs, content=content)


def assert_task_or_vsr_error(status: int, outcome: object) -> None:
    if 200 <= status < 300:
        assert isinstance(outcome, (Task, ResponseValidationError)), repr(outcome)
    else:
        assert isinstance(outcome, VSRError), repr(outcome)
    assert SECRET not in repr(outcome)


async def outcome_of(call: Awaitable[Task]) -> object:
    try:
        return await call
    except VSRError as exc:
        return exc


hypothesis_settings = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@hypothesis_settings
@given(statuses, bodies, headers, st.booleans())
async def test_any_answer_gives_a_task_or_a_vsr_error(
    status: int, content: bytes, pairs: Headers, compress: bool
) -> None:
    """Whatever status, body and headers come back, get_task, a watch's poll and
    create_task return a Task or raise a VSRError (for a 2xx: ResponseValidationError), and
    none quotes the key, even from a body that echoes it."""

    def handler(request: httpx.Request) -> httpx.Response:
        return any_answer(status, content, pairs, compress)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = AsyncVSRClient(
        SECRET, base_url="https://api.example.test", http_client=http, max_retries=0
    )
    for call in (
        lambda: client.get_task("task-1"),
        lambda: client._tasks.fetch("task-1"),
        lambda: client.create_task("https://videos.example.com/in.mp4", model=MODEL),
    ):
        assert_task_or_vsr_error(status, await outcome_of(call()))


@hypothesis_settings
@given(
    st.integers(min_value=100, max_value=599),
    bodies,
    headers,
)
def test_any_error_answer_builds_a_status_error(
    status: int, content: bytes, pairs: Headers
) -> None:
    """from_response builds an APIStatusError for any answer, whose message and body never
    hold the key, even when the server echoes it."""
    request = httpx.Request(
        "GET", "https://api.example.test/v1/result/t", headers={"Authorization": f"Bearer {SECRET}"}
    )
    try:
        response = httpx.Response(status, headers=pairs, content=content, request=request)
    except httpx.DecodingError:
        return  # (a broken Content-Encoding fails already in httpx, before us)
    error = APIStatusError.from_response(response)
    assert isinstance(error, APIStatusError)
    assert error.status_code == status
    assert SECRET not in repr(error.body)
    assert SECRET not in str(error)
    assert error.retry_after is None or (
        math.isfinite(error.retry_after) and error.retry_after >= 0
    )


@hypothesis_settings
@given(retry_afters)
def test_any_retry_after_is_none_or_a_finite_delay(value: str) -> None:
    """parse_retry_after never raises: None, or a finite number of seconds, never negative."""
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


# The same deadlines on transport="aiohttp" (asyncio only), whose requests are aiohttp's own.


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiohttp_trickling_answer_times_out_at_connect_plus_read(fast_backoff: None) -> None:
    """On the aiohttp transport too, a trickle ends at connect + read = 1 s with the
    deadline's APITimeoutError, the connection is hung up, and a create it cut off is never
    sent again (it may have been billed)."""
    pytest.importorskip("aiohttp")
    app = App(trickle)
    options: dict[str, Any] = {"timeout": SHORT, "max_retries": 3, "transport": "aiohttp"}
    async with serving(app, **options) as client:
        begun = time.monotonic()
        with anyio.fail_after(30), pytest.raises(APITimeoutError, match=r"no whole answer in 1 s"):
            await client.create_task("https://videos.example.com/in.mp4", model=MODEL)
        elapsed = time.monotonic() - begun
        await until(lambda: app.hung_up == 1)
    assert elapsed >= 1.0
    assert app.requests == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiohttp_silent_server_times_out_at_the_read_timeout() -> None:
    """On the aiohttp transport, a silent server gives the read timeout's APITimeoutError
    (0.5 s), well before the attempt's deadline (10.5 s)."""
    pytest.importorskip("aiohttp")
    app = App(silent)
    timeout = httpx.Timeout(0.5, connect=10.0)
    async with serving(app, timeout=timeout, max_retries=0, transport="aiohttp") as client:
        begun = time.monotonic()
        with anyio.fail_after(30), pytest.raises(APITimeoutError, match="ReadTimeout"):
            await client.get_task("task-1")
        assert time.monotonic() - begun >= 0.5
