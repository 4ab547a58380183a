"""The displays, rendered in process: when the live one is used, what it and the summaries
and the status table show. test_cli_pty checks the same on a real pseudo-terminal."""

from __future__ import annotations

import io
import signal
import sys

import anyio
import pytest
from rich.console import Console

from vsr_async import Task, TaskError, TaskNotFoundError, Transition, WaitTimeoutError
from vsr_async._cli._display import (
    MAX_FAILURES_SHOWN,
    LiveDisplay,
    PlainDisplay,
    make_display,
    use_live_display,
)
from vsr_async._cli._status import StatusPrinter
from vsr_async._cli._tally import Tally


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_display_is_for_terminals_that_want_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live on a terminal; plain with --plain, NO_COLOR (if not empty), TERM=dumb, or a pipe."""
    monkeypatch.setattr(sys, "stdout", _Terminal())  # here: capture resets it after fixtures
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_live_display(plain=False)
    assert isinstance(make_display(Tally(), plain=False, title=""), LiveDisplay)
    assert not use_live_display(plain=True)
    assert isinstance(make_display(Tally(), plain=True, title=""), PlainDisplay)
    monkeypatch.setenv("NO_COLOR", "")
    assert use_live_display(plain=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_live_display(plain=False)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_live_display(plain=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not use_live_display(plain=False)


def task(task_id: str, status: str, **fields: object) -> Task:
    return Task(task_id, status, **fields)  # type: ignore[arg-type]


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=110, record=True)


def test_the_live_display_shows_counts_progress_latest_and_a_summary() -> None:
    """Counts per status, finished/total with elapsed time and ETA, the latest transitions,
    then a headline and a table of what did not complete, with the reasons."""
    tally = Tally()
    for task_id in ("task_a", "task_b", "task_c", "task_d"):
        tally.expect(task_id)
    console = terminal()
    display = LiveDisplay(tally, title="Watching 4 tasks at http://127.0.0.1", console=console)
    transitions = [
        Transition("task_a", None, task("task_a", "queued")),
        Transition("task_b", None, task("task_b", "rendering")),  # a status we do not know
        Transition("task_a", "queued", task("task_a", "completed", video_url="http://x/a.mp4")),
        Transition(
            "task_c", None, task("task_c", "failed", error=TaskError("Bad input", code="bad"))
        ),
    ]
    with display:
        for transition in transitions:
            tally.observe(transition)
            display.transition(transition)
        display.note("a note above the display")
        frame = console.export_text(clear=False)
    display.summary()
    screen = console.export_text()
    assert "Watching 4 tasks at http://127.0.0.1" in screen
    assert (
        "waiting 1   queued 0   processing 0   rendering 1   completed 1   failed 1   gave up 0"
        in screen
    )
    assert "2/4 finished" in screen
    assert "ETA" in screen
    assert "task_a  queued -> completed  http://x/a.mp4" in screen
    assert "task_c  new -> failed  (Bad input (bad))" in screen
    assert "a note above the display" in frame
    assert "Done after" in screen
    assert "2 of 4 tasks ended: 1 completed, 1 failed, 2 not finished" in screen
    summary = screen[screen.index("Not completed") :]
    assert "task_c" in summary
    assert "Bad input (bad)" in summary
    assert "task_a" not in summary


@pytest.mark.anyio
async def test_the_live_display_redraws_and_prints_creates_above_itself() -> None:
    """While it runs it redraws on its own, and new IDs and failed creates scroll above it."""
    tally = Tally()
    console = terminal()
    display = LiveDisplay(tally, title="Creating", console=console)
    with display:
        display.created("task_new", "https://example.com/a.mp4")
        display.create_failed("https://example.com/b.mp4", "HTTP 400: bad model")
        tally.expect("task_new")
        with anyio.move_on_after(0.3):
            await display.refresh_forever()
        screen = console.export_text(clear=False)
    assert "created task_new from https://example.com/a.mp4" in screen
    assert "could not create from https://example.com/b.mp4: HTTP 400: bad model" in screen
    assert "waiting 1" in screen
    assert "0/1 finished" in screen


def test_the_live_summary_lists_the_first_failures_and_counts_the_rest() -> None:
    """Thousands of failures do not flood the terminal: the first few, then how many more."""
    tally = Tally()
    console = terminal()
    display = LiveDisplay(tally, title="", console=console)
    total = MAX_FAILURES_SHOWN + 7
    for n in range(total):
        error = WaitTimeoutError(f"task_{n}", 1.0, None)
        tally.expect(f"task_{n}")
        tally.observe(Transition(f"task_{n}", None, None, error))
    tally.create_failures.append(("https://example.com/x.mp4", "HTTP 400: no"))
    display.summary()
    screen = console.export_text()
    assert "task_0 " in screen
    assert f"task_{MAX_FAILURES_SHOWN} " not in screen
    assert "... and 8 more (--plain lists them all)" in screen
    assert f"{total} gave up, 1 not created" in screen


def test_the_plain_summary_lists_every_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain output (for logs) lists every failure and every failed create, one per line."""
    tally = Tally()
    display = PlainDisplay(tally)
    for n in range(MAX_FAILURES_SHOWN + 3):
        tally.expect(f"task_{n}")
        tally.observe(Transition(f"task_{n}", "processing", task(f"task_{n}", "failed")))
    tally.create_failures.append(("https://example.com/x.mp4", "HTTP 400: no"))
    tally.interrupted = signal.SIGINT
    display.summary()
    out = capsys.readouterr().out
    assert out.count("no reason given") == MAX_FAILURES_SHOWN + 3
    assert "not created  https://example.com/x.mp4  HTTP 400: no" in out
    assert out.startswith("\nInterrupted after ")


def test_the_status_table_shows_each_task() -> None:
    """status on a terminal: one table row per task with its status, dates and result."""
    console = terminal()
    printer = StatusPrinter(as_json=False, table=True, console=console)
    printer.show(
        "task_a",
        task(
            "task_a",
            "completed",
            video_url="http://x/a.mp4",
            actual_duration=12.5,
            created=1_700_000_000,
        ),
        None,
    )
    printer.show("task_b", task("task_b", "failed", error=TaskError("Bad input")), None)
    printer.show("task_c", None, TaskNotFoundError("Task not found", status_code=404))
    printer.close()
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if "task_" in line}
    assert "completed" in rows["task_a"]
    assert "2023-11-14" in rows["task_a"]
    assert "12.5 s" in rows["task_a"]
    assert "http://x/a.mp4" in rows["task_a"]
    assert "Bad input" in rows["task_b"]
    assert "not found" in rows["task_c"]


def test_an_empty_status_table_prints_nothing() -> None:
    """No rows (Ctrl-C before any answer): no empty table."""
    console = terminal()
    StatusPrinter(as_json=False, table=True, console=console).close()
    assert console.export_text() == ""
