"""What every benchmark shares: the report it returns, its Markdown table, its command line.

A benchmark is a module of ``tests/bench`` (its name not starting with ``_``) with a
``run(argv) -> Report`` function; ``python -m tests.bench`` runs them all, and
``python -m tests.bench.<name>`` runs one when the module ends with ``cli(run)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Report:
    """A benchmark's figures as Markdown, and whether they met its targets."""

    markdown: str
    targets_met: bool


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``median (min-max)``: one repetition alone says little on a shared machine."""
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded so it reads as well in a terminal."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    return "\n".join([line(headers), line(["-" * width for width in widths]), *map(line, rows)])


def verdict(met: bool) -> str:
    return "**PASS**" if met else "**MISS**"


def options() -> argparse.ArgumentParser:
    """The options of the runner itself; everything else goes to the benchmarks."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", type=Path, help="also write the figures as Markdown here")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed, not only on errors"
    )
    return parser


#: A target's verdict in a benchmark's Markdown line.
_VERDICT = re.compile(r": (?P<met>\*\*(?:PASS|MISS)\*\*)\.?")


def summary(markdown: str) -> str:
    """One table of every target of the benchmarks' Markdown: each line ``- ...: **PASS**.``
    or ``**MISS**.`` under its benchmark's ``###`` heading, with its figure, its baseline and
    its target in words, as the benchmark wrote them."""
    rows, heading = [], ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            heading = line.removeprefix("### ")
        elif line.startswith("- ") and (found := _VERDICT.search(line)):
            text = line[2 : found.start()] + line[found.end() :].removesuffix(".")
            rows.append([heading, text.replace("|", "/"), found["met"]])
    if not rows:
        return ""
    return "### Every target\n\n" + table(["Benchmark", "Figure, baseline, target", "Met"], rows)


def finish(reports: Sequence[Report], out: Path | None, *, strict: bool) -> int:
    markdown = "\n\n".join(report.markdown for report in reports) + "\n"
    if every := summary(markdown):
        markdown = every + "\n\n" + markdown
    print("\n" + markdown)
    if out is not None:
        out.write_text(markdown, encoding="utf-8")
        print(f"written to {out}")
    return 1 if strict and not all(report.targets_met for report in reports) else 0


def cli(run: Callable[[Sequence[str]], Report], argv: Sequence[str] | None = None) -> int:
    """``python -m tests.bench.<name> [--out FILE] [--strict] [its own options]``."""
    args, rest = options().parse_known_args(sys.argv[1:] if argv is None else argv)
    return finish([run(rest)], args.out, strict=args.strict)
