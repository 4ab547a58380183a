"""`vsr-async demo` exits by whether the demo ran as designed: its task failures are scripted."""

from __future__ import annotations

import functools
import math

import pytest
from _cli_helpers import cli_env, run_cli
from click.testing import CliRunner

from vsr_async._cli import _app, _demo
from vsr_async.testing import Emulator, Faults

pytestmark = pytest.mark.anyio

TASKS = 4


def _demo_tasks(seed: int) -> dict[str, tuple[float, str]]:
    """The first `TASKS` tasks the demo's emulator creates with `seed`, whatever order its
    creates come in: when each ends (seconds after creation), and how."""
    now = 0.0
    emulator = Emulator(seed=seed, timeline=_demo.demo_timeline, clock=lambda: now)
    ids = [emulator.add_task() for _ in range(TASKS)]
    ends = {task_id: emulator.terminal_at(task_id) or math.inf for task_id in ids}
    now = math.inf
    return {task_id: (end, emulator.status_of(task_id)) for task_id, end in ends.items()}


def _quick_mixed_seed() -> tuple[int, list[str], list[str]]:
    """A seed whose demo tasks all end within 3.5 s, some completed and some failed, with the
    IDs of each kind."""
    for seed in range(1000):
        tasks = _demo_tasks(seed)
        failed = [task_id for task_id, (_, status) in tasks.items() if status == "failed"]
        if max(end for end, _ in tasks.values()) <= 3.5 and 0 < len(failed) < TASKS:
            return seed, [task_id for task_id in tasks if task_id not in failed], failed
    raise AssertionError("no seed draws quick, mixed demo tasks")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the test's own side: the CLI runs apart
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_the_demo_exits_0_with_its_scripted_failures_shown(backend: str) -> None:
    """The real process: some of the demo's tasks fail on purpose; the summary counts and lists
    them and says they are by design, and the exit is 0 since each task ended exactly once (a
    demo is not a batch of the user's: `... && vsr-async demo && ...` goes on)."""
    seed, completed, failed = _quick_mixed_seed()
    args = ["demo", "--tasks", str(TASKS), "--seed", str(seed), "--plain", "--backend", backend]
    finished = await run_cli(args, cli_env(), within=120)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = finished.stdout.splitlines()
    summary = f"{TASKS} of {TASKS} tasks ended: {len(completed)} completed, {len(failed)} failed"
    assert any(line.endswith(summary) for line in lines), finished.stdout
    for task_id in failed:
        assert any(line.startswith(f"   failed  {task_id}  ") for line in lines)
    assert f"Failed by design: {len(failed)} of {TASKS}. The demo exits 0 when " in finished.stdout
    assert "faults injected and ridden out: " in lines[-1]


def test_the_demo_exits_1_when_it_did_not_run_as_designed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A demo whose tasks could not even be created (every request answered 5xx) did not run as
    designed: exit 1, and no "by design" note."""
    monkeypatch.setattr(_demo, "Emulator", functools.partial(Emulator, faults=Faults(error_rate=1)))
    result = CliRunner().invoke(_app.cli, ["demo", "--tasks", "2", "--seed", "1", "--plain"])
    assert result.exit_code == 1, result.output
    assert result.stdout.count("could not create from https://example.com/input-") == 2
    assert "by design" not in result.stdout
