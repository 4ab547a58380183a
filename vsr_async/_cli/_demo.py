"""``vsr-async demo``: the emulator on a loopback port, a few dozen tasks, ``create --watch``.

Its failures are scripted, so it does not exit as ``create --watch`` would (1 if any task
failed): it exits 0 when it ran as designed, every task created and ended exactly once, and 1 if
not, so that ``... && vsr-async demo && ...`` checks an install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vsr_async import AsyncVSRClient, Model
from vsr_async.testing import Emulator, EmulatorServer, Faults, Timeline

from ._display import make_display
from ._exits import EXIT_FAILED, EXIT_OK
from ._run import Pace, run_batch
from ._tally import Tally

if TYPE_CHECKING:
    import random

_MODELS = list(Model)
#: Turned on once the tasks exist: the watch rides through them (creates are never retried).
POLLING_FAULTS = Faults(error_rate=0.1, rate_limit_rate=0.02, retry_after=0.5)
ERRORS: tuple[str | dict[str, str], ...] = (
    "Video could not be decoded",
    {"code": "input_too_long", "message": "Input video is longer than 10 minutes"},
)
PACE = Pace(interval=0.5, timeout=None, concurrency=10)


def demo_timeline(rng: random.Random) -> Timeline:
    """Mixed durations (1 to 10 s) and outcomes (about one in six fails)."""
    queued, processing = rng.uniform(0.3, 2.0), rng.uniform(1.0, 8.0)
    if rng.random() < 0.83:
        duration = round(rng.uniform(5, 60), 1)
        return Timeline.completed(queued=queued, processing=processing, actual_duration=duration)
    return Timeline.failed(
        queued=queued,
        processing=processing / 2,
        error=rng.choice(ERRORS),
    )


async def run_demo(tasks: int, seed: int | None, *, plain: bool) -> int:
    """Create ``tasks`` tasks on a fresh emulator and watch them; 0 if each ended exactly once,
    failed ones included."""
    emulator = Emulator(seed=seed, timeline=demo_timeline)
    async with EmulatorServer(emulator) as server:
        tally = Tally()
        title = f"vsr-async demo: {tasks} tasks on the emulator at {server.base_url}"
        display = make_display(tally, plain=plain, title=title)
        display.note(f"The emulator is serving {server.base_url}")

        def faults_on() -> None:
            emulator.faults = POLLING_FAULTS
            display.note(
                f"Created {tasks} tasks; the emulator now fails 10% of polls and rate-limits 2%."
            )

        client = AsyncVSRClient(emulator.api_key, base_url=server.base_url)
        creates = [
            (f"https://example.com/input-{index}.mp4", _MODELS[index % len(_MODELS)])
            for index in range(tasks)
        ]
        await run_batch(client, tally, display, pace=PACE, creates=creates, after_creates=faults_on)
        stats = emulator.stats
    failed = sum(outcome.status == "failed" for outcome in tally.outcomes.values())
    if failed and not tally.interrupted:
        display.note(
            f"Failed by design: {failed} of {tasks}. The demo exits 0 when each task ended "
            "exactly once; `create --watch` would exit 1."
        )
    faults = ", ".join(f"{count} {kind}" for kind, count in sorted(stats.faults.items()))
    display.note(f"{stats.total} requests; faults injected and ridden out: {faults or 'none'}")
    if tally.interrupted:
        return tally.exit_code()
    each_once = tally.ended == len(tally.outcomes) == tasks
    return EXIT_OK if each_once else EXIT_FAILED
