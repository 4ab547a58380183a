"""Shared by the CLI tests: the emulator served from a thread, scripted tasks, result files."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import anyio.from_thread

from vsr_async.testing import Emulator, EmulatorServer, Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "emulator-key"
CLI = [sys.executable, "-m", "vsr_async"]
#: Any escape sequence: colours, cursor moves, erasing.
CONTROL = re.compile(r"\x1b[\[\]()#;?0-9]*[A-Za-z]")


@contextlib.contextmanager
def serve_in_thread(emulator: Emulator) -> Iterator[str]:
    """Serve ``emulator`` on a loopback port from a thread of its own; yields the base URL.

    For tests whose own thread blocks: in-process CLI runs (which start their own event
    loop) and pseudo-terminals driven by pexpect.
    """
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(EmulatorServer(emulator)) as server,
    ):
        yield server.base_url


def add_tasks(
    emulator: Emulator, outcomes: str, *, first: float = 0.3, step: float = 0.2
) -> list[str]:
    """One task per letter (``c`` completes, ``f`` fails, ``r`` runs forever), ending in turn.

    Task ``i`` ends ``first + i * step`` seconds after now.
    """
    ids = []
    for index, outcome in enumerate(outcomes):
        ends = first + index * step
        if outcome == "c":
            timeline = Timeline.completed(queued=ends / 3, processing=ends * 2 / 3)
        elif outcome == "f":
            timeline = Timeline.failed(queued=ends / 3, processing=ends * 2 / 3, error="Bad input")
        else:
            timeline = Timeline(((0.0, "processing"),))
        ids.append(emulator.add_task(timeline, task_id=f"task_{index:03d}_{outcome}"))
    return ids


def cli_env(base_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: ours, less what changes the output, plus the key."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES")
        and not name.startswith("VSR_")
    }
    env["VSR_API_KEY"] = KEY
    if base_url is not None:
        env["VSR_BASE_URL"] = base_url
    env.update(extra)
    return env


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a results file, parsed (a torn line fails the test)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def readable_records(path: Path) -> list[dict[str, Any]]:
    """The whole records of a results file another process may be appending to (a line being
    written is skipped)."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def terminal_counts(path: Path) -> collections.Counter[str]:
    """How many terminal records each task has in a results file."""
    return collections.Counter(
        record["task_id"]
        for record in readable_records(path)
        if record["status"] in ("completed", "failed")
    )
