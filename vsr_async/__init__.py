"""An async client for the video super-resolution (VSR) task API, on asyncio and trio."""

from ._client import AsyncVSRClient
from ._config import VERSION as __version__  # noqa: N811
from ._download import download_path
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DownloadError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ResultExpiredError,
    ResultNotReadyError,
    ServerError,
    TaskFailedError,
    TaskNotFoundError,
    VSRError,
    WaitTimeoutError,
)
from ._models import Model, Task, TaskError, TaskStatus
from ._schedule import Schedule, Stretching
from ._scheduler import WatchStats
from ._watch import Transition, Watcher

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncVSRClient",
    "AuthenticationError",
    "BadRequestError",
    "DownloadError",
    "Model",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseValidationError",
    "ResultExpiredError",
    "ResultNotReadyError",
    "Schedule",
    "ServerError",
    "Stretching",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskStatus",
    "Transition",
    "VSRError",
    "WaitTimeoutError",
    "WatchStats",
    "Watcher",
    "__version__",
    "download_path",
]
