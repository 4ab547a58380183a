"""What a new user trips on: a rate limit per process, messages that say what is wrong and
which setting to fix, ``-v`` after the command."""

from __future__ import annotations

import http.server
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest
from _cli_helpers import KEY, cli_env, serve_in_thread, steer
from click.testing import CliRunner

from vsr_async._cli import _app, _options
from vsr_async.testing import Emulator, Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# A port nothing listens on.
NOWHERE = "http://127.0.0.1:9/kyyReactApiServer"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner with the emulator's key, no NO_COLOR, and a base URL where nothing listens."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("VSR_API_KEY", KEY)
    monkeypatch.setenv("VSR_BASE_URL", NOWHERE)
    return CliRunner()


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=7)


@pytest.fixture
def base_url(emulator: Emulator) -> Iterator[str]:
    with serve_in_thread(emulator) as url:
        yield url


@pytest.mark.parametrize("command", ["status", "create", "watch", "download"])
def test_rate_limit_is_offered_by_every_command_that_sends(runner: CliRunner, command: str) -> None:
    """--rate-limit N is in the --help of each command that sends requests."""
    result = runner.invoke(_app.cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--rate-limit N" in result.output


def test_rate_limit_reaches_the_client(
    runner: CliRunner, emulator: Emulator, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status --rate-limit 50` builds its client with rate_limit=50, and still answers."""
    task_id = emulator.add_task(Timeline.completed(queued=0, processing=0))
    made: list[Any] = []
    real = _options.AsyncVSRClient

    def recording(*args: Any, **kwargs: Any) -> Any:
        client = real(*args, **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(_options, "AsyncVSRClient", recording)
    result = runner.invoke(
        _app.cli, ["status", "--rate-limit", "50", "--base-url", base_url, task_id]
    )
    assert result.exit_code == 0, result.output
    assert [client.rate_limit for client in made] == [50]
    assert f"{task_id}\tcompleted" in result.stdout


@pytest.mark.parametrize("value", ["0", "-1", "fast"])
def test_a_bad_rate_limit_is_a_usage_error(runner: CliRunner, value: str) -> None:
    """--rate-limit refuses zero, negatives and words before sending anything."""
    result = runner.invoke(_app.cli, ["status", "--rate-limit", value, "task_a"])
    assert result.exit_code == 2
    assert "--rate-limit" in result.stderr


def test_a_url_with_a_space_says_so(runner: CliRunner, tmp_path: Path) -> None:
    """A video URL with a space, as an argument or a line, is named with its place and the
    reason: not 'more than one item'."""
    listing = tmp_path / "urls.txt"
    listing.write_text("https://example.com/a.mp4\nhttps://example.com/my video.mp4\n")
    result = runner.invoke(
        _app.cli,
        ["create", "-m", "m", "https://example.com/b c.mp4", "--from-file", str(listing)],
    )
    assert result.exit_code == 2
    assert "argument 1: 'https://example.com/b c.mp4' has a space in it" in result.stderr
    assert f"{listing}, line 2: 'https://example.com/my video.mp4' has a space" in result.stderr
    assert "a URL cannot contain spaces" in result.stderr
    assert "more than one item" not in result.stderr


@pytest.mark.parametrize(("command", "what"), [("status", "task IDs"), ("create", "video URLs")])
def test_an_empty_file_says_it_holds_none(
    runner: CliRunner, tmp_path: Path, command: str, what: str
) -> None:
    """A --from-file with nothing in it (or only comments) is named, not answered with
    'give a --from-file'."""
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n\n")
    extra = ["-m", "m"] if command == "create" else []
    result = runner.invoke(_app.cli, [command, *extra, "--from-file", str(listing)])
    assert result.exit_code == 2
    assert f"no {what} in {listing}" in result.stderr
    assert "--from-file FILE" not in result.stderr


@pytest.fixture
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger("vsr_async")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.usefixtures("restore_logger")
def test_verbose_goes_before_or_after_the_command(runner: CliRunner, where: str) -> None:
    """`vsr-async -v status` and `vsr-async status -v` both log each retry on stderr."""
    args = ["status", "--concurrency", "1", "task_a"]
    args = ["-v", *args] if where == "before" else [*args[:1], "-v", *args[1:]]
    result = runner.invoke(_app.cli, args)
    assert result.exit_code == 1, result.output
    assert "retry 1 in" in result.stderr


@pytest.mark.usefixtures("restore_logger")
def test_verbose_after_the_command_is_left_out_of_the_resume_hint() -> None:
    """`create -v ...` still gets its command to run again (without -v, which changes
    nothing a rerun does)."""
    args = ["-v", "-m", "m", "--jsonl", "c.jsonl", "https://example.com/a.mp4"]
    with _app.create.make_context("create", args) as ctx:
        hint = _options.command_line(ctx)
    assert hint == "create --model m --jsonl c.jsonl https://example.com/a.mp4"


def test_status_names_the_base_url_it_cannot_reach(runner: CliRunner) -> None:
    """A base URL where nothing listens: status says it could not connect there and which
    setting to check, not just `ConnectError`."""
    result = runner.invoke(_app.cli, ["status", "task_a"])
    assert result.exit_code == 1
    assert f"could not connect to {NOWHERE}: check VSR_BASE_URL (or --base-url)" in result.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the CLI runs its own loop
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_watch_names_the_base_url_once_polls_keep_failing() -> None:
    """A watch whose polls cannot connect says, once, where it tried and which setting to
    check; it goes on watching until stopped."""
    hint = f"could not connect to {NOWHERE}: check VSR_BASE_URL (or --base-url)"
    args = ["watch", "--plain", "--interval", "0.05", "task_a"]
    async with steer(args, cli_env(NOWHERE), within=120) as cli:
        await cli.wait_until(lambda: hint in cli.stdout)
        cli.send(signal.SIGINT)
    assert cli.returncode == 130
    assert cli.stdout.count(hint) == 1
    assert "polls keep failing" in cli.stderr


class _NotFoundPage(http.server.BaseHTTPRequestHandler):
    """A web server's own 404 page, as a base URL missing the API's path gets."""

    def do_GET(self) -> None:
        body = b"<html><body>404 Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["status", "watch"])
def test_every_task_not_found_by_a_foreign_404_hints_at_the_base_url(
    runner: CliRunner, web_server: str, command: str
) -> None:
    """When every task is a 404 that is not the API's (no JSON message), status and watch say
    to check VSR_BASE_URL: the base URL most likely lacks its path."""
    result = runner.invoke(_app.cli, [command, "--base-url", web_server, "task_a", "task_b"])
    assert result.exit_code == 1
    assert result.stdout.lower().count("not found") >= 2
    assert "Check VSR_BASE_URL (or --base-url)" in result.stderr
    assert f"is {web_server}" in result.stderr


@pytest.mark.parametrize("command", ["status", "watch"])
def test_tasks_the_api_does_not_know_get_no_base_url_hint(
    runner: CliRunner, base_url: str, command: str
) -> None:
    """The API's own 404 (with its JSON message) is a task it does not know: no hint."""
    result = runner.invoke(_app.cli, [command, "--base-url", base_url, "task_a"])
    assert result.exit_code == 1
    assert "not found" in result.stdout.lower()
    assert "VSR_BASE_URL" not in result.stderr


def test_status_help_speaks_only_of_status(runner: CliRunner) -> None:
    """`status --help` describes queries: no creates, downloads, watching or demo in it."""
    result = runner.invoke(_app.cli, ["status", "--help"])
    assert result.exit_code == 0
    text = result.output.lower()
    for foreign in ("--watch", "download", "demo", "creates", "per event"):
        assert foreign not in text, foreign


@pytest.mark.parametrize("command", ["status", "create", "watch", "download", "emulator", "demo"])
def test_every_command_takes_verbose(runner: CliRunner, command: str) -> None:
    """Each command's --help offers -v, so it works after the command name too."""
    result = runner.invoke(_app.cli, [command, "--help"])
    assert result.exit_code == 0
    assert "-v, --verbose" in result.output
