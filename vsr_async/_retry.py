"""When to retry and how long to wait: capped exponential backoff with full jitter."""

from __future__ import annotations

import math
from itertools import islice

import backoff

from ._config import BACKOFF_FACTOR, BACKOFF_MAX, MAX_RETRY_AFTER
from ._errors import APIConnectionError, APIStatusError, RateLimitError, VSRError


def is_transient(exc: VSRError) -> bool:
    """Whether a query that failed with ``exc`` may succeed if sent again."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, APIConnectionError)


def asks_to_slow_down(exc: VSRError) -> bool:
    """Whether the server asked every client to pause (a 429, or any ``Retry-After``)."""
    return isinstance(exc, RateLimitError) or (
        isinstance(exc, APIStatusError) and exc.retry_after is not None
    )


def retry_delay(exc: VSRError, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt + 1``: the server's ``Retry-After`` if it
    sent one, else capped exponential backoff with full jitter.

    Raises:
        VSRError: ``exc`` itself, when its ``Retry-After`` is longer than `MAX_RETRY_AFTER`.
    """
    retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
    if retry_after is None:
        return backoff_delay(attempt)
    if retry_after > MAX_RETRY_AFTER:
        raise exc
    return retry_after


def backoff_delay(attempt: int) -> float:
    """The ``attempt``-th (from 0) capped exponential delay, with full jitter."""
    delays = backoff.expo(factor=BACKOFF_FACTOR, max_value=BACKOFF_MAX)
    next(delays)  # backoff's wait generators start with a bare yield
    attempt = min(attempt, _LAST_GROWING_ATTEMPT)  # past it every delay is BACKOFF_MAX
    return float(backoff.full_jitter(next(islice(delays, attempt, None))))


_LAST_GROWING_ATTEMPT = math.ceil(math.log2(BACKOFF_MAX / BACKOFF_FACTOR))
