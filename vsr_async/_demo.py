"""The README's main job: the emulator on a loopback port, a few dozen tasks, one watch."""

from __future__ import annotations

import collections
import time

import anyio

from . import AsyncVSRClient, Model, Transition, VSRError, Watcher
from .testing import Emulator, EmulatorServer, EmulatorStats, Faults

_MODELS = list(Model)
#: Turned on once the tasks exist: the watch rides through them (creates are never retried).
_POLLING_FAULTS = Faults(error_rate=0.1, rate_limit_rate=0.02, retry_after=0.5)


def run_demo(*, tasks: int = 36, seed: int | None = None, backend: str = "asyncio") -> int:
    """Run the demo on ``backend``; returns 0 when every task was accounted for."""
    return anyio.run(_demo, tasks, seed, backend=backend)


async def _demo(tasks: int, seed: int | None) -> int:
    emulator = Emulator(seed=seed)
    async with EmulatorServer(emulator) as server:
        print(f"emulator serving {server.base_url}")
        async with AsyncVSRClient(emulator.api_key, base_url=server.base_url) as client:
            start = time.monotonic()
            transitions: list[Transition] = []
            async with (
                client.watch(interval=0.5, keep_open=True) as watcher,
                anyio.create_task_group() as task_group,
            ):
                task_group.start_soon(_create_all, client, watcher, tasks, emulator)
                async for transition in watcher:
                    transitions.append(transition)
                    print(f"{time.monotonic() - start:6.2f}s  {_describe(transition)}")
            elapsed = time.monotonic() - start
    return _summarise(transitions, tasks, elapsed, emulator.stats)


async def _create_all(
    client: AsyncVSRClient, watcher: Watcher, tasks: int, emulator: Emulator
) -> None:
    """Create the tasks concurrently, handing each to the watch as soon as it exists."""

    async def create(index: int) -> None:
        model = _MODELS[index % len(_MODELS)]
        try:
            task = await client.create_task(f"https://example.com/input-{index}.mp4", model=model)
        except VSRError as exc:
            print(f"create {index} failed: {exc}")
        else:
            watcher.add(task.id)

    async with anyio.create_task_group() as task_group:
        for index in range(tasks):
            task_group.start_soon(create, index)
    emulator.faults = _POLLING_FAULTS
    print(f"created {tasks} tasks; the emulator now fails 10% of polls and rate-limits 2%")
    watcher.done_adding()


def _describe(transition: Transition) -> str:
    if transition.error is not None:
        return f"{transition.task_id}  gave up: {transition.error}"
    line = f"{transition.task_id}  {transition.previous or 'new'} -> {transition.status}"
    task = transition.task
    if task is not None and task.video_url:
        line += f"  {task.video_url}"
    if task is not None and task.error:
        line += f"  ({task.error})"
    return line


def _summarise(
    transitions: list[Transition], tasks: int, elapsed: float, stats: EmulatorStats
) -> int:
    final = [t for t in transitions if t.is_final]
    counts = collections.Counter("gave up" if t.error else str(t.status) for t in final)
    faults = ", ".join(f"{count} {kind}" for kind, count in sorted(stats.faults.items()))
    print(f"\n{len(final)} of {tasks} tasks ended in {elapsed:.1f} s:")
    for status, count in sorted(counts.items()):
        print(f"  {status:>10}  {count}")
    print(f"{stats.total} requests; faults injected and ridden out: {faults or 'none'}")
    finished_once = len(final) == len({t.task_id for t in final}) == tasks
    return 0 if finished_once else 1
