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
from ._hooks import (
    CreateDetails,
    DownloadDetails,
    Hooks,
    PollDetails,
    RequestDetails,
    RetryDetails,
    TransitionDetails,
    WatchDetails,
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
    "CreateDetails",
    "DownloadDetails",
    "DownloadError",
    "Hooks",
    "Model",
    "PermissionDeniedError",
    "PollDetails",
    "RateLimitError",
    "RequestDetails",
    "ResponseValidationError",
    "ResultExpiredError",
    "ResultNotReadyError",
    "RetryDetails",
    "Schedule",
    "ServerError",
    "Stretching",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskStatus",
    "Transition",
    "TransitionDetails",
    "VSRError",
    "WaitTimeoutError",
    "WatchDetails",
    "WatchStats",
    "Watcher",
    "__version__",
    "download_path",
]
