"""How a command ends: the exit codes and their help texts, the errors that end a run, and
running a command's async work on the chosen event loop."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click

from vsr_async import AuthenticationError, PermissionDeniedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

F = TypeVar("F", bound="Callable[..., Any]")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
#: Stopped by a signal: 128 plus its number, as shells report a process a signal ended, so 130
#: for SIGINT (Ctrl-C) and 143 for SIGTERM (`docker stop`, systemd, Kubernetes).
EXIT_SIGNALLED = 128
EXIT_INTERRUPTED = EXIT_SIGNALLED + signal.SIGINT

#: A refused key ends the whole run (exit 3): every other request would be refused too.
FATAL = (AuthenticationError, PermissionDeniedError)

EXIT_CODES = """\b
Exit codes:
  0    every task completed (or was created, for create without --watch), and every result
       to download is saved (or was there already)
  1    some task failed, was given up, or could not be created, queried or downloaded
       (demo: 0 when each of its tasks ended exactly once, its failures by design included)
  2    usage or configuration error: a bad flag, no API key, an invalid ID
  3    the API refused the key (401 or 403)
  130  interrupted (Ctrl-C, SIGINT): creates in flight are answered and recorded, the
       summary so far is printed; a second Ctrl-C or SIGTERM stops without waiting for them
  143  stopped by SIGTERM (docker stop, systemd, Kubernetes): the same clean stop as 130"""

#: ``status`` only queries: its exit codes, without creates, downloads or the demo.
STATUS_EXIT_CODES = """\b
Exit codes:
  0    every task was queried, and none has failed
  1    some task failed, or could not be queried (not found, unreachable, an error)
  2    usage or configuration error: a bad flag, no API key, an invalid ID
  3    the API refused the key (401 or 403)
  130  interrupted (Ctrl-C, SIGINT): the answers so far are printed
  143  stopped by SIGTERM (docker stop, systemd, Kubernetes): the same clean stop as 130"""


class ConfigError(click.ClickException):
    """A configuration problem: shown as one ``Error:`` line, exit code 2."""

    exit_code = EXIT_USAGE


def exit_code(*, interrupted: signal.Signals | None, fatal: bool, failed: bool) -> int:
    """The one exit-code policy: 128 + the signal's number if one stopped the run (130 for
    SIGINT, 143 for SIGTERM), 3 if the key was refused, 1 if anything failed, else 0."""
    if interrupted is not None:
        return EXIT_SIGNALLED + interrupted
    if fatal:
        return EXIT_AUTH
    return EXIT_FAILED if failed else EXIT_OK


def report_fatal(message: str | None) -> None:
    """Say, on stderr, that the key was refused (exit 3), if it was."""
    if message is not None:
        click.echo(f"Error: the API refused the key: {message}", err=True)


def exits(command: F) -> F:
    """Make a command's returned int its exit code, Ctrl-C outside a batch (or a third one in
    it) exit 130, and a reader that went away (``| head``) a quiet exit 1, as click does."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = command(*args, **kwargs)
        except BaseException as exc:  # task groups wrap these in exception groups
            if _only(KeyboardInterrupt, exc):
                click.echo("\nInterrupted.", err=True)
                code = EXIT_INTERRUPTED
            elif _only(BrokenPipeError, exc):
                # Python flushes stdout at exit, which would fail again: point it at devnull.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                code = EXIT_FAILED
            else:
                raise
        click.get_current_context().exit(code)

    return wrapper  # type: ignore[return-value]


def _only(kind: type[BaseException], exc: BaseException) -> bool:
    """Whether ``exc`` is a ``kind``, or an exception group of nothing else."""
    if isinstance(exc, kind):
        return True
    inner: Sequence[BaseException] = getattr(exc, "exceptions", ())
    return bool(inner) and all(_only(kind, each) for each in inner)


def run(backend: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``function(*args)`` on ``backend``."""
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        raise ConfigError("--backend trio needs trio: pip install trio")
    return anyio.run(function, *args, backend=backend)
