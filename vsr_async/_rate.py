"""The client's rate budget: a token bucket shared by every request, with AIMD on 429s.

Without a ``rate_limit`` there is no bucket, but the server's pauses below still hold.

Requests take a token each, in the order they asked (a FIFO lock): a watch hands its oldest
due task to the next free worker, so the budget is spread over the tasks in turn. The bucket
holds ``max(1, rate * RATE_BURST)`` tokens, so any ``T`` seconds see at most
``rate * T + max(1, rate * RATE_BURST)`` requests.

The rate allowed now starts at the budget. A 429 multiplies it by `RATE_DECREASE` (not below
`RATE_FLOOR` of the budget), once per round: a 429 to a request sent before the last cut is
news of the old rate, not a reason to cut again. Each success adds back
``RATE_RECOVERY * budget / rate``: at full speed that is `RATE_RECOVERY` of the budget per
second, and only traffic that went through can raise it.

A ``Retry-After`` (on a 429 or any other error) also stops every token until it has passed:
requests already queued for a token would otherwise leave during the server's pause, each get
a 429, and cut the rate again and again. One longer than `MAX_RETRY_AFTER` pauses nothing: the
request that met it raises its error (so does every other that meets it), for the caller to
decide, instead of every request of the client stalling silently.

The budget reads its clock in one place, `_refill`. A clock that goes back (one client used
from successive ``trio.run()`` calls, each with its own clock) moves every stored time back with
it: no tokens are earned for the jump, and a pause keeps only what it had left.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

from ._config import MAX_RETRY_AFTER, RATE_BURST, RATE_DECREASE, RATE_FLOOR, RATE_RECOVERY
from ._errors import parse_retry_after
from ._validate import check_rate

if TYPE_CHECKING:
    from collections.abc import Callable

#: Tokens short of one that still count as one: float rounding, not a real shortfall.
_ROUNDING = 1e-9
#: The longest a waiter sleeps before it looks again: a new limit holds within this long.
_RECHECK = 0.5


class RateBudget:
    """At most ``limit`` requests per second, less after 429s (see the module docstring).

    Args:
        limit: The budget, requests per second; ``None`` for no budget, only pauses.
        clock: The time now, in seconds (`anyio.current_time` by default; tests pass a fake).
    """

    def __init__(self, limit: float | None, *, clock: Callable[[], float] | None = None) -> None:
        self.limit = None if limit is None else check_rate("rate_limit", limit)
        self._clock = anyio.current_time if clock is None else clock
        self._rate = math.inf if self.limit is None else self.limit
        self._tokens = self._capacity()
        self._updated: float | None = None  # (no clock before the event loop runs)
        self._cut_at = -math.inf  # when the rate was last cut
        self._not_before = -math.inf  # no token before then: the server's Retry-After
        self._lock = anyio.Lock()  # waiters are served first come, first served

    def __repr__(self) -> str:
        if self.limit is None:
            return "<RateBudget unlimited>"
        return f"<RateBudget {self._rate:g}/{self.limit:g} per second>"

    @property
    def current(self) -> float | None:
        """The rate allowed now, requests per second (``None`` without a budget)."""
        return None if self.limit is None else self._rate

    def set_limit(self, limit: float | None) -> None:
        """A new budget (``None``: none): the rate allowed now becomes it, tokens earned so far
        at the old rate are kept up to the new bucket's size."""
        if self._updated is not None:  # (not before the event loop runs: nothing earned yet)
            self._refill()
        self.limit = None if limit is None else check_rate("rate_limit", limit)
        self._rate = math.inf if self.limit is None else self.limit
        self._tokens = min(self._tokens, self._capacity())

    def paused_for(self) -> float:
        """Seconds until the server's pause ends (0 when there is none)."""
        return max(0.0, self._not_before - self._refill())

    async def acquire(self) -> float:
        """Wait for a token and take it; return the time it was taken (for `slow_down`)."""
        if self.limit is None and (now := self._refill()) >= self._not_before:
            return now  # nothing to wait for: no queue either
        async with self._lock:
            while (wait := self.try_acquire()) > 0:  # noqa: ASYNC110 (the wait is known)
                await anyio.sleep(min(wait, _RECHECK))  # (set_limit may shorten it)
            assert self._updated is not None  # noqa: S101 (set by try_acquire)
            return self._updated

    def try_acquire(self) -> float:
        """Take a token if there is one and return 0, else return the seconds until there is.

        Bypasses the FIFO queue of `acquire`: for tests and callers that are alone.
        """
        now = self._refill()
        if now < self._not_before:
            return self._not_before - now
        if self.limit is None:
            return 0.0
        if self._tokens >= 1 - _ROUNDING:  # (a sleep computed to the token can fall short of it)
            self._tokens = max(self._tokens - 1, 0.0)
            return 0.0
        return (1 - self._tokens) / self._rate

    def answered(self, sent_at: float, status_code: int, retry_after: str | None = None) -> None:
        """Learn from the answer to a request taken at ``sent_at``: a 429 cuts the rate, a
        success raises it, an error's ``Retry-After`` header (its raw value) pauses every
        token."""
        if 200 <= status_code < 300:
            self.succeeded()
            return
        if status_code == 429:
            self.slow_down(sent_at)
        pause = parse_retry_after(retry_after)
        if pause is not None and pause <= MAX_RETRY_AFTER:  # a longer one is raised, not waited
            self.pause(pause)

    def pause(self, seconds: float) -> None:
        """Give out no token for ``seconds`` (at most `MAX_RETRY_AFTER`) from now."""
        until = self._refill() + min(seconds, MAX_RETRY_AFTER)
        self._not_before = max(self._not_before, until)

    def slow_down(self, sent_at: float) -> None:
        """A request taken at ``sent_at`` got a 429: cut the rate, unless it was already cut
        after that request left."""
        now = self._refill()
        if self.limit is None or sent_at < self._cut_at:
            return
        self._cut_at = now
        self._rate = max(self._rate * RATE_DECREASE, self.limit * RATE_FLOOR)
        self._tokens = min(self._tokens, self._capacity())

    def succeeded(self) -> None:
        """A request went through: let the rate creep back toward the budget."""
        if self.limit is not None and self._rate < self.limit:
            self._refill()
            self._rate = min(self.limit, self._rate + RATE_RECOVERY * self.limit / self._rate)

    def _capacity(self) -> float:
        return max(1.0, self._rate * RATE_BURST)

    def _refill(self) -> float:
        """Add the tokens earned since the last look, at the rate allowed over that time;
        return the time now. The one reader of the clock (see the module docstring)."""
        now = self._clock()
        if self._updated is not None:
            elapsed = now - self._updated
            if elapsed < 0:  # another clock: keep every time relative to the last look
                self._not_before += elapsed
                self._cut_at += elapsed
                elapsed = 0.0
            if self.limit is not None:
                self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)
        self._updated = now
        return now
