"""`Session`: the headers every API request carries, the caller's ``http_client`` or our own,
the whole attempt's deadline, the bound on an answer's body, and the open/closed state. (The
transports it picks are tested in `test_transport.py`, the rate budget in `test_rate.py`, and
hostile servers against its deadline and bound in `test_hostile.py`.)"""

from __future__ import annotations

import math
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _helpers import BASE, MODEL, SECRET, VIDEO, Script, make_client, task_reply

from vsr_async import AsyncVSRClient, ResponseValidationError, Task, TaskStatus
from vsr_async._config import MAX_RESPONSE_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_env")]

TASK = b'{"id": "task-1", "status": "processing"}'


# Headers, and the caller's http_client.


async def test_get_task_request() -> None:
    """A query is GET {base}/v1/result/{id} with the Bearer key, JSON accept, our agent."""
    script = Script(task_reply("processing"))
    task = await make_client(script).get_task("task-1")
    assert task == Task(id="task-1", status=TaskStatus.PROCESSING)
    (request,) = script.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/v1/result/task-1"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"vsr-async/{version('vsr-async')}"
    assert request.content == b""


async def test_a_polls_request_is_the_one_httpx_builds() -> None:
    """Our own client builds a poll's GET from headers merged in advance: the same headers, in
    the same order, the same body and timeout as ``httpx.Request`` builds for it."""
    async with AsyncVSRClient(SECRET, base_url=BASE) as client:
        session = client._session
        url = session.task_url("task-1")
        ours = session._build_request("GET", url, None)
        http = session._http
        extensions = {"timeout": http.timeout.as_dict()}
        theirs = httpx.Request("GET", url, headers=http.headers, extensions=extensions)
        assert ours.headers.raw == theirs.headers.raw
        assert (ours.method, ours.url, ours.content) == (theirs.method, theirs.url, b"")
        assert ours.extensions == theirs.extensions


async def test_timeout_through_a_callers_http_client() -> None:
    """A timeout given to us rides on each request through the caller's client; without one,
    the caller's client keeps its own."""
    script = Script()
    await make_client(script, timeout=4.5).get_task("task-1")
    assert script.requests[0].extensions["timeout"] == {
        "connect": 4.5,
        "read": 4.5,
        "write": 4.5,
        "pool": 4.5,
    }
    script = Script()
    await make_client(script).get_task("task-1")
    assert script.requests[0].extensions["timeout"] == httpx.Timeout(5.0).as_dict()


async def test_callers_event_hooks_run() -> None:
    """The caller's http_client hooks see our requests."""
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.method)

    http = httpx.AsyncClient(
        transport=httpx.MockTransport(Script()), event_hooks={"request": [hook]}
    )
    await AsyncVSRClient(SECRET, base_url=BASE, http_client=http).get_task("task-1")
    assert seen == ["GET"]


# One attempt's deadline, and the bound on its answer.


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        pytest.param(None, 40.0, id="default"),
        pytest.param(3.0, 6.0, id="seconds"),
        pytest.param(httpx.Timeout(30.0, connect=2.0), 32.0, id="connect-and-read"),
        pytest.param(httpx.Timeout(None), math.inf, id="none"),
        pytest.param(httpx.Timeout(5.0, read=None), math.inf, id="no-read-timeout"),
        pytest.param(httpx.Timeout(5.0, connect=None), math.inf, id="no-connect-timeout"),
    ],
)
def test_attempt_deadline_is_connect_plus_read(
    timeout: httpx.Timeout | float | None, seconds: float
) -> None:
    """The documented rule: connect + read, no bound when either part has none."""
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    assert AsyncVSRClient(SECRET, **options)._session.attempt_timeout == seconds


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("size", "refused"), [(MAX_RESPONSE_BYTES, False), (MAX_RESPONSE_BYTES + 1, True)]
)
async def test_bound_is_exact(size: int, refused: bool, chunked: bool) -> None:
    """A task padded to exactly MAX_RESPONSE_BYTES is read; one byte more is refused."""
    content = TASK + b" " * (size - len(TASK))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(content), 65536):
            yield content[i : i + 65536]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks() if chunked else content)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = AsyncVSRClient(SECRET, base_url="https://api.example.test", http_client=http)
    if refused:
        with pytest.raises(ResponseValidationError, match=str(MAX_RESPONSE_BYTES)):
            await client.get_task("task-1")
    else:
        assert (await client.get_task("task-1")).id == "task-1"


# Open, closed, and whose http client is closed.


async def test_callers_http_client_is_left_open() -> None:
    """aclose() never closes an http_client the caller passed in."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(Script()))
    async with AsyncVSRClient(SECRET, base_url=BASE, http_client=http):
        pass
    assert not http.is_closed
    response = await http.get("https://elsewhere.example.com/")
    assert response.status_code == 200
    await http.aclose()


async def test_owned_http_client_is_closed() -> None:
    """The http client the library created is closed by aclose()."""
    client = AsyncVSRClient(SECRET)
    http = client._session._http
    assert not http.is_closed
    await client.aclose()
    assert http.is_closed


async def test_aclose_twice_is_fine() -> None:
    """aclose() is idempotent."""
    client = AsyncVSRClient(SECRET)
    await client.aclose()
    await client.aclose()
    assert repr(client).endswith("closed>")


async def test_use_after_close_is_refused() -> None:
    """Every call on a closed client raises RuntimeError and sends nothing."""
    script = Script()
    client = make_client(script)
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_task("task-1")
    with pytest.raises(RuntimeError, match="closed"):
        await client.create_task(VIDEO, model=MODEL)
    with pytest.raises(RuntimeError, match="closed"):
        await client.wait("task-1")
    with pytest.raises(RuntimeError, match="closed"):
        client.watch(["task-1"])
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass
    assert script.calls == 0
