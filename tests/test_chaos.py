"""The chaos suite: 2,000 tasks watched through every fault at once and a server restart.

The workload and its checks live in ``chaos.py``, shared with ``nox -s chaos`` (20,000 tasks),
which writes the figures into the documentation.
"""

from __future__ import annotations

import sys
import time

import anyio
import pytest
from chaos import amplification, pair, refusals, verdict

pytestmark = pytest.mark.anyio

TASKS = 2_000
#: Seconds for both runs: a guard against a hang, not a measure. They take 30-45 s on two
#: shared cores, over a minute on a busy machine.
BUDGET = 600
#: Every kind of bad answer the client must have met, so the run was not a quiet one.
MET = [
    *("5xx status", "429 with Retry-After", "HTML error page", "truncated JSON", "JSON list"),
    *("wrong types", "dropped mid-body", "connection refused"),
]


async def test_every_transition_once_through_chaos_and_a_restart() -> None:
    """Through 5xx, 429, spikes, drops, malformed bodies and a restart on the same port, each
    task's changes are yielded once, in order, ending with its true state and result URL; no
    exception escapes, no task or connection is left behind; and the chaos costs no request
    beyond the schedule: no task is polled sooner than the interval after its last poll but
    for a few quick retries of failed polls (QUICK_RETRIES in a row), nor once its end was
    read. (The ratio of requests to a fault-free
    run's is printed, not checked: it moves with the machine's load.)"""
    started = time.monotonic()
    with anyio.fail_after(BUDGET):
        faulty, clean = await pair(TASKS, seed=1)
    print(
        f"\n{faulty.backend}: {TASKS} tasks, both runs in {time.monotonic() - started:.1f} s; "
        f"{faulty.requests_sent} requests through chaos, {clean.requests_sent} without: "
        f"amplification {amplification(faulty, clean):.2f}; faults {faulty.faults_injected}"
    )
    assert verdict(faulty, clean) == []
    assert faulty.polled_too_soon == clean.polled_too_soon == 0  # (in the verdict too)
    assert faulty.polled_after_end == clean.polled_after_end == 0
    assert faulty.tasks == clean.tasks == TASKS
    assert all(faulty.faults_injected.values()), faulty.faults_injected  # the restart too
    assert all(faulty.bad_answers[kind] for kind in MET), faulty.bad_answers
    if sys.platform == "linux":  # elsewhere the count is None: /proc/net/tcp cannot tell
        assert faulty.leftover_connections == clean.leftover_connections == 0


def test_bad_caller_input_is_refused() -> None:
    """The bad task IDs, base URLs and result URLs of the figures are all refused up front."""
    accepted = {category: found for category, (_, _, found) in refusals().items()}
    assert accepted == {"task IDs": [], "base URLs": [], "result URLs": []}
