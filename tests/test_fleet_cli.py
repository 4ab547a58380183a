"""The fleet from the command line, as a user runs it: ``vsr-async worker`` processes polling
the emulator, ``vsr-async watch --redis`` submitting and following, with a dead base URL.

Workers are real processes, killed (SIGKILL), paused past their lease (SIGSTOP, SIGCONT) and
stopped (SIGTERM). Every wait is for an event (a count in Redis, a process's exit) under a
generous deadline.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest
from _helpers import KEY
from _redis import RedisServer, redis_server

coredis = pytest.importorskip("coredis")

from vsr_async.fleet import RedisFleet  # noqa: E402
from vsr_async.testing import Emulator, EmulatorServer, Timeline  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

_names = itertools.count()
DEAD_URL = "http://127.0.0.1:9/nothing-listens-here"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def namespace() -> str:
    return f"cli{next(_names)}"


def environment(redis: RedisServer, base_url: str) -> dict[str, str]:
    return os.environ | {
        "VSR_API_KEY": KEY,
        "VSR_BASE_URL": base_url,
        "VSR_REDIS_URL": redis.url,
        "NO_COLOR": "1",
    }


class Workers:
    """``vsr-async worker`` processes, stopped (SIGKILL if need be) on the way out."""

    def __init__(self, env: dict[str, str], namespace: str) -> None:
        self.env = env
        self.namespace = namespace
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *options: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "vsr_async", "worker", "--namespace", self.namespace]
        process = subprocess.Popen(  # noqa: S603
            [*command, "--interval", "0.05", *options],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.communicate()


async def until(condition: Callable[[], object], seconds: float = 60.0) -> None:
    with anyio.fail_after(seconds):
        while True:
            met = condition()
            if hasattr(met, "__await__"):
                met = await met  # type: ignore[misc]
            if met:
                return
            await anyio.sleep(0.02)


async def owned(fleet: RedisFleet, worker: int | None = None) -> int:
    """Tasks pending in the group: all of them, or one worker process's (by its PID)."""
    try:
        consumers = await fleet.redis.xinfo_consumers(fleet.keys.queue, "workers")
    except coredis.exceptions.StreamConsumerGroupError:  # no worker has come yet
        return 0
    return sum(
        int(c["pending"] or 0)  # type: ignore[call-overload]
        for c in consumers
        if worker is None or f"-{worker}-" in str(c["name"])
    )


async def finals(fleet: RedisFleet) -> list[str]:
    """The task IDs of every final transition published, in order."""
    events = await fleet.redis.xrange(fleet.keys.events)
    return [
        str(e.field_values["id"])
        for e in events
        if '"status":"completed"' in e.field_values["data"]
        or '"status":"failed"' in e.field_values["data"]
    ]


async def test_watch_through_two_workers_with_a_dead_base_url(
    redis: RedisServer, namespace: str, anyio_backend: str, tmp_path: Path
) -> None:
    """`vsr-async watch --redis` sends nothing to the API (its base URL is dead): two workers
    poll, the watch prints every end and exits 0; SIGTERM stops each worker with 0, every
    task handed back (none left owned)."""
    emulator = Emulator()
    ids = [emulator.add_task(Timeline.completed(queued=0.2, processing=0.4)) for _ in range(20)]
    results = tmp_path / "results.jsonl"
    async with EmulatorServer(emulator) as server:
        env = environment(redis, server.base_url)
        workers = Workers(env, namespace)
        try:
            for _ in range(2):
                workers.start("--backend", anyio_backend)
            command = [sys.executable, "-m", "vsr_async", "watch", "--namespace", namespace]
            command += ["--plain", "--base-url", DEAD_URL, "--interval", "0.05", *ids]
            command += ["--jsonl", str(results)]
            with anyio.fail_after(120):
                done = await anyio.run_process(command, env=env, check=False)
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout.decode().count("completed") >= 20
            records = [json.loads(line) for line in results.read_text().splitlines()]
            ends = [r["task_id"] for r in records if r.get("status") == "completed"]
            assert sorted(ends) == sorted(ids)  # the same records as a plain watch's
            for process in workers.processes:
                process.send_signal(signal.SIGTERM)
            for process in workers.processes:
                _, err = process.communicate(timeout=60)
                assert process.returncode == 0, err
                assert "Stopped by SIGTERM" in err
        finally:
            workers.close()
    async with RedisFleet(redis.url, namespace) as fleet:
        assert await owned(fleet) == 0
        assert (await fleet.status()).workers == {}
        assert sorted(await finals(fleet)) == sorted(ids)


async def test_a_killed_workers_tasks_end_once_through_another(
    redis: RedisServer, namespace: str
) -> None:
    """A worker SIGKILLed while it owns every task: another takes them over once their
    lease (1 s) has run out, and each task ends exactly once."""
    emulator = Emulator()
    ids = [emulator.add_task(Timeline.completed(queued=2, processing=2)) for _ in range(30)]
    async with EmulatorServer(emulator) as server, RedisFleet(redis.url, namespace) as fleet:
        workers = Workers(environment(redis, server.base_url), namespace)
        try:
            first = workers.start("--lease", "1")
            await fleet.submit(ids, interval=0.05)
            await until(lambda: _equals(owned(fleet, first.pid), 30))
            first.kill()
            workers.start("--lease", "1")
            with anyio.fail_after(60):
                async with fleet.follow(ids) as transitions:
                    ended = [t.task_id async for t in transitions if t.is_final]
            assert sorted(ended) == sorted(ids)
            assert sorted(await finals(fleet)) == sorted(ids)  # once each
        finally:
            workers.close()


async def test_a_worker_paused_past_its_lease_publishes_nothing_twice(
    redis: RedisServer, namespace: str
) -> None:
    """A worker SIGSTOPped past its lease while another takes its tasks over, then SIGCONTed:
    its publishes are fenced, so each task ends exactly once, and a follower sees each change
    once."""
    emulator = Emulator()
    ids = [emulator.add_task(Timeline.completed(queued=1, processing=3)) for _ in range(20)]
    async with EmulatorServer(emulator) as server, RedisFleet(redis.url, namespace) as fleet:
        workers = Workers(environment(redis, server.base_url), namespace)
        try:
            paused = workers.start("--lease", "1")
            await fleet.submit(ids, interval=0.05)
            await until(lambda: _equals(owned(fleet, paused.pid), 20))
            paused.send_signal(signal.SIGSTOP)
            other = workers.start("--lease", "1")
            await until(lambda: _equals(owned(fleet, other.pid), 20))
            paused.send_signal(signal.SIGCONT)
            with anyio.fail_after(60):
                async with fleet.follow(ids) as transitions:
                    seen = [(t.task_id, t.status) async for t in transitions]
            assert len(seen) == len(set(seen))
            assert sorted(await finals(fleet)) == sorted(ids)
        finally:
            workers.close()


async def _equals(count: object, expected: int) -> bool:
    return await count == expected  # type: ignore[misc]


async def test_an_acl_user_and_password_work_and_the_password_is_never_shown(
    redis: RedisServer, namespace: str
) -> None:
    """A Redis URL with an ACL user and password: `fleet status` works, and neither its
    output, nor a worker's lines, nor the fleet's repr shows the password."""
    password = "s3cret-pw-0917"
    setuser = ["redis-cli", "-p", str(redis.port), "ACL", "SETUSER", "fleetuser", "on"]
    setuser += [f">{password}", "~*", "&*", "+@all"]
    await anyio.run_process(setuser)
    url = f"redis://fleetuser:{password}@127.0.0.1:{redis.port}/0"
    async with RedisFleet(url, namespace, api_key=KEY) as fleet:
        assert password not in repr(fleet)
        await fleet.submit(["t1", "t2"])
    env = environment(redis, DEAD_URL) | {"VSR_REDIS_URL": url}
    command = [sys.executable, "-m", "vsr_async", "fleet", "status", "--namespace", namespace]
    done = await anyio.run_process(command, env=env, check=False)
    shown = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, shown
    assert "tasks watched: 2 (0 owned, 2 waiting)" in shown
    assert password not in shown
    assert "fleetuser:***@" in shown
    workers = Workers(env, namespace)
    try:
        worker = workers.start()
        async with RedisFleet(url, namespace) as fleet:
            await until(lambda: _equals(owned(fleet), 2))
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        workers.close()
    assert "fleetuser:***@" in err
    assert password not in err


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (the workers' backend is theirs)
async def test_ten_thousand_ids_through_three_workers_each_end_once(
    redis: RedisServer, namespace: str
) -> None:
    """10,000 IDs (each ended already, so one poll each) through three worker processes:
    each ID's end is published exactly once."""
    emulator = Emulator(history=None)
    done = Timeline(((0.0, "completed"),))
    ids = [emulator.add_task(done) for _ in range(10_000)]
    async with EmulatorServer(emulator) as server, RedisFleet(redis.url, namespace) as fleet:
        workers = Workers(environment(redis, server.base_url), namespace)
        try:
            for _ in range(3):
                workers.start("--concurrency", "5000")
            await fleet.submit(ids, interval=0.05)
            with anyio.fail_after(300):
                async with fleet.follow(ids) as transitions:
                    ended = [t.task_id async for t in transitions]
            published = await finals(fleet)
        finally:
            workers.close()
    assert sorted(ended) == sorted(ids)
    assert len(published) == len(ids)
    assert sorted(published) == sorted(ids)


@pytest.mark.parametrize(
    "command",
    [["worker"], ["fleet", "status"], ["watch", "--plain", "task_1"]],
    ids=["worker", "status", "watch"],
)
async def test_an_unreachable_redis_is_one_error_line(command: list[str]) -> None:
    """Redis not there when a command starts: one `Error:` line naming the URL (without its
    password) and the setting to check, exit 2; no traceback."""
    url = f"redis://someone:pw-never-shown@127.0.0.1:{_closed_port()}/0"
    env = os.environ | {"VSR_API_KEY": KEY, "VSR_REDIS_URL": url, "VSR_BASE_URL": DEAD_URL}
    done = await anyio.run_process(
        [sys.executable, "-m", "vsr_async", *command], env=env, check=False
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Error: cannot reach Redis at redis://someone:***@127.0.0.1:" in err
    assert "check VSR_REDIS_URL" in err
    assert "pw-never-shown" not in err
    assert "Traceback" not in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # (closed again: nothing listens there)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("tls"), tls=True)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (the processes' backend is theirs)
async def test_tls_with_the_servers_ca_works_and_without_it_is_one_error_line(
    tls_redis: RedisServer, namespace: str
) -> None:
    """A worker and ``watch --redis`` over ``rediss://`` with the CA in the URL: the tasks end
    and ``watch`` exits 0. Without the CA, the certificate is refused: one ``Error:`` line
    that says so and where the CA goes, exit 2."""
    emulator = Emulator(history=None)
    done = Timeline(((0.0, "completed"),))
    ids = [emulator.add_task(done) for _ in range(3)]
    async with EmulatorServer(emulator) as server:
        workers = Workers(environment(tls_redis, server.base_url), namespace)
        try:
            workers.start()
            watch = [sys.executable, "-m", "vsr_async", "watch", "--plain", "--namespace"]
            with anyio.fail_after(120):
                watched = await anyio.run_process(
                    [*watch, namespace, *ids],
                    env=environment(tls_redis, DEAD_URL),
                    check=False,
                )
        finally:
            workers.close()
    out = watched.stdout.decode() + watched.stderr.decode()
    assert watched.returncode == 0, out
    assert out.count("completed") >= len(ids), out
    untrusted = environment(tls_redis, DEAD_URL) | {
        "VSR_REDIS_URL": tls_redis.url.partition("?")[0]
    }
    status = [sys.executable, "-m", "vsr_async", "fleet", "status", "--namespace", namespace]
    refused = await anyio.run_process(status, env=untrusted, check=False)
    err = refused.stderr.decode()
    assert refused.returncode == 2, err
    assert "Error: cannot reach Redis at rediss://" in err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert "ssl_ca_certs=PATH" in err
    assert "Traceback" not in err
