"""Redis going away: warn once, retry with backoff, go on where it left off.

Workers and followers keep what they have not stored yet (transitions to publish, the
position in the events stream) across an outage; with persistence on (AOF), Redis keeps the
rest over a restart.
"""

from __future__ import annotations

import logging
import random

import anyio
import coredis

logger = logging.getLogger("vsr_async.fleet")

#: What a call to an unreachable, restarting or failing-over Redis raises.
UNREACHABLE = (
    coredis.exceptions.ConnectionError,
    TimeoutError,
    coredis.exceptions.BusyLoadingError,
    coredis.exceptions.NoScriptError,  # restarted between coredis's load and its retry
    coredis.exceptions.ReadOnlyError,  # a failover under way
    coredis.exceptions.TryAgainError,
    coredis.exceptions.ClusterDownError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
#: The longest wait between two attempts, seconds.
MAX_BACKOFF = 5.0


class Outage:
    """One loop's view of Redis being away: its first failure warns, every failure waits
    longer (with jitter, up to `MAX_BACKOFF`), and the first success after them says so."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            # str(exc): a record holding the exception would keep coredis's failed connection
            # (and its unclosed streams) alive for as long as a handler keeps the record.
            message = str(exc)
            logger.warning("Redis unreachable (%s): %s; retrying with backoff", self.what, message)
        self.failures += 1
        await anyio.sleep(min(MAX_BACKOFF, 0.05 * 2**self.failures) * random.uniform(0.5, 1.0))

    def recovered(self) -> None:
        if self.failures:
            logger.warning("Redis reachable again (%s) after %d attempts", self.what, self.failures)
            self.failures = 0
