"""Options shared by several commands, and turning them into a client and a list of IDs."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import attrs
import click
from click.core import ParameterSource

from vsr_async import AsyncVSRClient
from vsr_async._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_INTERVAL, DEFAULT_MAX_CONNECTIONS
from vsr_async._validate import check_seconds

from . import _telemetry as telemetry
from ._exits import ConfigError
from ._ids import BadLinesError, Collected

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

F = TypeVar("F", bound="Callable[..., Any]")

#: Downloads in flight at once, by default: a few big files, not a flood.
DEFAULT_DOWNLOAD_CONCURRENCY = 4


def seconds(*, finite: bool) -> Callable[[click.Context, click.Parameter, float | None], Any]:
    """A callback refusing what the library would: zero, negative (and infinite, if ``finite``)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return None
        try:
            return check_seconds("it", value, finite=finite)
        except ValueError as exc:
            raise click.BadParameter(str(exc).removeprefix("it ")) from None

    return check


def stack(command: F, *options: Callable[[F], F]) -> F:
    """``command`` under ``options``, as if they were stacked above it in this order."""
    for option in reversed(options):
        command = option(command)
    return command


def server_options(command: F) -> F:
    """``--api-key`` and ``--base-url``."""
    return stack(
        command,
        click.option(
            "--api-key",
            envvar=API_KEY_ENV,
            metavar="KEY",
            help=f"The API key. Default: ${API_KEY_ENV}. The environment is safer: a flag "
            "shows in `ps` and in your shell history.",
        ),
        click.option(
            "--base-url",
            envvar=BASE_URL_ENV,
            metavar="URL",
            help=f"The API's root URL. Default: ${BASE_URL_ENV}, else the provider's.",
        ),
    )


def api_options(command: F) -> F:
    """``--api-key``, ``--base-url``, ``--rate-limit``, ``--backend`` and ``-v``."""
    return stack(
        command,
        server_options,
        click.option(
            "--rate-limit",
            type=click.FloatRange(min=0, min_open=True),
            metavar="N",
            default=None,
            help="At most N requests per second from this process (fewer after a 429). "
            "Default: no limit.",
        ),
        backend_option,
        verbose_option,
    )


def pace_options(command: F) -> F:
    """``--interval``, ``--timeout``, ``--concurrency`` and ``--plain``."""
    return stack(
        command,
        click.option(
            "--interval",
            type=float,
            metavar="SECONDS",
            callback=seconds(finite=True),
            default=DEFAULT_INTERVAL,
            show_default=True,
            help="Seconds between two polls of one task.",
        ),
        click.option(
            "--timeout",
            type=float,
            metavar="SECONDS",
            callback=seconds(finite=False),
            default=None,
            help="Give a task up after this many seconds (it counts as not completed). "
            "Default: never.",
        ),
        concurrency_option,
        plain_option,
    )


def _verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:  # the group's handler shows the records; this lets the debug ones through
        logging.getLogger("vsr_async").setLevel(logging.DEBUG)


#: ``-v`` after the command too: ``vsr-async watch -v ...`` as well as ``vsr-async -v watch``.
verbose_option = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=_verbose,
    help="Log every retry and slow-down on stderr.",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="The event loop to run on.",
)
concurrency_option = click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Requests in flight at once.",
)
plain_option = click.option(
    "--plain",
    is_flag=True,
    help="One plain line per event, even on a terminal (also with NO_COLOR, or off a terminal).",
)


def download_options(command: F) -> F:
    """``--download DIR`` and ``--download-concurrency``."""
    return stack(
        command,
        click.option(
            "--download",
            type=click.Path(file_okay=False, path_type=Path),
            metavar="DIR",
            help="Download each result into DIR (created if missing) as soon as its task "
            "completes, while the others are watched. A file already there is kept; with "
            "--jsonl, each download is recorded and a rerun finishes the missing ones.",
        ),
        click.option(
            "--download-concurrency",
            type=click.IntRange(min=1),
            metavar="N",
            default=DEFAULT_DOWNLOAD_CONCURRENCY,
            show_default=True,
            help="Downloads in flight at once (on top of --concurrency).",
        ),
    )


@attrs.frozen
class BatchOptions:
    """The options `watch` and `create` share: `download_options`, `pace_options`, `api_options`."""

    download: Path | None
    download_concurrency: int
    interval: float
    timeout: float | None
    concurrency: int
    plain: bool
    api_key: str | None
    base_url: str | None
    rate_limit: float | None
    backend: str


def batch_options(command: F) -> F:
    """`download_options`, `pace_options` and `api_options`, given to ``command`` as one
    `BatchOptions`: its ``options`` argument."""
    names = [field.name for field in attrs.fields(BatchOptions)]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        options = BatchOptions(**{name: kwargs.pop(name) for name in names})
        return command(options=options, **kwargs)

    return stack(wrapper, download_options, pace_options, api_options)  # type: ignore[return-value]


from_file_option = click.option(
    "--from-file",
    "files",
    type=click.File("r", encoding="utf-8-sig"),
    multiple=True,
    metavar="FILE",
    help="Read more, one per line ('-' for stdin); blank lines and # comments are skipped.",
)


def unreachable(base_url: object) -> str:
    """What to say when nothing answers at ``base_url``: which setting to check."""
    return f"could not connect to {base_url}: check {BASE_URL_ENV} (or --base-url)"


def wrong_path(base_url: object) -> str:
    """What to say when every task is "not found" by 404s that are not the API's."""
    return (
        "every task is 'not found', each answered by a 404 that is not the API's: is "
        f"{base_url} the API's root URL, its path included? Check {BASE_URL_ENV} (or --base-url)."
    )


def make_client(
    api_key: str | None,
    base_url: str | None,
    concurrency: int,
    *,
    rate_limit: float | None = None,
) -> AsyncVSRClient:
    """A client, or a `ConfigError` naming what is missing or wrong (never quoting the key)."""
    if not api_key:
        raise ConfigError(f"no API key: set {API_KEY_ENV} (or pass --api-key)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            client = AsyncVSRClient(
                api_key,
                base_url=base_url,
                max_connections=concurrency,
                rate_limit=rate_limit,
                hooks=telemetry.hooks(),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)
    return client


def collect(
    arguments: Iterable[str],
    files: Iterable[IO[str]],
    check: Callable[[str], object],
    *,
    what: str,
    required: bool = True,
) -> list[str]:
    """The items from ``arguments`` (``-`` reads stdin) then ``files``, checked and deduplicated.

    Raises:
        ConfigError: Some are invalid (each named with its line).
        click.UsageError: There are none, and some are ``required``.
    """
    collected = Collected()
    values = list(arguments)
    sources = list(files)
    if "-" in values:
        values = [value for value in values if value != "-"]
        sources.insert(0, sys.stdin)
    collected.add_arguments(values, check)
    for source in sources:  # stdin named twice is read once: the second time it is empty
        collected.add_lines(source, _name(source), check)
    try:
        items = collected.result().items
    except BadLinesError as exc:
        raise ConfigError(f"invalid {what}:\n{exc}") from None
    if not items and required and sources:
        names = ", ".join(_name(source) for source in sources)
        raise click.UsageError(
            f"no {what} in {names}: it holds only blank lines and # comments, or nothing"
        )
    if not items and required:
        raise click.UsageError(
            f"no {what}: give them as arguments, with --from-file FILE, or - for stdin"
        )
    if collected.duplicates:
        click.echo(f"Note: {collected.duplicates} duplicate {what} taken once.", err=True)
    return items


def command_line(ctx: click.Context, *, leave_out: Iterable[str] = ()) -> str:
    """The command being run, quoted for a shell, as a hint to run it again: its options as
    given on the command line (never ``--api-key``: the key is not printed; nor ``leave_out``,
    by parameter name), then its arguments."""
    options: list[str] = []
    arguments: list[str] = []
    skip = {"api_key", *leave_out}
    for param in ctx.command.params:
        name = param.name
        if (
            name in skip
            or name not in ctx.params  # -v: not part of what the run does
            or ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE
        ):
            continue
        value = ctx.params[name]
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(param, click.Argument):
            arguments += [_word(each) for each in values]
        elif isinstance(param, click.Option) and param.is_flag:
            options.append(max(param.opts, key=len))
        else:
            for each in values:
                options += [max(param.opts, key=len), _word(each)]
    return shlex.join([*ctx.command_path.split(), *options, *arguments])


def _word(value: object) -> str:
    """An option's value as it was typed: a file by its name (``-`` for stdin)."""
    if not hasattr(value, "read"):
        return str(value)
    name = _name(value)
    return "-" if name == "stdin" else name


def make_directory(path: Path) -> None:
    """Create ``path`` (and its parents) if missing, or say why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the download directory: {exc.strerror}") from None


def _name(source: object) -> str:
    name = getattr(source, "name", "<stdin>")
    return "stdin" if name in ("<stdin>", "-") else str(name)
