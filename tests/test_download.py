"""`AsyncVSRClient.download`: streamed, atomic, resumable, and the key never leaves the API host.

Over real loopback sockets: the emulator serves the API and the result files (with ETag, ranges,
expiring URLs and cut-off bodies); small ASGI apps play the storage hosts that misbehave.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import os
import string
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import anyio
import httpx
import pytest
from _helpers import HTTPX_LEAVES_ITS_ITERATORS, KEY
from hypothesis import given
from hypothesis import strategies as st

import vsr_async._download
from vsr_async import (
    APIConnectionError,
    AsyncVSRClient,
    DownloadError,
    ResultExpiredError,
    ResultNotReadyError,
    ServerError,
    Task,
    TaskFailedError,
    VSRError,
)
from vsr_async._config import MAX_NAME_LENGTH, MAX_REDIRECTS
from vsr_async._download import destination
from vsr_async._retry import RetryPolicy
from vsr_async.testing import Emulator, EmulatorServer, Timeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from vsr_async.testing import RecordedRequest
    from vsr_async.testing._emulator import Receive, Scope, Send

pytestmark = pytest.mark.anyio

DONE = Timeline.completed(queued=0, processing=0)
SIZE = 3 * 1024 * 1024 + 123  # a few write batches, and not a whole number of them


@contextlib.asynccontextmanager
async def api(
    emulator: Emulator, **options: Any
) -> AsyncIterator[tuple[AsyncVSRClient, EmulatorServer]]:
    async with (
        EmulatorServer(emulator) as server,
        AsyncVSRClient(KEY, base_url=server.base_url, **options) as client,
    ):
        yield client, server


def asgi(
    handle: Callable[[Scope, Receive, Send], Any],
) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app answering HTTP requests with ``handle``, and the lifespan protocol."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    return app


def files(emulator: Emulator) -> list[RecordedRequest]:
    return [r for r in emulator.requests if r.path.startswith("/files/")]


def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry without sleeping out the delays (still computed, so a bad argument fails)."""

    delay = RetryPolicy.delay

    def no_delay(policy: RetryPolicy, exc: VSRError, attempt: int) -> float:
        return delay(policy, exc, attempt) * 0

    monkeypatch.setattr(RetryPolicy, "delay", no_delay)


# -- the happy path


async def test_downloads_by_id_into_a_directory(tmp_path: Path) -> None:
    """An ID is queried, its file streamed into DIR/<id>.mp4, progress reported to the end."""
    emulator = Emulator(timeline=DONE, video_size=SIZE)
    task_id = emulator.add_task()
    seen: list[tuple[int, int | None]] = []
    async with api(emulator) as (client, _):
        path = await client.download(task_id, tmp_path, progress=lambda *a: seen.append(a))
    assert path == tmp_path / f"{task_id}.mp4"
    assert path.read_bytes() == emulator.video_bytes(task_id)
    assert sorted(tmp_path.iterdir()) == [path]  # no part file or validator left
    assert seen[0] == (0, SIZE)
    assert seen[-1] == (SIZE, SIZE)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


async def test_takes_a_task_or_a_url(tmp_path: Path) -> None:
    """A `Task` is not queried again; a URL is named after its last path segment."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        task = await client.get_task(task_id)
        emulator.reset_stats()
        by_task = await client.download(task, tmp_path / "mine.bin")
        assert [r.path for r in emulator.requests] == [files(emulator)[0].path]
        assert task.video_url is not None
        by_url = await client.download(task.video_url, tmp_path)
    assert by_task == tmp_path / "mine.bin"
    assert by_url == tmp_path / f"{task_id}.mp4"
    assert by_task.read_bytes() == by_url.read_bytes() == emulator.video_bytes(task_id)


async def test_a_task_without_a_result_is_an_error(tmp_path: Path) -> None:
    """A running task raises `ResultNotReadyError`, a failed one `TaskFailedError`, and
    nothing is written."""
    emulator = Emulator()
    running = emulator.add_task(Timeline([(0, "queued"), (60, "completed")]))
    failed = emulator.add_task(Timeline.failed(queued=0, processing=0))
    async with api(emulator) as (client, _):
        with pytest.raises(ResultNotReadyError, match="queued") as not_ready:
            await client.download(running, tmp_path)
        with pytest.raises(TaskFailedError):
            await client.download(failed, tmp_path)
    assert not_ready.value.task.id == running
    assert list(tmp_path.iterdir()) == []
    assert files(emulator) == []


async def test_an_existing_file_is_kept_unless_overwrite(tmp_path: Path) -> None:
    """An existing destination raises before any download; ``overwrite=True`` replaces it."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    async with api(emulator) as (client, _):
        with pytest.raises(FileExistsError, match="overwrite=True") as exists:
            await client.download(task_id, target)
        assert exists.value.filename == str(target)
        assert target.read_bytes() == b"precious"
        assert files(emulator) == []
        await client.download(task_id, target, overwrite=True)
    assert target.read_bytes() == emulator.video_bytes(task_id)


async def test_a_missing_parent_directory_is_refused(tmp_path: Path) -> None:
    """``dest`` in a directory that does not exist fails before the download, naming it."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            await client.download(task_id, tmp_path / "nowhere" / "out.mp4")
    assert files(emulator) == []


# -- the key stays with the API


async def test_the_key_never_reaches_the_storage_hosts(tmp_path: Path) -> None:
    """Result files on another host, which redirects to a third: neither sees the key,
    whether the client owns its connection pool or was given one with the key in its headers."""
    storage = Emulator(timeline=DONE)
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    storage.add_task(task_id=task_id)
    async with (
        EmulatorServer(storage) as final,
        EmulatorServer(emulator) as first_hop,
        api(emulator) as (client, _),
        httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http,
        AsyncVSRClient(KEY, base_url=client.base_url, http_client=http) as shared,
    ):
        emulator.files_origin = first_hop.url
        emulator.files_redirect = final.url
        await client.download(task_id, tmp_path / "a.mp4")
        await shared.download(task_id, tmp_path / "b.mp4")
    queries = [r for r in emulator.requests if r.task_id]
    assert {r.authorization for r in queries} == {f"Bearer {KEY}"}
    redirected = files(emulator)
    assert [r.status_code for r in redirected] == [302, 302]
    assert [r.status_code for r in files(storage)] == [200, 200]
    for request in redirected + files(storage):
        assert request.authorization is None
        assert KEY not in str(request.headers)
    assert (tmp_path / "b.mp4").read_bytes() == storage.video_bytes(task_id)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x.mp4", "data:video/mp4;base64,AAAA"]
)
async def test_only_http_result_urls_are_fetched(tmp_path: Path, url: str) -> None:
    """A result URL that is not http(s) is refused before any request."""
    async with AsyncVSRClient(KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="http"):
            await client.download(url, tmp_path)
    assert list(tmp_path.iterdir()) == []


def redirecting_to(location: Callable[[int], str]) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app answering its n-th request with a 302 to ``location(n)``."""
    count = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal count
        count += 1
        headers = [(b"location", location(count).encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    wrapped = asgi(app)
    wrapped.count = lambda: count  # type: ignore[attr-defined]
    return wrapped


async def test_a_result_url_from_the_server_is_checked(tmp_path: Path) -> None:
    """A completed task whose ``video_url`` is not http(s) is a `DownloadError`, not a fetch."""
    task = Task(id="task_1", status="completed", video_url="file:///etc/passwd")
    async with AsyncVSRClient(KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(DownloadError, match="refuse"):
            await client.download(task, tmp_path)


async def test_redirects_are_checked_and_bounded(tmp_path: Path) -> None:
    """A redirect to ``file:`` is refused; an endless chain stops after `MAX_REDIRECTS`."""
    to_file = redirecting_to(lambda _: "file:///etc/passwd")
    endless = redirecting_to(lambda n: f"/loop/{n}.mp4")
    async with (
        EmulatorServer(to_file) as refused,  # type: ignore[arg-type]
        EmulatorServer(endless) as looping,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=refused.url) as client,
    ):
        with pytest.raises(DownloadError, match="refused URL"):
            await client.download(f"{refused.url}/x.mp4", tmp_path)
        with pytest.raises(DownloadError, match=f"more than {MAX_REDIRECTS}"):
            await client.download(f"{looping.url}/x.mp4", tmp_path)
    assert endless.count() == MAX_REDIRECTS + 1  # type: ignore[attr-defined]
    assert not any(p.name.endswith(".mp4") for p in tmp_path.iterdir())


# -- file names


@given(
    task_id=st.text(min_size=1, max_size=600),
    path=st.text(alphabet=string.printable + "é☃\x00", max_size=300),
)
def test_made_up_names_stay_inside_the_directory(task_id: str, path: str) -> None:
    """Whatever the ID or the URL's path, the file lands directly in ``dest``, with a short
    visible name of safe characters."""
    dest = Path.cwd()
    url = "https://cdn.example/" + quote(path, safe="/")
    for name_from in (task_id, None):
        made = destination(dest, name_from, url)
        assert made.parent == dest
        assert 0 < len(made.name) <= MAX_NAME_LENGTH
        assert not made.name.startswith(".")
        assert set(made.name) <= set(string.ascii_letters + string.digits + "._-")


def digest(original: str) -> str:
    return hashlib.sha256(original.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("task_id", "url", "name"),
    [
        ("task_1", "https://cdn.example/out/video.MOV?sig=1", "task_1.mov"),
        ("task_1", "https://cdn.example/out/video", "task_1.mp4"),
        ("task 2", "https://cdn.example/x.mp4", f"task_2-{digest('task 2')}.mp4"),
        ("task_2", "https://cdn.example/x.mp4", "task_2.mp4"),
        (None, "https://cdn.example/a/..%2F..%2Fetc%2Fpasswd", "passwd.mp4"),
        (None, "https://cdn.example/", f"result-{digest('')}.mp4"),
        ("..", "https://cdn.example/x.mp4", f"result-{digest('..')}.mp4"),
        ("a" * 500, "https://cdn.example/x.webm", "a" * 182 + f"-{digest('a' * 500)}.webm"),
    ],
)
def test_names_from_ids_and_urls(task_id: str | None, url: str, name: str) -> None:
    """The name is the ID (or the URL's last segment) plus the URL's extension, or ``.mp4``;
    a name that had to change carries a hash of the original."""
    assert destination(Path.cwd(), task_id, url) == Path.cwd() / name


@given(st.lists(st.text(min_size=1, max_size=300), min_size=2, max_size=2, unique=True))
def test_two_ids_never_share_a_file(ids: list[str]) -> None:
    """Distinct IDs get distinct names, however much of them had to be replaced."""
    first, second = (destination(Path.cwd(), i, "https://cdn.example/x.mp4") for i in ids)
    assert first != second


# -- broken transfers


async def test_a_cut_transfer_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a dropped connection, the next request asks for the rest, validated by the ETag;
    the bytes already on disk are not fetched again."""
    no_sleep(monkeypatch)
    emulator = Emulator(timeline=DONE, video_size=SIZE, cut_after=SIZE // 3, cuts=2)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        path = await client.download(task_id, tmp_path)
    assert path.read_bytes() == emulator.video_bytes(task_id)
    first, second, third = files(emulator)
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={SIZE // 3}-"
    assert third.headers["range"] == f"bytes={2 * (SIZE // 3)}-"
    assert second.headers["if-range"] == third.headers["if-range"] != ""
    assert [r.status_code for r in (first, second, third)] == [200, 206, 206]


async def test_a_later_call_resumes_the_part_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download that gave up leaves ``.part`` (and no file); the next call continues it."""
    no_sleep(monkeypatch)
    emulator = Emulator(timeline=DONE, video_size=SIZE, cut_after=1000, cuts=1)
    task_id = emulator.add_task()
    target = tmp_path / "out.mp4"
    async with (
        EmulatorServer(scripted([None, 503, 503], emulator)) as storage,  # type: ignore[arg-type]
        api(emulator, max_retries=1) as (client, _),
    ):
        emulator.files_origin = storage.url
        with pytest.raises(ServerError, match="503"):
            await client.download(task_id, target)
        assert not target.exists()
        assert (tmp_path / "out.mp4.part").stat().st_size == 1000
        emulator.reset_stats()
        await client.download(task_id, target)
    assert target.read_bytes() == emulator.video_bytes(task_id)
    assert [r.headers.get("range") for r in files(emulator)] == ["bytes=1000-"]
    assert sorted(tmp_path.iterdir()) == [target]


async def test_a_changed_file_starts_over(tmp_path: Path) -> None:
    """A part fetched under another ETag is discarded when the server sends the whole file."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    target = tmp_path / "out.mp4"
    (tmp_path / "out.mp4.part").write_bytes(b"x" * 5000)
    (tmp_path / "out.mp4.part.etag").write_text('"an-older-version"')
    async with api(emulator) as (client, _):
        await client.download(task_id, target)
    assert target.read_bytes() == emulator.video_bytes(task_id)
    (request,) = files(emulator)
    assert request.headers["if-range"] == '"an-older-version"'
    assert request.status_code == 200


async def test_a_part_without_its_validator_is_not_trusted(tmp_path: Path) -> None:
    """Bytes whose origin cannot be checked are dropped, not completed with someone else's."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    target = tmp_path / "out.mp4"
    (tmp_path / "out.mp4.part").write_bytes(b"x" * 5000)
    async with api(emulator) as (client, _):
        await client.download(task_id, target)
    assert target.read_bytes() == emulator.video_bytes(task_id)
    assert "range" not in files(emulator)[0].headers


async def test_a_part_already_whole_is_published(tmp_path: Path) -> None:
    """If the part holds every byte, the server's 416 finishes the download without a body."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        url = (await client.get_task(task_id)).video_url or ""
        etag = (await client._session._http.head(url)).headers["etag"]
        (tmp_path / "out.mp4.part").write_bytes(emulator.video_bytes(task_id))
        (tmp_path / "out.mp4.part.etag").write_text(etag)
        emulator.reset_stats()
        await client.download(task_id, tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == emulator.video_bytes(task_id)
    assert [r.status_code for r in files(emulator)] == [416]


def short_body(length: int, sent: int) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app announcing ``length`` bytes and closing after ``sent``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", str(length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"v" * sent, "more_body": True})
        raise RuntimeError("cut")  # hypercorn drops the connection

    return asgi(app)


async def test_a_short_body_is_an_error_not_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer bytes than ``Content-Length``, every time: an error after the retries, no file."""
    no_sleep(monkeypatch)
    async with (
        EmulatorServer(short_body(1000, 10)) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url, max_retries=2) as client,
    ):
        with pytest.raises(APIConnectionError):
            await client.download(f"{server.url}/x.mp4", tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def scripted(
    statuses: list[int | None], then: Callable[[Scope, Receive, Send], Any]
) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app answering its n-th request with ``statuses[n]`` (``None``: pass it to
    ``then``), and passing every request after the list to ``then``."""
    script = iter(statuses)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = next(script, None) if scope["type"] == "http" else None
        if status is None:
            await then(scope, receive, send)
            return
        headers = [(b"content-length", b"0"), (b"retry-after", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_transient_storage_errors_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503s from the storage host are retried up to ``max_retries``, then raised."""
    no_sleep(monkeypatch)
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with (
        EmulatorServer(scripted([503, 503], emulator)) as storage,  # type: ignore[arg-type]
        api(emulator) as (client, _),
    ):
        emulator.files_origin = storage.url
        await client.download(task_id, tmp_path)
        emulator.files_origin = None
    assert (tmp_path / f"{task_id}.mp4").read_bytes() == emulator.video_bytes(task_id)
    async with (
        EmulatorServer(scripted([503] * 9, emulator)) as storage,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=storage.url, max_retries=2) as client,
    ):
        with pytest.raises(ServerError, match="503"):
            await client.download(f"{storage.url}/files/{task_id}.mp4", tmp_path / "again.mp4")


async def test_an_expired_url_is_fetched_afresh_once(tmp_path: Path) -> None:
    """A 403 for an expired URL: given an ID or a Task, the task is queried again for a fresh
    URL; given only the URL, `ResultExpiredError` is raised at once."""
    now = [0.0]
    emulator = Emulator(timeline=DONE, result_ttl=60, clock=lambda: now[0])
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        task = await client.get_task(task_id)
        now[0] += 61
        assert task.video_url is not None
        with pytest.raises(ResultExpiredError, match="403") as expired:
            await client.download(task.video_url, tmp_path)
        assert "?" not in str(expired.value)  # the URL's signature is not repeated
        emulator.reset_stats()
        path = await client.download(task, tmp_path)
    assert path.read_bytes() == emulator.video_bytes(task_id)
    assert [(r.task_id, r.status_code) for r in emulator.requests] == [
        (None, 403),
        (task_id, 200),
        (None, 200),
    ]


async def test_a_url_expiring_again_is_given_up(tmp_path: Path) -> None:
    """The fresh URL is tried once: if it is refused too, `ResultExpiredError`."""
    emulator = Emulator(timeline=DONE, result_ttl=0)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        with anyio.fail_after(5), pytest.raises(ResultExpiredError):
            await client.download(task_id, tmp_path)
    assert [r.status_code for r in files(emulator)] == [403, 403]


# -- cancellation and concurrency


def stalling(sent: int) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app sending ``sent`` of 10 MB, then nothing more until the client gives up."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"10000000"), (b"etag", b'"v1"')]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"v" * sent, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    return asgi(app)


async def test_cancelling_keeps_what_arrived_and_nothing_else(tmp_path: Path) -> None:
    """A cancelled download leaves no file, but a part with every byte received, and refuses
    a second download into the same file while it runs."""
    received = anyio.Event()
    target = tmp_path / "out.mp4"

    def progress(done: int, _: int | None) -> None:
        if done == 12345:
            received.set()

    async with (
        EmulatorServer(stalling(12345)) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(
            functools.partial(client.download, progress=progress), f"{server.url}/x.mp4", target
        )
        await received.wait()
        with pytest.raises(RuntimeError, match="already being downloaded"):
            await client.download(f"{server.url}/x.mp4", target)
        task_group.cancel_scope.cancel()
    assert not target.exists()
    assert (tmp_path / "out.mp4.part").read_bytes() == b"v" * 12345
    assert (tmp_path / "out.mp4.part.etag").read_text() == '"v1"'


async def test_a_closed_client_refuses(tmp_path: Path) -> None:
    """``download`` on a closed client is misuse, raised before anything is written."""
    client = AsyncVSRClient(KEY, base_url="http://127.0.0.1:9")
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.download("https://cdn.example/x.mp4", tmp_path)


async def test_the_wrong_kind_of_source_is_a_type_error(tmp_path: Path) -> None:
    """A source that is neither a Task nor a string says what was expected."""
    async with AsyncVSRClient(KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(TypeError, match="Task, a task ID or a URL"):
            await client.download(42, tmp_path)  # type: ignore[arg-type]


def answering(
    status: int, headers: list[tuple[bytes, bytes]], content: bytes
) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app giving every request the same answer."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    return asgi(app)


@pytest.mark.parametrize(
    ("headers", "total"),
    [
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"5"), (b"etag", b'W/"weak"')], 5),
        ([(b"content-length", b"5"), (b"content-encoding", b"identity")], 5),
    ],
    ids=["no-length", "weak-etag", "identity-encoding"],
)
async def test_what_the_server_does_not_vouch_for(
    tmp_path: Path, headers: list[tuple[bytes, bytes]], total: int | None
) -> None:
    """Without a length the total is reported as unknown; a weak ETag is not kept as a
    validator (it cannot vouch for bytes)."""
    seen: list[tuple[int, int | None]] = []
    async with (
        EmulatorServer(answering(200, headers, b"video")) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
    ):
        url = f"{server.url}/x.mp4"
        path = await client.download(url, tmp_path, progress=lambda *a: seen.append(a))
    assert path.read_bytes() == b"video"
    assert seen[-1] == (5, total)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mp4"]


async def test_a_range_we_did_not_ask_for_is_refused(tmp_path: Path) -> None:
    """A 206 starting elsewhere than the bytes on disk would splice two files: refused."""
    (tmp_path / "x.mp4.part").write_bytes(b"v" * 10)
    (tmp_path / "x.mp4.part.etag").write_text('"v1"')
    headers = [(b"content-range", b"bytes 0-4/15"), (b"content-length", b"5")]
    async with (
        EmulatorServer(answering(206, headers, b"video")) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
    ):
        with pytest.raises(DownloadError, match="range we did not ask for"):
            await client.download(f"{server.url}/x.mp4", tmp_path)
    assert not (tmp_path / "x.mp4").exists()


async def test_a_416_for_a_part_that_is_not_whole_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part longer than the file (it changed without its ETag) is dropped and fetched anew."""
    no_sleep(monkeypatch)
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    (tmp_path / "out.mp4.part").write_bytes(b"x" * (emulator.video_size + 10))
    (tmp_path / "out.mp4.part.etag").write_text(emulator.etag(task_id))
    async with api(emulator) as (client, _):
        await client.download(task_id, tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == emulator.video_bytes(task_id)
    assert [r.status_code for r in files(emulator)] == [416, 200]


async def test_an_unreachable_storage_host_is_retried_then_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection errors are retried ``max_retries`` times, then raised as `APIConnectionError`
    without the URL's signature."""
    no_sleep(monkeypatch)
    attempts: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        attempts.append(request)

    async with (
        httpx.AsyncClient(event_hooks={"request": [count]}) as http,
        AsyncVSRClient(KEY, base_url="http://127.0.0.1:9", http_client=http, max_retries=2) as c,
    ):
        with pytest.raises(APIConnectionError, match=r"x\.mp4 failed") as failed:
            await c.download("http://127.0.0.1:9/x.mp4?sig=secret", tmp_path)
    assert "secret" not in str(failed.value)
    assert len(attempts) == 3


# -- what the review found: servers that do not keep their promises


async def test_a_206_for_another_version_is_not_spliced(tmp_path: Path) -> None:
    """A server ignoring ``If-Range`` sends the rest of a new version: it is not appended to
    the old bytes; the download starts over."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    (tmp_path / "out.mp4.part").write_bytes(emulator.video_bytes(task_id, 0, 100))
    (tmp_path / "out.mp4.part.etag").write_text('"the-old-version"')
    new = b"N" * 150
    headers = [(b"content-range", b"bytes 100-149/150"), (b"etag", b'"new"')]
    script = scripted([], emulator)
    served = [
        answering(206, [*headers, (b"content-length", b"50")], new[100:]),
        answering(200, [(b"content-length", b"150"), (b"etag", b'"new"')], new),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and served:
            await served.pop(0)(scope, receive, send)
        else:
            await script(scope, receive, send)

    async with (
        EmulatorServer(app) as storage,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=storage.url) as client,
    ):
        await client.download(f"{storage.url}/out.mp4", tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == new


async def test_bytes_without_a_validator_are_never_resumed(tmp_path: Path) -> None:
    """An empty validator file, or a weak ETag, vouches for nothing: no ``Range`` is sent, and
    a cut transfer starts over."""
    emulator = Emulator(timeline=DONE, video_size=SIZE, cut_after=1000, cuts=1)
    task_id = emulator.add_task()
    (tmp_path / "out.mp4.part").write_bytes(b"x" * 10)
    (tmp_path / "out.mp4.part.etag").write_text("")
    async with api(emulator) as (client, _):
        await client.download(task_id, tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == emulator.video_bytes(task_id)
    assert [r.headers.get("range") for r in files(emulator)] == [None, "bytes=1000-"]

    seen: list[dict[str, str]] = []
    weak = [(b"content-length", b"10"), (b"etag", b'W/"weak"')]

    async def cut(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": weak})
        await send({"type": "http.response.body", "body": b"12345", "more_body": len(seen) == 1})
        if len(seen) > 1:
            return
        # the first answer stops halfway: hypercorn drops the connection

    async def whole(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": weak})
        await send({"type": "http.response.body", "body": b"0123456789"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await (cut if not seen else whole)(scope, receive, send)

    async with (
        EmulatorServer(asgi(app)) as storage,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=storage.url) as client,
    ):
        await client.download(f"{storage.url}/w.mp4", tmp_path / "w.mp4")
    assert (tmp_path / "w.mp4").read_bytes() == b"0123456789"
    assert [h.get("range") for h in seen] == [None, None]


@HTTPX_LEAVES_ITS_ITERATORS
async def test_an_encoded_body_is_decoded_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    """A storage host that gzips anyway gives the decoded file (not resumable, so no validator
    is kept); a body that does not decode is a `DownloadError`, not an httpx error."""
    content = gzip.compress(b"video" * 1000)
    headers = [
        (b"content-encoding", b"gzip"),
        (b"content-length", str(len(content)).encode()),
        (b"etag", b'"v1"'),
    ]
    async with (
        EmulatorServer(answering(200, headers, content)) as good,  # type: ignore[arg-type]
        EmulatorServer(answering(200, headers[:1], b"not gzip at all")) as bad,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=good.url) as client,
    ):
        path = await client.download(f"{good.url}/g.mp4", tmp_path)
        with pytest.raises(DownloadError, match="could not be decoded"):
            await client.download(f"{bad.url}/b.mp4", tmp_path)
    assert path.read_bytes() == b"video" * 1000
    assert not (tmp_path / "b.mp4").exists()


async def test_a_callers_client_following_redirects_does_not_bypass_the_checks(
    tmp_path: Path,
) -> None:
    """``follow_redirects=True`` on a caller's client: our redirect checks still apply."""
    endless = redirecting_to(lambda n: f"/loop/{n}.mp4")
    async with (
        EmulatorServer(endless) as looping,  # type: ignore[arg-type]
        httpx.AsyncClient(follow_redirects=True) as http,
        AsyncVSRClient(KEY, base_url=looping.url, http_client=http) as client,
    ):
        with pytest.raises(DownloadError, match=f"more than {MAX_REDIRECTS}"):
            await client.download(f"{looping.url}/x.mp4", tmp_path)


async def test_an_id_with_a_colon_is_an_id(tmp_path: Path) -> None:
    """``job:42`` is queried as a task, not refused as a URL with an unknown scheme."""
    emulator = Emulator(timeline=DONE)
    emulator.add_task(task_id="job:42")
    async with api(emulator) as (client, _):
        path = await client.download("job:42", tmp_path)
    assert path.read_bytes() == emulator.video_bytes("job:42")


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
async def test_a_file_appearing_during_the_download_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, links: bool
) -> None:
    """Without ``overwrite``, a file created at the destination while the download ran is not
    replaced, on a filesystem with hard links or without: `FileExistsError`, and the result
    stays in the part file."""
    if not links:
        without_hard_links(monkeypatch, errno.EPERM)
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    target = tmp_path / "out.mp4"

    def appear(done: int, total: int | None) -> None:
        if done == total and not target.exists():
            target.write_bytes(b"someone else's")

    async with api(emulator) as (client, _):
        with pytest.raises(FileExistsError, match="appeared during the download"):
            await client.download(task_id, target, progress=appear)
    assert target.read_bytes() == b"someone else's"
    assert (tmp_path / "out.mp4.part").read_bytes() == emulator.video_bytes(task_id)


async def test_progress_resets_the_retry_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More cuts than ``max_retries``, each bringing bytes: the download still completes."""
    no_sleep(monkeypatch)
    emulator = Emulator(timeline=DONE, video_size=SIZE, cut_after=SIZE // 8, cuts=5)
    task_id = emulator.add_task()
    async with api(emulator, max_retries=1) as (client, _):
        path = await client.download(task_id, tmp_path)
    assert path.read_bytes() == emulator.video_bytes(task_id)
    assert len(files(emulator)) == 6


async def test_a_raising_progress_callback_stops_the_download_cleanly(tmp_path: Path) -> None:
    """An exception from ``progress`` propagates as it is, the body is closed (no warning on
    trio), and the bytes so far stay in the part."""
    emulator = Emulator(timeline=DONE, video_size=SIZE)
    task_id = emulator.add_task()

    def explode(done: int, _: int | None) -> None:
        if done > 0:
            raise KeyError("stop")

    async with api(emulator) as (client, _):
        with pytest.raises(KeyError, match="stop"):
            await client.download(task_id, tmp_path / "out.mp4", progress=explode)
    assert not (tmp_path / "out.mp4").exists()


async def test_a_failed_write_stops_the_download_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write failing in the worker thread (a full disk) propagates as it is, not in an
    exception group, the body is closed, and the batches written before it stay in the part."""
    emulator = Emulator(timeline=DONE, video_size=SIZE)
    task_id = emulator.add_task()
    append = vsr_async._download._append
    written: list[int] = []

    def fill_up(file: BinaryIO, batch: list[bytes], offset: int) -> int:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(append(file, batch, offset))
        return written[0]

    monkeypatch.setattr(vsr_async._download, "_append", fill_up)
    async with api(emulator) as (client, _):
        with pytest.raises(OSError, match="No space left") as failed:
            await client.download(task_id, tmp_path / "out.mp4")
    assert failed.value.errno == errno.ENOSPC
    assert not (tmp_path / "out.mp4").exists()
    part = (tmp_path / "out.mp4.part").read_bytes()
    assert part == emulator.video_bytes(task_id)[: written[0]]


# -- destinations ending with a separator, whole 206s, filesystems without hard links, secrets


async def test_a_dest_ending_with_a_separator_is_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"out/"`` names a directory, created with its parents once the result is known to exist,
    and the file is saved in it as ``<id>.mp4``: never as a file named ``out``."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    running = emulator.add_task(Timeline([(0, "queued"), (60, "completed")]))
    monkeypatch.chdir(tmp_path)
    async with api(emulator) as (client, _):
        with pytest.raises(ResultNotReadyError):
            await client.download(running, "later/")
        relative = await client.download(task_id, "out/")
        nested = await client.download(task_id, f"{tmp_path}{os.sep}a{os.sep}b{os.sep}")
    assert not (tmp_path / "later").exists()
    assert relative == Path("out", f"{task_id}.mp4")
    assert nested == tmp_path / "a" / "b" / f"{task_id}.mp4"
    for path in (tmp_path / relative, nested):
        assert path.read_bytes() == emulator.video_bytes(task_id)
        assert list(path.parent.iterdir()) == [path]


async def test_a_dest_without_a_separator_needs_its_directory(tmp_path: Path) -> None:
    """Without a trailing separator ``dest`` is a file: its missing directory is not created,
    but named in a `FileNotFoundError`, before any download."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        with pytest.raises(FileNotFoundError, match="missing is not a directory"):
            await client.download(task_id, f"{tmp_path}/missing/out")
    assert list(tmp_path.iterdir()) == []
    assert files(emulator) == []


WHOLE_206 = [
    (b"content-range", b"bytes 0-14/15"),
    (b"content-length", b"15"),
    (b"etag", b'"v1"'),
]


@pytest.mark.parametrize(
    "part", [None, b"untrusted", b"0123456789"], ids=["fresh", "no-validator", "resumed"]
)
async def test_a_206_of_the_whole_file_is_the_whole_file(
    tmp_path: Path, part: bytes | None
) -> None:
    """``206`` with ``bytes 0-14/15``, as some CDNs answer even a request without ``Range``,
    is the whole file: saved as it is (a part on disk is replaced, never spliced), size 15."""
    if part is not None:
        (tmp_path / "x.mp4.part").write_bytes(part)
    if part == b"0123456789":  # a validated part: the request asks for the rest
        (tmp_path / "x.mp4.part.etag").write_text('"v1"')
    seen: list[tuple[int, int | None]] = []
    async with (
        EmulatorServer(answering(206, WHOLE_206, b"ABCDEFGHIJKLMNO")) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
    ):
        url = f"{server.url}/x.mp4"
        path = await client.download(url, tmp_path, progress=lambda *a: seen.append(a))
    assert path.read_bytes() == b"ABCDEFGHIJKLMNO"
    assert seen[-1] == (15, 15)
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "content_range",
    [b"bytes 0-4/15", b"bytes 0-4/*", b"bytes 5-9/15", None],
    ids=["first-bytes", "unknown-size", "middle", "no-content-range"],
)
async def test_a_206_of_a_part_when_all_was_asked_is_refused(
    tmp_path: Path, content_range: bytes | None
) -> None:
    """A ``206`` that is not the whole file, to a request without ``Range``, would make a
    file of a fragment: a `DownloadError` saying so (without the URL's query), and no file."""
    headers = [(b"content-length", b"5")]
    if content_range is not None:
        headers.append((b"content-range", content_range))
    async with (
        EmulatorServer(answering(206, headers, b"video")) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
    ):
        with pytest.raises(DownloadError, match=r"part of the file .* asked for all") as refused:
            await client.download(f"{server.url}/x.mp4?sig=SECRET", tmp_path / "x.mp4")
    assert "SECRET" not in str(refused.value)
    assert not (tmp_path / "x.mp4").exists()


def without_hard_links(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Make ``os.link`` fail with ``code``, as it does where the filesystem has no hard links."""

    def link(src: object, dst: object, *args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", link)


@pytest.mark.parametrize(
    "code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS], ids=errno.errorcode.__getitem__
)
async def test_without_hard_links_the_file_still_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Where ``link()`` fails for want of hard links (FAT, SMB, FUSE), the part is still
    renamed into place, whole, and nothing is left beside it."""
    without_hard_links(monkeypatch, code)
    emulator = Emulator(timeline=DONE, video_size=SIZE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        path = await client.download(task_id, tmp_path / "out.mp4")
    assert path.read_bytes() == emulator.video_bytes(task_id)
    assert list(tmp_path.iterdir()) == [path]


async def test_other_link_failures_are_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``link()`` failure that does not mean "no hard links here" (an I/O error) is raised as
    it is, and leaves the part and no file."""
    without_hard_links(monkeypatch, errno.EIO)
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    async with api(emulator) as (client, _):
        with pytest.raises(OSError, match="Input/output") as failed:
            await client.download(task_id, tmp_path / "out.mp4")
    assert failed.value.errno == errno.EIO
    assert not (tmp_path / "out.mp4").exists()
    assert (tmp_path / "out.mp4.part").read_bytes() == emulator.video_bytes(task_id)


def told(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` shows, its chain included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.example/x.mp4?X-Amz-Signature=SECRET",
        "https://cdn.example/x.mp4?X-Amz-Signature=SE CRET",
        "https://cdn.example:99999/x.mp4?X-Amz-Signature=SECRET",
    ],
    ids=["scheme", "space-in-query", "port"],
)
async def test_a_refused_result_url_is_quoted_without_its_query(tmp_path: Path, url: str) -> None:
    """A refused ``video_url`` (`DownloadError`) or URL given to ``download`` (`ValueError`):
    the message and its chain name the URL without its query, where the signature is."""
    task = Task(id="task_1", status="completed", video_url=url)
    async with AsyncVSRClient(KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(DownloadError, match="refuse") as from_task:
            await client.download(task, tmp_path)
        with pytest.raises(ValueError, match=r"cdn\.example") as given:
            await client.download(url, tmp_path)
    for refused in (from_task.value, given.value):
        assert "cdn.example" in str(refused)
        assert "CRET" not in told(refused)
    assert list(tmp_path.iterdir()) == []


async def test_a_refused_redirect_is_quoted_without_its_query(tmp_path: Path) -> None:
    """A redirect to a refused URL names it without its query, where the signature is."""
    to_ftp = redirecting_to(lambda _: "ftp://cdn.example/x.mp4?X-Amz-Signature=SECRET")
    async with (
        EmulatorServer(to_ftp) as server,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=server.url) as client,
    ):
        with pytest.raises(DownloadError, match="refused URL") as refused:
            await client.download(f"{server.url}/x.mp4", tmp_path)
    assert "ftp://cdn.example/x.mp4" in str(refused.value)
    assert "SECRET" not in told(refused.value)


# -- the rate budget hears a storage host's answers


async def test_a_storage_hosts_429s_slow_the_whole_client(tmp_path: Path) -> None:
    """A download spends the client's tokens and reports its answers: a storage host that
    refuses every request for over a second (six 429s, 0.3 s apart) cuts the rate the client
    allows itself, as an API's 429s would."""
    refused = answering(429, [(b"retry-after", b"0.3")], b"")
    answers = [*[refused] * 6, answering(200, [(b"content-length", b"5")], b"video")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await answers.pop(0)(scope, receive, send)

    async with (
        EmulatorServer(asgi(app)) as storage,  # type: ignore[arg-type]
        AsyncVSRClient(KEY, base_url=storage.url, rate_limit=100.0, max_retries=6) as client,
    ):
        await client.download(f"{storage.url}/x.mp4", tmp_path / "x.mp4")
        assert client.current_rate is not None
        assert client.current_rate < 100.0
    assert (tmp_path / "x.mp4").read_bytes() == b"video"


@pytest.mark.parametrize("rate_limit", [None, 100.0])
async def test_a_storage_hosts_retry_after_pauses_the_api_too(
    tmp_path: Path, rate_limit: float | None
) -> None:
    """A storage host's ``Retry-After`` pauses every request of the client, API queries
    included, with or without a ``rate_limit``: no query leaves while it lasts."""
    emulator = Emulator(timeline=DONE)
    task_id = emulator.add_task()
    busy = answering(503, [(b"retry-after", b"30")], b"")
    async with (
        EmulatorServer(busy) as storage,  # type: ignore[arg-type]
        api(emulator, max_retries=0, rate_limit=rate_limit) as (client, _),
    ):
        with pytest.raises(ServerError):
            await client.download(f"{storage.url}/x.mp4", tmp_path / "x.mp4")
        with anyio.move_on_after(0.5) as waited:
            await client.get_task(task_id)
        assert waited.cancelled_caught  # still paused (for 30 s): the query never left
    assert not [r for r in emulator.requests if r.path.endswith(task_id)]
