"""How requests leave: our own client's polls go straight to its transport, a caller's
``http_client`` keeps ``send()``, and ``transport="aiohttp"`` swaps in the `aiohttp` extra's
transport on asyncio. Everything runs against the emulator on a real loopback socket."""

from __future__ import annotations

import gzip
import logging
import socket
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
import pytest

from vsr_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncVSRClient,
    Model,
    RateLimitError,
    ResponseValidationError,
    TaskNotFoundError,
    TaskStatus,
)
from vsr_async._config import MAX_RESPONSE_BYTES
from vsr_async.testing import Emulator, EmulatorServer, Faults, Timeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

MODEL = Model.SUPER_RESOLUTION_1080P_LOWFPS
VIDEO = "https://example.com/in.mp4"
#: Tasks that end quickly, so that waits and watches finish within a test.
QUICK = Timeline.completed(queued=0.05, processing=0.1)
DONE = Timeline([(0.0, "completed")])

#: For the tests of the aiohttp transport: asyncio only, and skipped without the extra.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def needs_aiohttp() -> None:
    pytest.importorskip("httpx_aiohttp")


@asynccontextmanager
async def serving(
    emulator: Emulator | None = None, **options: Any
) -> AsyncIterator[tuple[Emulator, AsyncVSRClient]]:
    emulator = emulator or Emulator(seed=1, timeline=QUICK)
    async with (
        EmulatorServer(emulator) as server,
        AsyncVSRClient(emulator.api_key, base_url=server.base_url, **options) as client,
    ):
        yield emulator, client


async def every_call(emulator: Emulator, client: AsyncVSRClient) -> None:
    """create_task, get_task, wait and watch all work, and each request carries the key."""
    created = await client.create_task(VIDEO, model=MODEL)
    assert (await client.get_task(created.id)).id == created.id
    assert (await client.wait(created.id, interval=0.05)).status is TaskStatus.COMPLETED
    other = emulator.add_task(QUICK)
    async with client.watch([other], interval=0.05) as watcher:
        finals = [t async for t in watcher if t.is_final]
    assert [t.status for t in finals] == [TaskStatus.COMPLETED]
    assert emulator.requests
    assert all(r.authorization == f"Bearer {emulator.api_key}" for r in emulator.requests)
    assert all(r.headers["user-agent"].startswith("vsr-async/") for r in emulator.requests)


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server on a loopback socket answering each request's first read with ``reply`` (then
    hanging up): its base URL, and what each connection sent (one read each)."""
    received: list[bytes] = []

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received.append(await stream.receive())
            if reply:
                await stream.send(reply)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        yield f"http://127.0.0.1:{port}", received
        tg.cancel_scope.cancel()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The default transport, owned or the caller's.


async def test_own_client_sends_straight_to_its_transport() -> None:
    """Our own client's calls skip AsyncClient.send() and still create, query, wait and watch."""
    async with serving() as (emulator, client):

        async def no_send(*args: Any, **kwargs: Any) -> httpx.Response:
            raise AssertionError("send() was used")

        client._session._http.send = no_send  # type: ignore[method-assign]
        await every_call(emulator, client)


async def test_concurrent_requests_do_not_contend_for_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests sent together each take a connection of their own, in a pool of one (one per
    slot of ``max_connections``): the pool assigns each once coming in and once going out,
    never again after finding the one it was handed taken, and checks one connection each
    time (a third of a poll's CPU went to those passes and checks)."""
    import httpcore  # noqa: PLC0415 (only this test looks inside httpx's transport)

    assign = httpcore.AsyncConnectionPool._assign_requests_to_connections
    passes = 0

    def counted(pool: httpcore.AsyncConnectionPool) -> list[Any]:
        nonlocal passes
        passes += 1
        return assign(pool)

    monkeypatch.setattr(httpcore.AsyncConnectionPool, "_assign_requests_to_connections", counted)
    async with serving(Emulator(seed=1, timeline=DONE), max_connections=5) as (_, client):
        task = await client.create_task(VIDEO, model=MODEL)
        passes = 0
        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(client.get_task, task.id)
        slots = client._session._slots
        assert len(slots) == 5
        assert all(len(slot._pool.connections) <= 1 for slot in slots)  # type: ignore[attr-defined]
    assert passes <= 2 * 100


async def test_own_client_after_refused_connections_still_sends() -> None:
    """A request failing inside httpx's pool lets the next ones in: none waits for it."""
    client = AsyncVSRClient("k" * 20, base_url=f"http://127.0.0.1:{closed_port()}", max_retries=0)
    async with client:
        with anyio.fail_after(30):  # (a guard: refusals come in milliseconds)
            for _ in range(3):
                with pytest.raises(APIConnectionError):
                    await client.get_task("task-1")


async def test_callers_client_keeps_send_and_its_hooks() -> None:
    """A caller's http_client goes through send(): its request and response hooks run."""
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"> {request.method}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"< {response.status_code}")

    hooks: dict[str, list[Any]] = {"request": [on_request], "response": [on_response]}
    async with httpx.AsyncClient(event_hooks=hooks) as http_client:
        async with serving(http_client=http_client) as (emulator, client):
            await every_call(emulator, client)
        assert len(seen) == 2 * len(emulator.requests)
        assert seen[:2] == ["> POST", "< 200"]


async def test_callers_hook_may_read_the_body_first() -> None:
    """A caller's response hook that reads the body (``aread()``) leaves it for us to read
    again: every call still gets its answer, on every connection of the pool."""

    async def on_response(response: httpx.Response) -> None:
        await response.aread()

    hooks: dict[str, list[Any]] = {"request": [], "response": [on_response]}
    async with (
        httpx.AsyncClient(event_hooks=hooks) as http_client,
        serving(http_client=http_client) as (emulator, client),
    ):
        await every_call(emulator, client)
        task_id = emulator.add_task(DONE)
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(client.get_task, task_id)


async def test_own_client_still_logs_each_request(caplog: pytest.LogCaptureFixture) -> None:
    """The httpx logger's "HTTP Request:" line, which send() writes, is kept without send(),
    word for word."""
    emulator = Emulator(seed=1, timeline=QUICK)
    task_id = emulator.add_task(QUICK)
    with caplog.at_level(logging.INFO, logger="httpx"):
        async with httpx.AsyncClient() as http_client, EmulatorServer(emulator) as server:
            for theirs in (None, http_client):
                async with AsyncVSRClient(
                    emulator.api_key, base_url=server.base_url, http_client=theirs
                ) as client:
                    await client.get_task(task_id)
    direct, sent = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert direct.startswith("HTTP Request: GET http://127.0.0.1:")
    assert direct == sent


async def test_unknown_transport_is_a_value_error() -> None:
    """A transport name other than "httpx" or "aiohttp" is refused at once."""
    with pytest.raises(ValueError, match="transport must be 'httpx' or 'aiohttp'"):
        AsyncVSRClient("sk-test", transport="requests")


async def test_aiohttp_transport_with_http_client_is_a_value_error() -> None:
    """transport="aiohttp" builds our own client: it cannot go with a caller's http_client."""
    async with httpx.AsyncClient() as http_client:
        with pytest.raises(ValueError, match="not http_client"):
            AsyncVSRClient("sk-test", transport="aiohttp", http_client=http_client)


def test_aiohttp_transport_without_the_extra_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the aiohttp extra, transport="aiohttp" says which pip command installs it."""
    monkeypatch.setitem(sys.modules, "httpx_aiohttp", None)
    monkeypatch.delitem(sys.modules, "vsr_async._aiohttp", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'vsr-async\[aiohttp\]'"):
        AsyncVSRClient("sk-test", transport="aiohttp")


# The aiohttp transport: asyncio only.


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_aiohttp_transport_is_refused_on_trio() -> None:
    """transport="aiohttp" made on trio is refused at once, with the way out in the message."""
    needs_aiohttp()
    with pytest.raises(RuntimeError, match="asyncio only, not trio"):
        AsyncVSRClient("sk-test", transport="aiohttp")


def test_aiohttp_transport_made_outside_a_loop_is_refused_on_trio() -> None:
    """Made before any event loop runs, it is refused at its first use on trio."""
    needs_aiohttp()
    client = AsyncVSRClient("sk-test", base_url="http://127.0.0.1:9", transport="aiohttp")

    async def use() -> None:
        with pytest.raises(RuntimeError, match="asyncio only, not trio"):
            await client.get_task("task-1")
        await client.aclose()

    anyio.run(use, backend="trio")


@asyncio_only
async def test_aiohttp_transport_serves_every_call() -> None:
    """Under transport="aiohttp" the API's requests go on aiohttp's own request and response,
    never through httpx's transport, and create, query, wait and watch."""
    needs_aiohttp()

    async with serving(transport="aiohttp", max_connections=3) as (emulator, client):

        async def no_httpx(*args: Any, **kwargs: Any) -> httpx.Response:
            raise AssertionError("httpx's transport was used")

        session = client._session
        session._http.send = no_httpx  # type: ignore[method-assign]
        session._http._transport.handle_async_request = no_httpx  # type: ignore[method-assign]
        await every_call(emulator, client)
        async with anyio.create_task_group() as tg:  # more calls at once than connections
            for task_id in [emulator.add_task(QUICK) for _ in range(20)]:
                tg.start_soon(client.get_task, task_id)


@asyncio_only
async def test_aiohttp_dropped_connection_is_a_connection_error() -> None:
    """A connection dropped mid-answer is an APIConnectionError, and a create it broke is not
    retried: the request did leave (httpx-aiohttp alone calls it a connect timeout)."""
    needs_aiohttp()
    emulator = Emulator(seed=1, timeline=QUICK, faults=Faults(drop_rate=1.0))
    async with serving(emulator, transport="aiohttp") as (_, client):
        with pytest.raises(APIConnectionError) as caught:
            await client.create_task(VIDEO, model=MODEL)
    assert isinstance(caught.value.__cause__, httpx.ReadError)
    assert len(emulator.requests) == 1


@asyncio_only
async def test_aiohttp_read_timeout_is_a_timeout() -> None:
    """The per-request read timeout reaches aiohttp: a slow answer is an APITimeoutError from
    its read timeout (0.2 s), before the whole attempt's deadline (connect + read = 10.2 s)
    and long before the answer (an hour)."""
    needs_aiohttp()
    emulator = Emulator(seed=1, timeline=QUICK, faults=Faults(latency=3600))
    timeout = httpx.Timeout(0.2, connect=10.0)
    options: dict[str, Any] = {"transport": "aiohttp", "timeout": timeout, "max_retries": 0}
    async with serving(emulator, **options) as (_, client):
        with anyio.fail_after(30), pytest.raises(APITimeoutError, match="ReadTimeout"):
            await client.get_task(emulator.add_task(QUICK))


@asyncio_only
async def test_aiohttp_refused_connection_is_a_connect_error() -> None:
    """Nobody listening is an APIConnectionError from httpx.ConnectError: never sent, so a
    create may be retried."""
    needs_aiohttp()
    base_url = f"http://127.0.0.1:{closed_port()}"
    async with AsyncVSRClient("sk-test", base_url=base_url, transport="aiohttp") as client:
        with pytest.raises(APIConnectionError) as caught:
            await client._session.send("GET", client._session.task_url("task-1"))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@asyncio_only
@pytest.mark.parametrize(
    ("reply", "cause"), [(b"", httpx.ReadError), (b"NOT HTTP\r\n\r\n", httpx.RemoteProtocolError)]
)
async def test_aiohttp_broken_answer_is_a_connection_error_and_no_retried_create(
    reply: bytes, cause: type[Exception]
) -> None:
    """A server that reads the request, then hangs up or answers garbage, gives an
    APIConnectionError, and the billed create is not sent again (httpx-aiohttp alone calls a
    hang-up a connect timeout, i.e. never sent, and lets aiohttp's error out for garbage)."""
    needs_aiohttp()
    async with (
        raw_server(reply) as (base_url, received),
        AsyncVSRClient("sk-test", base_url=base_url, transport="aiohttp") as client,
    ):
        with pytest.raises(APIConnectionError) as caught:
            await client.create_task(VIDEO, model=MODEL)
    assert isinstance(caught.value.__cause__, cause)
    assert len(received) == 1


@asyncio_only
async def test_aiohttp_transport_downloads_and_resumes(tmp_path: Path) -> None:
    """Downloads (through send(), to another path) work on the aiohttp transport, and a
    transfer cut short resumes where it stopped."""
    needs_aiohttp()
    size = 256 * 1024
    emulator = Emulator(seed=1, timeline=DONE, video_size=size, cut_after=size // 3, cuts=2)
    task_id = emulator.add_task(DONE)
    async with serving(emulator, transport="aiohttp") as (_, client):
        path = await client.download(task_id, tmp_path)
    assert path.read_bytes() == emulator.video_bytes(task_id)
    assert [r.fault for r in emulator.requests].count("cut") == 2


# The aiohttp transport's own requests: the same answers and errors as the default transport.

#: Both transports, on asyncio (the aiohttp transport runs there only).
both_transports = pytest.mark.parametrize(
    ("anyio_backend", "transport"), [("asyncio", "httpx"), ("asyncio", "aiohttp")]
)


@both_transports
async def test_a_status_error_is_the_same_on_both_transports(transport: str) -> None:
    """A 404 and a 429 (with its Retry-After) become the same errors, with the server's
    message, request ID and body, whichever transport carried them."""
    needs_aiohttp()
    emulator = Emulator(seed=1, timeline=QUICK, faults=Faults(rate_limit_rate=1.0, retry_after=7))
    async with serving(emulator, transport=transport, max_retries=0) as (_, client):
        with pytest.raises(RateLimitError) as limited:
            await client.get_task(emulator.add_task(QUICK))
        emulator.faults = Faults()
        with pytest.raises(TaskNotFoundError) as missing:
            await client.get_task("no-such-task")
    assert limited.value.retry_after == 7
    assert limited.value.status_code == 429
    error = missing.value
    assert (error.status_code, error.method) == (404, "GET")
    assert error.url.endswith("/v1/result/no-such-task")
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert isinstance(error.body, dict)
    assert str(error).endswith(f"returned 404: {error.body['message']}")


@both_transports
async def test_a_status_error_masks_an_echoed_key(transport: str) -> None:
    """A server echoing the key back in an error gets it masked, on both transports (the
    aiohttp transport's error is built from a request carrying the key too)."""
    needs_aiohttp()
    key = "sk-" + "s3cret" * 4
    body = b'{"message": "bad key ' + key.encode() + b'"}'
    reply = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with (
        raw_server(reply) as (base_url, _),
        AsyncVSRClient(key, base_url=base_url, transport=transport, max_retries=0) as client,
    ):
        with pytest.raises(APIStatusError) as caught:
            await client.get_task("task-1")
    assert caught.value.status_code == 401
    assert key not in str(caught.value)
    assert key not in repr(caught.value.body)


def answer_of(status: str, headers: list[str], body: bytes) -> bytes:
    head = "".join(f"{h}\r\n" for h in [f"HTTP/1.1 {status}", *headers])
    return head.encode() + b"\r\n" + body


#: A body one byte over the bound, chunked (no Content-Length to refuse it by).
CHUNKED_OVER = answer_of(
    "200 OK",
    ["Transfer-Encoding: chunked"],
    b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_RESPONSE_BYTES + 1, b"x" * (MAX_RESPONSE_BYTES + 1)),
)


@both_transports
@pytest.mark.parametrize(
    "reply",
    [
        answer_of("200 OK", [f"Content-Length: {MAX_RESPONSE_BYTES + 1}"], b"{}"),
        CHUNKED_OVER,
    ],
    ids=["content-length", "chunked"],
)
async def test_an_answer_over_the_bound_is_refused(transport: str, reply: bytes) -> None:
    """An answer larger than MAX_RESPONSE_BYTES is a ResponseValidationError, on both
    transports: told by its Content-Length (its body never sent here), or read one byte past
    the bound."""
    needs_aiohttp()
    async with (
        raw_server(reply) as (base_url, _),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport) as client,
    ):
        with anyio.fail_after(30), pytest.raises(ResponseValidationError, match="larger than"):
            await client.get_task("task-1")


@both_transports
async def test_an_error_status_over_the_bound_is_still_the_status_error(transport: str) -> None:
    """A 404 with a body over the bound is the TaskNotFoundError, its body dropped."""
    needs_aiohttp()
    reply = answer_of("404 Not Found", [f"Content-Length: {MAX_RESPONSE_BYTES + 1}"], b"")
    async with (
        raw_server(reply) as (base_url, _),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport) as client,
    ):
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_task("task-1")
    assert caught.value.body is None


@both_transports
async def test_a_broken_content_encoding_is_a_validation_error(transport: str) -> None:
    """A body that does not decode as its Content-Encoding says is garbage, not a dropped
    connection: a ResponseValidationError on both transports (never retried as transient)."""
    needs_aiohttp()
    reply = answer_of("200 OK", ["Content-Encoding: gzip", "Content-Length: 9"], b"not gzip!")
    async with (
        raw_server(reply) as (base_url, received),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport) as client,
    ):
        with pytest.raises(ResponseValidationError, match="could not be decoded"):
            await client.get_task("task-1")
    assert len(received) == 1


@both_transports
async def test_a_gzipped_answer_is_decoded(transport: str) -> None:
    """A gzipped answer is read decoded, on both transports."""
    needs_aiohttp()
    body = gzip.compress(b'{"hello": "world"}')
    reply = answer_of("200 OK", ["Content-Encoding: gzip", f"Content-Length: {len(body)}"], body)
    async with (
        raw_server(reply) as (base_url, _),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport) as client,
    ):
        content = await client._session.send("GET", client._session.task_url("task-1"))
    assert content == b'{"hello": "world"}'


@both_transports
async def test_a_redirect_is_not_followed(transport: str) -> None:
    """A 3xx answer is an APIStatusError: neither transport follows it (with the key)."""
    needs_aiohttp()
    reply = answer_of(
        "302 Found", ["Location: http://127.0.0.1:9/elsewhere", "Content-Length: 0"], b""
    )
    async with (
        raw_server(reply) as (base_url, received),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport, max_retries=0) as client,
    ):
        with pytest.raises(APIStatusError) as caught:
            await client.get_task("task-1")
    assert caught.value.status_code == 302
    assert len(received) == 1


@both_transports
async def test_a_create_sends_the_same_request_on_both_transports(transport: str) -> None:
    """A create's request carries the key, our headers and httpx's JSON encoding (compact,
    UTF-8 as is), on either transport."""
    needs_aiohttp()
    body = b'{"code": 0, "data": {"taskId": "t-1"}}'
    reply = answer_of("200 OK", [f"Content-Length: {len(body)}"], body)
    async with (
        raw_server(reply) as (base_url, received),
        AsyncVSRClient("sk-test", base_url=base_url, transport=transport) as client,
    ):
        await client._session.send("POST", f"{base_url}/v1/x", json={"videoUrl": "é", "n": 1})
    head, _, sent = received[0].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "post /v1/x http/1.1"
    assert "authorization: bearer sk-test" in lines
    assert "content-type: application/json" in lines
    assert "accept: application/json" in lines
    assert any(line.startswith("user-agent: vsr-async/") for line in lines)
    assert sent == '{"videoUrl":"é","n":1}'.encode()


@asyncio_only
async def test_aiohttp_transport_logs_each_request(caplog: pytest.LogCaptureFixture) -> None:
    """The httpx logger's "HTTP Request:" line is kept on aiohttp's own requests, word for
    word as the default transport logs it."""
    needs_aiohttp()
    emulator = Emulator(seed=1, timeline=QUICK)
    task_id = emulator.add_task(QUICK)
    with caplog.at_level(logging.INFO, logger="httpx"):
        async with EmulatorServer(emulator) as server:
            for transport in ("httpx", "aiohttp"):
                async with AsyncVSRClient(
                    emulator.api_key, base_url=server.base_url, transport=transport
                ) as client:
                    await client.get_task(task_id)
    ours, theirs = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert ours.startswith("HTTP Request: GET http://127.0.0.1:")
    assert ours == theirs


@asyncio_only
async def test_aiohttp_transport_ignores_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transport="aiohttp" goes straight to the API with HTTP_PROXY set, as it always has
    (httpx mounts no proxy over a transport it is given): documented, and kept so."""
    needs_aiohttp()
    async with raw_server(b"") as (proxy_url, received):
        for name in ("ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with serving(transport="aiohttp") as (emulator, client):
            await client.get_task(emulator.add_task(QUICK))
    assert len(emulator.requests) == 1
    assert received == []
