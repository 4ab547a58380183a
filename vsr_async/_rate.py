"""The client's rate budget: a token bucket shared by every request, that learns the server's
quota from its 429s.

Requests take a token each, in the order they asked (a FIFO lock): a watch hands its oldest
due task to the next free worker, so the budget is spread over the tasks in turn. The bucket
holds ``max(1, rate * RATE_BURST)`` tokens, so any ``T`` seconds see at most
``rate * T + max(1, rate * RATE_BURST)`` requests.

The rate allowed now is the lower of the ``rate_limit`` (a ceiling, none by default) and the
rate the server's 429s taught (none until they teach one): AIMD, with the server's quota as
its measure. The budget counts answers in windows, each counting only the answers to requests
sent after it opened (one sent before is news of the rate before). A window is judged once it
is `QUOTA_WINDOW` seconds old and holds `QUOTA_ANSWERS` answers, or `QUOTA_REFUSALS` 429s
that are `QUOTA_REFUSED` of its answers or more. If its 429s are that many, the client asks
for more than the server's quota, and the rate allowed becomes `QUOTA_DECREASE` of the rate
the server accepted over the window: of the quota, measured. If every answer was a 429, that
is `QUOTA_FLOOR`, a probe a second until one goes through. A few 429s among many answers (a
busy server's, not a quota's) cut nothing. Each success then adds ``QUOTA_RECOVERY * peak /
rate``, ``peak`` the highest rate the server was seen to accept: at full speed the rate climbs
by `QUOTA_RECOVERY` of it per second, probing for more (only traffic that went through can
raise it), and once past the ``rate_limit`` only the ceiling is left. It climbs only while the
budget is what holds the client back (a request waited for a token in the last
`_CLIMB_AFTER_WAIT` seconds): a client asking less than it is allowed learns nothing of the
quota from its successes, and a rate that crept far above the quota would let a later burst
overshoot it.

A 429 delays only the request that met it: its caller retries after the ``Retry-After``, or
backoff. The budget stops every token only for a ``Retry-After`` (on a 429 or any other
error) of `PAUSE_RETRY_AFTER` seconds or more: a quota window, not a moment's overload. One
longer than `MAX_RETRY_AFTER` pauses nothing: the request that met it raises its error (so
does every other that meets it), for the caller to decide, instead of every request of the
client stalling silently.

The budget reads its clock in one place, `_refill`. A clock that goes back (one client used
from successive ``trio.run()`` calls, each with its own clock) moves every stored time back with
it: no tokens are earned for the jump, and a pause keeps only what it had left. One that leaps
forward (a machine suspended) earns at most a full bucket and ends the pauses it passed; one
longer than `_IDLE` restarts the window of answers it interrupts, as any idle spell does, so
the quota is not judged over time nothing was sent in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

from ._config import (
    MAX_RETRY_AFTER,
    PAUSE_RETRY_AFTER,
    QUOTA_ANSWERS,
    QUOTA_DECREASE,
    QUOTA_FLOOR,
    QUOTA_RECOVERY,
    QUOTA_REFUSALS,
    QUOTA_REFUSED,
    QUOTA_WINDOW,
    RATE_BURST,
)
from ._errors import parse_retry_after
from ._validate import check_rate

if TYPE_CHECKING:
    from collections.abc import Callable

#: Tokens short of one that still count as one: float rounding, not a real shortfall.
_ROUNDING = 1e-9
#: The longest a waiter sleeps before it looks again: a new limit holds within this long.
_RECHECK = 0.5
#: A window this many times `QUOTA_WINDOW` long without enough answers to judge is dropped: too
#: sparse to learn a quota from.
_STALE_WINDOWS = 10
#: Seconds without a request that start a window again: idle time is not the quota's.
_IDLE = 5.0
#: A success raises the learnt rate only this many seconds after a request last waited for a
#: token: the length of a window, so a climb stops within one once demand falls below the rate.
_CLIMB_AFTER_WAIT = QUOTA_WINDOW


class RateBudget:
    """At most ``limit`` requests per second, less while the server's 429s say so (see the
    module docstring).

    Args:
        limit: The ceiling, requests per second; ``None`` for none: only what the server's
            429s teach, and its pauses.
        clock: The time now, in seconds (`anyio.current_time` by default; tests pass a fake).
    """

    def __init__(self, limit: float | None, *, clock: Callable[[], float] | None = None) -> None:
        self.limit = None if limit is None else check_rate("rate_limit", limit)
        self._clock = anyio.current_time if clock is None else clock
        self._learnt = math.inf  # the rate the 429s taught (inf: none)
        self._peak = 0.0  # the highest rate the server was seen to accept: sets the climb
        self._rate = self._allowed()
        self._tokens = self._capacity()
        self._updated: float | None = None  # (no clock before the event loop runs)
        self._not_before = -math.inf  # no token before then: the server's pause
        self._waited_at = -math.inf  # when a request last found no token: the budget limited it
        # The current window: requests sent from `_opened` on, their answers and 429s, and
        # when the last of them was sent (their rate is over the time they were sent in).
        self._opened: float | None = None  # (opens at the first request answered)
        self._last_sent = -math.inf
        self._answers = self._refused = 0
        self._lock = anyio.Lock()  # waiters are served first come, first served

    def __repr__(self) -> str:
        if self._rate == math.inf:
            return "<RateBudget unlimited>"
        return f"<RateBudget {self._rate:g} per second (rate_limit={self.limit})>"

    @property
    def current(self) -> float | None:
        """The rate allowed now, requests per second (``None``: no limit, none learnt)."""
        return None if self._rate == math.inf else self._rate

    def set_limit(self, limit: float | None) -> None:
        """A new ceiling (``None``: none); what the 429s taught still holds below it. Tokens
        earned so far at the old rate are kept up to the new bucket's size."""
        if self._updated is not None:  # (not before the event loop runs: nothing earned yet)
            self._refill()
        self.limit = None if limit is None else check_rate("rate_limit", limit)
        self._set_rate()

    def paused_for(self) -> float:
        """Seconds until the server's pause ends (0 when there is none)."""
        return max(0.0, self._not_before - self._refill())

    async def acquire(self) -> float:
        """Wait for a token and take it; return the time it was taken (for `answered`)."""
        if self._rate == math.inf and (now := self._refill()) >= self._not_before:
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
        if self._rate == math.inf:
            return 0.0
        if self._tokens >= 1 - _ROUNDING:  # (a sleep computed to the token can fall short of it)
            self._tokens = max(self._tokens - 1, 0.0)
            return 0.0
        self._waited_at = now
        return (1 - self._tokens) / self._rate

    def answered(self, sent_at: float, status_code: int, retry_after: str | None = None) -> None:
        """Learn from the answer to a request taken at ``sent_at``: its status code, and for
        an error, its ``Retry-After`` header (the raw value)."""
        now = self._refill()
        refused = status_code == 429
        self._count(sent_at, now, refused=refused)
        if 200 <= status_code < 300:
            self._succeeded(now)
            return
        pause = parse_retry_after(retry_after)
        if pause is not None and PAUSE_RETRY_AFTER <= pause <= MAX_RETRY_AFTER:
            self.pause(pause)  # (a longer one is raised to the caller, not waited)

    def pause(self, seconds: float) -> None:
        """Give out no token for ``seconds`` (at most `MAX_RETRY_AFTER`) from now.

        The window starts over when the pause ends: a quota is measured over time spent
        sending, not paused."""
        until = self._refill() + min(seconds, MAX_RETRY_AFTER)
        self._not_before = max(self._not_before, until)
        self._open(self._not_before)

    def _count(self, sent_at: float, now: float, *, refused: bool) -> None:
        """Add an answer to the window; close the window once it has enough to judge."""
        if self._opened is None:
            self._opened = sent_at
        if sent_at < self._opened:
            return  # sent before the window opened: news of the rate before
        if self._answers and sent_at - self._last_sent > _IDLE:
            self._open(sent_at)  # an idle spell is not the quota's: start again from here
        self._answers += 1
        self._refused += refused
        self._last_sent = max(self._last_sent, sent_at)
        # Over the time the window's requests were sent in (not to their answers, a latency
        # later: that would count the latency as the quota's).
        span = self._last_sent - self._opened
        if span < QUOTA_WINDOW:
            return
        refusing = self._refused >= max(QUOTA_REFUSALS, QUOTA_REFUSED * self._answers)
        if refusing or self._answers >= QUOTA_ANSWERS:
            self._judge(span)
        elif span < _STALE_WINDOWS * QUOTA_WINDOW:
            return  # (else too sparse to learn from)
        self._open(now)

    def _open(self, at: float) -> None:
        """A new window, for the requests sent from ``at`` on."""
        self._opened, self._last_sent, self._answers, self._refused = at, -math.inf, 0, 0

    def _judge(self, span: float) -> None:
        """Cut the rate if the window's 429s say the client asks for more than the quota."""
        accepted = (self._answers - self._refused) / span
        if self._refused >= QUOTA_REFUSED * self._answers:
            # The quota as measured now (it may have shrunk); unless nothing went through, a
            # closed door, not a quota: then QUOTA_FLOOR, a probe a second until one goes
            # through, and the climb back at the pace of the quota known before.
            self._peak = accepted or self._peak
            self._learnt = max(QUOTA_FLOOR, min(QUOTA_DECREASE * accepted, self._learnt))
            self._set_rate()
        else:
            self._peak = max(self._peak, accepted)

    def _succeeded(self, now: float) -> None:
        """A request went through: the learnt rate climbs, if it is what limits the client."""
        if self._learnt < math.inf and now - self._waited_at <= _CLIMB_AFTER_WAIT:
            before = self._learnt
            self._learnt += QUOTA_RECOVERY * max(self._peak, QUOTA_FLOOR) / before
            if self.limit is not None and before < self.limit <= self._learnt:
                self._learnt = math.inf  # climbed back to the ceiling (not: the ceiling fell)
            self._set_rate()

    def _allowed(self) -> float:
        return self._learnt if self.limit is None else min(self.limit, self._learnt)

    def _set_rate(self) -> None:
        self._rate = self._allowed()
        self._tokens = min(self._tokens, self._capacity())

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
                self._waited_at += elapsed
                if self._opened is not None:
                    self._opened += elapsed
                    self._last_sent += elapsed
                elapsed = 0.0
            if self._rate < math.inf:
                self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)
        self._updated = now
        return now
