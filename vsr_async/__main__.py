"""``python -m vsr_async demo``: the library at work against its own emulator."""

from __future__ import annotations

import argparse
import sys

from ._demo import run_demo


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m vsr_async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="create and watch tasks against the bundled emulator on a loopback port"
    )
    demo.add_argument("--tasks", type=int, default=36, help="how many tasks (default: 36)")
    demo.add_argument("--seed", type=int, default=None, help="make the run reproducible")
    demo.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="the event loop"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return run_demo(tasks=args.tasks, seed=args.seed, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
