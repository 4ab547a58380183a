from __future__ import annotations

from datetime import datetime, timezone

import attrs
import pytest

from vsr_async import Model, Task, TaskError, TaskStatus


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (TaskStatus.QUEUED, False),
        (TaskStatus.PROCESSING, False),
        (TaskStatus.COMPLETED, True),
        (TaskStatus.FAILED, True),
    ],
)
def test_status_is_terminal(status: TaskStatus, terminal: bool) -> None:
    """Only ``completed`` and ``failed`` end a task."""
    assert status.is_terminal is terminal
    assert Task(id="t", status=status).is_terminal is terminal


@pytest.mark.parametrize(
    ("raw", "status"),
    [("completed", TaskStatus.COMPLETED), ("FAILED", TaskStatus.FAILED), ("paused", "paused")],
)
def test_task_built_from_a_plain_string_status(raw: str, status: object) -> None:
    """A Task built in code with a known status string gets the enum (so is_terminal holds)."""
    task = Task(id="t", status=raw)
    assert task.status == status
    assert type(task.status) is type(status)
    assert task.is_terminal is (status in (TaskStatus.COMPLETED, TaskStatus.FAILED))


def test_status_values_are_the_wire_values() -> None:
    """The enum's values are the provider's four status strings, and str() gives them back."""
    assert {s.value for s in TaskStatus} == {"queued", "processing", "completed", "failed"}
    assert str(TaskStatus.COMPLETED) == "completed"
    assert f"{TaskStatus.PROCESSING}" == "processing"
    assert isinstance(TaskStatus.FAILED, str)
    assert TaskStatus("failed") is TaskStatus.FAILED


def test_unknown_status_string_is_never_terminal() -> None:
    """A status this library does not know is kept as a string and never ends a task."""
    task = Task(id="t", status="paused")
    assert task.status == "paused"
    assert task.is_terminal is False


def test_models_are_the_documented_eight() -> None:
    """`Model` holds exactly the provider's eight models, and str() gives the wire name."""
    expected = {
        f"superResolution-{tier}-{fps}"
        for tier in ("720p", "1080p", "2k", "4k")
        for fps in ("lowfps", "highfps")
    }
    assert {m.value for m in Model} == expected
    assert str(Model.SUPER_RESOLUTION_4K_HIGHFPS) == "superResolution-4k-highfps"
    assert Model("superResolution-720p-lowfps") is Model.SUPER_RESOLUTION_720P_LOWFPS


def test_task_error_str() -> None:
    """A task error reads as its message, with its code in parentheses when there is one."""
    assert str(TaskError("bad input")) == "bad input"
    assert str(TaskError("bad input", code="E42")) == "bad input (E42)"


def test_task_defaults() -> None:
    """Only ``id`` and ``status`` are required; everything else defaults to ``None``."""
    task = Task(id="t", status=TaskStatus.QUEUED)
    assert (task.object, task.created, task.video_url, task.actual_duration, task.error) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert task.created_at is None


def test_models_are_frozen_and_slotted() -> None:
    """Snapshots are immutable values: no assignment, no stray attributes, equal by value."""
    task = Task(id="t", status=TaskStatus.QUEUED)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.status = TaskStatus.COMPLETED  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TaskError("x").message = "y"  # type: ignore[misc]
    assert not hasattr(task, "__dict__")
    assert task == Task(id="t", status=TaskStatus.QUEUED)
    assert hash(task) == hash(Task(id="t", status=TaskStatus.QUEUED))


def test_created_at_from_seconds() -> None:
    """``created`` in seconds becomes an aware UTC datetime."""
    task = Task(id="t", status=TaskStatus.QUEUED, created=1_700_000_000)
    assert task.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert task.created_at is not None
    assert task.created_at.tzinfo is timezone.utc


def test_created_at_from_milliseconds() -> None:
    """``created`` in milliseconds gives the same instant as in seconds, sub-second kept."""
    task = Task(id="t", status=TaskStatus.QUEUED, created=1_700_000_000_250)
    assert task.created_at == datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("created", "year"),
    [
        (100_000_000_000, 5138),  # at the threshold: still seconds
        (100_000_000_001, 1973),  # just above: milliseconds
        (0, 1970),
    ],
)
def test_created_at_threshold(created: int, year: int) -> None:
    """The seconds/milliseconds cut-off sits at 10**11, seconds at or below it."""
    created_at = Task(id="t", status=TaskStatus.QUEUED, created=created).created_at
    assert created_at is not None
    assert created_at.year == year


@pytest.mark.parametrize("created", [10**20, -(10**15), 2**63])
def test_created_at_out_of_calendar_is_none(created: int) -> None:
    """A timestamp no calendar can hold gives ``None`` rather than raising."""
    assert Task(id="t", status=TaskStatus.QUEUED, created=created).created_at is None
