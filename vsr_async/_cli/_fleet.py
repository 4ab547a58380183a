"""``vsr-async worker`` and ``vsr-async fleet status``: the fleet on Redis (the redis extra)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import ssl
from typing import TYPE_CHECKING, Any

import click

from vsr_async._config import DEFAULT_INTERVAL, DEFAULT_MAX_CONNECTIONS

from ._exits import ConfigError, exits, run
from ._options import (
    backend_option,
    make_client,
    seconds,
    server_options,
    stack,
    verbose_option,
)
from ._run import run_until_interrupted

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.abc import TaskGroup

    from vsr_async.fleet import RedisFleet

F = Any

#: The Redis URL's environment variable, the default of ``--redis``.
REDIS_URL_ENV = "VSR_REDIS_URL"

logger = logging.getLogger("vsr_async.fleet")


def redis_options(command: F) -> F:
    """``--redis`` and ``--namespace``."""
    return stack(
        command,
        click.option(
            "--redis",
            "redis_url",
            envvar=REDIS_URL_ENV,
            metavar="URL",
            help=f"The fleet's Redis: redis://[user:password@]host:port/db, or rediss:// for TLS."
            f" Default: ${REDIS_URL_ENV}.",
        ),
        click.option(
            "--namespace",
            default="vsr",
            show_default=True,
            help="The fleet's namespace in that Redis: its workers, tasks and results.",
        ),
    )


def open_fleet(
    redis_url: str | None, namespace: str, api_key: str | None, **options: Any
) -> RedisFleet:
    """The fleet of the options, or a `ConfigError` naming what is missing."""
    if importlib.util.find_spec("coredis") is None:
        raise ConfigError("this needs the redis extra: pip install 'vsr-async[redis]'")
    if not redis_url:
        raise ConfigError(f"no Redis URL: set {REDIS_URL_ENV} (or pass --redis)")
    from vsr_async.fleet import RedisFleet  # noqa: PLC0415 (the redis extra's)

    try:
        return RedisFleet(redis_url, namespace, api_key=api_key, **options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _connection_error(exc: BaseException) -> BaseException | None:
    """The Redis connection error in ``exc`` (or in its exception group), if there is one."""
    import coredis  # noqa: PLC0415 (the redis extra's)

    if isinstance(exc, coredis.exceptions.ConnectionError | ConnectionError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if (found := _connection_error(inner)) is not None:
            return found
    return None


@contextlib.contextmanager
def redis_errors(fleet: RedisFleet | None) -> Iterator[None]:
    """Redis unreachable when a command starts: one ``Error:`` line naming the URL (without its
    password) and the setting, exit 2; not a traceback."""
    try:
        yield
    except BaseException as exc:
        found = None if fleet is None else _connection_error(exc)
        if fleet is None or found is None:
            raise
        detail = str(found)
        if isinstance(found.__cause__, ssl.SSLError):  # (its reason: not in coredis's message)
            detail += f" ({found.__cause__}; a private CA's file goes in ?ssl_ca_certs=PATH)"
        raise ConfigError(
            f"cannot reach Redis at {fleet.url}: {detail}; check {REDIS_URL_ENV} (or --redis)"
        ) from None


@click.command()
@redis_options
@click.option(
    "--interval",
    type=float,
    metavar="SECONDS",
    callback=seconds(finite=True),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Seconds between two polls of a task whose submitter did not say.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="The most tasks this worker owns at once. Default: no limit (workers running together "
    "share the queue out; cap them to leave tasks for one that starts later).",
)
@click.option(
    "--lease",
    type=float,
    metavar="SECONDS",
    callback=seconds(finite=True),
    default=30.0,
    show_default=True,
    help="A worker that stops renewing (killed, paused) loses its tasks after this long. Give "
    "every worker of a namespace the same.",
)
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    metavar="N",
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    default=None,
    help="At most N requests per second from all the namespace's workers together (fewer "
    "after a 429 met by any of them). Default: no limit.",
)
@server_options
@backend_option
@verbose_option
@exits
def worker(
    *,
    redis_url: str | None,
    namespace: str,
    interval: float,
    concurrency: int | None,
    lease: float,
    connections: int,
    api_key: str | None,
    base_url: str | None,
    rate_limit: float | None,
    backend: str,
) -> int:
    """Poll a fleet's tasks until SIGTERM or SIGINT, then hand them back and exit 0.

    Tasks come from `vsr-async watch --redis` (or `RedisFleet.submit`); each is owned by one
    worker at a time, and a worker that dies loses its tasks to the others within its lease.
    """
    client = make_client(api_key, base_url, connections)
    fleet = open_fleet(redis_url, namespace, api_key, lease=lease)

    async def serve() -> None:
        async def work(_: TaskGroup) -> None:
            click.echo(f"Worker joining namespace {namespace!r} on {fleet.url}", err=True)
            await fleet.serve(
                client, concurrency=concurrency, interval=interval, rate_limit=rate_limit
            )

        # Open outside what a signal cancels: the hand-back needs the Redis connection.
        async with client, fleet:
            signum = await run_until_interrupted(work)
        if signum is not None:
            click.echo(f"Stopped by {signum.name}: tasks handed back", err=True)

    with redis_errors(fleet):
        run(backend, serve)
    return 0


@click.group()
def fleet() -> None:
    """A fleet of workers on Redis (the redis extra)."""


@fleet.command()
@redis_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@backend_option
@verbose_option
@exits
def status(*, redis_url: str | None, namespace: str, as_json: bool, backend: str) -> int:
    """Workers, tasks owned and waiting, and the rate now."""
    opened = open_fleet(redis_url, namespace, api_key="")

    async def read() -> Any:
        async with opened:
            return await opened.status()

    with redis_errors(opened):
        now = run(backend, read)
    if as_json:
        data = {"workers": now.workers, "watched": now.watched, "owned": now.owned}
        data |= {"waiting": now.waiting, "rate": now.rate, "rate_limit": now.rate_limit}
        click.echo(json.dumps(data))
        return 0
    click.echo(f"Namespace {namespace!r} on {opened.url}")
    click.echo(f"  tasks watched: {now.watched} ({now.owned} owned, {now.waiting} waiting)")
    if now.rate is None:
        click.echo("  rate: no shared limit")
    else:
        click.echo(f"  rate now: {now.rate:.1f} requests/s (limit {now.rate_limit or now.rate:g})")
    click.echo(f"  workers: {len(now.workers)}")
    for name, beat in sorted(now.workers.items()):
        click.echo(f"    {name}: {beat.get('owned', 0)} tasks")
    return 0


COMMANDS: list[click.Command] = [worker, fleet]
