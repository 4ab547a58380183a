"""``status`` output: a table on a terminal, tab-separated lines elsewhere, or JSON lines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vsr_async import TaskNotFoundError

from ._display import STYLES
from ._jsonl import query_record
from ._tally import printable

if TYPE_CHECKING:
    from vsr_async import Task, VSRError


def status_and_detail(task: Task | None, error: VSRError | None) -> tuple[str, str]:
    """A task's status and what to say about it: its result URL, its error, or ours."""
    if task is None:
        return ("not found" if isinstance(error, TaskNotFoundError) else "error", printable(error))
    if task.video_url:
        return printable(task.status), printable(task.video_url)
    return printable(task.status), "" if task.error is None else printable(task.error)


class StatusPrinter:
    """Shows each queried task; a table is printed by `close`, once all are in."""

    def __init__(self, *, as_json: bool, table: bool, console: Console | None = None) -> None:
        self._as_json = as_json
        self._table: Table | None = None
        if table and not as_json:
            self._table = Table("task", "status", "created", "duration", "result or reason")
        self._console = console or Console(highlight=False)

    def show(self, task_id: str, task: Task | None, error: VSRError | None) -> None:
        """Print one task's line, or keep its row for the table."""
        if self._as_json:
            click.echo(json.dumps(query_record(task_id, task, error), ensure_ascii=False))
            return
        status, detail = status_and_detail(task, error)
        if self._table is None:
            click.echo(f"{task_id}\t{status}\t{detail}")
            return
        created = (
            "" if task is None or task.created_at is None else f"{task.created_at:%Y-%m-%d %H:%M}"
        )
        duration = (
            "" if task is None or task.actual_duration is None else f"{task.actual_duration:g} s"
        )
        self._table.add_row(
            task_id, Text(status, STYLES.get(status, "red")), created, duration, detail
        )

    def close(self) -> None:
        """Print the table, if there is one."""
        if self._table is not None and self._table.rows:
            self._console.print(self._table)
