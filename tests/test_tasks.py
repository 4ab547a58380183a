"""`Tasks`: the task calls' requests (the task URL, the create's body), their arguments checked
before anything is sent, and their answers made tasks (a create's defaults, the same-task check,
malformed answers, unknown statuses)."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from typing import Any

import pytest
from _helpers import BASE, MODEL, SECRET, VIDEO, Script, make_client, reply, task_reply

from vsr_async import Model, ResponseValidationError, Task, TaskStatus

pytestmark = pytest.mark.anyio


# Requests.


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


# Arguments, refused before sending.


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


async def test_an_answer_about_another_task_is_refused() -> None:
    """An answer whose ``id`` is not the task asked for (a proxy's cache, a mix-up) is not
    taken as that task's state."""
    script = Script(task_reply("processing", id="task-2"))
    with pytest.raises(
        ResponseValidationError, match="'task-1', the answer is about task 'task-2'"
    ):
        await make_client(script, max_retries=0).get_task("task-1")


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
