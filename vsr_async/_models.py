"""The API's data, as frozen attrs classes. Knows nothing of JSON: `_converter` maps the wire."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

import attrs

#: ``created`` values above this are milliseconds (it is the year 5138 in seconds).
_MILLISECONDS_THRESHOLD = 100_000_000_000


class TaskStatus(str, enum.Enum):
    """A task's state: ``queued`` → ``processing`` → ``completed`` or ``failed``."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """Whether the task will never change again."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


def parse_status(value: TaskStatus | str) -> TaskStatus | str:
    """The `TaskStatus` named by ``value`` in any case, or ``value`` itself if unknown."""
    try:
        return TaskStatus(value.strip().lower())
    except ValueError:
        return value  # a status from the future: kept verbatim, never terminal


class Model(str, enum.Enum):
    """The provider's models: target quality tier, and ``lowfps`` (≤ 30 FPS) or ``highfps`` input.

    `AsyncVSRClient.create_task` also takes a plain string, for models newer than this list.
    """

    SUPER_RESOLUTION_720P_LOWFPS = "superResolution-720p-lowfps"
    SUPER_RESOLUTION_720P_HIGHFPS = "superResolution-720p-highfps"
    SUPER_RESOLUTION_1080P_LOWFPS = "superResolution-1080p-lowfps"
    SUPER_RESOLUTION_1080P_HIGHFPS = "superResolution-1080p-highfps"
    SUPER_RESOLUTION_2K_LOWFPS = "superResolution-2k-lowfps"
    SUPER_RESOLUTION_2K_HIGHFPS = "superResolution-2k-highfps"
    SUPER_RESOLUTION_4K_LOWFPS = "superResolution-4k-lowfps"
    SUPER_RESOLUTION_4K_HIGHFPS = "superResolution-4k-highfps"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class TaskError:
    """Why a task failed. The provider sends a string or an object with a code."""

    message: str
    code: str | None = None

    def __str__(self) -> str:
        return self.message if self.code is None else f"{self.message} ({self.code})"


@attrs.frozen
class Task:
    """One snapshot of a task, as the API reported it.

    ``status`` is a `TaskStatus`, or the provider's own string, kept verbatim, for a status this
    library does not know yet (never terminal).
    """

    id: str
    status: TaskStatus | str = attrs.field(converter=parse_status)
    object: str | None = None
    created: int | None = None
    video_url: str | None = None
    actual_duration: float | None = None
    error: TaskError | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the task is ``completed`` or ``failed``: polling it again is pointless."""
        return isinstance(self.status, TaskStatus) and self.status.is_terminal

    @property
    def created_at(self) -> datetime | None:
        """``created`` as an aware UTC datetime, whether the API sent seconds or milliseconds."""
        if self.created is None:
            return None
        seconds: float = self.created
        if seconds > _MILLISECONDS_THRESHOLD:
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # a timestamp no calendar can hold
            return None
