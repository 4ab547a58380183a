"""The ``vsr-async`` commands: status, create, watch, download, emulator, demo."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING

import attrs
import click

from vsr_async import Model, __version__
from vsr_async._validate import check_model, check_task_id
from vsr_async.testing import Emulator, Faults, Quota, Timeline

from . import _telemetry as telemetry
from ._demo import run_demo
from ._display import CreatedIds, make_display, use_live_display
from ._download import make_printer
from ._exits import EXIT_CODES, STATUS_EXIT_CODES, ConfigError, exits, report_fatal, run
from ._fleet import COMMANDS as FLEET_COMMANDS
from ._fleet import open_fleet, redis_errors, redis_options
from ._ids import check_video_url
from ._jsonl import ResultsFile, ResultsFileError
from ._options import (
    DEFAULT_DOWNLOAD_CONCURRENCY,
    BatchOptions,
    api_options,
    backend_option,
    batch_options,
    collect,
    command_line,
    concurrency_option,
    from_file_option,
    make_client,
    make_directory,
    plain_option,
    unreachable,
    verbose_option,
    wrong_path,
)
from ._run import Pace, download_all, query_all, run_batch
from ._serve import log_request, serve
from ._status import StatusPrinter
from ._tally import Saving, Tally

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from vsr_async import AsyncVSRClient
    from vsr_async.fleet import RedisFleet

    from ._display import Display

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
MODELS = ", ".join(model.value for model in Model)


@click.group(context_settings=CONTEXT, epilog=EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name="vsr-async")
@click.option("-v", "--verbose", is_flag=True, help="Log every retry and slow-down on stderr.")
@click.option(
    "--otel",
    is_flag=True,
    envvar="VSR_OTEL",
    help="Send traces and metrics through OpenTelemetry, as its OTEL_* variables say "
    "(needs the otel extra and opentelemetry-sdk). Default: $VSR_OTEL.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, otel: bool) -> None:
    """Create, watch and query video super-resolution tasks, thousands at a time, and download
    their results.

    The API key comes from VSR_API_KEY, the server from VSR_BASE_URL (default: the
    provider's). Try `vsr-async demo`: it needs neither.
    """
    _log_to_stderr(ctx, logging.DEBUG if verbose else logging.WARNING)
    if otel:
        telemetry.enable(ctx)


@cli.command(epilog=STATUS_EXIT_CODES)
@click.argument("task_ids", nargs=-1, metavar="[ID|-]...")
@from_file_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task and line.")
@concurrency_option
@click.option(
    "--plain",
    is_flag=True,
    help="Tab-separated lines, even on a terminal (as off one, or with NO_COLOR).",
)
@api_options
@exits
def status(
    *,
    task_ids: tuple[str, ...],
    files: tuple[IO[str], ...],
    as_json: bool,
    concurrency: int,
    plain: bool,
    api_key: str | None,
    base_url: str | None,
    rate_limit: float | None,
    backend: str,
) -> int:
    """Query each task once, concurrently: a table on a terminal, else one line per task."""
    ids = collect(task_ids, files, check_task_id, what="task IDs")
    client = make_client(api_key, base_url, concurrency, rate_limit=rate_limit)
    printer = StatusPrinter(as_json=as_json, table=use_live_display(plain=plain))
    query = functools.partial(query_all, client, ids, concurrency=concurrency, show=printer.show)
    outcome = run(backend, query)
    printer.close()
    report_fatal(outcome.fatal)
    if outcome.unreachable:
        click.echo(f"Error: {unreachable(client.base_url)}", err=True)
    elif ids and outcome.foreign_not_found == len(ids):
        click.echo(f"Hint: {wrong_path(client.base_url)}", err=True)
    return outcome.exit_code()


@cli.command(epilog=EXIT_CODES)
@click.argument("task_ids", nargs=-1, metavar="[ID|-]...")
@from_file_option
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Append every transition to FILE as a JSON line, flushed at once and synced to disk "
    "when a task ends. Run the same command again to resume: tasks FILE holds as ended are "
    "skipped, the others go on from their last recorded status. With no IDs, watch those FILE "
    "holds as unfinished.",
)
@batch_options
@redis_options
@exits
def watch(
    *,
    task_ids: tuple[str, ...],
    files: tuple[IO[str], ...],
    jsonl: Path | None,
    options: BatchOptions,
    redis_url: str | None,
    namespace: str,
) -> int:
    """Watch tasks, all at once, until each has completed or failed.

    On a terminal: counts per status, a progress bar with ETA, the latest changes, then a
    summary. Elsewhere (a pipe, CI, NO_COLOR, --plain): one line per change.

    With --redis (or VSR_REDIS_URL), the tasks go to a fleet's workers (`vsr-async worker`),
    which poll them; this command only submits and follows, and sends nothing to the API.
    """
    fleet = None if redis_url is None else open_fleet(redis_url, namespace, options.api_key)
    resume_only = jsonl is not None and not task_ids and not files
    ids = collect(task_ids, files, check_task_id, what="task IDs", required=not resume_only)
    if resume_only and jsonl is not None and not jsonl.exists():  # leave no empty file behind
        raise click.UsageError(
            f"no task IDs: give some, or a --jsonl file that has some ({jsonl} does not exist)"
        )

    def plan(client: AsyncVSRClient, results: ResultsFile | None) -> _Plan:
        to_watch = ids
        if results is not None and resume_only:
            to_watch = list(results.task_ids)
            if not to_watch:
                raise click.UsageError("no task IDs: give some, or a --jsonl file that has some")
        title = f"Watching {len(to_watch)} tasks at {client.base_url}"
        return _watching(to_watch, results, options, title=title)

    return _batch(options, jsonl, plan, resume_hint=_run_again, fleet=fleet)


@cli.command(epilog=EXIT_CODES)
@click.argument("video_urls", nargs=-1, metavar="[VIDEO_URL|-]...")
@click.option("-m", "--model", required=True, help=f"The model to use, one of: {MODELS}.")
@from_file_option
@click.option("--watch", "then_watch", is_flag=True, help="Watch the new tasks at once.")
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Append each new task (with its video URL and model), and with --watch each "
    "transition, to FILE as a JSON line. Run the same command again to resume: a video URL "
    "FILE holds a task for (with this model) is not created again, and with --watch its task "
    "is watched if it has not ended. A create that failed is tried again.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Create a task for every video URL, even those the --jsonl FILE holds a task for "
    "(billed again).",
)
@batch_options
@exits
def create(
    *,
    video_urls: tuple[str, ...],
    model: str,
    files: tuple[IO[str], ...],
    then_watch: bool,
    jsonl: Path | None,
    force: bool,
    options: BatchOptions,
) -> int:
    """Create a task per video URL, concurrently, and print the new IDs.

    Each create is billed and never retried once sent. With --jsonl, running the same command
    again creates only the video URLs FILE holds no task for, and prints the IDs of the others
    (or with --watch, watches them) too.
    """
    if options.download is not None and not then_watch:
        raise click.UsageError("--download needs --watch: results come as tasks complete")
    urls = collect(video_urls, files, check_video_url, what="video URLs")
    try:
        check_model(model)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from None
    if model not in {known.value for known in Model}:
        click.echo(f"Warning: {model!r} is not a model this version knows; trying it.", err=True)

    def plan(client: AsyncVSRClient, results: ResultsFile | None) -> _Plan:
        held = {} if results is None or force else _held(results, model, urls)
        creates = [(url, model) for url in urls if url not in held]
        if results is not None and not force:
            _note_held(results, len(held), len(urls))
        if then_watch:
            title = f"Creating and watching {len(urls)} tasks at {client.base_url}"
            return _watching(list(held.values()), results, options, title=title, creates=creates)
        for task_id in held.values():  # stdout lists the whole batch, for `> ids.txt`
            click.echo(task_id)
        tally = Tally()
        return _Plan(tally, CreatedIds(tally), creates=creates, watch=False)

    return _batch(options, jsonl, plan, resume_hint=functools.partial(_create_again, model, urls))


@cli.command(epilog=EXIT_CODES)
@click.argument("task_ids", nargs=-1, metavar="[ID|-]...")
@from_file_option
@click.option(
    "-o",
    "--output",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Save the results here (created if missing), each named after its task: ID.mp4.",
)
@click.option(
    "--overwrite", is_flag=True, help="Download again a file already there, instead of skipping it."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=DEFAULT_DOWNLOAD_CONCURRENCY,
    show_default=True,
    help="Downloads in flight at once.",
)
@plain_option
@api_options
@exits
def download(
    *,
    task_ids: tuple[str, ...],
    files: tuple[IO[str], ...],
    directory: Path,
    overwrite: bool,
    concurrency: int,
    plain: bool,
    api_key: str | None,
    base_url: str | None,
    rate_limit: float | None,
    backend: str,
) -> int:
    """Download the result video of each completed task into DIR, several at once.

    On a terminal: a bar per file (bytes, speed, ETA). Elsewhere (a pipe, CI, NO_COLOR,
    --plain): a line per task as it ends, `ID<TAB>downloaded<TAB>PATH<TAB>BYTES`, or `exists`
    for a file already there (skipped, and counted as saved), or `ID<TAB>STATUS<TAB>REASON` when
    there is no file: failed, not ready, not found, expired or error. A download cut short
    leaves a .part file that the same command resumes.
    """
    ids = collect(task_ids, files, check_task_id, what="task IDs")
    make_directory(directory)
    client = make_client(api_key, base_url, concurrency, rate_limit=rate_limit)
    printer = make_printer(directory, len(ids), plain=plain)
    outcome = run(
        backend,
        functools.partial(
            download_all,
            client,
            ids,
            directory,
            overwrite=overwrite,
            concurrency=concurrency,
            printer=printer,
        ),
    )
    printer.summary(interrupted=outcome.interrupted is not None)
    report_fatal(outcome.fatal)
    if outcome.interrupted:
        _run_again()
    return outcome.exit_code()


def _finite(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """``value``, unless it is infinite or NaN (which click's ranges let through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number.")
    return value


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to serve on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="The port.  [default: any free one]"
)
@click.option("--seed", type=int, help="Make task IDs, timelines and faults reproducible.")
@click.option("--key", default="emulator-key", show_default=True, help="The API key it accepts.")
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of API requests answered 500, 502 or 503.",
)
@click.option(
    "--rate-limit-rate", type=click.FloatRange(0, 1), default=0.0, help="Share answered 429."
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Retry-After seconds on a 429.",
)
@click.option(
    "--latency", type=click.FloatRange(min=0), default=0.0, help="Seconds before each answer."
)
@click.option(
    "--malformed-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share answered 200 with a broken body.",
)
@click.option(
    "--quota",
    type=click.FloatRange(min=0, min_open=True),
    callback=_finite,
    metavar="R",
    help="Answer 429 only to the API requests over R per second (a leaky bucket, as nginx's "
    "limit_req).",
)
@click.option(
    "--quota-burst",
    type=click.FloatRange(min=1),
    callback=_finite,
    metavar="N",
    help="How many requests --quota admits at once.  [default: R/20, at least 1]",
)
@click.option(
    "--quota-no-retry-after",
    is_flag=True,
    help="Answer the 429s of --quota without Retry-After, as a CDN's limiter may.",
)
@click.option(
    "--loose", is_flag=True, help="Answer as loosely as this provider family sometimes does."
)
@click.option(
    "--task-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    metavar="S",
    help="Tasks end within S seconds (for long runs, a fleet's workers...).",
)
@backend_option
@verbose_option
@exits
def emulator(
    *,
    host: str,
    port: int,
    seed: int | None,
    key: str,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float,
    latency: float,
    malformed_rate: float,
    quota: float | None,
    quota_burst: float | None,
    quota_no_retry_after: bool,
    loose: bool,
    task_seconds: float,
    backend: str,
) -> int:
    """Serve the bundled API emulator, to test your own code against; prints its URL and key.

    Tasks created on it end within 4 s (--task-seconds), most of them completed. It counts
    requests rather than keeping them, so it can serve for days: GET /_emulator/stats answers
    the counts (total, per status, faults injected, tasks) as JSON, and `vsr-async -v emulator`
    logs each request on stderr. With --quota R, it answers 429 only when requests come faster
    than R per second, as a real quota does. Ctrl-C stops it.
    """
    _need_emulator_extra()
    faults = Faults(
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        retry_after=retry_after,
        latency=latency,
        malformed_rate=malformed_rate,
    )
    # Nothing reads the requests in this process: count them (stats), keep none.
    app = Emulator(
        api_key=key,
        seed=seed,
        faults=faults,
        quota=_quota(quota, quota_burst, retry_after=not quota_no_retry_after),
        loose=loose,
        timeline=functools.partial(Timeline.drawn, within=task_seconds),
        history=0,
        on_request=log_request,
    )
    try:
        run(backend, serve, app, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return 0


@cli.command()
@click.option(
    "--tasks", type=click.IntRange(min=1), default=36, show_default=True, help="How many tasks."
)
@click.option("--seed", type=int, help="Make the run reproducible.")
@plain_option
@backend_option
@verbose_option
@exits
def demo(tasks: int, seed: int | None, plain: bool, backend: str) -> int:
    """Create and watch a few dozen tasks on the bundled emulator, while it injects faults.

    The same code as `create --watch`, against a loopback port; no key needed, about 10 s.
    """
    _need_emulator_extra()
    return run(backend, functools.partial(run_demo, tasks, seed, plain=plain))


def _quota(rate: float | None, burst: float | None, *, retry_after: bool) -> Quota | None:
    """The `Quota` that ``--quota``, ``--quota-burst`` and ``--quota-no-retry-after`` ask for."""
    if rate is None and (burst is not None or not retry_after):
        name = "--quota-burst" if burst is not None else "--quota-no-retry-after"
        raise click.UsageError(f"{name} needs --quota: the requests per second it applies to")
    if rate is None:
        return None
    quota = Quota(rate, retry_after=retry_after)
    return quota if burst is None else attrs.evolve(quota, burst=burst)


def _need_emulator_extra() -> None:
    if importlib.util.find_spec("hypercorn") is None:
        raise ConfigError("this needs the emulator extra: pip install 'vsr-async[emulator]'")


@attrs.frozen
class _Plan:
    """What a batch of `watch` or `create` is to do, and how it shows.

    Attributes:
        ids: The tasks to watch (beside those it creates).
        to_download: Completed tasks whose result to download (``--download``).
        creates: ``(video_url, model)`` of each task to create.
        watch: Whether to watch the tasks, or only create them.
    """

    tally: Tally
    display: Display
    ids: Sequence[str] = ()
    to_download: Sequence[str] = ()
    creates: Sequence[tuple[str, str]] = ()
    watch: bool = True


def _batch(
    options: BatchOptions,
    jsonl: Path | None,
    plan: Callable[[AsyncVSRClient, ResultsFile | None], _Plan],
    *,
    resume_hint: Callable[[ResultsFile, Tally], None],
    fleet: RedisFleet | None = None,
) -> int:
    """The one skeleton of `watch` and `create`: the client, the results file (open while the
    batch runs), the batch ``plan`` makes, run to its summary; then why the key was refused, or
    with the results file after a signal, the ``resume_hint``. Returns the exit code."""
    client = _client(options)
    with _results_file(jsonl) as results:
        planned = plan(client, results)
        batch = functools.partial(
            run_batch,
            client,
            planned.tally,
            planned.display,
            pace=Pace(
                interval=options.interval, timeout=options.timeout, concurrency=options.concurrency
            ),
            ids=planned.ids,
            creates=planned.creates,
            watch=planned.watch,
            results=results,
            to_download=planned.to_download,
            download_concurrency=options.download_concurrency,
            fleet=fleet,
        )
        with redis_errors(fleet):
            run(options.backend, batch)
        report_fatal(planned.tally.fatal)
        if planned.tally.interrupted and results is not None:
            resume_hint(results, planned.tally)
        return planned.tally.exit_code(watched=planned.watch)


def _client(options: BatchOptions) -> AsyncVSRClient:
    """The client of a batch, after making the download directory if there is one: downloads
    get connections of their own, so polls keep theirs."""
    connections = options.concurrency
    if options.download is not None:
        make_directory(options.download)
        connections += options.download_concurrency
    return make_client(
        options.api_key, options.base_url, connections, rate_limit=options.rate_limit
    )


@contextlib.contextmanager
def _results_file(path: Path | None) -> Iterator[ResultsFile | None]:
    """The results file at ``path`` (if any), open: what it holds read, ready to append."""
    if path is None:
        yield None
        return
    results = ResultsFile(path)
    try:
        results.open()
    except ResultsFileError as exc:
        raise ConfigError(str(exc)) from None
    if results.cut_torn_line:
        click.echo(f"Note: cut off the last line of {path}, torn by an earlier crash.", err=True)
    try:
        yield results
    finally:
        results.close()


def _watching(
    ids: list[str],
    results: ResultsFile | None,
    options: BatchOptions,
    *,
    title: str,
    creates: Sequence[tuple[str, str]] = (),
) -> _Plan:
    """The plan of a batch that watches ``ids`` (and the tasks of ``creates``): those
    ``results`` holds as ended are not watched again, and with ``--download``, those it holds as
    completed without a download are downloaded. Says so on the display."""
    tally, to_download = _resume(ids, results, options.download)
    display = make_display(tally, plain=options.plain, title=title)
    if results is not None and tally.resumed:
        display.note(f"{tally.resumed} tasks already ended in {results.path}: not watched again.")
    if to_download:
        display.note(f"{len(to_download)} of them completed without a download: downloading.")
    to_watch = [task_id for task_id in ids if task_id not in tally.outcomes]
    return _Plan(tally, display, to_watch, to_download, creates)


def _run_again(*_: object) -> None:
    """After a signal: the same command resumes the run."""
    click.echo("To resume: run the same command again", err=True)


def _held(results: ResultsFile, model: str, urls: list[str]) -> dict[str, str]:
    """The task ``results`` holds for each of ``urls`` created with ``model`` (the latest, if
    ``--force`` made several), by URL."""
    created = {pair: task_id for task_id, pair in results.inputs.items()}
    return {url: created[model, url] for url in urls if (model, url) in created}


def _note_held(results: ResultsFile, held: int, total: int) -> None:
    """Say which video URLs a create skips, and which earlier tasks it cannot recognise."""
    if held:
        click.echo(
            f"Note: {results.path} holds a task for {held} of the {total} video URLs: not "
            "created again (--force creates them again).",
            err=True,
        )
    untraced = len(results.task_ids) - len(results.inputs)
    if untraced:
        click.echo(
            f"Note: {results.path} holds {untraced} tasks without the video URL they were "
            "created from (recorded by `watch`, or by vsr-async 0.1): any of their URLs given "
            "here is created again.",
            err=True,
        )


def _create_again(model: str, urls: list[str], results: ResultsFile, tally: Tally) -> None:
    """After a signal: the command that resumes a create, and what it has left to create."""
    click.echo(
        f"To resume: {command_line(click.get_current_context(), leave_out=['force'])}", err=True
    )
    created = set(results.inputs.values())
    missing = sum((model, url) not in created for url in urls)
    if missing:
        maybe = f" (the {len(tally.abandoned)} above among them)" if tally.abandoned else ""
        click.echo(
            f"{missing} of the {len(urls)} video URLs{maybe} have no task in {results.path} "
            "yet: that command creates them, and only them.",
            err=True,
        )


def _resume(
    ids: list[str], results: ResultsFile | None, download: Path | None
) -> tuple[Tally, list[str]]:
    """The tally of a batch, with what ``results`` holds as ended, and the completed tasks
    whose result ``results`` does not hold as downloaded (with ``download``)."""
    tally = Tally(saving=None if download is None else Saving(download))
    finished = {} if results is None else results.finished
    downloaded = {} if results is None else results.downloaded
    to_download = []
    for task_id in ids:
        record = finished.get(task_id)
        if record is None:
            tally.expect(task_id)
            continue
        tally.resume(task_id, record)
        if tally.saving is None or record["status"] != "completed":
            continue
        if task_id in downloaded:
            tally.saving.resumed += 1
        else:
            to_download.append(task_id)
    return tally, to_download


class _EchoHandler(logging.Handler):
    """Library log records as ``Warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.capitalize()}: {self.format(record)}", err=True)


def _log_to_stderr(ctx: click.Context, level: int) -> None:
    logger = logging.getLogger("vsr_async")
    handler, old_level = _EchoHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    ctx.call_on_close(restore)


for _command in FLEET_COMMANDS:  # vsr-async worker, vsr-async fleet (the redis extra)
    cli.add_command(_command)
