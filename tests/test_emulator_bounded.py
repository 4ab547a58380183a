"""A long-running emulator stays bounded: `history` caps the requests kept, `stats` counts them
all, `GET /_emulator/stats` serves the counts, and `vsr-async emulator` keeps none and logs one
line per request with `-v`."""

from __future__ import annotations

import signal
import subprocess
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from _cli_helpers import CLI, KEY, cli_env
from click.testing import CliRunner

from vsr_async._cli import _app, _serve
from vsr_async.testing import (
    Emulator,
    EmulatorServer,
    EmulatorStats,
    Faults,
    RecordedRequest,
    Timeline,
)

if TYPE_CHECKING:
    from anyio.abc import ByteReceiveStream

pytestmark = pytest.mark.anyio

PREFIX = "/kyyReactApiServer"
AUTH = {"Authorization": f"Bearer {KEY}"}
CREATE = {"model": "superResolution-720p-lowfps", "videoUrl": "https://example.com/a.mp4"}


def _in_process(emulator: Emulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator), base_url="http://emu")


def _query(task_id: str) -> str:
    return f"{PREFIX}/v1/result/{task_id}"


async def test_history_keeps_the_latest_requests_and_stats_count_them_all() -> None:
    """With `history=N`, after N+k requests `requests` holds the latest N (and `polls` finds
    only those), while `stats` counts all N+k, faults and statuses included, exactly."""
    emulator = Emulator(history=3)
    task_id = emulator.add_task(Timeline.completed(), task_id="task_a")
    async with _in_process(emulator) as http:
        for _ in range(4):
            assert (await http.get(_query(task_id), headers=AUTH)).status_code == 200
        emulator.faults = Faults(rate_limit_rate=1.0)
        assert (await http.get(_query(task_id), headers=AUTH)).status_code == 429
        emulator.faults = Faults()
        assert (await http.get(_query(task_id))).status_code == 401
        assert (await http.get(_query("task_b"), headers=AUTH)).status_code == 404

    assert [(r.task_id, r.status_code, r.fault) for r in emulator.requests] == [
        ("task_a", 429, "429"),
        ("task_a", 401, None),
        ("task_b", 404, None),
    ]
    assert len(emulator.polls(task_id)) == 2
    assert emulator.stats == EmulatorStats(
        total=7, by_status={200: 4, 429: 1, 401: 1, 404: 1}, faults={"429": 1}
    )
    emulator.reset_stats()
    assert emulator.requests == []
    assert emulator.stats == EmulatorStats(total=0, by_status={}, faults={})


async def test_history_zero_keeps_nothing_and_still_hands_each_request_on() -> None:
    """`history=0` keeps no request, counts each, and `on_request` still sees every one, in
    order, before it is answered."""
    seen: list[tuple[str, int]] = []
    emulator = Emulator(history=0, on_request=lambda r: seen.append((r.method, r.status_code)))
    async with _in_process(emulator) as http:
        for _ in range(50):
            await http.post(f"{PREFIX}/v1/super-resolution/videos", json=CREATE, headers=AUTH)
        await http.get("/nowhere")
    assert emulator.requests == []
    assert emulator.stats == EmulatorStats(total=51, by_status={200: 50, 404: 1}, faults={})
    assert seen == [("POST", 200)] * 50 + [("GET", 404)]
    assert len(emulator.task_ids) == 50


def test_history_refuses_a_negative_bound() -> None:
    """A negative `history` is a mistake, refused at once."""
    with pytest.raises(ValueError, match="'history' must be >= 0 or None: -1"):
        Emulator(history=-1)


def test_the_library_emulator_keeps_every_request_by_default() -> None:
    """Tests read `requests` whole: `Emulator()` keeps them all."""
    assert Emulator().history is None


async def test_the_stats_endpoint_over_a_real_socket() -> None:
    """`GET /_emulator/stats` on a loopback server answers the exact counts and the number of
    tasks as JSON; it is neither recorded nor counted itself, nor faulted, and takes GET only."""
    emulator = Emulator(seed=1, history=1)
    async with EmulatorServer(emulator) as server, httpx.AsyncClient() as http:
        created = await http.post(
            f"{server.base_url}/v1/super-resolution/videos", json=CREATE, headers=AUTH
        )
        task_id = created.json()["id"]
        await http.get(f"{server.base_url}/v1/result/{task_id}", headers=AUTH)
        await http.get(f"{server.base_url}/v1/result/task_nope", headers=AUTH)
        emulator.faults = Faults(error_rate=1.0, latency=0.0)
        faulted = await http.get(f"{server.base_url}/v1/result/{task_id}", headers=AUTH)
        assert faulted.status_code in (500, 502, 503)

        answers = [await http.get(f"{server.url}/_emulator/stats") for _ in range(2)]
        refused = await http.post(f"{server.url}/_emulator/stats")

    expected = {
        "total": 4,
        "by_status": {"200": 2, "404": 1, str(faulted.status_code): 1},
        "faults": {"5xx": 1},
        "tasks": 1,
    }
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == expected
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET")
    assert emulator.stats.total == 4
    assert len(emulator.requests) == 1


async def test_the_emulator_command_keeps_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """`vsr-async emulator` builds an emulator that keeps no request but counts each, and hands
    each to the `-v` log: its memory stays flat however long it serves."""
    built: list[Emulator] = []
    monkeypatch.setattr(_app, "run", lambda _backend, _serve, app, *_: built.append(app))
    result = CliRunner().invoke(_app.cli, ["emulator", "--seed", "1"])
    assert result.exit_code == 0, result.output
    (emulator,) = built
    assert (emulator.history, emulator.on_request) == (0, _serve.log_request)

    emulator.on_request = None  # the log has its own test, through the real process
    async with _in_process(emulator) as http:
        for _ in range(20):
            await http.post(f"{PREFIX}/v1/super-resolution/videos", json=CREATE, headers=AUTH)
    assert emulator.requests == []
    assert emulator.stats.total == 20


async def _read_all(stream: ByteReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    async for chunk in stream:
        into.extend(chunk)


async def _first_line(stream: ByteReceiveStream | None) -> str:
    assert stream is not None
    buffer = b""
    while b"\n" not in buffer:
        buffer += await stream.receive()
    return buffer.decode().partition("\n")[0]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the test's own side: the CLI runs apart
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_the_emulator_command_logs_a_line_per_request_with_v(backend: str) -> None:
    """`vsr-async -v emulator` (on either backend) logs one line per request on stderr: method,
    path without its query, status, and the fault injected; its stats are served over HTTP and
    its stats requests are not logged."""
    command = [*CLI, "-v", "emulator", "--port", "0", "--seed", "1", "--backend", backend]
    command += ["--rate-limit-rate", "1"]  # every API request: 429, fault "429"
    stderr = bytearray()
    with anyio.fail_after(60):
        async with await anyio.open_process(
            command, env=cli_env(), stdin=subprocess.DEVNULL
        ) as process:
            base_url = (await _first_line(process.stdout)).partition("=")[2]
            origin = base_url.removesuffix(PREFIX)
            answers: list[httpx.Response] = []
            async with httpx.AsyncClient() as http:
                answers.append(await http.get(f"{base_url}/v1/result/task_x?x=1", headers=AUTH))
                answers.append(await http.get(f"{origin}/files/task_x.mp4?x=1"))
                stats = (await http.get(f"{origin}/_emulator/stats")).json()
            process.send_signal(signal.SIGINT)
            await _read_all(process.stderr, stderr)
            assert await process.wait() == 0

    assert [answer.status_code for answer in answers] == [429, 404]
    assert stats == {
        "total": 2,
        "by_status": {"404": 1, "429": 1},
        "faults": {"429": 1},
        "tasks": 0,
    }
    logged = [line for line in stderr.decode().splitlines() if line.startswith("Debug: ")]
    assert logged == [
        f"Debug: GET {PREFIX}/v1/result/task_x 429 (injected 429)",
        "Debug: GET /files/task_x.mp4 404",
    ]
    assert f"Its counts: {origin}/_emulator/stats." in stderr.decode()


def test_the_log_tells_a_quota_refusal_from_an_injected_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request refused over the quota is logged as such, not as an injected fault."""
    caplog.set_level("DEBUG", logger="vsr_async.emulator")
    for fault in ("quota", "429", None):
        _serve.log_request(
            RecordedRequest(
                time=0.0,
                method="GET",
                path=f"{PREFIX}/v1/result/t",
                task_id="t",
                status_code=429 if fault else 200,
                fault=fault,
                authorization=None,
            )
        )
    assert caplog.messages == [
        f"GET {PREFIX}/v1/result/t 429 (over the quota)",
        f"GET {PREFIX}/v1/result/t 429 (injected 429)",
        f"GET {PREFIX}/v1/result/t 200",
    ]
