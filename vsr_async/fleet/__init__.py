"""Watching beyond one process: a fleet of workers on Redis Streams (the ``redis`` extra).

Submitters add task IDs to a namespace; workers (`RedisFleet.serve`, or ``vsr-async worker``)
share them out through a consumer group, poll them with their client and publish each
transition; followers (`RedisFleet.follow`, `RedisFleet.wait`) read those, from any process.
See the "Scaling out" page of the docs.
"""

from __future__ import annotations

from ._fleet import FleetStatus, Follower, RedisFleet
from ._worker import Worker

__all__ = ["FleetStatus", "Follower", "RedisFleet", "Worker"]
