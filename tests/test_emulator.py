from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.parse
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vsr_async.testing
import vsr_async.testing._server
from vsr_async.testing import (
    Emulator,
    EmulatorServer,
    EmulatorStats,
    Faults,
    Quota,
    RecordedRequest,
    Timeline,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

PREFIX = "/kyyReactApiServer"
CREATE = "/v1/super-resolution/videos"
AUTH = {"Authorization": "Bearer emulator-key"}
MODEL = "superResolution-1080p-lowfps"
VIDEO_URL = "https://example.com/in.mp4"
MODELS = [
    f"superResolution-{tier}-{fps}"
    for tier in ("720p", "1080p", "2k", "4k")
    for fps in ("lowfps", "highfps")
]


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.start = self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def at(self, elapsed: float) -> None:
        self.now = self.start + elapsed


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(clock: FakeClock) -> Emulator:
    return Emulator(seed=1, timeline=Timeline.completed(queued=0.5, processing=2.0), clock=clock)


def in_process(emulator: Emulator, headers: dict[str, str] = AUTH) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator),
        base_url=f"http://emulator.test{emulator.prefix}",
        headers=headers,
    )


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(emulator) as client:
        yield client


async def create(client: httpx.AsyncClient) -> str:
    response = await client.post(CREATE, json={"model": MODEL, "videoUrl": VIDEO_URL})
    assert response.status_code == 200
    return str(response.json()["id"])


def quoted(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")


# -- the API


async def test_create_answers_a_queued_task(client: httpx.AsyncClient, emulator: Emulator):
    """A valid create answers 200 with the new task, queued, in the documented shape."""
    response = await client.post(CREATE, json={"model": MODEL, "videoUrl": VIDEO_URL})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    assert re.fullmatch(r"task_[0-9a-f]{24}", body["id"])
    assert body == {
        "id": body["id"],
        "object": "video",
        "created": body["created"],
        "status": "queued",
    }
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    assert emulator.task_ids == [body["id"]]


async def test_create_accepts_every_documented_model(client: httpx.AsyncClient):
    """All eight models of the provider's create page are accepted."""
    for model in MODELS:
        response = await client.post(CREATE, json={"model": model, "videoUrl": VIDEO_URL})
        assert response.status_code == 200, model


@pytest.mark.parametrize(
    ("request_kwargs", "named"),
    [
        pytest.param({"content": b"not json"}, "JSON", id="not-json"),
        pytest.param({"json": [MODEL, VIDEO_URL]}, "JSON", id="not-an-object"),
        pytest.param({"json": {"videoUrl": VIDEO_URL}}, "'model'", id="no-model"),
        pytest.param({"json": {"model": 5, "videoUrl": VIDEO_URL}}, "'model'", id="model-number"),
        pytest.param(
            {"json": {"model": "superResolution-8k-lowfps", "videoUrl": VIDEO_URL}},
            "'model'",
            id="unknown-model",
        ),
        pytest.param({"json": {"model": MODEL}}, "'videoUrl'", id="no-video-url"),
        pytest.param({"json": {"model": MODEL, "videoUrl": 5}}, "'videoUrl'", id="url-number"),
        pytest.param(
            {"json": {"model": MODEL, "videoUrl": "ftp://example.com/a.mp4"}},
            "'videoUrl'",
            id="url-not-http",
        ),
        pytest.param(
            {"json": {"model": MODEL, "videoUrl": "https://"}}, "'videoUrl'", id="no-host"
        ),
    ],
)
async def test_create_rejects_bad_bodies(
    client: httpx.AsyncClient, emulator: Emulator, request_kwargs: dict[str, Any], named: str
):
    """Each malformed create is a 400 whose message names what is wrong, and creates nothing."""
    response = await client.post(CREATE, **request_kwargs)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert named in response.json()["message"]
    assert emulator.task_ids == []


async def test_query_follows_the_timeline(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """Status moves queued → processing → completed at the timeline's times, boundaries included."""
    task_id = await create(client)
    seen = {}
    for elapsed in (0.0, 0.25, 0.5, 2.25, 2.5, 1000.0):
        clock.at(elapsed)
        response = await client.get(f"/v1/result/{task_id}")
        assert response.status_code == 200
        seen[elapsed] = response.json()

    statuses = [body["status"] for body in seen.values()]
    assert statuses == ["queued", "queued", "processing", "processing", "completed", "completed"]
    assert all("video_url" not in body and "error" not in body for body in list(seen.values())[:4])
    done = seen[2.5]
    assert done["video_url"] == f"http://emulator.test/files/{task_id}.mp4"
    assert done["actualDuration"] == 12.0
    assert emulator.status_of(task_id) == "completed"
    assert emulator.terminal_at(task_id) == clock.start + 2.5


@pytest.mark.parametrize(
    "error", ["Video could not be decoded", {"code": "bad_input", "message": "Too long"}]
)
async def test_failed_task_reports_its_error(clock: FakeClock, error: str | dict[str, str]):
    """A failed task carries its timeline's error, string or object, and no video."""
    emulator = Emulator(
        timeline=Timeline.failed(queued=0.5, processing=1.0, error=error), clock=clock
    )
    async with in_process(emulator) as client:
        task_id = await create(client)
        clock.at(1.5)
        body = (await client.get(f"/v1/result/{task_id}")).json()

    assert body["status"] == "failed"
    assert body["error"] == error
    assert "video_url" not in body
    assert "actualDuration" not in body


async def test_scripted_statuses_are_reported_as_is(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """Any status string can be scripted, and a timeline not ending terminal never ends."""
    task_id = emulator.add_task(Timeline([(0, "queued"), (1, "paused"), (2, "Processing")]))

    reported = []
    for elapsed in (0.5, 1.5, 99.0):
        clock.at(elapsed)
        reported.append((await client.get(f"/v1/result/{task_id}")).json()["status"])

    assert reported == ["queued", "paused", "Processing"]
    assert emulator.terminal_at(task_id) is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong-key"}, id="wrong-key"),
        pytest.param({"Authorization": "emulator-key"}, id="no-scheme"),
        pytest.param({"Authorization": "Basic ZW11bGF0b3Ita2V5"}, id="basic"),
    ],
)
async def test_api_routes_require_the_bearer_key(emulator: Emulator, headers: dict[str, str]):
    """Create and query answer 401 without the right Bearer key, and create nothing."""
    task_id = emulator.add_task()
    async with in_process(emulator, headers) as client:
        responses = [
            await client.post(CREATE, json={"model": MODEL, "videoUrl": VIDEO_URL}),
            await client.get(f"/v1/result/{task_id}"),
        ]

    for response in responses:
        assert response.status_code == 401
        assert response.json() == {"message": "Invalid or missing API key"}
    assert emulator.task_ids == [task_id]
    assert [r.authorization for r in emulator.requests] == [headers.get("Authorization")] * 2


async def test_unknown_task_is_404(client: httpx.AsyncClient):
    """Querying an ID the emulator never issued answers 404 "Task not found"."""
    response = await client.get("/v1/result/task_000000000000000000000000")

    assert response.status_code == 404
    assert response.json() == {"message": "Task not found"}


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", f"{PREFIX}/v1/tasks", 404, None),
        ("GET", "/v1/result/task_1", 404, None),
        ("GET", f"{PREFIX}/v1/result/a/b", 404, None),
        ("GET", f"{PREFIX}{CREATE}", 405, "POST"),
        ("DELETE", f"{PREFIX}/v1/result/task_1", 405, "GET"),
        ("POST", "/files/task_1.mp4", 405, "GET, HEAD"),
    ],
)
async def test_other_paths_and_methods_are_refused(
    emulator: Emulator, method: str, path: str, status: int, allow: str | None
):
    """Unknown paths answer 404 and wrong methods 405, both with a JSON message."""
    async with in_process(emulator) as client:
        response = await client.request(method, f"http://emulator.test{path}")

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["message"]
    assert response.headers.get("allow") == allow


async def test_percent_encoded_ids_round_trip(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """An ID with spaces, slashes and unicode is one percent-encoded path segment, decoded."""
    task_id = emulator.add_task(Timeline.completed(), task_id="täsk 1/2?#%")
    clock.at(10)

    response = await client.get(f"/v1/result/{quoted(task_id)}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == task_id
    assert body["video_url"] == f"http://emulator.test/files/{quoted(task_id)}.mp4"
    assert emulator.requests[-1].path == f"{PREFIX}/v1/result/{quoted(task_id)}"
    assert emulator.polls(task_id) == [emulator.requests[-1]]
    video = await client.get(body["video_url"])
    assert video.content == emulator.video_bytes(task_id)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(task_id=st.text(min_size=1, max_size=20).filter(lambda t: t not in (".", "..")))
async def test_any_string_id_can_be_queried(task_id: str):
    """Whatever characters a task ID holds, querying it by its quoted form finds it. (Only
    "." and ".." cannot be path segments: URLs resolve them away, so clients refuse them.)"""
    emulator = Emulator(timeline=Timeline.completed())
    emulator.add_task(task_id=task_id)
    async with in_process(emulator) as client:
        response = await client.get(f"/v1/result/{quoted(task_id)}")

    assert response.status_code == 200
    assert response.json()["id"] == task_id


async def test_files_serve_deterministic_video_bytes(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """A completed task's video_url serves 64 KiB of video/mp4 derived from its ID, without auth."""
    first, second = await create(client), await create(client)
    clock.at(2.5)
    url = (await client.get(f"/v1/result/{first}")).json()["video_url"]

    async with in_process(emulator, headers={}) as anonymous:
        video = await anonymous.get(url)
        again = await anonymous.get(url)

    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.headers["content-length"] == str(64 * 1024) == str(len(video.content))
    assert video.content == again.content == emulator.video_bytes(first)
    assert video.content != emulator.video_bytes(second)


async def test_files_exist_only_for_completed_tasks(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """Before completion, or for an unknown ID, the file route answers 404."""
    task_id = await create(client)
    clock.at(1.0)

    early = await client.get(f"http://emulator.test/files/{task_id}.mp4")
    unknown = await client.get("http://emulator.test/files/task_nope.mp4")

    assert early.status_code == unknown.status_code == 404


# -- faults


async def test_server_error_fault(client: httpx.AsyncClient, emulator: Emulator):
    """error_rate=1 answers every API request 500, 502 or 503 with a JSON message, before auth."""
    emulator.faults = Faults(error_rate=1.0)
    async with in_process(emulator, headers={}) as anonymous:
        responses = [await anonymous.get("/v1/result/task_1") for _ in range(20)]

    assert {r.status_code for r in responses} == {500, 502, 503}
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert all(r.json()["message"] for r in responses)
    assert emulator.stats.faults == {"5xx": 20}
    assert {r.fault for r in emulator.requests} == {"5xx"}


@pytest.mark.parametrize(
    ("retry_after", "header"), [(1.0, "1"), (2.5, "2.5"), (0, "0"), (None, None)]
)
async def test_rate_limit_fault(
    client: httpx.AsyncClient, emulator: Emulator, retry_after: float | None, header: str | None
):
    """rate_limit_rate=1 answers 429 with Retry-After in seconds (integer if whole), or none."""
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after=retry_after)

    response = await client.post(CREATE, json={"model": MODEL, "videoUrl": VIDEO_URL})

    assert response.status_code == 429
    assert response.json() == {"message": "Too many requests"}
    assert response.headers.get("retry-after") == header
    assert emulator.requests[-1].fault == "429"
    assert emulator.task_ids == []


async def test_malformed_fault_rotates_broken_bodies(client: httpx.AsyncClient, emulator: Emulator):
    """malformed_rate=1 answers 200 with HTML, truncated JSON, a list, wrong types, in turn."""
    emulator.faults = Faults(malformed_rate=1.0)
    responses = [await client.get("/v1/result/task_1") for _ in range(5)]

    assert {r.status_code for r in responses} == {200}
    html, truncated, listed, mistyped, html_again = responses
    assert html.headers["content-type"] == html_again.headers["content-type"] == "text/html"
    assert html.text.startswith("<html>")
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.content)
    assert isinstance(listed.json(), list)
    assert mistyped.json()["status"] == 5
    assert "id" not in mistyped.json()
    assert emulator.stats.faults == {"malformed": 5}


async def test_faults_can_be_swapped_at_run_time(client: httpx.AsyncClient, emulator: Emulator):
    """Replacing emulator.faults takes effect from the next request."""
    task_id = await create(client)
    emulator.faults = Faults(error_rate=1.0)
    faulted = await client.get(f"/v1/result/{task_id}")
    emulator.faults = Faults()
    healthy = await client.get(f"/v1/result/{task_id}")

    assert faulted.status_code >= 500
    assert healthy.status_code == 200
    assert [r.fault for r in emulator.polls(task_id)] == ["5xx", None]


async def test_files_are_never_faulted(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """Downloads from /files stay healthy whatever the API's faults."""
    task_id = await create(client)
    clock.at(3)
    emulator.faults = Faults(error_rate=1.0)

    video = await client.get(f"http://emulator.test/files/{task_id}.mp4")

    assert video.status_code == 200
    assert emulator.requests[-1].fault is None


@pytest.mark.parametrize("latency", [0.1, (0.1, 0.15)])
async def test_latency_delays_api_answers_only(latency: float | tuple[float, float]):
    """API requests wait out the latency (fixed or a range), then answer; /files answers while
    an API request is still waiting out its latency."""
    emulator = Emulator(timeline=Timeline.completed(queued=0, processing=0))
    task_id = emulator.add_task()
    emulator.faults = Faults(latency=latency)
    async with in_process(emulator) as client:
        started = time.monotonic()
        with anyio.fail_after(30):
            api = await client.get(f"/v1/result/{task_id}")
        api_took = time.monotonic() - started
        emulator.faults = Faults(latency=3600)
        file_answered_first = False

        async def file_then_stop() -> None:
            nonlocal file_answered_first
            video = await client.get(f"http://emulator.test/files/{task_id}.mp4")
            file_answered_first = video.status_code == 200 and not emulator.requests[-1].fault
            task_group.cancel_scope.cancel()  # the API request is still waiting: leave it

        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(client.get, f"/v1/result/{task_id}")  # waits an hour
                task_group.start_soon(file_then_stop)

    assert api.status_code == 200
    assert api_took >= 0.1
    assert file_answered_first
    assert [r.path.startswith("/files/") for r in emulator.requests] == [False, True]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"error_rate": -0.1}, "error_rate"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"rate_limit_rate": 2}, "rate_limit_rate"),
        ({"malformed_rate": -1}, "malformed_rate"),
        ({"retry_after": -1}, "retry_after"),
        ({"latency": -0.1}, "latency"),
        ({"latency": (0.2, 0.1)}, "latency"),
        ({"latency": (-1, 1)}, "latency"),
        ({"drop_rate": 1.1}, "drop_rate"),
        ({"spike_rate": -0.5}, "spike_rate"),
        ({"spike_latency": -1}, "spike_latency"),
    ],
)
def test_faults_are_validated(kwargs: dict[str, Any], field: str):
    """Out-of-range fault settings raise a ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        Faults(**kwargs)


def test_faults_are_validated_when_changed():
    """Setting a field of live Faults validates it too."""
    faults = Faults()
    with pytest.raises(ValueError, match="error_rate"):
        faults.error_rate = 3


# -- the quota

QUERY = "/v1/result/task_q"


@pytest.fixture
def limited(emulator: Emulator) -> Emulator:
    """The emulator with a quota of 10 requests per second, 2 at once, and a task to query."""
    emulator.quota = Quota(10, burst=2)
    emulator.add_task(task_id="task_q")
    return emulator


async def codes_at(client: httpx.AsyncClient, clock: FakeClock, *times: float) -> list[int]:
    """The status codes of queries of `QUERY` sent at each of `times` (seconds on `clock`)."""
    codes = []
    for elapsed in times:
        clock.at(elapsed)
        codes.append((await client.get(QUERY)).status_code)
    return codes


async def test_quota_admits_a_burst_then_rate_per_second(
    client: httpx.AsyncClient, limited: Emulator, clock: FakeClock
):
    """Quota(10, burst=2): 2 requests at once pass, a 3rd gets 429 with `Retry-After: 1` (0.1 s,
    rounded up); then one passes every 0.1 s, recorded as fault "quota" when refused."""
    assert await codes_at(client, clock, 0, 0) == [200, 200]
    refused = await client.get(QUERY)
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too many requests"}
    assert refused.headers["retry-after"] == "1"

    codes = await codes_at(client, clock, 0.1, 0.1, 0.15, 0.2, 0.3, 0.3)
    assert codes == [200, 429, 429, 200, 200, 429]
    assert limited.stats.faults == {"quota": 4}
    assert [r.fault for r in limited.requests if r.status_code == 429] == ["quota"] * 4


async def test_a_refused_request_uses_no_capacity(
    client: httpx.AsyncClient, limited: Emulator, clock: FakeClock
):
    """After 50 requests refused at once, the next one 0.1 s later passes all the same."""
    assert (await codes_at(client, clock, *[0] * 52)).count(200) == 2
    assert await codes_at(client, clock, 0.1, 0.2) == [200, 200]


@pytest.mark.parametrize(("rate", "burst", "seconds"), [(10, 2, 1), (4, 1, 3), (50, 5, 0.5)])
async def test_steady_overload_passes_rate_times_seconds_plus_burst(
    limited: Emulator, clock: FakeClock, rate: int, burst: int, seconds: float
):
    """A request every 10 ms from 0 to T s, twice the rate or more: exactly R·T + burst pass."""
    limited.quota = Quota(rate, burst=burst)
    times = [n / 100 for n in range(round(seconds * 100) + 1)]
    async with in_process(limited) as client:
        codes = await codes_at(client, clock, *times)
    assert codes.count(200) == rate * seconds + burst
    assert codes.count(429) == len(codes) - codes.count(200)


async def test_retry_after_is_the_wait_rounded_up_to_whole_seconds(
    client: httpx.AsyncClient, limited: Emulator, clock: FakeClock
):
    """At one request per 2 s, a request 0, 0.5, 0.8, 1 and 1.5 s after the first would pass 2,
    1.5, 1.2, 1 and 0.5 s later: `Retry-After` 2, 2, 2, 1, 1. At 2 s it passes."""
    limited.quota = Quota(0.5, burst=1)
    assert await codes_at(client, clock, 0) == [200]
    waits = []
    for elapsed in (0, 0.5, 0.8, 1, 1.5):
        clock.at(elapsed)
        waits.append((await client.get(QUERY)).headers["retry-after"])
    assert waits == ["2", "2", "2", "1", "1"]
    assert await codes_at(client, clock, 2) == [200]


async def test_quota_without_retry_after_sends_no_header(
    client: httpx.AsyncClient, limited: Emulator, clock: FakeClock
):
    """`retry_after=False`: the 429 carries no `Retry-After`, as a CDN's limiter may send it."""
    limited.quota = Quota(10, burst=1, retry_after=False)
    await codes_at(client, clock, 0)
    refused = await client.get(QUERY)
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too many requests"}
    assert "retry-after" not in refused.headers


async def test_files_and_stats_are_never_limited(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """/files and /_emulator/stats are neither refused nor counted against the quota."""
    emulator.quota = Quota(1, burst=1)
    task_id = emulator.add_task(Timeline.completed(queued=0, processing=0))
    files = [await client.get(f"http://emulator.test/files/{task_id}.mp4") for _ in range(5)]
    stats = [await client.get("http://emulator.test/_emulator/stats") for _ in range(3)]
    queries = [await client.get(f"/v1/result/{task_id}") for _ in range(2)]

    assert [r.status_code for r in files + stats] == [200] * 8
    assert [r.status_code for r in queries] == [200, 429]


async def test_the_quota_refuses_before_faults_routing_and_auth(
    client: httpx.AsyncClient, emulator: Emulator
):
    """Over the quota a create creates nothing, and a request without the key, to an unknown
    path, or that a fault would have hit, gets the 429 too: the limiter stands in front."""
    emulator.quota = Quota(1, burst=1)
    await create(client)
    emulator.faults = Faults(error_rate=1.0)
    refused = [await client.post(CREATE, json={"model": MODEL, "videoUrl": VIDEO_URL})]
    refused.append(await client.get("/nowhere"))
    async with in_process(emulator, headers={}) as anonymous:
        refused.append(await anonymous.get("/v1/result/task_1"))

    assert [r.status_code for r in refused] == [429, 429, 429]
    assert len(emulator.task_ids) == 1
    assert emulator.stats.faults == {"quota": 3}


async def test_an_admitted_request_may_still_be_faulted(
    client: httpx.AsyncClient, limited: Emulator
):
    """Faults are drawn for the requests the quota admits: each is counted once, as one kind."""
    limited.faults = Faults(error_rate=1.0)
    codes = [(await client.get(QUERY)).status_code for _ in range(3)]
    assert [code // 100 for code in codes[:2]] == [5, 5]
    assert codes[2] == 429
    assert limited.stats.faults == {"5xx": 2, "quota": 1}


async def test_quota_can_be_swapped_at_run_time(
    client: httpx.AsyncClient, limited: Emulator, clock: FakeClock
):
    """Setting `emulator.quota` takes effect from the next request; a new quota (even an equal
    one) starts with its full burst, and `None` lifts it."""
    assert await codes_at(client, clock, 0, 0, 0) == [200, 200, 429]
    limited.quota = Quota(10, burst=2)
    assert await codes_at(client, clock, 0, 0, 0) == [200, 200, 429]
    limited.quota = None
    assert await codes_at(client, clock, *[0] * 5) == [200] * 5
    limited.quota = Quota(10, burst=3)
    assert await codes_at(client, clock, 0, 0, 0, 0) == [200, 200, 200, 429]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": 10, "burst": 0.5}, "burst"),
        ({"rate": 10, "burst": float("nan")}, "burst"),
    ],
)
def test_quota_is_validated(kwargs: dict[str, Any], field: str):
    """A rate not finite and > 0, or a burst under 1, raises a ValueError naming the field."""
    with pytest.raises(ValueError, match=f"'{field}' must be"):
        Quota(**kwargs)


def test_quota_default_burst_is_50_ms_of_requests_at_least_1():
    """The burst defaults to the requests of 50 ms at the rate, at least 1."""
    assert [Quota(rate).burst for rate in (0.1, 10, 20, 100, 1000)] == [1, 1, 1, 5, 50]
    assert Quota(10).retry_after is True


async def test_quota_over_a_socket_admits_exactly_the_burst_while_the_clock_stands(
    clock: FakeClock,
):
    """Over loopback, 20 concurrent requests while the fake clock stands still: exactly the
    burst passes, however fast the machine."""
    emulator = Emulator(quota=Quota(5, burst=3), clock=clock)
    emulator.add_task(task_id="task_q")
    codes: list[int] = []
    with anyio.fail_after(30):
        async with (
            EmulatorServer(emulator) as server,
            httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as http,
        ):

            async def query() -> None:
                codes.append((await http.get(QUERY)).status_code)

            async with anyio.create_task_group() as task_group:
                for _ in range(20):
                    task_group.start_soon(query)

    assert sorted(codes) == [200] * 3 + [429] * 17
    assert emulator.stats.faults == {"quota": 17}


# -- shapes, seeds and timelines


async def test_loose_mode_shapes(clock: FakeClock):
    """Loose mode varies status case, reports created in ms, errors as objects, extra fields."""
    emulator = Emulator(seed=3, loose=True, clock=clock, timeline=Timeline.failed(error="boom"))
    async with in_process(emulator) as client:
        task_id = await create(client)
        clock.at(5)
        bodies = [(await client.get(f"/v1/result/{task_id}")).json() for _ in range(20)]
        done_id = emulator.add_task(Timeline.completed(queued=0, processing=0))
        done = (await client.get(f"/v1/result/{done_id}")).json()

    assert {body["status"] for body in bodies} == {"FAILED", "Failed", "failed"}
    body = bodies[0]
    assert body["created"] > 10**12
    assert body["error"] == {"code": "task_failed", "message": "boom"}
    assert body["model"] == MODEL
    assert body["videoUrl"] == VIDEO_URL
    assert isinstance(body["meta"], dict)
    assert done["status"].lower() == "completed"
    assert done["video_url"].endswith(".mp4")
    assert done["actualDuration"] == 12.0


async def test_a_seed_reproduces_ids_timelines_and_faults(clock: FakeClock):
    """Two emulators with one seed issue the same IDs, timelines and fault draws."""

    async def run(seed: int) -> tuple[list[str], list[float | None], list[int]]:
        emulator = Emulator(seed=seed, clock=clock, faults=Faults(error_rate=0.5))
        for _ in range(10):
            emulator.add_task()
        async with in_process(emulator) as client:
            codes = [(await client.get("/v1/result/x")).status_code for _ in range(20)]
        return emulator.task_ids, [emulator.terminal_at(i) for i in emulator.task_ids], codes

    first, again, other = await run(7), await run(7), await run(8)

    assert first == again
    assert first[0] != other[0]
    assert all(re.fullmatch(r"task_[0-9a-f]{24}", task_id) for task_id in first[0])


async def test_default_timelines_mix_completions_and_failures(clock: FakeClock):
    """By default tasks queue 0.2-1 s, process 0.5-3 s, mostly complete, and fail both ways."""
    emulator = Emulator(seed=5, clock=clock)
    task_ids = [emulator.add_task() for _ in range(200)]

    ends = [emulator.terminal_at(task_id) for task_id in task_ids]
    assert all(end is not None and 0.7 <= end - clock.start <= 4.0 for end in ends)
    clock.at(0.19)
    assert {emulator.status_of(task_id) for task_id in task_ids} == {"queued"}
    clock.at(1.0)
    assert "queued" not in {emulator.status_of(task_id) for task_id in task_ids}
    clock.at(4.0)
    failed = [task_id for task_id in task_ids if emulator.status_of(task_id) == "failed"]
    assert 10 <= len(failed) <= 50
    async with in_process(emulator) as client:
        errors = [(await client.get(f"/v1/result/{i}")).json()["error"] for i in failed]
    assert {type(error) for error in errors} == {str, dict}


def test_timeline_callable_draws_from_the_emulator_random():
    """A timeline callable is called once per task with the emulator's seeded Random."""
    calls: list[random.Random] = []

    def draw(rng: random.Random) -> Timeline:
        calls.append(rng)
        return Timeline.completed(queued=rng.uniform(0, 1))

    emulator = Emulator(seed=1, timeline=draw)
    emulator.add_task()
    emulator.add_task()

    assert len(calls) == 2
    assert calls[0] is calls[1]
    assert isinstance(calls[0], random.Random)


def test_timeline_helpers():
    """Timeline answers the status at any time and when (if ever) it ends."""
    timeline = Timeline.failed(queued=1, processing=2)

    assert timeline.steps == ((0.0, "queued"), (1.0, "processing"), (3.0, "failed"))
    assert [timeline.status_at(t) for t in (-1, 0, 1, 2.9, 3, 50)] == [
        "queued",
        "queued",
        "processing",
        "processing",
        "failed",
        "failed",
    ]
    assert timeline.terminal_after == 3.0
    assert Timeline.completed(queued=0, processing=0).status_at(0) == "completed"
    assert Timeline([(0, "queued")]).terminal_after is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [([], "start"), ([(1, "queued")], "start"), ([(0, "a"), (2, "b"), (1, "c")], "ascending")],
)
def test_timeline_steps_are_validated(steps: list[tuple[float, str]], message: str):
    """Steps must start at 0.0 and ascend."""
    with pytest.raises(ValueError, match=message):
        Timeline(steps)


def test_add_task_refuses_a_duplicate_id(emulator: Emulator):
    """Seeding a task under an existing ID is a ValueError, not a silent overwrite."""
    emulator.add_task(task_id="twice")
    with pytest.raises(ValueError, match="twice"):
        emulator.add_task(task_id="twice")


# -- recording


async def test_requests_are_recorded(
    client: httpx.AsyncClient, emulator: Emulator, clock: FakeClock
):
    """Each request is recorded with its arrival time, route, answer and auth header."""
    task_id = await create(client)
    clock.at(1)
    await client.get(f"/v1/result/{task_id}")
    async with in_process(emulator, headers={}) as anonymous:
        await anonymous.get(f"/v1/result/{task_id}")

    created, polled, refused = emulator.requests
    assert created == RecordedRequest(
        time=clock.start,
        method="POST",
        path=f"{PREFIX}{CREATE}",
        task_id=None,
        status_code=200,
        fault=None,
        authorization="Bearer emulator-key",
        headers=created.headers,
    )
    assert created.headers["authorization"] == "Bearer emulator-key"
    assert created.headers["content-type"] == "application/json"
    assert (polled.time, polled.task_id, polled.status_code) == (clock.start + 1, task_id, 200)
    assert (refused.status_code, refused.authorization) == (401, None)
    assert emulator.polls(task_id) == [polled, refused]
    assert emulator.stats == EmulatorStats(total=3, by_status={200: 2, 401: 1}, faults={})

    emulator.reset_stats()

    assert emulator.requests == []
    assert emulator.stats.total == 0


async def test_request_ids_are_unique(client: httpx.AsyncClient):
    """Every answer carries its own x-request-id."""
    responses = [await client.get("/v1/result/x") for _ in range(5)]

    assert len({r.headers["x-request-id"] for r in responses}) == 5


async def test_lifespan_is_answered(emulator: Emulator):
    """The app completes ASGI lifespan startup and shutdown, as servers expect."""
    to_app, app_inbox = anyio.create_memory_object_stream[MutableMapping[str, Any]](2)
    app_outbox, from_app = anyio.create_memory_object_stream[MutableMapping[str, Any]](2)
    async with to_app, app_inbox, app_outbox, from_app:
        await to_app.send({"type": "lifespan.startup"})
        await to_app.send({"type": "lifespan.shutdown"})
        await emulator({"type": "lifespan"}, app_inbox.receive, app_outbox.send)

        assert [await from_app.receive(), await from_app.receive()] == [
            {"type": "lifespan.startup.complete"},
            {"type": "lifespan.shutdown.complete"},
        ]


async def test_websocket_connections_are_not_answered(emulator: Emulator):
    """A websocket scope gets no answer (servers then refuse the handshake)."""
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    await emulator({"type": "websocket", "path": "/"}, receive, send)

    assert sent == []
    assert emulator.requests == []


# -- the real server


async def test_server_serves_on_a_free_port(clock: FakeClock):
    """On port 0 a free port is bound before entry returns; the API and /files work over it."""
    emulator = Emulator(timeline=Timeline.completed(), clock=clock)
    async with (
        EmulatorServer(emulator) as server,
        httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as client,
    ):
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.base_url == f"{server.url}{PREFIX}"
        task_id = await create(client)
        clock.at(5)
        body = (await client.get(f"/v1/result/{task_id}")).json()
        video = await client.get(body["video_url"])
        url = server.url

    assert body["video_url"] == f"{url}/files/{task_id}.mp4"
    assert video.content == emulator.video_bytes(task_id)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(body["video_url"])


@pytest.fixture
def no_stop_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's stop waits as long as it takes, instead of cutting a connection it is
    waiting for after a fraction of a second: a stop that waits for one hangs."""
    monkeypatch.setattr(vsr_async.testing._server, "GRACEFUL_TIMEOUT", 3600.0)
    monkeypatch.setattr(vsr_async.testing._server, "STOP_TIMEOUT", 3600.0)


async def test_server_stops_promptly_with_an_idle_keepalive_connection(
    emulator: Emulator, no_stop_timeouts: None
):
    """Leaving the server closes idle keep-alive connections at once instead of waiting for
    them: with no stop timeout to fall back on, the stop still ends (a guard catches a hang)."""
    with anyio.fail_after(30):  # milliseconds; a wait for the connection would hang
        async with httpx.AsyncClient(headers=AUTH) as client:
            async with EmulatorServer(emulator) as server:
                await client.get(f"{server.base_url}/v1/result/x")  # leaves it idle
            assert len(client._transport._pool.connections) == 1  # (still the client's)


PROC_FDS = Path("/proc/self/fd")


def _server_ends(port: int) -> dict[str, socket.socket]:
    """Duplicates of the server's ends of its connections on ``port``, by socket (a socket
    may have more than one descriptor), found in this process's descriptors (Linux); close
    them after use."""
    ends: dict[str, socket.socket] = {}
    for link in PROC_FDS.iterdir():
        try:
            target = str(link.readlink())
            if not target.startswith("socket:") or target in ends:
                continue
            end = socket.socket(fileno=os.dup(int(link.name)))
        except OSError:  # closed meanwhile
            continue
        if _serves(end, port):
            ends[target] = end
        else:
            end.close()
    return ends


def _serves(end: socket.socket, port: int) -> bool:
    """Whether ``end`` is the server's end of a TCP connection on ``port``."""
    if end.family not in (socket.AF_INET, socket.AF_INET6) or end.type != socket.SOCK_STREAM:
        return False
    try:
        end.getpeername()
    except OSError:  # a listener, or not connected
        return False
    return bool(end.getsockname()[1] == port)


@pytest.mark.skipif(not PROC_FDS.is_dir(), reason="finds the server's sockets in /proc")
async def test_server_answers_keepalive_requests_without_delay(emulator: Emulator):
    """Requests on one kept-alive connection are not held back by Nagle and delayed ACKs: the
    server's end of the connection has TCP_NODELAY, so the body hypercorn writes after the
    headers leaves without waiting for the client's ACK of them (which a client delays up to
    40 ms)."""
    limits = httpx.Limits(max_connections=1)
    async with (
        EmulatorServer(emulator) as server,
        httpx.AsyncClient(base_url=server.base_url, headers=AUTH, limits=limits) as client,
    ):
        for _ in range(20):
            assert (await client.get("/v1/result/x")).status_code == 404
        ends = _server_ends(server.port).values()
        try:
            nodelay = [end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for end in ends]
        finally:
            for end in ends:
                end.close()

    assert len(nodelay) == 1  # one connection, kept alive for all 20
    assert all(nodelay)


class _Arrivals:
    """The emulator, setting an event when a request reaches it."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.prefix = emulator.prefix
        self.arrived = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.arrived.set()
        await self.emulator(scope, receive, send)


async def test_server_cancels_requests_in_flight_when_stopping(
    emulator: Emulator, no_stop_timeouts: None
):
    """A request still waiting out its latency at shutdown is answered 500 at once: the stop
    cancels it rather than wait for it (with no stop timeout to fall back on)."""
    emulator.faults = Faults(latency=3600)
    answers: list[int] = []
    app = _Arrivals(emulator)
    with anyio.fail_after(30):  # milliseconds; a stop that waited for the request would hang
        async with httpx.AsyncClient(headers=AUTH) as client, anyio.create_task_group() as tg:
            server = EmulatorServer(app)  # type: ignore[arg-type]
            await server.__aenter__()

            async def poll() -> None:
                answers.append((await client.get(f"{server.base_url}/v1/result/x")).status_code)

            tg.start_soon(poll)
            await app.arrived.wait()
            await server.__aexit__(None, None, None)

    assert answers == [500]


async def test_server_refuses_misuse(emulator: Emulator):
    """Port and URLs need a running server; entering twice or leaving unentered is an error."""
    server = EmulatorServer(emulator)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    with pytest.raises(RuntimeError, match="not running"):
        await server.__aexit__(None, None, None)
    async with server:
        with pytest.raises(RuntimeError, match="already running"):
            await server.__aenter__()


async def test_server_restarts_on_the_same_port(emulator: Emulator):
    """A new server binds the port of one that just stopped while its closed keep-alive
    connection still lingers (SO_REUSEADDR), and one client keeps working across the restart."""
    async with httpx.AsyncClient(headers=AUTH) as client:
        async with EmulatorServer(emulator) as server:
            port = server.port
            before = await client.get(f"{server.base_url}/v1/result/x")
        async with EmulatorServer(emulator, port=port) as again:
            assert again.port == port
            after = await client.get(f"{again.base_url}/v1/result/x")

    assert before.status_code == after.status_code == 404


def test_server_explains_a_missing_hypercorn(monkeypatch: pytest.MonkeyPatch, emulator: Emulator):
    """Without the emulator extra, EmulatorServer says what to install."""
    monkeypatch.setitem(sys.modules, "hypercorn.config", None)

    with pytest.raises(ImportError, match=re.escape("pip install 'vsr-async[emulator]'")):
        EmulatorServer(emulator)


def test_the_package_imports_without_hypercorn():
    """`from vsr_async.testing import Emulator` works when hypercorn is not installed."""
    code = (
        "import sys; sys.modules['hypercorn'] = None\n"
        "from vsr_async.testing import Emulator, EmulatorServer\n"
        "Emulator()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603 - our own code


def test_all_lists_the_public_names_sorted():
    """`vsr_async.testing.__all__` is sorted and names exactly its public attributes."""
    public = {
        name
        for name, value in vars(vsr_async.testing).items()
        if not name.startswith("_") and isinstance(value, type)
    }

    assert vsr_async.testing.__all__ == sorted(vsr_async.testing.__all__)
    assert set(vsr_async.testing.__all__) == public


# -- result files like an object store's, over the real server

SIZE = 200_000  # three blocks and a part


@pytest.fixture
async def server(emulator: Emulator) -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(emulator) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def add_completed(emulator: Emulator) -> str:
    return emulator.add_task(Timeline.completed(queued=0, processing=0))


async def query_url(http: httpx.AsyncClient, server: EmulatorServer, task_id: str) -> str:
    response = await http.get(f"{server.base_url}/v1/result/{quoted(task_id)}", headers=AUTH)
    return str(response.json()["video_url"])


async def read_until_dropped(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, bytes]:
    """The response and the body bytes received before the server dropped the connection."""
    received = bytearray()
    async with http.stream(method, url, **kwargs) as response:
        try:
            async for chunk in response.aiter_raw():
                received += chunk
        except httpx.RemoteProtocolError:
            return response, bytes(received)
    pytest.fail("the connection was not dropped")


def test_video_bytes_are_numbered_blocks_of_one_random_filler(emulator: Emulator):
    """Each 64 KiB block starts with its index, so a resume off by a block does not match;
    any slice equals the same slice of the whole file."""
    emulator.video_size = SIZE
    whole = emulator.video_bytes("task_a")
    blocks = [whole[at : at + 64 * 1024] for at in range(0, SIZE, 64 * 1024)]

    assert len(whole) == SIZE
    assert [block[:8] for block in blocks] == [n.to_bytes(8, "big") for n in range(4)]
    assert blocks[0][8:] == blocks[1][8:] == blocks[2][8:]
    assert blocks[3][8:] == blocks[0][8 : len(blocks[3])]
    assert blocks[0][8:] != emulator.video_bytes("task_b")[8 : 64 * 1024]
    for start, stop in [(0, 1), (65530, 65546), (100, 150_000), (SIZE - 5, None), (-7, None)]:
        assert emulator.video_bytes("task_a", start, stop) == whole[start:stop]
    assert emulator.video_bytes("task_a", 10, 5) == b""


def test_video_bytes_of_a_huge_file_are_quick(emulator: Emulator):
    """A 256 MiB file is never built whole to give a slice of it: the slice costs a few
    blocks of memory, not the file."""
    emulator.video_size = 256 * 1024 * 1024
    tracemalloc.start()
    try:
        tail = emulator.video_bytes("task_a", -70_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 2 * 1024 * 1024
    assert len(tail) == 70_000
    assert tail[-65536 : -65536 + 8] == (4095).to_bytes(8, "big")


async def test_file_headers_and_a_stable_strong_etag(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """A file answers video/mp4 with its length, byte ranges accepted, and a strong ETag that
    stays the same across URLs of one task and differs between tasks."""
    emulator.video_size = SIZE
    task_id, other = add_completed(emulator), add_completed(emulator)

    first = await http.get(await query_url(http, server, task_id))
    again = await http.get(await query_url(http, server, task_id))
    different = await http.get(await query_url(http, server, other))

    assert first.status_code == 200
    assert first.headers["content-type"] == "video/mp4"
    assert first.headers["content-length"] == str(SIZE)
    assert first.headers["accept-ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]{32}"', first.headers["etag"])
    assert first.headers["etag"] == again.headers["etag"] == emulator.etag(task_id)
    assert different.headers["etag"] != first.headers["etag"]
    assert first.content == again.content == emulator.video_bytes(task_id)


@pytest.mark.parametrize(
    ("header", "status", "span"),
    [
        pytest.param("bytes=0-", 206, (0, SIZE), id="from-0"),
        pytest.param("bytes=100-199", 206, (100, 200), id="closed"),
        pytest.param("bytes=65530-65545", 206, (65530, 65546), id="across-blocks"),
        pytest.param("bytes=150000-", 206, (150_000, SIZE), id="open"),
        pytest.param("bytes=-100", 206, (SIZE - 100, SIZE), id="suffix"),
        pytest.param("bytes=-999999", 206, (0, SIZE), id="suffix-too-long"),
        pytest.param("bytes=199999-999999", 206, (SIZE - 1, SIZE), id="end-clamped"),
        pytest.param(f"bytes={SIZE}-", 416, None, id="past-the-end"),
        pytest.param("bytes=-0", 416, None, id="empty-suffix"),
        pytest.param("bytes=5-1", 200, (0, SIZE), id="backwards-ignored"),
        pytest.param("bytes=0-1,5-6", 200, (0, SIZE), id="multi-ignored"),
        pytest.param("items=0-1", 200, (0, SIZE), id="unit-ignored"),
        pytest.param("bytes=x-", 200, (0, SIZE), id="malformed-ignored"),
    ],
)
async def test_file_byte_ranges(
    emulator: Emulator,
    server: EmulatorServer,
    http: httpx.AsyncClient,
    *,
    header: str,
    status: int,
    span: tuple[int, int] | None,
):
    """A single Range answers 206 with Content-Range, clamped to the end; past the end is 416
    with `bytes */size`; malformed or multiple ranges get the whole file."""
    emulator.video_size = SIZE
    task_id = add_completed(emulator)

    response = await http.get(await query_url(http, server, task_id), headers={"Range": header})

    assert response.status_code == status
    if span is None:
        assert response.headers["content-range"] == f"bytes */{SIZE}"
        assert response.headers["content-type"] == "application/xml"
        assert b"<Code>InvalidRange</Code>" in response.content
        return
    start, stop = span
    assert response.content == emulator.video_bytes(task_id, start, stop)
    assert response.headers["content-length"] == str(stop - start)
    expected = f"bytes {start}-{stop - 1}/{SIZE}" if status == 206 else None
    assert response.headers.get("content-range") == expected
    assert emulator.requests[-1].headers["range"] == header


@pytest.mark.parametrize(
    ("if_range", "status"),
    [("etag", 206), ('"0123456789abcdef0123456789abcdef"', 200), ("weak", 200)],
)
async def test_if_range_resumes_only_the_same_file(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient, if_range: str, status: int
):
    """With If-Range, a Range is served only if the ETag matches (strongly); else the whole
    file comes back 200."""
    task_id = add_completed(emulator)
    etag = emulator.etag(task_id)
    value = {"etag": etag, "weak": f"W/{etag}"}.get(if_range, if_range)

    response = await http.get(
        await query_url(http, server, task_id), headers={"Range": "bytes=1000-", "If-Range": value}
    )

    assert response.status_code == status
    assert response.content == emulator.video_bytes(task_id, 1000 if status == 206 else 0)
    assert emulator.requests[-1].headers["if-range"] == value


async def test_head_answers_the_headers_without_a_body(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """HEAD answers GET's status and headers, ranges included, with no body."""
    emulator.video_size = SIZE
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)

    whole = await http.head(url)
    ranged = await http.head(url, headers={"Range": "bytes=10-19"})
    missing = await http.head(f"{server.url}/files/task_nope.mp4")

    assert whole.status_code == 200
    assert whole.content == b""
    assert whole.headers["content-length"] == str(SIZE)
    assert whole.headers["etag"] == emulator.etag(task_id)
    assert whole.headers["content-type"] == "video/mp4"
    assert (ranged.status_code, ranged.headers["content-range"]) == (206, f"bytes 10-19/{SIZE}")
    assert ranged.headers["content-length"] == "10"
    assert missing.status_code == 404


async def test_result_urls_expire_and_a_new_query_hands_out_a_fresh_one(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient, clock: FakeClock
):
    """With result_ttl, a video_url works until ttl seconds after its query, then answers 403
    "Request has expired"; querying the task again hands out a new URL that works."""
    emulator.result_ttl = 10
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)
    clock.at(9.9)
    valid = await http.get(url)
    clock.at(10)
    expired = await http.get(url)
    fresh = await query_url(http, server, task_id)
    renewed = await http.get(fresh)

    assert re.fullmatch(rf"{server.url}/files/{task_id}\.mp4\?expires=\S+", url)
    assert valid.status_code == renewed.status_code == 200
    assert expired.status_code == 403
    assert expired.headers["content-type"] == "application/xml"
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in expired.content
    assert fresh != url
    assert renewed.content == emulator.video_bytes(task_id)
    assert [r.status_code for r in emulator.requests if r.path.startswith("/files/")] == [
        200,
        403,
        200,
    ]


@pytest.mark.parametrize("query", ["", "?expires=soon", "?other=1"])
async def test_expiring_urls_need_their_expiry(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient, query: str
):
    """While URLs expire, a file URL without a valid expiry is refused 403 (a client must keep
    the query string)."""
    emulator.result_ttl = 60
    task_id = add_completed(emulator)

    response = await http.get(f"{server.url}/files/{task_id}.mp4{query}")

    assert response.status_code == 403


async def test_files_can_be_served_from_another_origin(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """With files_origin, video_url points at another server of the same emulator ("another
    host"), which serves the file; the request there carries no Authorization."""
    task_id = add_completed(emulator)
    async with EmulatorServer(emulator) as files:
        files_url = emulator.files_origin = files.url
        url = await query_url(http, server, task_id)
        video = await http.get(url)

    assert url.startswith(f"{files_url}/files/")
    assert video.content == emulator.video_bytes(task_id)
    download = emulator.requests[-1]
    assert download.headers["host"] == files_url.removeprefix("http://")
    assert "authorization" not in download.headers


async def test_files_can_redirect_to_another_origin(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """With files_redirect, /files answers 302 to the same path and query on that origin."""
    emulator.result_ttl = 60
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)
    async with EmulatorServer(emulator) as files:
        files_url = emulator.files_redirect = files.url
        redirect = await http.get(url)
        emulator.files_redirect = None
        followed = await http.get(redirect.headers["location"])

    assert redirect.status_code == 302
    assert redirect.headers["location"] == files_url + url.removeprefix(server.url)
    assert followed.content == emulator.video_bytes(task_id)


async def test_cut_after_drops_the_connection_midway(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """cut_after sends that many body bytes of a file, then drops the connection: the client
    sees an incomplete body, and the request is recorded as a "cut"."""
    emulator.cut_after = 70_000
    emulator.video_size = SIZE
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)

    response, received = await read_until_dropped(http, "GET", url)

    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert received == emulator.video_bytes(task_id, 0, 70_000)
    assert (emulator.requests[-1].status_code, emulator.requests[-1].fault) == (200, "cut")


async def test_cuts_counts_down_the_responses_to_cut(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """With cuts=N, only the next N file bodies longer than cut_after are cut; a resume with
    Range and If-Range then completes the file."""
    emulator.cut_after, emulator.cuts = 1000, 2
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)

    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(url)
    short = await http.get(url, headers={"Range": "bytes=0-99"})
    resumed = await http.get(
        url, headers={"Range": "bytes=1000-", "If-Range": emulator.etag(task_id)}
    )

    assert emulator.cuts == 0
    assert short.status_code == resumed.status_code == 206
    assert short.content == emulator.video_bytes(task_id, 0, 100)
    assert emulator.video_bytes(task_id, 0, 1000) + resumed.content == emulator.video_bytes(task_id)
    assert emulator.stats.faults == {"cut": 2}


async def test_a_16_mib_file_streams_whole(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """A 16 MiB file arrives in many chunks with exactly the bytes video_bytes gives."""
    size = 16 * 1024 * 1024
    emulator.video_size = size
    task_id = add_completed(emulator)
    url = await query_url(http, server, task_id)

    digest, received, chunks = hashlib.sha256(), 0, 0
    async with http.stream("GET", url) as response:
        assert response.headers["content-length"] == str(size)
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            received += len(chunk)
            chunks += 1

    assert received == size
    assert chunks > 16
    assert digest.hexdigest() == hashlib.sha256(emulator.video_bytes(task_id)).hexdigest()


class BodyCounter:
    """The emulator, counting the response body messages it sends, and noting when it has
    answered a request."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.prefix = emulator.prefix
        self.bodies = 0
        self.done = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted(message: MutableMapping[str, Any]) -> None:
            self.bodies += message["type"] == "http.response.body"
            await send(message)

        await self.emulator(scope, receive, counted)
        if scope["type"] == "http":
            self.done.set()


async def test_an_abandoned_download_stops_streaming(emulator: Emulator, http: httpx.AsyncClient):
    """When the client leaves midway, the rest of a 256 MiB file is not generated (on asyncio
    it would pile up in the server's write buffer): the emulator stops by itself, a few
    chunks in, instead of going on to the end."""
    emulator.video_size = 256 * 1024 * 1024
    task_id = add_completed(emulator)
    counter = BodyCounter(emulator)
    async with EmulatorServer(counter) as server:  # type: ignore[arg-type]
        async with http.stream("GET", f"{server.url}/files/{task_id}.mp4") as response:
            assert response.status_code == 200  # and leave with the body unread
        with anyio.fail_after(30):  # (generating the whole file takes seconds, not this long)
            await counter.done.wait()

    assert 0 < counter.bodies < 100  # of 4096


# -- dropped connections and latency spikes on the API


async def test_drop_fault_cuts_api_answers_off(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """drop_rate=1 starts every API answer 200 with a Content-Length, then drops the
    connection midway; a dropped create creates nothing."""
    emulator.faults = Faults(drop_rate=1.0)

    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(
            f"{server.base_url}{CREATE}", json={"model": MODEL, "videoUrl": VIDEO_URL}, headers=AUTH
        )
    response, received = await read_until_dropped(
        http, "GET", f"{server.base_url}/v1/result/x", headers=AUTH
    )

    assert response.status_code == 200
    assert 0 < len(received) < int(response.headers["content-length"])
    assert emulator.task_ids == []
    assert emulator.stats.faults == {"drop": 2}
    assert emulator.stats.by_status == {200: 2}


async def test_spike_fault_delays_and_then_answers_normally(
    emulator: Emulator, server: EmulatorServer, http: httpx.AsyncClient
):
    """spike_rate=1 answers every API request normally, spike_latency seconds late."""
    emulator.faults = Faults(spike_rate=1.0, spike_latency=0.3)
    task_id = add_completed(emulator)

    started = time.monotonic()
    with anyio.fail_after(30):
        response = await http.get(f"{server.base_url}/v1/result/{task_id}", headers=AUTH)
    took = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert took >= 0.3
    assert emulator.requests[-1].fault == "spike"
    assert emulator.stats.faults == {"spike": 1}


async def test_faults_listed_first_take_precedence(client: httpx.AsyncClient, emulator: Emulator):
    """When rates add up past 1, the kinds listed first in Faults win over the later ones."""
    emulator.faults = Faults(error_rate=0.5, malformed_rate=1.0, drop_rate=1.0, spike_rate=1.0)

    for _ in range(40):
        await client.get("/v1/result/x")

    assert set(emulator.stats.faults) == {"5xx", "malformed"}
