"""examples/fleet_webapp.py end to end, as a user deploys it, every part a process of its own:
uvicorn with two app workers, two ``vsr-async worker`` processes sharing ``--rate-limit``, a
real redis-server, and the emulator (in this process, on a real socket).

Browsers are streams opened with httpx; the emulator's record of requests says whether the
workers held the shared rate limit.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from _doc_samples import ROOT
from _helpers import KEY
from _redis import RedisServer, redis_server

pytest.importorskip("coredis")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from vsr_async.testing import Emulator, EmulatorServer, Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

_names = itertools.count()
RATE_LIMIT = 20.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def events_of(http: httpx.AsyncClient, task_id: str) -> list[dict[str, object]]:
    """One browser: the stream of a task's events, read to its end."""
    async with http.stream("GET", f"/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines()]
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]


async def test_the_fleet_web_app_under_uvicorn_workers(redis: RedisServer) -> None:
    """40 browsers on two app processes follow 40 tasks to their end; two workers poll them,
    and the API never sees more than the shared rate limit."""
    namespace = f"web{next(_names)}"
    emulator = Emulator()
    ids = [emulator.add_task(Timeline.completed(queued=1, processing=2)) for _ in range(40)]
    port = free_port()
    async with EmulatorServer(emulator) as server:
        env = os.environ | {
            "VSR_API_KEY": KEY,
            "VSR_BASE_URL": server.base_url,
            "VSR_REDIS_URL": redis.url,
            "VSR_NAMESPACE": namespace,
        }
        worker = [sys.executable, "-m", "vsr_async", "worker", "--namespace", namespace]
        worker += ["--interval", "0.05", "--rate-limit", str(RATE_LIMIT)]
        uvicorn = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples")]
        uvicorn += ["fleet_webapp:app", "--workers", "2", "--port", str(port)]
        processes = [
            subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)  # noqa: S603, ASYNC220
            for command in (worker, worker, uvicorn)
        ]
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                with anyio.fail_after(60):  # uvicorn starting
                    while True:
                        try:
                            await http.get("/docs")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.1)
                streams: dict[str, list[dict[str, object]]] = {}

                async def browse(task_id: str) -> None:
                    streams[task_id] = await events_of(http, task_id)

                with anyio.fail_after(120):
                    async with anyio.create_task_group() as browsers:
                        for task_id in ids:
                            browsers.start_soon(browse, task_id)
                answer = await http.get(f"/tasks/{ids[0]}", params={"timeout": 5})
        finally:
            for process in processes:
                process.terminate()
            logs = [process.communicate(timeout=60)[1] for process in processes]
            print("\n".join(logs))  # shown if the test fails
    for task_id in ids:
        statuses = [event["status"] for event in streams[task_id]]
        assert statuses[-1] == "completed", statuses
        assert len(statuses) == len(set(statuses))  # each change once
    assert answer.status_code == 200
    assert answer.json()["status"] == "completed"
    times = [request.time for request in emulator.requests]
    for start in range(0, len(times) - 60, 10):  # any 60 requests in a row
        seconds = times[start + 60] - times[start]
        assert 60 / seconds <= RATE_LIMIT * 1.25, f"60 requests in {seconds:.2f} s"
