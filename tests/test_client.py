from __future__ import annotations

import gc
import json
import logging
import math
import random
import warnings
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute
from anyio.lowlevel import checkpoint

import vsr_async._client
import vsr_async._retry
from vsr_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncVSRClient,
    AuthenticationError,
    BadRequestError,
    Model,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    Task,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    VSRError,
    WaitTimeoutError,
)
from vsr_async._config import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    MAX_RETRY_AFTER,
)
from vsr_async._retry import asks_to_slow_down, backoff_delay, is_transient, retry_delay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from anyio.abc import SocketStream

pytestmark = pytest.mark.anyio

SECRET = "sk-sentinel-7d1f0c93e5a24b68"
BASE = "https://api.example.test/kyyReactApiServer"
VIDEO = "https://videos.example.com/in.mp4"
MODEL = Model.SUPER_RESOLUTION_1080P_LOWFPS
LOGGERS = ("vsr_async", "httpx", "httpcore")


# Helpers: scripted MockTransport answers, a recorded sleep, a loopback HTTP server.


def reply(
    status: int = 200,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    """An answer: a fresh response for each request."""
    if body is None and content is None and status == 200:
        body = {"id": "task-1", "status": "processing"}

    def answer(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return answer


def task_reply(status: str, **fields: Any) -> Callable[[httpx.Request], httpx.Response]:
    return reply(200, {"id": "task-1", "status": status, **fields})


def fail(exc_type: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    """An answer that raises a transport error, as httpx would."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return answer


class Script:
    """A MockTransport handler: answer N for request N, the last answer repeating."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = answers or (reply(),)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        index = min(len(self.requests), len(self.answers)) - 1
        return self.answers[index](request)

    @property
    def calls(self) -> int:
        return len(self.requests)


def make_client(handler: Any, **kwargs: Any) -> AsyncVSRClient:
    kwargs.setdefault("base_url", BASE)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AsyncVSRClient(SECRET, http_client=http, **kwargs)


class _RecordingAnyio:
    """`anyio` as `vsr_async._client` sees it, with `sleep` recorded and instant."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await checkpoint()


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the client slept before its retries (without really sleeping them)."""
    recorder = _RecordingAnyio()
    monkeypatch.setattr(vsr_async._client, "anyio", recorder)
    return recorder.delays


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSR_API_KEY", raising=False)
    monkeypatch.delenv("VSR_BASE_URL", raising=False)


class LoopbackServer:
    """A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, canned answers."""

    def __init__(self) -> None:
        self.url = ""
        self.heads: list[bytes] = []

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            head = data.partition(b"\r\n\r\n")[0]
            self.heads.append(head)
            path = head.split(b" ")[1]
            if path.endswith(b"/v1/result/abc"):
                status, body = b"200 OK", b'{"id": "abc", "status": "completed"}'
            else:
                status, body = b"404 Not Found", b'{"message": "no such task"}'
            await stream.send(
                b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, len(body), body)
            )


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    srv.url = f"http://127.0.0.1:{port}/kyyReactApiServer"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, srv.handle)
        yield srv
        tg.cancel_scope.cancel()


# Construction.


def test_key_missing_is_refused() -> None:
    """No key as argument or in $VSR_API_KEY is a ValueError naming the variable."""
    with pytest.raises(ValueError, match="VSR_API_KEY"):
        AsyncVSRClient()


@pytest.mark.parametrize("key", [123, b"sk-bytes", ["sk"]])
def test_key_of_the_wrong_type_is_a_type_error(key: object) -> None:
    """A key that is not a string is a TypeError naming api_key (not an AttributeError)."""
    with pytest.raises(TypeError, match="api_key must be a string"):
        AsyncVSRClient(key)  # type: ignore[arg-type]


async def test_key_echoed_by_the_server_is_masked() -> None:
    """A server that quotes the credential in its error body does not put the key in our
    exception's message, args or str."""
    script = Script(reply(401, {"message": f"invalid token Bearer {SECRET}"}))
    with pytest.raises(AuthenticationError) as info:
        await make_client(script).get_task("task-1")
    assert SECRET not in str(info.value)
    assert SECRET not in info.value.message
    assert all(SECRET not in str(arg) for arg in info.value.args)
    assert "invalid token Bearer [secure]" in info.value.message


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_key_blank_is_refused(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank key, given or from the environment, is refused."""
    with pytest.raises(ValueError, match="no API key"):
        AsyncVSRClient(key)
    monkeypatch.setenv("VSR_API_KEY", key)
    with pytest.raises(ValueError, match="no API key"):
        AsyncVSRClient()


async def test_key_from_env_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without api_key, $VSR_API_KEY is the Bearer token."""
    monkeypatch.setenv("VSR_API_KEY", "from-env")
    script = Script()
    client = AsyncVSRClient(
        base_url=BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(script))
    )
    await client.get_task("task-1")
    assert script.requests[0].headers["Authorization"] == "Bearer from-env"


async def test_key_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit api_key wins over $VSR_API_KEY."""
    monkeypatch.setenv("VSR_API_KEY", "from-env")
    script = Script()
    await make_client(script).get_task("task-1")
    assert script.requests[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_base_url_default() -> None:
    """Without base_url or $VSR_BASE_URL, the provider's documented URL is used."""
    assert AsyncVSRClient(SECRET).base_url == DEFAULT_BASE_URL
    assert DEFAULT_BASE_URL == "https://zcbservice.aizfw.cn/kyyReactApiServer"


def test_base_url_from_env_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """$VSR_BASE_URL overrides the default; base_url overrides both."""
    monkeypatch.setenv("VSR_BASE_URL", "https://env.example.com/api")
    assert AsyncVSRClient(SECRET).base_url == "https://env.example.com/api"
    assert AsyncVSRClient(SECRET, base_url=BASE).base_url == BASE


@pytest.mark.parametrize("suffix", ["/", "//"])
async def test_base_url_trailing_slash(suffix: str) -> None:
    """Trailing slashes on base_url never double the slash in request paths."""
    script = Script()
    client = make_client(script, base_url=BASE + suffix)
    assert client.base_url == BASE
    await client.get_task("task-1")
    assert str(script.requests[0].url) == f"{BASE}/v1/result/task-1"


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        pytest.param("https://user:pass@api.example.com", ValueError, id="credentials"),
        pytest.param("https://user@api.example.com", ValueError, id="user"),
        pytest.param("ftp://api.example.com", ValueError, id="ftp"),
        pytest.param("ws://api.example.com", ValueError, id="ws"),
        pytest.param("file:///etc/passwd", ValueError, id="file"),
        pytest.param("api.example.com/api", ValueError, id="no-scheme"),
        pytest.param("/kyyReactApiServer", ValueError, id="relative"),
        pytest.param("https://", ValueError, id="no-host"),
        pytest.param("https://api.example.com:port", ValueError, id="bad-port"),
        pytest.param("https://api.example.com/?x=1", ValueError, id="query"),
        pytest.param("https://api.example.com/#x", ValueError, id="fragment"),
        pytest.param(b"https://api.example.com", TypeError, id="bytes"),
    ],
)
def test_base_url_refused(base_url: Any, error: type[Exception]) -> None:
    """A base_url that is not a plain http(s) root is refused at construction."""
    with pytest.raises(error, match="base_url"):
        AsyncVSRClient(SECRET, base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        f"ftp://user:{SECRET}@api.example.com",
        f"https://user:{SECRET}@api.example.com",
        f"https://user:{SECRET}@api.example.com:port",
        f"https://:{SECRET}@api.example.com/?x=1",
    ],
)
def test_base_url_error_never_quotes_credentials(base_url: str) -> None:
    """A refused base_url carrying a password (maybe the key) is not quoted back."""
    with pytest.raises(ValueError, match="base_url") as info:
        AsyncVSRClient("another-key", base_url=base_url)
    assert SECRET not in str(info.value)


def test_plain_http_to_remote_host_warns() -> None:
    """Plain http to a non-loopback host warns, pointing at the caller's line."""
    with pytest.warns(UserWarning, match="plain http") as record:
        AsyncVSRClient(SECRET, base_url="http://api.example.com")
    assert record[0].filename == __file__
    assert SECRET not in str(record[0].message)


@pytest.mark.parametrize(
    "base_url",
    ["http://localhost:8000", "http://127.0.0.1", "http://127.3.2.1:1", "http://[::1]:8080/api"],
)
def test_plain_http_to_loopback_is_quiet(base_url: str) -> None:
    """Plain http to a loopback host (the emulator, a proxy) is fine (warnings are errors)."""
    assert AsyncVSRClient(SECRET, base_url=base_url).base_url == base_url


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, TypeError),
        ({"max_retries": "3"}, TypeError),
        ({"max_retries": True}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_connections": -5}, ValueError),
        ({"max_connections": 2.0}, TypeError),
        ({"max_connections": False}, TypeError),
    ],
)
def test_counts_are_validated(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """max_retries (≥ 0) and max_connections (≥ 1) must be integers in range."""
    (name,) = kwargs
    with pytest.raises(error, match=name):
        AsyncVSRClient(SECRET, **kwargs)


def test_counts_at_their_minimum() -> None:
    """Zero retries and a single connection are valid settings."""
    client = AsyncVSRClient(SECRET, max_retries=0, max_connections=1)
    assert (client.max_retries, client.max_connections) == (0, 1)
    assert AsyncVSRClient(SECRET).max_retries == DEFAULT_MAX_RETRIES


async def test_repr_shows_url_and_state_never_the_key() -> None:
    """The repr names the base URL and open/closed, and never the key."""
    client = make_client(Script())
    assert repr(client) == f"<AsyncVSRClient base_url={BASE!r} open>"
    await client.aclose()
    assert repr(client) == f"<AsyncVSRClient base_url={BASE!r} closed>"
    assert SECRET not in repr(client)
    assert SECRET not in str(client)


# Request shaping.


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


@pytest.mark.parametrize(
    ("model", "wire"),
    [
        (Model.SUPER_RESOLUTION_4K_HIGHFPS, "superResolution-4k-highfps"),
        ("superResolution-8k-lowfps", "superResolution-8k-lowfps"),
    ],
)
async def test_create_task_request(model: Model | str, wire: str) -> None:
    """A create is POST {base}/v1/super-resolution/videos with body {model, videoUrl}."""
    script = Script(reply(200, {"id": "new-1", "status": "queued"}))
    task = await make_client(script).create_task(VIDEO, model=model)
    assert task == Task(id="new-1", status=TaskStatus.QUEUED)
    (request,) = script.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1/super-resolution/videos"
    assert json.loads(request.content) == {"model": wire, "videoUrl": VIDEO}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"vsr-async/{version('vsr-async')}"


async def test_task_id_is_percent_encoded_as_one_segment() -> None:
    """Spaces, ?, #, % and non-ASCII in an ID stay inside one path segment."""
    script = Script(reply(200, {"id": "a b?#%é", "status": "processing"}))
    await make_client(script).get_task("a b?#%é")
    request = script.requests[0]
    assert request.url.raw_path == b"/kyyReactApiServer/v1/result/a%20b%3F%23%25%C3%A9"
    assert request.url.path == "/kyyReactApiServer/v1/result/a b?#%é"
    assert request.url.query == b""
    assert request.url.fragment == ""


async def test_longest_valid_id_is_sent() -> None:
    """An ID of exactly 512 characters is still accepted."""
    script = Script(reply(200, {"id": "x" * 512, "status": "processing"}))
    await make_client(script).get_task("x" * 512)
    assert script.requests[0].url.path.endswith("/" + "x" * 512)


async def test_an_answer_about_another_task_is_refused() -> None:
    """An answer whose ``id`` is not the task asked for (a proxy's cache, a mix-up) is not
    taken as that task's state."""
    script = Script(task_reply("processing", id="task-2"))
    with pytest.raises(
        ResponseValidationError, match="'task-1', the answer is about task 'task-2'"
    ):
        await make_client(script, max_retries=0).get_task("task-1")


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


INVALID_IDS = [
    pytest.param("", ValueError, id="empty"),
    pytest.param("   ", ValueError, id="blank"),
    pytest.param(".", ValueError, id="dot"),
    pytest.param("..", ValueError, id="dotdot"),
    pytest.param("a/b", ValueError, id="slash"),
    pytest.param("/", ValueError, id="only-slash"),
    pytest.param("a\\b", ValueError, id="backslash"),
    pytest.param(" a", ValueError, id="leading-space"),
    pytest.param("a\t", ValueError, id="trailing-tab"),
    pytest.param("a\nb", ValueError, id="newline"),
    pytest.param("a\x00b", ValueError, id="nul"),
    pytest.param("a\x7fb", ValueError, id="del"),
    pytest.param("a\u2028b", ValueError, id="line-separator"),
    pytest.param("\ud800", ValueError, id="lone-surrogate"),
    pytest.param("x" * 513, ValueError, id="too-long"),
    pytest.param(None, TypeError, id="none"),
    pytest.param(123, TypeError, id="int"),
    pytest.param(b"task-1", TypeError, id="bytes"),
    pytest.param(Task(id="t", status=TaskStatus.QUEUED), TypeError, id="task"),
]


@pytest.mark.parametrize(("task_id", "error"), INVALID_IDS)
async def test_invalid_task_id_is_refused_before_sending(
    task_id: Any, error: type[Exception]
) -> None:
    """get_task and wait refuse a bad ID before any request goes out."""
    script = Script()
    client = make_client(script)
    with pytest.raises(error, match="task ID"):
        await client.get_task(task_id)
    with pytest.raises(error, match="task ID"):
        await client.wait(task_id, interval=0.01, timeout=1)
    assert script.calls == 0


@pytest.mark.parametrize(
    ("video_url", "error"),
    [
        pytest.param("", ValueError, id="empty"),
        pytest.param("in.mp4", ValueError, id="relative"),
        pytest.param("/data/in.mp4", ValueError, id="path"),
        pytest.param("file:///data/in.mp4", ValueError, id="file"),
        pytest.param("ftp://example.com/in.mp4", ValueError, id="ftp"),
        pytest.param("https://", ValueError, id="no-host"),
        pytest.param("https://example.com:bad/in.mp4", ValueError, id="bad-port"),
        pytest.param(None, TypeError, id="none"),
        pytest.param(b"https://example.com/in.mp4", TypeError, id="bytes"),
    ],
)
async def test_invalid_video_url_is_refused_before_sending(
    video_url: Any, error: type[Exception]
) -> None:
    """create_task refuses a video_url that is not an absolute http(s) URL, sending nothing."""
    script = Script()
    with pytest.raises(error, match="video_url"):
        await make_client(script).create_task(video_url, model=MODEL)
    assert script.calls == 0


@pytest.mark.parametrize("model", ["", "  ", " superResolution-4k-lowfps", "x\n", None, 5])
async def test_invalid_model_is_refused_before_sending(model: Any) -> None:
    """create_task refuses a blank, padded or non-string model, sending nothing."""
    script = Script()
    with pytest.raises(ValueError, match="model"):
        await make_client(script).create_task(VIDEO, model=model)
    assert script.calls == 0


# Answers.


async def test_create_answer_with_only_an_id_is_queued() -> None:
    """A create answer carrying only ``id`` gives a queued Task."""
    script = Script(reply(200, {"id": "new-1"}))
    task = await make_client(script).create_task(VIDEO, model=MODEL)
    assert task == Task(id="new-1", status=TaskStatus.QUEUED)


async def test_create_answer_status_wins_over_the_default() -> None:
    """A create answer that names a status keeps it."""
    script = Script(reply(200, {"id": "new-1", "status": "processing", "created": 1}))
    task = await make_client(script).create_task(VIDEO, model=MODEL)
    assert (task.status, task.created) == (TaskStatus.PROCESSING, 1)


MALFORMED = [
    pytest.param(b"<html>maintenance</html>", id="html"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="list"),
    pytest.param(b'{"status": "queued"}', id="no-id"),
    pytest.param(b'{"id": "", "status": "queued"}', id="empty-id"),
]


@pytest.mark.parametrize("content", MALFORMED)
async def test_malformed_success_raises_validation_error(
    content: bytes, sleeps: list[float]
) -> None:
    """A 200 that is not a task raises ResponseValidationError, without a retry."""
    script = Script(reply(200, content=content))
    client = make_client(script)
    with pytest.raises(ResponseValidationError) as info:
        await client.get_task("task-1")
    assert info.value.snippet == content.decode()
    assert script.calls == 1
    with pytest.raises(ResponseValidationError):
        await client.create_task(VIDEO, model=MODEL)
    assert script.calls == 2
    assert sleeps == []


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


# Retries of a create: only when the request never left.


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
        pytest.param(reply(429, headers={"Retry-After": "0"}), RateLimitError, id="429"),
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


# Lifecycle and ownership.


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
    http = client._http
    assert not http.is_closed
    await client.aclose()
    assert http.is_closed


async def test_aclose_twice_is_fine() -> None:
    """aclose() is idempotent."""
    client = AsyncVSRClient(SECRET)
    await client.aclose()
    await client.aclose()
    assert repr(client).endswith("closed>")


async def test_async_with_returns_the_client_and_closes_it() -> None:
    """`async with` gives the client itself and closes it on the way out, even on error."""
    client = AsyncVSRClient(SECRET)
    async with client as entered:
        assert entered is client
    assert client._http.is_closed
    other = AsyncVSRClient(SECRET)
    with pytest.raises(KeyError):
        async with other:
            raise KeyError("boom")
    assert other._http.is_closed


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


async def test_unknown_status_warns_once_per_client(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown status is logged once per client and status, not on every poll."""
    caplog.set_level(logging.WARNING, logger="vsr_async")
    script = Script(task_reply("paused"), task_reply("paused"), task_reply("held"))
    client = make_client(script)
    for _ in range(3):
        task = await client.get_task("task-1")
        assert not task.is_terminal
    assert task.status == "held"
    await client.get_task("task-1")  # "held" again
    messages = [r.getMessage() for r in caplog.records if r.name == "vsr_async"]
    assert messages == [
        "unknown task status 'paused': treated as still running",
        "unknown task status 'held': treated as still running",
    ]
    caplog.clear()
    await make_client(Script(task_reply("paused"))).get_task("task-1")
    assert [r.getMessage() for r in caplog.records] == [
        "unknown task status 'paused': treated as still running"
    ]


# wait().


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect garbage after the test, so that a leaked resource warns in the test that leaked
    it (warnings are errors) rather than in whichever test happens to run next."""
    yield
    gc.collect()


@pytest.mark.usefixtures("collect_garbage")
async def test_wait_returns_the_completed_task() -> None:
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


# The key never shows.


async def test_key_never_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Across failures of every kind, no message or log line contains the key."""
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    script = Script(
        reply(401, {"message": "bad key"}),
        reply(500),
        reply(500),
        reply(429, headers={"Retry-After": "1000"}),
        fail(httpx.ConnectError),
        fail(httpx.ConnectError),
        fail(httpx.ReadTimeout),
        reply(200, content=b"<html>"),
        task_reply("mystery"),
    )
    client = make_client(script, max_retries=1)
    errors: list[BaseException] = []
    for _ in range(6):
        try:
            await client.get_task("task-1")
        except VSRError as exc:
            errors.append(exc)
    for call in (client.get_task("../x"), client.create_task("ftp://x", model=MODEL)):
        try:
            await call
        except ValueError as exc:
            errors.append(exc)
    await client.aclose()
    try:
        await client.get_task("task-1")
    except RuntimeError as exc:
        errors.append(exc)
    assert len(errors) == 8
    texts = [text for exc in errors for text in (str(exc), repr(exc))]
    texts += [record.getMessage() for record in caplog.records]
    assert any("retry" in text for text in texts)
    assert not [text for text in texts if SECRET in text]


async def test_owned_client_over_loopback(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's own connection pool talks to a real socket; even httpcore's DEBUG log
    never shows the key."""
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    async with AsyncVSRClient(SECRET, base_url=server.url) as client:
        task = await client.get_task("abc")
        assert task.status is TaskStatus.COMPLETED
        with pytest.raises(TaskNotFoundError, match="no such task") as info:
            await client.get_task("missing")
    assert SECRET not in str(info.value)
    head = server.heads[0].decode().lower()
    assert head.startswith("get /kyyreactapiserver/v1/result/abc http/1.1")
    assert f"authorization: bearer {SECRET.lower()}" in head
    assert any(record.name.startswith("httpcore") for record in caplog.records)
    assert any(record.name == "httpx" for record in caplog.records)
    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]


@pytest.mark.parametrize(
    "key",
    [f"{SECRET}\n", f"{SECRET}\r\nX-Injected: 1", f"{SECRET}\x00"],
    ids=["newline", "header-injection", "nul"],
)
async def test_key_that_is_no_header_value_never_leaks(
    key: str, server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that cannot go in a header (a newline read from a file) never shows in an
    error or a log line, whether refused up front or by the HTTP layer."""
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    texts: list[str] = []
    try:
        async with AsyncVSRClient(key, base_url=server.url) as client:
            await client.get_task("abc")
    except (ValueError, VSRError) as exc:
        texts += [str(exc), repr(exc)]
    texts += [record.getMessage() for record in caplog.records]
    assert not [text for text in texts if SECRET in text]


# The retry policy itself.


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


def test_asks_to_slow_down() -> None:
    """A 429, or any status error with a Retry-After, asks every poller to pause."""
    assert asks_to_slow_down(RateLimitError("x", status_code=429))
    assert asks_to_slow_down(ServerError("x", status_code=503, retry_after=1.0))
    assert not asks_to_slow_down(ServerError("x", status_code=503))
    assert not asks_to_slow_down(APIConnectionError("x"))


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
    assert retry_delay(ServerError("x", status_code=503, retry_after=3.0), 5) == 3.0
    assert 0 <= retry_delay(ServerError("x", status_code=503), 0) <= 0.5
    assert 0 <= retry_delay(APIConnectionError("x"), 1) <= 1.0
    too_long = RateLimitError("x", status_code=429, retry_after=MAX_RETRY_AFTER + 1)
    with pytest.raises(RateLimitError) as info:
        retry_delay(too_long, 0)
    assert info.value is too_long
