"""The live display on a real pseudo-terminal: pexpect runs the CLI, pyte renders what it
draws, and the tests read the screen a person would see."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import pytest
from _cli_helpers import CLI, CONTROL, add_tasks, cli_env, serve_in_thread

from vsr_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import Callable

pexpect = pytest.importorskip("pexpect")
pyte = pytest.importorskip("pyte")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")

ROWS, COLUMNS = 40, 120


class Terminal:
    """The CLI on a pseudo-terminal of ``ROWS`` x ``COLUMNS``, rendered by pyte as it draws."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self._stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        env = {**env, "TERM": "xterm-256color"}
        self.child = pexpect.spawn(CLI[0], [*CLI[1:], *args], env=env, dimensions=(ROWS, COLUMNS))

    @property
    def text(self) -> str:
        """What the screen shows now, line by line."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, shown: Callable[[str], bool], timeout: float = 20) -> str:
        """Read until the screen satisfies ``shown``; returns the screen then."""
        deadline = time.monotonic() + timeout
        while not shown(self.text):
            assert time.monotonic() < deadline, f"not shown in {timeout} s:\n{self.text}"
            assert self._read(), f"the command ended first:\n{self.text}"
        return self.text

    def finish(self, timeout: float = 20) -> int:
        """Read to the end; returns the exit status."""
        deadline = time.monotonic() + timeout
        while self._read():
            assert time.monotonic() < deadline, f"still running after {timeout} s:\n{self.text}"
        self.child.close()
        return self.child.exitstatus

    def _read(self) -> bool:
        try:
            data = self.child.read_nonblocking(65536, timeout=0.1)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.raw.extend(data)
        self._stream.feed(data)
        return True


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=5)


@pytest.fixture
def base_url(emulator: Emulator) -> object:
    with serve_in_thread(emulator) as url:
        yield url


def test_watch_draws_counts_progress_and_latest_then_a_summary(emulator, base_url) -> None:
    """On a terminal: counts per status, finished/total with elapsed and ETA, the latest
    transitions while it runs; then the summary with a table of failures, exit 1."""
    ids = add_tasks(emulator, "ccfcc", first=1.5, step=0.3)
    terminal = Terminal(["watch", "--interval", "0.1", *ids], cli_env(base_url))
    running = terminal.wait_for(lambda screen: "finished" in screen and "latest:" in screen)
    assert f"Watching 5 tasks at {base_url}" in running
    assert "queued" in running
    assert "processing" in running
    assert "completed" in running
    assert "gave up" in running
    assert "/5 finished" in running
    assert "ETA" in running
    assert terminal.finish() == 1
    screen = terminal.text
    assert "5/5 finished" in screen
    assert "Done after" in screen
    assert "5 of 5 tasks ended: 4 completed, 1 failed" in screen
    summary = screen[screen.index("Not completed") :]
    assert ids[2] in summary
    assert "Bad input" in summary
    assert CONTROL.search(terminal.raw.decode())  # it was drawn, not printed line by line


def test_ctrl_c_in_the_live_display_prints_the_summary_so_far(emulator, base_url, tmp_path) -> None:
    """Ctrl-C on the terminal: the display stops, the summary so far, a hint, exit 130."""
    ids = add_tasks(emulator, "crr", first=0.0, step=0.0)
    results = tmp_path / "results.jsonl"
    args = ["watch", "--interval", "0.1", "--jsonl", str(results), *ids]
    terminal = Terminal(args, cli_env(base_url))
    terminal.wait_for(lambda screen: "1/3 finished" in screen)
    terminal.child.sendintr()
    assert terminal.finish() == 130
    screen = terminal.text
    assert "Interrupted after" in screen
    assert "1 of 3 tasks ended: 1 completed, 2 not finished" in screen
    assert "To resume: run the same command again" in screen
    assert "Traceback" not in terminal.raw.decode()


def test_no_color_on_a_terminal_prints_plain_lines(emulator, base_url) -> None:
    """NO_COLOR asks for plain output even on a terminal: no control codes at all."""
    ids = add_tasks(emulator, "cf", first=0.2, step=0.1)
    terminal = Terminal(["watch", "--interval", "0.05", *ids], cli_env(base_url, NO_COLOR="1"))
    assert terminal.finish() == 1
    output = terminal.raw.decode()
    assert not CONTROL.search(output)
    assert "2 of 2 tasks ended: 1 completed, 1 failed" in output


def test_the_demo_runs_live_in_under_30_seconds() -> None:
    """`vsr-async demo`: a few dozen tasks on the emulator, drawn live with faults injected,
    every one accounted for, exit 0, in well under 30 s."""
    started = time.monotonic()
    terminal = Terminal(["demo", "--seed", "1"], cli_env())
    running = terminal.wait_for(lambda screen: "finished" in screen)
    assert "vsr-async demo: 36 tasks on the emulator at http://127.0.0.1:" in running
    assert terminal.finish(timeout=30) == 0
    assert time.monotonic() - started < 30
    screen = terminal.text
    assert "36/36 finished" in screen
    assert "36 of 36 tasks ended: " in screen
    assert "faults injected and ridden out: " in screen
    assert "5xx" in screen
