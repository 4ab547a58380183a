"""The command line under 429s and 5xx, against a clean emulator: ``create --watch`` of 400 tasks.

The issue: "Under 5% 429s (Retry-After 1 s) and 10% 5xx, 400 tasks that finish in 4.2 s on a
clean emulator took 19.6 s (4.7x)"; the target: the CLI finishes within 2x of clean.

Each run starts the bundled emulator as a process of its own (``python -m vsr_async emulator
--seed S``, plus ``--error-rate 0.10 --rate-limit-rate 0.05 --retry-after 1`` when faulty: its
default timelines, tasks ending within 4 s of their creation, 85% completed), reads the
``export VSR_BASE_URL=...`` and ``export VSR_API_KEY=...`` lines it prints, and times, wall
clock, the command a user would run, in a process of its own, off a terminal, with no
``--rate-limit``::

    python -m vsr_async create -m superResolution-720p-lowfps --from-file URLS --watch
        --jsonl FILE [--interval S]

at the default interval (5 s), and with ``--intervals default,1`` at ``--interval 1`` too (a
user in a hurry; each a variant). The
counts of ``GET /_emulator/stats`` are read once the command has ended. Then, as the CLI's help
says to, the same command runs again for the video URLs whose create failed (a create is
billed, so a 5xx on it is never retried), up to ``--reruns`` times; the time until every URL
has an ended task is reported besides. Last, every task the JSON lines hold is queried once
with ``vsr-async status --json`` (answers refused by a fault are asked again) and its status
must be the one the watch recorded; the emulator must hold exactly the tasks the JSON lines
name, each with one ended transition.

Clean and faulty runs alternate (clean, faulty, clean, faulty...), each with a fresh emulator
and the same seed (the faults draw from the same generator, so the timelines differ between a
clean and a faulty emulator, alike in distribution). Each cell: median (min-max).

The wall time is that of the slowest of the 400 tasks. The watch polls a task again no sooner
than its interval after a failed poll (a 429's one-second ``Retry-After`` included), so at the
default interval each fault on a task's last poll adds 5 s to it, and among 400 tasks some
meet two or three in a row.

``python -m tests.bench.cli_faults [--reps 3] [--tasks 400] [--intervals default,1]
[--seed 7] [--reruns 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench._report import Report, cli, spread, table, verdict

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
MODEL = "superResolution-720p-lowfps"
FAULTS = ["--error-rate", "0.10", "--rate-limit-rate", "0.05", "--retry-after", "1"]
TARGET = 2.0  # faulty / clean, wall seconds of the command
DEFAULT = "default"  # no --interval: the CLI's own, 5 s
ENDED = ("completed", "failed")
COMMAND_TIMEOUT = 600.0
_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Run:
    faulty: bool
    interval: str
    wall: float  # seconds of the first command
    cpu: float  # user + system seconds of the first command's process
    emulator_cpu: float  # the emulator's, during the first command
    exit_code: int
    created: int  # by the first command
    ended: int  # tasks with an ended transition after the first command
    completed: int
    failed: int
    not_created: int  # video URLs the first command could not create
    stats: dict[str, Any]  # the emulator's counts after the first command
    reruns: int  # commands run again until every URL had an ended task
    wall_all: float  # seconds of every command together
    all_ended: bool  # every URL has an ended task in the end
    stats_all: dict[str, Any]  # the counts after the reruns
    warnings: int  # "Warning:" lines on the first command's stderr
    verified: int  # tasks whose status the emulator confirmed


class Emulator:
    """``python -m vsr_async emulator`` in a process of its own: its URL, key and counts."""

    def __init__(self, *, seed: int, faulty: bool, log: Path) -> None:
        command = [sys.executable, "-m", "vsr_async", "emulator", "--seed", str(seed)]
        command += FAULTS if faulty else []
        self.command = command
        self._log = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(  # noqa: S603
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self.process.stdout is not None
        self.env: dict[str, str] = {}
        while len(self.env) < 2:
            line = self.process.stdout.readline()
            if not line:
                self.close()
                raise RuntimeError(f"the emulator did not start: {log.read_text()[-2000:]}")
            name, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and name in ("VSR_BASE_URL", "VSR_API_KEY"):
                self.env[name] = value
        base = self.env["VSR_BASE_URL"]
        self.stats_url = base[: base.index("/", len("http://"))] + "/_emulator/stats"

    def cpu(self) -> float:
        """User plus system seconds, from ``/proc/<pid>/stat``."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.stats_url, timeout=10) as answer:  # noqa: S310
            stats: dict[str, Any] = json.load(answer)
        return stats

    def close(self) -> None:
        """Ctrl-C, as a user stops it; killed if it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def emulating(*, seed: int, faulty: bool, log: Path) -> Iterator[Emulator]:
    emulator = Emulator(seed=seed, faulty=faulty, log=log)
    try:
        yield emulator
    finally:
        emulator.close()


def create_command(urls: Path, jsonl: Path, interval: str) -> list[str]:
    command = [sys.executable, "-m", "vsr_async", "create", "-m", MODEL, "--from-file", str(urls)]
    command += ["--watch", "--jsonl", str(jsonl)]
    return command + ([] if interval == DEFAULT else ["--interval", interval])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(
    command: list[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``command`` to its end (the emulator, not waited for yet, is not a child counted by
    `children_cpu`)."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    return time.perf_counter() - started, done


def read_jsonl(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The task of each video URL, and each task's ended statuses, as the JSON lines hold them."""
    created: dict[str, str] = {}
    ended: dict[str, list[str]] = {}
    if not path.exists():
        return created, ended
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("input_url") is not None:
            if row["input_url"] in created:
                raise RuntimeError(f"{path}: two tasks for {row['input_url']}")
            created[row["input_url"]] = row["task_id"]
        if row.get("status") in ENDED:
            ended.setdefault(row["task_id"], []).append(row["status"])
    return created, ended


def verify(
    emulator: Emulator, workdir: Path, created: dict[str, str], ended: dict[str, list[str]]
) -> int:
    """Check the watch against the emulator: each task once, ended, with the status it has."""
    tasks = set(created.values())
    if emulator.stats()["tasks"] != len(tasks):
        raise RuntimeError(
            f"the emulator holds {emulator.stats()['tasks']} tasks, the JSON lines {len(tasks)}"
        )
    if set(ended) != tasks or any(len(statuses) != 1 for statuses in ended.values()):
        missing = sorted(tasks - set(ended))[:5]
        twice = sorted(t for t, statuses in ended.items() if len(statuses) != 1)[:5]
        raise RuntimeError(
            f"tasks not ended exactly once: missing {missing}, more than once {twice}"
        )
    truth: dict[str, str] = {}
    for _ in range(5):  # a fault answers some queries, and `status` retries only so often
        ids = workdir / "ids.txt"
        ids.write_text("\n".join(sorted(tasks - set(truth))) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "vsr_async", "status", "--json", "--from-file", str(ids)]
        _, done = run_cli(command, emulator.env)
        for line in done.stdout.splitlines():
            row = json.loads(line)
            if row.get("client_error") is None and row.get("status") in ENDED:
                truth[row["task_id"]] = row["status"]
        if len(truth) == len(tasks):
            break
    wrong = [t for t in tasks if t in truth and truth[t] != ended[t][0]]
    if wrong or len(truth) != len(tasks):
        raise RuntimeError(
            f"statuses differ from the emulator's for {wrong[:5]};"
            f" {len(tasks) - len(truth)} unconfirmed"
        )
    return len(truth)


def one_run(args: argparse.Namespace, *, faulty: bool, interval: str, workdir: Path) -> Run:
    for leftover in workdir.iterdir():
        leftover.unlink()
    urls = workdir / "urls.txt"
    wanted = [f"https://videos.example.com/clip-{i:04d}.mp4" for i in range(args.tasks)]
    urls.write_text("\n".join(wanted) + "\n", encoding="utf-8")
    jsonl = workdir / "tasks.jsonl"
    command = create_command(urls, jsonl, interval)
    with emulating(seed=args.seed, faulty=faulty, log=workdir / "emulator.log") as emulator:
        cpu, emulator_cpu = children_cpu(), emulator.cpu()
        wall, done = run_cli(command, emulator.env)
        cpu, emulator_cpu = children_cpu() - cpu, emulator.cpu() - emulator_cpu
        if done.returncode not in (0, 1):
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        stats = emulator.stats()
        created, ended = read_jsonl(jsonl)
        first = dict(created)
        statuses = [ended[t][0] for t in first.values() if t in ended]
        not_created = sum(line.startswith("not created") for line in done.stdout.splitlines())
        if not_created != len(wanted) - len(first):
            raise RuntimeError(
                f"{len(wanted) - len(first)} URLs have no task, the summary says {not_created}"
            )
        wall_all, reruns = wall, 0
        while len(created) < len(wanted) and reruns < args.reruns:
            reruns += 1
            more, again = run_cli(command, emulator.env)
            if again.returncode not in (0, 1):
                raise RuntimeError(f"rerun exit {again.returncode}: {again.stderr.strip()[-2000:]}")
            wall_all += more
            created, ended = read_jsonl(jsonl)
        stats_all = emulator.stats()
        verified = verify(emulator, workdir, created, ended)
    expected_exit = 0 if statuses.count("completed") == len(wanted) else 1
    if done.returncode != expected_exit:
        raise RuntimeError(f"exit {done.returncode}, expected {expected_exit}")
    return Run(
        faulty=faulty,
        interval=interval,
        wall=wall,
        cpu=cpu,
        emulator_cpu=emulator_cpu,
        exit_code=done.returncode,
        created=len(first),
        ended=len(statuses),
        completed=statuses.count("completed"),
        failed=statuses.count("failed"),
        not_created=not_created,
        stats=stats,
        reruns=reruns,
        wall_all=wall_all,
        all_ended=len(created) == len(wanted) and all(t in ended for t in created.values()),
        stats_all=stats_all,
        warnings=sum(line.startswith("Warning:") for line in done.stderr.splitlines()),
        verified=verified,
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cli_faults")
    parser.add_argument("--reps", type=int, default=3, help="runs of each, clean and faulty")
    parser.add_argument("--tasks", type=int, default=400, help="video URLs of the command")
    parser.add_argument(
        "--intervals",
        default=DEFAULT,
        help=f"--interval values, comma-separated; '{DEFAULT}' passes none (5 s)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the emulator's --seed")
    parser.add_argument(
        "--reruns", type=int, default=3, help="runs again for URLs whose create failed"
    )
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> Report:
    args = parse(argv)
    intervals = [value.strip() for value in args.intervals.split(",")]
    started, load = time.monotonic(), os.getloadavg()[0]
    runs: dict[tuple[str, bool], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="vsr-bench-cli-") as temp:
        workdir = Path(temp)
        for rep in range(args.reps):
            for interval in intervals:
                for faulty in (False, True):
                    one = one_run(args, faulty=faulty, interval=interval, workdir=workdir)
                    runs.setdefault((interval, faulty), []).append(one)
                    print(
                        f"{'faulty' if faulty else 'clean ':<6} interval {interval:<7}"
                        f" {rep + 1}/{args.reps}  {one.wall:6.2f} s  exit {one.exit_code}"
                        f"  {one.ended} ended, {one.not_created} not created,"
                        f" {one.stats['total']} requests; all ended after {one.reruns}"
                        f" reruns: {one.wall_all:.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    took = time.monotonic() - started
    return report(runs, intervals, args=args, took=took, load=load)


def label(interval: str) -> str:
    return "default (5 s)" if interval == DEFAULT else f"--interval {interval}"


def statuses(stats: dict[str, Any]) -> str:
    return " ".join(f"{code}:{count}" for code, count in sorted(stats["by_status"].items()))


def report(
    runs: dict[tuple[str, bool], list[Run]],
    intervals: list[str],
    *,
    args: argparse.Namespace,
    took: float,
    load: float,
) -> Report:
    rows = []
    for (interval, with_faults), group in runs.items():
        rows.append(
            [
                label(interval),
                "faulty" if with_faults else "clean",
                str(len(group)),
                spread([one.wall for one in group], "{:.1f}"),
                spread([one.cpu for one in group], "{:.1f}"),
                spread([one.emulator_cpu for one in group], "{:.1f}"),
                spread([one.ended for one in group]),
                spread([one.not_created for one in group]),
                " ".join(sorted({str(one.exit_code) for one in group})),
                spread([one.stats["total"] for one in group]),
                statuses(group[len(group) // 2].stats),
                spread([one.warnings for one in group]),
                spread([one.reruns for one in group]),
                spread([one.wall_all for one in group], "{:.1f}"),
                spread([one.stats_all["total"] for one in group]),
            ]
        )
    headers = ["Interval", "Emulator", "Runs", "Wall s", "CLI CPU s", "Emulator CPU s"]
    headers += ["Tasks ended", "Not created", "Exit"]
    headers += ["Requests", "By status (one run)", "Warnings", "Reruns"]
    headers += ["Wall s, all ended", "Requests, all ended"]
    lines = [
        "### The CLI under 429s and 5xx",
        "",
        (
            f"Python {platform.python_version()}, vsr-async {version('vsr-async')},"
            f" httpx {version('httpx')}, anyio {version('anyio')}; {os.cpu_count()} CPUs,"
            f" load {load:.2f} at the start; {took:.0f} s in all. `python -m vsr_async create"
            f" -m {MODEL} --from-file URLS --watch --jsonl FILE` of {args.tasks} video URLs,"
            " timed wall clock from its start to its exit, against `python -m vsr_async"
            f" emulator --seed {args.seed}` (tasks ending within 4 s, 85% completed), clean or"
            f" with `{' '.join(FAULTS)}`; a fresh emulator per run, clean and faulty"
            f" alternating, {args.reps} runs of each. Requests: the emulator's count after the"
            " command (creates and polls; faults are answered before routing, so a create"
            " answered 5xx created nothing, and the CLI never retries a create that may have"
            ' been made). "All ended": the same command run again (up to'
            f" {args.reruns} times) until every URL has an ended task, as the CLI's help says."
            " Every task's ended status was checked against the emulator's answer. Each cell:"
            " median (min-max)."
        ),
        "",
        table(headers, rows),
        "",
        "Targets:",
        "",
    ]
    met = True
    for interval in intervals:
        clean, faulty = runs[interval, False], runs[interval, True]
        ratio = statistics.median(r.wall for r in faulty) / statistics.median(r.wall for r in clean)
        pairs = [f.wall / c.wall for c, f in zip(clean, faulty, strict=True)]
        all_ratio = statistics.median(r.wall_all for r in faulty) / statistics.median(
            r.wall_all for r in clean
        )
        amplification = statistics.median(r.stats["total"] for r in faulty) / statistics.median(
            r.stats["total"] for r in clean
        )
        faults = [r.stats["faults"] for r in faulty]
        passed = ratio <= TARGET
        met = met and passed
        lines.append(
            f"- {label(interval)}: faulty / clean <= {TARGET:.1f}x: {ratio:.2f}x"
            f" ({spread([r.wall for r in faulty], '{:.1f}')} s against"
            f" {spread([r.wall for r in clean], '{:.1f}')} s; per pair"
            f" {spread(pairs, '{:.2f}x')}): {verdict(passed)}. Requests"
            f" {amplification:.2f}x clean's (faults injected: 429"
            f" {spread([f.get('429', 0) for f in faults])}, 5xx"
            f" {spread([f.get('5xx', 0) for f in faults])}). Until every URL had an ended"
            f" task: {all_ratio:.2f}x (not a target)."
        )
    return Report("\n".join(lines), targets_met=met)


if __name__ == "__main__":
    sys.exit(cli(run))
