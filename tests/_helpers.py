"""Shared by the tests: scripted answers through ``httpx.MockTransport``, for unit tests of the
layers, and the emulator on a real socket, behind a recording proxy."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import httpx
import pytest

from vsr_async import APIStatusError, AsyncVSRClient, Model
from vsr_async.testing import Emulator, EmulatorServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from vsr_async import Transition

KEY = "emulator-key"

#: On trio, httpx leaves its own body iterators to the garbage collector when decoding fails
#: (Response.aiter_bytes does not aclose aiter_raw), and trio warns about each: httpx's, not
#: ours (encode/httpx#3686).
HTTPX_LEAVES_ITS_ITERATORS = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object "
    r"(Response\.aiter_raw|AsyncHTTP11Connection\._receive_response_body|"
    r"(HTTP11ConnectionByteStream|PoolByteStream|AsyncResponseStream|BoundAsyncStream)"
    r"\.__aiter__)"
    r":pytest.PytestUnraisableExceptionWarning"
)
RESULT = "/v1/result/"

Headers = list[tuple[bytes, bytes]]
#: What `Proxy.answer` returns to replace the emulator's reply: status, headers, body.
Answer = tuple[int, Headers, bytes]
#: `Proxy.answer` returns this to drop the connection in the middle of the body.
DROP: Answer = (200, [(b"content-length", b"100")], b'{"id": ')


@attrs.frozen
class Seen:
    """One request as the proxy saw it (times are ``time.monotonic()``, like the emulator's)."""

    arrived: float
    answered: float
    task_id: str | None
    status_code: int
    status: str | None  # the task status in a 200 body, if it had one


class Proxy:
    """ASGI middleware in front of an `Emulator`: records every answer, counts requests in
    flight, and can replace the emulator's answer for chosen requests.

    ``answer(task_id, n)`` (``n`` counts every API request from 1) returns an `Answer` to send
    instead of the emulator's, or ``None`` to pass the request through.
    """

    def __init__(
        self,
        emulator: Emulator,
        answer: Callable[[str | None, int], Answer | None] | None = None,
    ) -> None:
        self.emulator = emulator
        self.answer = answer
        self.seen: list[Seen] = []
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._arrival: anyio.Event | None = None

    @property
    def prefix(self) -> str:
        return self.emulator.prefix

    async def next_request(self) -> None:
        """Return when the next request arrives."""
        self._arrival = anyio.Event()
        await self._arrival.wait()

    def statuses(self, task_id: str) -> list[str]:
        """The statuses the server answered for one task, in order (lower-cased)."""
        return [s.status.lower() for s in self.seen if s.task_id == task_id and s.status]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.emulator(scope, receive, send)
            return
        arrived = time.monotonic()
        path: str = scope["path"]
        task_id = path.rsplit("/", 1)[1] if RESULT in path else None  # already decoded
        self.count += 1
        if self._arrival is not None:
            self._arrival.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        finished = False
        code = 0
        body: list[bytes] = []

        def finish() -> None:
            # Called before the last byte leaves: the client cannot start its next request
            # before this request stops counting as in flight.
            nonlocal finished
            if not finished:
                finished = True
                self.in_flight -= 1
                self.seen.append(
                    Seen(arrived, time.monotonic(), task_id, code, _status(code, b"".join(body)))
                )

        async def spy(message: dict[str, Any]) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finish()
            await send(message)

        try:
            replaced = self.answer(task_id, self.count) if self.answer else None
            if replaced is None:
                await self.emulator(scope, receive, spy)
                return
            status, headers, content = replaced
            if replaced is not DROP:
                headers = [*headers, (b"content-length", str(len(content)).encode())]
            await spy({"type": "http.response.start", "status": status, "headers": headers})
            # A DROP ends here with the body unfinished: hypercorn closes the connection.
            await spy({"type": "http.response.body", "body": content, "more_body": True})
            if replaced is not DROP:
                await spy({"type": "http.response.body", "body": b""})
        finally:
            finish()


def _status(code: int, content: bytes) -> str | None:
    if code != 200:
        return None
    try:
        data = json.loads(content)
    except ValueError:
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else None


def request_driven(**options: Any) -> Emulator:
    """An emulator whose clock counts the requests it has answered: timelines in requests, not
    seconds, tell the same story on a busy machine as on an idle one."""
    emulator = Emulator(clock=lambda: float(len(emulator.requests)), **options)
    return emulator


def json_answer(status: int, data: object, *headers: tuple[bytes, bytes]) -> Answer:
    """An `Answer` with a JSON body."""
    return status, [(b"content-type", b"application/json"), *headers], json.dumps(data).encode()


@contextlib.asynccontextmanager
async def serve(app: Emulator | Proxy, **client_options: Any) -> AsyncIterator[AsyncVSRClient]:
    """The app on a real loopback socket, and a client of it."""
    async with (
        EmulatorServer(app) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.base_url, **client_options) as client,
    ):
        yield client


def by_task(transitions: Iterable[Transition]) -> dict[str, list[Transition]]:
    """The transitions of each task, in the order they were yielded."""
    grouped: dict[str, list[Transition]] = {}
    for transition in transitions:
        grouped.setdefault(transition.task_id, []).append(transition)
    return grouped


def dedupe(statuses: Iterable[str]) -> list[str]:
    """``statuses`` without consecutive repeats: the changes a watch should report."""
    changes: list[str] = []
    for status in statuses:
        if not changes or changes[-1] != status:
            changes.append(status)
    return changes


def record_sends(client: AsyncVSRClient) -> list[float]:
    """Record when ``client`` sends each request (``time.monotonic()``), on the client's side:
    the server may read a request a little after it was sent."""
    sent: list[float] = []

    async def record(_: httpx.Request) -> None:
        sent.append(time.monotonic())

    client._session._http.event_hooks = {"request": [record], "response": []}
    return sent


def watcher_tasks() -> list[str]:
    """Names of the running tasks that belong to a scheduler (a watch's, or a client's)."""
    return [task.name for task in anyio.get_running_tasks() if "vsr_async._scheduler." in task.name]


def still_polling(client: AsyncVSRClient) -> list[str]:
    """What still polls after every watch and wait of ``client`` ended: tasks watched, polls
    in flight, and scheduler tasks beyond the client's own (its run and its workers, while it
    is open with ``async with``), which a watch with a scheduler of its own would leave."""
    stats = client.stats
    own = client.max_connections + 1 if client._polling is not None else 0
    left = [f"{stats.watched} watched"] if stats.watched else []
    left += [f"{stats.in_flight} in flight"] if stats.in_flight else []
    tasks = watcher_tasks()
    return left + (tasks if len(tasks) > own else [])


# Scripted answers through httpx.MockTransport, for unit tests of the layers.

#: The key `make_client` gives its clients: no error or log line may show it.
SECRET = "sk-sentinel-7d1f0c93e5a24b68"
BASE = "https://api.example.test/kyyReactApiServer"
VIDEO = "https://videos.example.com/in.mp4"
MODEL = Model.SUPER_RESOLUTION_1080P_LOWFPS
#: What `error_for`'s request asked for.
URL = "https://api.example.com/kyyReactApiServer/v1/result/task-1"


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


def error_for(
    status: int,
    *,
    content: bytes | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> APIStatusError:
    """The error `APIStatusError.from_response` makes of a ``status`` answer to a GET (or
    ``method``) of `URL` carrying `SECRET`."""
    request = httpx.Request(method, URL, headers={"Authorization": f"Bearer {SECRET}"})
    response = httpx.Response(status, content=content, json=json, headers=headers, request=request)
    return APIStatusError.from_response(response)
