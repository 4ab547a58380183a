"""How requests leave: our own client's polls go straight to its transport, a caller's
``http_client`` keeps ``send()``, and ``transport="aiohttp"`` swaps in the `aiohttp` extra's
transport on asyncio. Everything runs against the emulator on a real loopback socket."""

from __future__ import annotations

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
    APITimeoutError,
    AsyncVSRClient,
    Model,
    TaskStatus,
)
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
    """Under transport="aiohttp" the same httpx client creates, queries, waits and watches."""
    needs_aiohttp()
    from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415 (the extra may be absent)

    async with serving(transport="aiohttp", max_connections=3) as (emulator, client):
        assert isinstance(client._session._transport, AiohttpTransport)
        assert isinstance(client._session._http._transport, AiohttpTransport)
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
    received = 0

    async def answer(stream: anyio.abc.SocketStream) -> None:
        nonlocal received
        async with stream:
            await stream.receive()
            received += 1
            if reply:
                await stream.send(reply)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        base_url = f"http://127.0.0.1:{port}"
        async with AsyncVSRClient("sk-test", base_url=base_url, transport="aiohttp") as client:
            with pytest.raises(APIConnectionError) as caught:
                await client.create_task(VIDEO, model=MODEL)
        tg.cancel_scope.cancel()
    assert isinstance(caught.value.__cause__, cause)
    assert received == 1


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
