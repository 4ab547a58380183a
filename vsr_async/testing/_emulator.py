"""A fake of the VSR task API: a small ASGI app with scripted timelines and injected faults."""

from __future__ import annotations

import bisect
import collections
import functools
import hashlib
import itertools
import json
import math
import random
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import anyio
import anyio.lowlevel
import attrs

# ASGI, typed as httpx.ASGITransport and Starlette type it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_API_KEY = "emulator-key"
DEFAULT_PREFIX = "/kyyReactApiServer"
DEFAULT_ERROR = "Video could not be decoded"
STATS_PATH = "/_emulator/stats"  # the counts as JSON: about the emulator, not part of the API
VIDEO_SIZE = 64 * 1024
DEFAULT_BURST_SECONDS = 0.05  # a `Quota`'s default burst: the requests of 50 ms at its rate
_BLOCK = 64 * 1024  # result files repeat a per-task block of this size, numbered

_MODELS = frozenset(
    f"superResolution-{tier}-{fps}"
    for tier in ("720p", "1080p", "2k", "4k")
    for fps in ("lowfps", "highfps")
)
_METHODS = {"create": "POST", "query": "GET"}  # of the API routes
_TERMINAL = frozenset({"completed", "failed"})
_ERRORS: tuple[str | dict[str, Any], ...] = (
    DEFAULT_ERROR,
    {"code": "input_too_long", "message": "Input video is longer than 10 minutes"},
)
_SERVER_ERRORS = {
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
}
_MALFORMED = (
    (b"text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    (b"application/json", b'{"id": "task_0123'),
    (b"application/json", b'[{"status": "queued"}]'),
    (b"application/json", b'{"object": "video", "status": 5, "created": "yesterday"}'),
)
_TOO_MANY = {"message": "Too many requests"}
_SLACK = 1e-9  # seconds: clock readings summed in floating point drift by less
_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'
_DROPPED = b'{"id": "task_000000000000000000000000", "object": "video", "status": "queued"}'


def _to_steps(steps: Iterable[tuple[float, str]]) -> tuple[tuple[float, str], ...]:
    return tuple((float(at), str(status)) for at, status in steps)


def _check_steps(
    _instance: object, _attribute: attrs.Attribute[Any], steps: tuple[tuple[float, str], ...]
) -> None:
    times = [at for at, _ in steps]
    if not times or times[0] != 0:
        raise ValueError("Timeline.steps must start at 0.0")
    if times != sorted(times):
        raise ValueError("Timeline.steps must be in ascending time order")


@attrs.frozen
class Timeline:
    """When a task changes status, in seconds after its creation.

    Attributes:
        steps: `(seconds, status)` pairs in ascending time, the first at 0.0. Statuses may be
            any string, to script ones the client does not know.
        error: Reported when the last status is `"failed"`.
        actual_duration: Reported when the task is `"completed"`.
    """

    steps: tuple[tuple[float, str], ...] = attrs.field(converter=_to_steps, validator=_check_steps)
    error: str | dict[str, Any] = DEFAULT_ERROR
    actual_duration: float = 12.0

    @classmethod
    def completed(
        cls, *, queued: float = 0.5, processing: float = 2.0, actual_duration: float = 12.0
    ) -> Timeline:
        """Queued, then processing, then completed."""
        steps = ((0.0, "queued"), (queued, "processing"), (queued + processing, "completed"))
        return cls(steps, actual_duration=actual_duration)

    @classmethod
    def drawn(cls, rng: random.Random, *, within: float = 4.0) -> Timeline:
        """A timeline as the emulator draws one by default: queued for the first twentieth to
        quarter of ``within`` seconds, then processing, ending within ``within`` seconds, 85%
        of them completed (the others failed with one of a few errors)."""
        if not within > 0:
            raise ValueError(f"within must be a number of seconds > 0, got {within!r}")
        return _random_timeline(rng, within)

    @classmethod
    def failed(
        cls,
        *,
        queued: float = 0.5,
        processing: float = 1.0,
        error: str | dict[str, Any] = DEFAULT_ERROR,
    ) -> Timeline:
        """Queued, then processing, then failed with `error`."""
        steps = ((0.0, "queued"), (queued, "processing"), (queued + processing, "failed"))
        return cls(steps, error=error)

    def status_at(self, elapsed: float) -> str:
        """The status `elapsed` seconds after creation."""
        index = bisect.bisect_right([at for at, _ in self.steps], elapsed)
        return self.steps[max(index - 1, 0)][1]

    @property
    def terminal_after(self) -> float | None:
        """Seconds after creation at which the task ends, or `None` if it never does."""
        at, status = self.steps[-1]
        return at if status in _TERMINAL else None


def _random_timeline(rng: random.Random, seconds: float = 4.0) -> Timeline:
    scale = seconds / 4.0
    queued, processing = rng.uniform(0.2, 1.0) * scale, rng.uniform(0.5, 3.0) * scale
    if rng.random() < 0.85:
        return Timeline.completed(
            queued=queued, processing=processing, actual_duration=round(rng.uniform(5, 60), 2)
        )
    return Timeline.failed(queued=queued, processing=processing, error=rng.choice(_ERRORS))


def _check_latency(
    _instance: object, _attribute: attrs.Attribute[Any], latency: float | tuple[float, float]
) -> None:
    low, high = latency if isinstance(latency, tuple) else (latency, latency)
    if not 0 <= low <= high:
        raise ValueError(f"'latency' must be >= 0 (or a (low, high) range of such): {latency!r}")


def _check_retry_after(
    _instance: object, _attribute: attrs.Attribute[Any], retry_after: float | None
) -> None:
    if retry_after is not None and retry_after < 0:
        raise ValueError(f"'retry_after' must be >= 0 or None: {retry_after!r}")


_RATE = (attrs.validators.ge(0.0), attrs.validators.le(1.0))


@attrs.define
class Faults:
    """Fault injection, drawn per API request (never for `/files`).

    Rates are shares of API requests, drawn in the order listed: if they add up to more than 1,
    the kinds listed first take precedence. Except spikes, faults answer before routing and
    authentication: a faulted create creates nothing.

    Attributes:
        error_rate: Share answered 500, 502 or 503.
        rate_limit_rate: Share answered 429.
        retry_after: `Retry-After` seconds on 429s, or `None` for no header.
        latency: Extra seconds before answering: fixed, or a uniform `(low, high)` range.
        malformed_rate: Share answered 200 with a broken body (HTML, truncated JSON, a JSON
            list, or an object with wrong types, in rotation).
        drop_rate: Share answered 200 with a `Content-Length`, half of the body, and then a
            dropped connection.
        spike_rate: Share answered normally after an extra `spike_latency`.
        spike_latency: Seconds of a latency spike, on top of `latency`.
    """

    error_rate: float = attrs.field(default=0.0, validator=_RATE)
    rate_limit_rate: float = attrs.field(default=0.0, validator=_RATE)
    retry_after: float | None = attrs.field(default=1.0, validator=_check_retry_after)
    latency: float | tuple[float, float] = attrs.field(default=0.0, validator=_check_latency)
    malformed_rate: float = attrs.field(default=0.0, validator=_RATE)
    drop_rate: float = attrs.field(default=0.0, validator=_RATE)
    spike_rate: float = attrs.field(default=0.0, validator=_RATE)
    spike_latency: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))


def _check_rate(_instance: object, _attribute: attrs.Attribute[Any], rate: float) -> None:
    if not 0 < rate < math.inf:
        raise ValueError(f"'rate' must be a finite number of requests per second > 0: {rate!r}")


@attrs.frozen
class Quota:
    """A server-side rate limit: 429 only for the API requests over `rate` per second.

    A leaky bucket as nginx's `limit_req` keeps (GCRA): requests are admitted `1 / rate`
    seconds apart, and up to `burst` of them at once after a pause. A refused request takes
    no capacity. The quota is checked before faults, routing and authentication: a refused
    create creates nothing. `/files` and the stats are never limited.

    Attributes:
        rate: Requests per second, > 0.
        burst: How many requests may arrive at once, >= 1; by default those of
            `DEFAULT_BURST_SECONDS` (50 ms) at `rate`, at least 1.
        retry_after: Whether a 429 carries `Retry-After`: the seconds until the request would
            have been admitted, rounded up (so at least 1). A CDN's or proxy's limiter often
            says nothing.
    """

    rate: float = attrs.field(validator=_check_rate)
    burst: float = attrs.field(kw_only=True, validator=attrs.validators.ge(1.0))
    retry_after: bool = attrs.field(default=True, kw_only=True)

    @burst.default
    def _default_burst(self) -> float:
        return max(1.0, self.rate * DEFAULT_BURST_SECONDS)


class _Bucket:
    """The state of one `Quota`: GCRA's theoretical arrival time of the next request."""

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self._due = -math.inf  # a new bucket is full

    def admit(self, now: float) -> float:
        """Take a request arriving `now`: 0.0 if admitted, else the seconds until it would be."""
        interval = 1 / self.quota.rate
        due = max(self._due, now)
        wait = due - (self.quota.burst - 1) * interval - now
        if wait > _SLACK:
            return wait
        self._due = due + interval
        return 0.0


@attrs.frozen
class RecordedRequest:
    """One request the emulator answered.

    Attributes:
        time: Emulator clock at arrival.
        method: HTTP method.
        path: Raw (still percent-encoded) path, without the query.
        task_id: The decoded task ID, for result queries; else `None`.
        status_code: The status answered.
        fault: The injected fault, if any: `"5xx"`, `"429"`, `"malformed"`, `"drop"` or
            `"spike"` for API requests, `"quota"` for one refused by the `Quota`, `"cut"` for
            a file response cut short (`cut_after`).
        authorization: The `Authorization` header as received.
        headers: All request headers, with lower-case names.
    """

    time: float
    method: str
    path: str
    task_id: str | None
    status_code: int
    fault: str | None
    authorization: str | None
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class EmulatorStats:
    """Counts of the requests answered, kept or not (see `Emulator`'s `history`).

    Attributes:
        total: Number of requests.
        by_status: Requests per status code answered.
        faults: Faults injected, per kind.
    """

    total: int
    by_status: Mapping[int, int]
    faults: Mapping[str, int]


@attrs.frozen
class _Task:
    id: str
    model: str
    video_url: str
    timeline: Timeline
    created_at: float  # emulator clock
    created: float  # unix time


@attrs.frozen
class _Request:
    """The parts of an HTTP request the emulator looks at."""

    method: str
    path: str  # raw
    query: str  # raw
    headers: Mapping[str, str]
    body: bytes
    origin: str  # scheme://host, for absolute URLs

    @classmethod
    async def read(cls, scope: Scope, receive: Receive) -> _Request:
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        raw_path: bytes | None = scope.get("raw_path")
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return cls(
            method=scope["method"],
            path=raw_path.decode("latin-1") if raw_path else urllib.parse.quote(scope["path"]),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=b"".join(chunks),
            origin=f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}",
        )


@attrs.frozen
class _Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    fault: str | None = None
    stream: Iterable[bytes] | None = None  # chunks sent instead of `body`
    length: int | None = None  # Content-Length if not len(body): a stream's, a HEAD's
    cut_after: int | None = None  # body bytes sent before dropping the connection

    async def send(self, send: Send, receive: Receive) -> None:
        """Send the reply, and stop if the client disconnects (a stream would go on)."""

        async def stop_on_disconnect() -> None:
            await receive()  # after the request's body, only `http.disconnect` may come
            task_group.cancel_scope.cancel()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stop_on_disconnect)
            await self._send(send)
            task_group.cancel_scope.cancel()

    async def _send(self, send: Send) -> None:
        chunks = (self.body,) if self.stream is None else self.stream
        length = len(self.body) if self.length is None else self.length
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(length).encode()),
            (b"x-request-id", f"req_{uuid.uuid4().hex}".encode()),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        sent = 0
        for chunk in chunks:
            if self.cut_after is not None and sent + len(chunk) >= self.cut_after:
                part = chunk[: self.cut_after - sent]
                # Unfinished: the server drops the connection when the app returns.
                await send({"type": "http.response.body", "body": part, "more_body": True})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
            await anyio.lowlevel.checkpoint()  # a send may not yield, or be shielded
        await send({"type": "http.response.body", "body": b""})


def _json(
    status: int,
    data: object,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    fault: str | None = None,
) -> _Reply:
    return _Reply(status, json.dumps(data).encode(), headers=headers, fault=fault)


def _not_allowed(method: str, allowed: str) -> _Reply:
    return _json(405, {"message": f"Method {method} not allowed"}, ((b"allow", allowed.encode()),))


def _create_problem(data: Any) -> str | None:
    """What is wrong with the JSON body of a create request, if anything."""
    if not isinstance(data, dict):
        return "The request body must be a JSON object"
    model, video_url = data.get("model"), data.get("videoUrl")
    if not isinstance(model, str):
        return "'model' is required and must be a string"
    if model not in _MODELS:
        return f"'model' must be one of {', '.join(sorted(_MODELS))}"
    if not isinstance(video_url, str):
        return "'videoUrl' is required and must be a string"
    if not re.fullmatch(r"https?://[^/?#\s]+\S*", video_url):
        return "'videoUrl' must be an http(s) URL"
    return None


def _seconds(value: float) -> bytes:
    return str(int(value) if float(value).is_integer() else value).encode()


def _storage_error(
    status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> _Reply:
    """An error as an S3-style object store words it."""
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return _Reply(status, (_XML + body).encode(), b"application/xml", headers)


@functools.lru_cache(maxsize=64)
def _filler(task_id: str) -> bytes:
    """The random part of each block of a task's result file."""
    return random.Random(task_id).randbytes(_BLOCK - 8)


def _video_chunks(task_id: str, start: int, stop: int) -> Iterator[bytes]:
    """Bytes `start` to `stop` of a task's result file, at most one block at a time.

    Block `n` is `n` as 8 big-endian bytes, then the task's random filler.
    """
    filler = _filler(task_id)
    for index in range(start // _BLOCK, -(-stop // _BLOCK)):
        offset = index * _BLOCK
        yield (index.to_bytes(8, "big") + filler)[max(start - offset, 0) : stop - offset]


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, stop)` asked by a single-range `Range` header, or `None` to send it all.

    The span is empty if the range cannot be satisfied. Malformed and multiple ranges are
    ignored, as many servers do.
    """
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match[1] == match[2] == "":
        return None
    if not match[1]:  # the last N bytes
        return max(size - int(match[2]), 0), size
    start = int(match[1])
    if match[2] and int(match[2]) < start:
        return None
    return start, min(int(match[2]) + 1, size) if match[2] else size


class Emulator:
    """The VSR task API as an ASGI app, for tests and demos.

    Task status follows each task's `Timeline`, computed from `clock()` on every query.
    Result files are served like an object store's: `ETag`, `HEAD`, single byte ranges
    (`Range`, `If-Range`), 403 once the URL expired, 404 unless the task completed.
    `faults`, `quota`, `loose` and the file settings (`video_size` on) are attributes too:
    tests may change them at run time.

    Args:
        api_key: The accepted Bearer token.
        seed: Makes task IDs, timelines and faults reproducible.
        timeline: For every created task: a `Timeline`, a callable drawing one from the
            emulator's `random.Random`, or `None` for a mix of completions and failures.
        faults: Fault injection; the `faults` attribute may be swapped at run time.
        quota: A rate limit on the API requests, on `clock`, checked before `faults`; the
            `quota` attribute may be swapped at run time (a new one starts with its full burst).
        prefix: Path prefix of the API routes.
        clock: Monotonic seconds; pass a fake one to move tasks along without sleeping.
        loose: Answer like this provider family sometimes does: status in any case,
            `created` in milliseconds, `error` as an object, and extra fields.
        video_size: Bytes of each result file, made up block by block (see `video_bytes`).
        result_ttl: Seconds a `video_url` stays valid after the query that handed it out,
            or `None` for URLs without expiry.
        files_origin: `scheme://host:port` of the `video_url`s, by default the request's:
            serve the emulator a second time there to have "another host" serve the files.
        files_redirect: If set, `/files` answers 302 to the same path and query there.
        cut_after: If set, a file response longer than this drops the connection after this
            many body bytes (recorded as fault `"cut"`).
        cuts: How many more file responses `cut_after` cuts, counted down by each cut, or
            `None` for all of them.
        history: How many of the latest requests `requests` keeps, or `None` for all of them;
            bound it in a server that runs for long. `stats` counts every request either way.
        on_request: Called with each request recorded, before it is answered: for a log.

    `GET /_emulator/stats` answers `stats` and the number of tasks as JSON; it is neither
    recorded nor counted, and never faulted.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        seed: int | None = None,
        timeline: Timeline | Callable[[random.Random], Timeline] | None = None,
        faults: Faults | None = None,
        quota: Quota | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        loose: bool = False,
        video_size: int = VIDEO_SIZE,
        result_ttl: float | None = None,
        files_origin: str | None = None,
        files_redirect: str | None = None,
        cut_after: int | None = None,
        cuts: int | None = None,
        history: int | None = None,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        if history is not None and history < 0:
            raise ValueError(f"'history' must be >= 0 or None: {history!r}")
        self.api_key = api_key
        self.prefix = prefix.rstrip("/")
        self.faults = faults if faults is not None else Faults()
        self.quota = quota
        self.loose = loose
        self.video_size = video_size
        self.result_ttl = result_ttl
        self.files_origin = files_origin
        self.files_redirect = files_redirect
        self.cut_after = cut_after
        self.cuts = cuts
        self.history = history
        self.on_request = on_request
        self.requests: list[RecordedRequest] = []  # the latest `history` of them
        self._total = 0
        self._by_status: collections.Counter[int] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        self._clock = clock
        self._bucket: _Bucket | None = None  # of `quota`
        self._timeline = timeline
        self._random = random.Random(seed)  # IDs and timelines
        self._noise = random.Random(None if seed is None else f"noise-{seed}")  # faults, loose
        self._malformed = itertools.cycle(_MALFORMED)
        self._tasks: dict[str, _Task] = {}
        self._routes = {
            "create": re.compile(re.escape(self.prefix) + "/v1/super-resolution/videos"),
            "query": re.compile(re.escape(self.prefix) + "/v1/result/([^/]+)"),
            "file": re.compile(r"/files/([^/]+)\.mp4"),
            "stats": re.compile(re.escape(STATS_PATH)),
        }

    # -- helpers for tests and demos

    def add_task(
        self,
        timeline: Timeline | None = None,
        *,
        task_id: str | None = None,
        model: str = "superResolution-1080p-lowfps",
        video_url: str = "https://example.com/in.mp4",
    ) -> str:
        """Create a task now, as if through the API, and return its ID.

        Args:
            timeline: Its timeline; by default drawn like the emulator's `timeline`.
            task_id: Any string; by default `task_` and 24 hex digits.
            model: The model it was created with.
            video_url: The input URL it was created with.
        """
        if task_id is None:
            task_id = f"task_{self._random.getrandbits(96):024x}"
        if task_id in self._tasks:
            raise ValueError(f"Task {task_id!r} already exists")
        if timeline is None:
            timeline = self._next_timeline()
        self._tasks[task_id] = _Task(
            task_id, model, video_url, timeline, self._clock(), time.time()
        )
        return task_id

    def status_of(self, task_id: str) -> str:
        """The task's status now (as a strict response would report it)."""
        task = self._tasks[task_id]
        return task.timeline.status_at(self._clock() - task.created_at)

    def terminal_at(self, task_id: str) -> float | None:
        """The clock time at which the task ends, or `None` if it never does."""
        task = self._tasks[task_id]
        after = task.timeline.terminal_after
        return None if after is None else task.created_at + after

    @property
    def task_ids(self) -> list[str]:
        """IDs of all tasks, in creation order."""
        return list(self._tasks)

    def polls(self, task_id: str) -> list[RecordedRequest]:
        """The result queries for one task among `requests`, faulted ones included."""
        return [request for request in self.requests if request.task_id == task_id]

    @property
    def stats(self) -> EmulatorStats:
        """Counts of every request answered since creation or `reset_stats()`."""
        return EmulatorStats(
            total=self._total, by_status=dict(self._by_status), faults=dict(self._faults)
        )

    def reset_stats(self) -> None:
        """Forget the recorded requests, and zero `stats`."""
        self.requests.clear()
        self._total = 0
        self._by_status.clear()
        self._faults.clear()

    def video_bytes(self, task_id: str, start: int = 0, stop: int | None = None) -> bytes:
        """Bytes `start:stop` (a slice) of the result file of `task_id`.

        Each 64 KiB block is its index as 8 big-endian bytes, then random bytes drawn once per
        task: a download resumed at the wrong offset does not match.
        """
        start, stop, _ = slice(start, stop).indices(self.video_size)
        return b"".join(_video_chunks(task_id, start, stop))

    def etag(self, task_id: str) -> str:
        """The strong `ETag` of the result file of `task_id` (quotes included)."""
        digest = hashlib.sha256(json.dumps([task_id, self.video_size]).encode()).hexdigest()
        return f'"{digest[:32]}"'

    # -- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI `http` or `lifespan` connection."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = self._clock()
        request = await _Request.read(scope, receive)
        route, task_id = self._route(request.path)
        if route == "stats":
            await self._stats(request).send(send, receive)
            return
        if route == "file":
            reply = self._file(request, task_id)
        else:
            refused = self._over_quota(arrived)
            await self._delay()
            reply = refused if refused is not None else await self._api(request, route, task_id)
        self._record(
            RecordedRequest(
                time=arrived,
                method=request.method,
                path=request.path,
                task_id=task_id if route == "query" else None,
                status_code=reply.status,
                fault=reply.fault,
                authorization=request.headers.get("authorization"),
                headers=request.headers,
            )
        )
        await reply.send(send, receive)

    def _record(self, request: RecordedRequest) -> None:
        """Count the request, keep it (dropping the oldest beyond `history`), pass it on."""
        self._total += 1
        self._by_status[request.status_code] += 1
        if request.fault is not None:
            self._faults[request.fault] += 1
        self.requests.append(request)
        if self.history is not None and len(self.requests) > self.history:
            # A list, not a deque: callers compare `requests` to lists and slice it. Dropping the
            # oldest moves `history` pointers, cheap next to answering a request.
            del self.requests[: len(self.requests) - self.history]
        if self.on_request is not None:
            self.on_request(request)

    def _stats(self, request: _Request) -> _Reply:
        if request.method != "GET":
            return _not_allowed(request.method, "GET")
        stats = self.stats
        return _json(
            200,
            {
                "total": stats.total,
                "by_status": {str(code): n for code, n in sorted(stats.by_status.items())},
                "faults": dict(sorted(stats.faults.items())),
                "tasks": len(self._tasks),
            },
        )

    def _route(self, path: str) -> tuple[str, str]:
        """The route's name ("" if none) and the decoded task ID in the path ("" if none)."""
        for name, pattern in self._routes.items():
            if match := pattern.fullmatch(path):
                return name, urllib.parse.unquote(match[1]) if pattern.groups else ""
        return "", ""

    def _over_quota(self, now: float) -> _Reply | None:
        """A 429 for an API request arriving `now` over `quota`, else `None` (admitted)."""
        if self.quota is None:
            return None
        if self._bucket is None or self._bucket.quota is not self.quota:
            self._bucket = _Bucket(self.quota)
        wait = self._bucket.admit(now)
        if not wait:
            return None
        seconds = math.ceil(wait - _SLACK)  # delta-seconds are whole: round up, to 1 at least
        headers = ((b"retry-after", str(seconds).encode()),) if self.quota.retry_after else ()
        return _json(429, _TOO_MANY, headers, fault="quota")

    async def _delay(self) -> None:
        latency = self.faults.latency
        seconds = self._noise.uniform(*latency) if isinstance(latency, tuple) else latency
        if seconds:
            await anyio.sleep(seconds)

    async def _api(self, request: _Request, route: str, task_id: str) -> _Reply:
        fault = self._draw_fault()
        if fault == "spike":
            await anyio.sleep(self.faults.spike_latency)
            return attrs.evolve(self._answer(request, route, task_id), fault=fault)
        if fault == "5xx":
            status = self._noise.choice(list(_SERVER_ERRORS))
            return _json(status, {"message": _SERVER_ERRORS[status]}, fault=fault)
        if fault == "429":
            retry_after = self.faults.retry_after
            headers = () if retry_after is None else ((b"retry-after", _seconds(retry_after)),)
            return _json(429, _TOO_MANY, headers, fault=fault)
        if fault == "malformed":
            content_type, body = next(self._malformed)
            return _Reply(200, body, content_type, fault=fault)
        if fault == "drop":
            return _Reply(200, _DROPPED, fault=fault, cut_after=len(_DROPPED) // 2)
        return self._answer(request, route, task_id)

    def _draw_fault(self) -> str | None:
        faults, draw = self.faults, self._noise.random()
        for kind, rate in (
            ("5xx", faults.error_rate),
            ("429", faults.rate_limit_rate),
            ("malformed", faults.malformed_rate),
            ("drop", faults.drop_rate),
            ("spike", faults.spike_rate),
        ):
            if draw < rate:
                return kind
            draw -= rate
        return None

    def _answer(self, request: _Request, route: str, task_id: str) -> _Reply:
        if not route:
            return _json(404, {"message": "Not found"})
        if request.method != _METHODS[route]:
            return _not_allowed(request.method, _METHODS[route])
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _json(401, {"message": "Invalid or missing API key"})
        if route == "create":
            return self._create(request)
        task = self._tasks.get(task_id)
        if task is None:
            return _json(404, {"message": "Task not found"})
        return _json(200, self._render(task, request.origin))

    def _create(self, request: _Request) -> _Reply:
        try:
            data = json.loads(request.body)
        except ValueError:
            data = None
        problem = _create_problem(data)
        if problem is not None:
            return _json(400, {"message": problem})
        task_id = self.add_task(model=data["model"], video_url=data["videoUrl"])
        return _json(200, self._render(self._tasks[task_id], request.origin))

    def _render(self, task: _Task, origin: str) -> dict[str, Any]:
        status = task.timeline.status_at(self._clock() - task.created_at)
        data: dict[str, Any] = {
            "id": task.id,
            "object": "video",
            "created": int(task.created),
            "status": status,
        }
        if status == "completed":
            data["video_url"] = self._video_url(task.id, self.files_origin or origin)
            data["actualDuration"] = task.timeline.actual_duration
        elif status == "failed":
            data["error"] = task.timeline.error
        if self.loose:
            data["status"] = self._noise.choice((status.upper(), status.capitalize(), status))
            data["created"] = int(task.created * 1000)
            data["model"] = task.model
            data["videoUrl"] = task.video_url
            data["meta"] = {"region": "emulator", "queuePosition": 0}
            if isinstance(data.get("error"), str):
                data["error"] = {"code": "task_failed", "message": data["error"]}
        return data

    def _video_url(self, task_id: str, origin: str) -> str:
        url = f"{origin.rstrip('/')}/files/{urllib.parse.quote(task_id, safe='')}.mp4"
        if self.result_ttl is None:
            return url
        return f"{url}?expires={self._clock() + self.result_ttl!r}"

    def _expired(self, query: str) -> bool:
        """Whether a file URL with this query is refused: past its expiry, or without one
        while URLs expire."""
        expires = urllib.parse.parse_qs(query).get("expires")
        if expires is None:
            return self.result_ttl is not None
        try:
            return self._clock() >= float(expires[0])
        except ValueError:
            return True

    def _file(self, request: _Request, task_id: str) -> _Reply:
        if request.method not in {"GET", "HEAD"}:
            return _not_allowed(request.method, "GET, HEAD")
        if self.files_redirect is not None:
            location = f"{self.files_redirect.rstrip('/')}{request.path}"
            location += f"?{request.query}" if request.query else ""
            return _Reply(302, b"", b"text/plain", ((b"location", location.encode()),))
        if self._expired(request.query):
            return _storage_error(403, "AccessDenied", "Request has expired")
        if task_id not in self._tasks or self.status_of(task_id) != "completed":
            return _json(404, {"message": "Not found"})
        return self._video(request, task_id)

    def _video(self, request: _Request, task_id: str) -> _Reply:
        """The result file: whole, or the range asked for."""
        size, etag = self.video_size, self.etag(task_id)
        headers = [(b"accept-ranges", b"bytes"), (b"etag", etag.encode())]
        status, (start, stop) = 200, (0, size)
        if request.headers.get("if-range", etag) == etag:
            span = _byte_range(request.headers.get("range"), size)
            if span is not None:
                status, (start, stop) = 206, span
                if start >= stop:
                    problem = "The requested range is not satisfiable"
                    unsatisfied = ((b"content-range", f"bytes */{size}".encode()),)
                    return _storage_error(416, "InvalidRange", problem, unsatisfied)
                headers.append((b"content-range", f"bytes {start}-{stop - 1}/{size}".encode()))
        if request.method == "HEAD":
            return _Reply(status, b"", b"video/mp4", tuple(headers), length=stop - start)
        cut_after = self._cut(stop - start)
        return _Reply(
            status,
            b"",
            b"video/mp4",
            tuple(headers),
            fault=None if cut_after is None else "cut",
            stream=_video_chunks(task_id, start, stop),
            length=stop - start,
            cut_after=cut_after,
        )

    def _cut(self, length: int) -> int | None:
        """Where to cut a file body of `length` bytes, if anywhere; counts down `cuts`."""
        if self.cut_after is None or self.cut_after >= length or self.cuts == 0:
            return None
        if self.cuts is not None:
            self.cuts -= 1
        return self.cut_after

    def _next_timeline(self) -> Timeline:
        if isinstance(self._timeline, Timeline):
            return self._timeline
        if self._timeline is None:
            return _random_timeline(self._random)
        return self._timeline(self._random)
