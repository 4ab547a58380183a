from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsr_async import ResponseValidationError, Task, TaskError, TaskStatus
from vsr_async._config import SNIPPET_LENGTH
from vsr_async._converter import parse_task


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_documented_shape() -> None:
    """The documented query answer maps to a Task, ``actualDuration`` renamed."""
    body = {
        "id": "task-1",
        "object": "video",
        "created": 1_700_000_000,
        "status": "completed",
        "video_url": "https://cdn.example.com/out.mp4",
        "actualDuration": 12.5,
    }
    assert parse_task(dumps(body)) == Task(
        id="task-1",
        status=TaskStatus.COMPLETED,
        object="video",
        created=1_700_000_000,
        video_url="https://cdn.example.com/out.mp4",
        actual_duration=12.5,
    )


def test_minimal_shape() -> None:
    """``id`` and ``status`` are all a task needs; the rest defaults to ``None``."""
    assert parse_task(b'{"id": "a", "status": "queued"}') == Task(id="a", status=TaskStatus.QUEUED)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("COMPLETED", TaskStatus.COMPLETED),
        ("Processing", TaskStatus.PROCESSING),
        (" failed\n", TaskStatus.FAILED),
        ("queued", TaskStatus.QUEUED),
    ],
)
def test_status_case_and_whitespace_are_forgiven(raw: str, status: TaskStatus) -> None:
    """A known status in any case, with stray whitespace, becomes the enum member."""
    assert parse_task(dumps({"id": "a", "status": raw})).status is status


def test_unknown_status_is_kept_verbatim() -> None:
    """A status from the future is kept as the provider's string, not rejected."""
    task = parse_task(b'{"id": "a", "status": "Paused"}')
    assert task.status == "Paused"
    assert not isinstance(task.status, TaskStatus)
    assert task.is_terminal is False


def test_integer_id_becomes_a_string() -> None:
    """A numeric ``id`` is accepted and turned into the string the query URL needs."""
    assert parse_task(b'{"id": 123, "status": "queued"}').id == "123"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("out of credits", TaskError("out of credits")),
        ({"code": 42, "message": "bad video"}, TaskError("bad video", code="42")),
        ({"code": "E1", "message": 7}, TaskError("7", code="E1")),
        ({"message": "no code"}, TaskError("no code")),
        ({"code": "E2"}, TaskError('{"code": "E2"}', code="E2")),
        (17, TaskError("17")),
        (["a", "b"], TaskError("['a', 'b']")),
        (None, None),
    ],
)
def test_error_shapes(error: object, expected: TaskError | None) -> None:
    """``error`` as a string, an object with code and message, or anything else is kept."""
    assert parse_task(dumps({"id": "a", "status": "failed", "error": error})).error == expected


def test_numbers_sent_as_strings_and_floats() -> None:
    """``created`` and ``actualDuration`` may come as numeric strings or floats."""
    task = parse_task(
        dumps({"id": "a", "status": "completed", "created": "1700000000", "actualDuration": "3"})
    )
    assert (task.created, task.actual_duration) == (1_700_000_000, 3.0)
    task = parse_task(dumps({"id": "a", "status": "completed", "created": 1.7e9}))
    assert task.created == 1_700_000_000
    assert isinstance(task.created, int)


def test_nulls_and_extra_fields_are_tolerated() -> None:
    """Optional fields sent as ``null`` and fields this library does not know are ignored."""
    body = {
        "id": "a",
        "status": "processing",
        "object": None,
        "created": None,
        "video_url": None,
        "actualDuration": None,
        "error": None,
        "progress": 40,
        "nested": {"x": [1, 2]},
    }
    assert parse_task(dumps(body)) == Task(id="a", status=TaskStatus.PROCESSING)


def test_defaults_fill_missing_fields_only() -> None:
    """``defaults`` fill what the body leaves out and never override what it sends."""
    assert parse_task(b'{"id": "a"}', status=TaskStatus.QUEUED).status is TaskStatus.QUEUED
    assert parse_task(b'{"id": "a", "status": "processing"}', status=TaskStatus.QUEUED).status is (
        TaskStatus.PROCESSING
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"<html><body>502 Bad Gateway</body></html>", id="html"),
        pytest.param(b'{"id": "a", "status": ', id="truncated"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="too-deep"),
    ],
)
def test_not_json_is_rejected(content: bytes) -> None:
    """A body that is not JSON raises ResponseValidationError quoting its start."""
    with pytest.raises(ResponseValidationError, match="not JSON") as info:
        parse_task(content)
    assert info.value.snippet == content[:SNIPPET_LENGTH].decode("utf-8", "replace")


@pytest.mark.parametrize("data", [[], ["id", "a"], "a", 1, 1.5, True, None])
def test_json_that_is_not_an_object_is_rejected(data: object) -> None:
    """A JSON value that is not an object raises ResponseValidationError."""
    content = dumps(data)
    with pytest.raises(ResponseValidationError, match="not a JSON object") as info:
        parse_task(content)
    assert info.value.snippet == content.decode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"status": "queued"}, id="no-id"),
        pytest.param({"id": "a"}, id="no-status"),
        pytest.param({}, id="nothing"),
        pytest.param({"id": "", "status": "queued"}, id="empty-id"),
        pytest.param({"id": None, "status": "queued"}, id="null-id"),
        pytest.param({"id": True, "status": "queued"}, id="bool-id"),
        pytest.param({"id": 1.5, "status": "queued"}, id="float-id"),
        pytest.param({"id": ["a"], "status": "queued"}, id="list-id"),
        pytest.param({"id": "a/b", "status": "queued"}, id="id-with-slash"),
        pytest.param({"id": "..", "status": "queued"}, id="dot-dot-id"),
        pytest.param({"id": " a", "status": "queued"}, id="padded-id"),
        pytest.param({"id": "a", "status": None}, id="null-status"),
        pytest.param({"id": "a", "status": ""}, id="empty-status"),
        pytest.param({"id": "a", "status": "  "}, id="blank-status"),
        pytest.param({"id": "a", "status": 2}, id="int-status"),
        pytest.param({"id": "a", "status": {"name": "queued"}}, id="object-status"),
        pytest.param({"id": "a", "status": "queued", "object": 1}, id="int-object"),
        pytest.param({"id": "a", "status": "queued", "video_url": ["u"]}, id="list-video-url"),
        pytest.param({"id": "a", "status": "queued", "actualDuration": True}, id="bool-duration"),
        pytest.param({"id": "a", "status": "queued", "actualDuration": "long"}, id="word-duration"),
        pytest.param({"id": "a", "status": "queued", "actualDuration": [1]}, id="list-duration"),
        pytest.param({"id": "a", "status": "queued", "created": "yesterday"}, id="word-created"),
        pytest.param({"id": "a", "status": "queued", "created": {}}, id="object-created"),
    ],
)
def test_not_a_task_is_rejected(data: dict[str, Any]) -> None:
    """A JSON object that is not a task raises ResponseValidationError quoting the body."""
    content = dumps(data)
    with pytest.raises(ResponseValidationError, match="not a task") as info:
        parse_task(content)
    assert info.value.snippet == content.decode()
    assert repr(info.value.snippet) in str(info.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_created_is_rejected(literal: bytes) -> None:
    """A ``created`` that is no integer (NaN, infinite) is a ResponseValidationError."""
    with pytest.raises(ResponseValidationError, match="not a task"):
        parse_task(b'{"id": "a", "status": "queued", "created": ' + literal + b"}")


def test_snippet_is_cut_to_the_configured_length() -> None:
    """A long body is quoted only up to SNIPPET_LENGTH characters."""
    content = b"<html>" + b"x" * 10_000
    with pytest.raises(ResponseValidationError) as info:
        parse_task(content)
    assert info.value.snippet == content[:SNIPPET_LENGTH].decode()
    assert len(str(info.value)) < SNIPPET_LENGTH + 100


def test_snippet_replaces_undecodable_bytes() -> None:
    """Bytes that are not UTF-8 are replaced in the snippet, never raised about."""
    with pytest.raises(ResponseValidationError) as info:
        parse_task(b"\x80\x81 not json")
    assert info.value.snippet == "\ufffd\ufffd not json"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

task_like = st.dictionaries(
    st.sampled_from(["id", "status", "object", "created", "video_url", "actualDuration", "error"]),
    json_values | st.sampled_from(["queued", "COMPLETED", " failed ", "", "123", "1e3"]),
)


def _parses_or_rejects(content: bytes) -> None:
    result: Task | ResponseValidationError
    try:
        result = parse_task(content)
    except ResponseValidationError as exc:
        result = exc
    if isinstance(result, ResponseValidationError):
        assert result.snippet == content[:SNIPPET_LENGTH].decode("utf-8", "replace")
    else:
        assert isinstance(result, Task)
        assert isinstance(result.id, str)
        assert result.id


@settings(database=None, deadline=None)
@given(json_values)
def test_any_json_value_gives_a_task_or_a_validation_error(data: object) -> None:
    """Whatever JSON comes back, parse_task returns a Task or raises ResponseValidationError."""
    _parses_or_rejects(json.dumps(data).encode())


@settings(database=None, deadline=None)
@given(task_like)
def test_any_task_like_object_gives_a_task_or_a_validation_error(data: dict[str, Any]) -> None:
    """Objects with the task's keys and any values still give a Task or the one error."""
    _parses_or_rejects(json.dumps(data).encode())


@settings(database=None, deadline=None)
@given(st.binary())
def test_any_bytes_give_a_task_or_a_validation_error(content: bytes) -> None:
    """Whatever bytes come back, parse_task returns a Task or raises ResponseValidationError."""
    _parses_or_rejects(content)


#: Mostly answers the converter accepts (valid ID and status), with every optional key's
#: value anything JSON or a tricky string; sometimes an ID or a status that is not one.
_tricky = st.sampled_from(["", " ", "1e3", "123", "1e400", "nan", "x" * 600, "a/b", ".."])
common_answers = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
        | st.text(min_size=1, max_size=12)
        | st.integers()
        | _tricky
        | json_values,
        "status": st.sampled_from(["queued", "COMPLETED", " failed ", "paused"]) | json_values,
    },
    optional=dict.fromkeys(
        ("object", "created", "video_url", "actualDuration", "error", "videoUrl"),
        st.none() | st.integers() | st.floats() | st.text(max_size=8) | _tricky | json_values,
    ),
)

#: Answers with a valid ID and status and plain values: those the fast path should take.
clean_answers = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True) | st.integers(),
        "status": st.sampled_from(["queued", "COMPLETED", " failed ", "paused"]),
    },
    optional=dict.fromkeys(
        ("object", "created", "video_url", "actualDuration", "error"),
        st.none() | st.integers() | st.floats() | st.text(max_size=8) | _tricky,
    ),
)
