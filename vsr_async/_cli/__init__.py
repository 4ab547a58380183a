"""The ``vsr-async`` command line; needs the ``cli`` extra (click and rich).

Nothing in the library imports this package: it sits on top, like the emulator.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line (the ``vsr-async`` console script and ``python -m vsr_async``)."""
    try:
        from ._app import cli  # noqa: PLC0415 - a missing extra gets a one-line answer
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in ("click", "rich"):
            raise
        sys.stderr.write(
            "vsr-async: the command line needs the cli extra: pip install 'vsr-async[cli]'\n"
        )
        sys.exit(2)
    cli(prog_name="vsr-async")
