"""The one retry policy: which failures to retry, how often, and how long to wait between.

Waits are capped exponential backoff with full jitter, or the server's ``Retry-After`` when it
sent one (up to `MAX_RETRY_AFTER`; a longer one is not slept through: the error is raised).
A call retried in a loop (`RetryPolicy.call`, a download's transfer) counts its failures in a
`Retries`; the watcher, which never sleeps on one task, asks `RetryPolicy.delay` when to poll
again and schedules it.
"""

from __future__ import annotations

import logging
import math
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

import anyio
import attrs
import backoff
import httpx

from ._config import BACKOFF_FACTOR, BACKOFF_MAX, DEFAULT_MAX_RETRIES, MAX_RETRY_AFTER
from ._errors import APIConnectionError, APIStatusError, RateLimitError, VSRError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeAlias

    #: Told of a retry: ``on_retry(error, number, delay)``, the number counted from 1.
    OnRetry: TypeAlias = Callable[[VSRError, int, float], None]

T = TypeVar("T")

logger = logging.getLogger("vsr_async")


def is_transient(exc: VSRError) -> bool:
    """Whether a query that failed with ``exc`` may succeed if sent again."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, APIConnectionError)


def never_sent(exc: VSRError) -> bool:
    """Whether the request failed before it left us."""
    return isinstance(exc.__cause__, _NOT_SENT)


def not_processed(exc: VSRError) -> bool:
    """Whether a request that failed with ``exc`` did nothing on the server, so that sending it
    again cannot do it twice: it never left us, or the server refused it with a 429. The only
    safe retries of a billed create, which has no idempotency key: after a timeout, a dropped
    connection or a 5xx, it may have been created."""
    return never_sent(exc) or isinstance(exc, RateLimitError)


#: httpx's errors raised before the request left us.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def backoff_delay(attempt: int) -> float:
    """The ``attempt``-th (from 0) capped exponential delay, with full jitter."""
    delays = backoff.expo(factor=BACKOFF_FACTOR, max_value=BACKOFF_MAX)
    next(delays)  # backoff's wait generators start with a bare yield
    attempt = min(attempt, _LAST_GROWING_ATTEMPT)  # past it every delay is BACKOFF_MAX
    return float(backoff.full_jitter(next(islice(delays, attempt, None))))


_LAST_GROWING_ATTEMPT = math.ceil(math.log2(BACKOFF_MAX / BACKOFF_FACTOR))


@attrs.frozen
class RetryPolicy:
    """How a failed request is retried.

    Args:
        max_retries: Retries after the first attempt, in one call.
        max_retry_after: The longest ``Retry-After`` slept through.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, exc: VSRError, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``: the server's ``Retry-After``
        if it sent one, else capped exponential backoff with full jitter.

        Raises:
            VSRError: ``exc`` itself, when its ``Retry-After`` is longer than
                ``max_retry_after``.
        """
        retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
        if retry_after is None:
            return backoff_delay(attempt)
        if retry_after > self.max_retry_after:
            raise exc
        return retry_after

    def retries(
        self,
        what: str,
        *,
        retry_if: Callable[[VSRError], bool] = is_transient,
        on_retry: OnRetry | None = None,
    ) -> Retries:
        """A counter of one call's retries, for a caller with a loop of its own."""
        return Retries(self, what, retry_if, on_retry)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        what: str,
        *,
        retry_if: Callable[[VSRError], bool] = is_transient,
        on_retry: OnRetry | None = None,
    ) -> T:
        """``await attempt()``, retried while ``retry_if`` says so and retries are left.

        Args:
            attempt: One try; it raises a `VSRError` on failure.
            what: What it does, for the log (``"GET https://..."``, no secrets).
            retry_if: Which failures to retry.
            on_retry: Told of each retry before its wait, as ``on_retry(error, number,
                delay)`` (the instrumentation hooks).
        """
        retries = self.retries(what, retry_if=retry_if, on_retry=on_retry)
        while True:
            try:
                return await attempt()
            except VSRError as exc:
                await retries.wait(exc)


class Retries:
    """One call's failures under a `RetryPolicy`; made by `RetryPolicy.retries`."""

    def __init__(
        self,
        policy: RetryPolicy,
        what: str,
        retry_if: Callable[[VSRError], bool],
        on_retry: OnRetry | None = None,
    ) -> None:
        self.policy = policy
        self.what = what
        self.retry_if = retry_if
        self.on_retry = on_retry
        self.failures = 0

    async def wait(self, exc: VSRError) -> None:
        """Sleep until the next attempt after ``exc``; or raise ``exc``, if it is not to be
        retried or no retry is left."""
        if self.failures >= self.policy.max_retries or not self.retry_if(exc):
            raise exc
        delay = self.policy.delay(exc, self.failures)
        self.failures += 1
        logger.warning("%s: retry %d in %.2f s after %s", self.what, self.failures, delay, exc)
        if self.on_retry is not None:
            self.on_retry(exc, self.failures, delay)
        await anyio.sleep(delay)

    def reset(self) -> None:
        """Forget the failures so far: the call made progress (a download got more bytes)."""
        self.failures = 0
