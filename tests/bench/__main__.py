"""Run the benchmarks: ``python -m tests.bench [NAME ...] [--out FILE] [--strict] [OPTIONS]``.

With no name, every module of this directory whose name does not start with ``_`` runs, in
alphabetical order; options the runner does not know go to each benchmark run (so name one
when passing its options, e.g. ``python -m tests.bench download --reps 9``). ``--out`` writes
all their tables to one Markdown file. A run that goes wrong (a wrong file, a crash) stops
the benchmark with its error; a missed target exits 1 with ``--strict``, else 0.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tests.bench._report import finish, options

HERE = Path(__file__).parent
AVAILABLE = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def main() -> int:
    argv = sys.argv[1:]
    names = []
    while argv and not argv[0].startswith("-"):
        names.append(argv.pop(0))
    unknown = sorted(set(names) - set(AVAILABLE))
    if unknown:
        print(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(AVAILABLE)}")
        return 2
    args, rest = options().parse_known_args(argv)
    reports = []
    for name in names or AVAILABLE:
        print(f"== {name}", flush=True)
        reports.append(importlib.import_module(f"tests.bench.{name}").run(rest))
    return finish(reports, args.out, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
