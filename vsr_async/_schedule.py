"""Polling schedules: how long a watch waits between two polls of one task.

A schedule is any object with ``next_interval(elapsed) -> seconds``; a plain number is a
constant interval. The watch puts its jitter on top of what the schedule says.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from ._config import DEFAULT_INTERVAL, STRETCH_OVER, STRETCH_STOP
from ._validate import check_seconds


@runtime_checkable
class Schedule(Protocol):
    """What ``interval=`` accepts besides a number of seconds: asked for each task after each
    poll. An answer that is not a positive, finite number ends the watch with `ValueError`.
    """

    def next_interval(self, elapsed: float) -> float:
        """Seconds until the next poll of a task (before jitter).

        Args:
            elapsed: Seconds since the watch first saw the task in its current status (since
                it was added, until its first answer): a status change starts it again at 0.
        """
        ...


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_seconds(attribute.name, value)


@attrs.frozen(kw_only=True)
class Stretching:
    """Poll every ``start`` seconds at first, then less and less often, linearly, up to every
    ``stop`` seconds once a task has kept one status for ``over`` seconds.

    The default goes from 5 s to 10 s over 5 minutes: inside the provider's advice of 5-10 s,
    and about half the requests for a task that processes for long.

    Raises:
        ValueError: A number is not positive and finite, or ``stop`` is below ``start``.
    """

    start: float = attrs.field(default=DEFAULT_INTERVAL, validator=_seconds)
    stop: float = attrs.field(default=STRETCH_STOP, validator=_seconds)
    over: float = attrs.field(default=STRETCH_OVER, validator=_seconds)

    @stop.validator
    def _check_stop(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.start:
            raise ValueError(f"stop must not be below start, got {value!r} < {self.start!r}")

    def next_interval(self, elapsed: float) -> float:
        """``start`` at 0 s, ``stop`` from ``over`` seconds on, in a straight line between."""
        share = min(max(elapsed, 0.0) / self.over, 1.0)
        return self.start + (self.stop - self.start) * share


@attrs.frozen
class _Constant:
    """A number given as ``interval=``."""

    seconds: float

    def next_interval(self, elapsed: float) -> float:  # noqa: ARG002 (the Schedule protocol)
        return self.seconds


def as_schedule(interval: float | Schedule) -> Schedule:
    """``interval`` as a schedule, checked (a schedule by asking it once).

    Raises:
        TypeError: ``interval`` is neither a number nor a `Schedule`.
        ValueError: It is not positive and finite, or the schedule's first answer is not.
    """
    if isinstance(interval, Schedule):
        check_seconds("the schedule's interval", interval.next_interval(0.0))
        return interval
    try:
        return _Constant(check_seconds("interval", interval))
    except TypeError:
        kind = type(interval).__name__
        raise TypeError(f"interval must be seconds or a Schedule, got {kind}") from None
