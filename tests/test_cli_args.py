"""The command line's argument handling, in process with click's runner: help, configuration
errors, flag validation, and lists of IDs from arguments, files and stdin."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from _cli_helpers import KEY, serve_in_thread
from click.testing import CliRunner

from vsr_async._cli import _app, _exits, _options, main
from vsr_async._cli._ids import MAX_REPORTED, BadLinesError, Collected
from vsr_async._validate import check_task_id
from vsr_async.testing import Emulator, Quota, Timeline

# A port nothing listens on: these runs must fail before sending anything.
NOWHERE = "http://127.0.0.1:9/kyyReactApiServer"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner with no key or NO_COLOR from the developer's environment, and a base URL where
    nothing listens, so that no test reaches the real API by accident."""
    for name in ("VSR_API_KEY", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VSR_BASE_URL", NOWHERE)
    return CliRunner()


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=7)


@pytest.fixture
def base_url(emulator: Emulator) -> object:
    with serve_in_thread(emulator) as url:
        yield url


def test_help_documents_every_exit_code(runner: CliRunner) -> None:
    """`vsr-async --help` lists the exit codes 0, 1, 2, 3 and 130, each on its own line."""
    result = runner.invoke(_app.cli, ["--help"])
    assert result.exit_code == 0
    lines = [line.split(maxsplit=1) for line in result.output.splitlines()]
    codes = {parts[0] for parts in lines if parts}
    assert {"0", "1", "2", "3", "130"} <= codes


@pytest.mark.parametrize("command", ["status", "create", "watch"])
def test_batch_commands_document_exit_codes(runner: CliRunner, command: str) -> None:
    """Each command that talks to the API repeats the exit codes in its own --help."""
    result = runner.invoke(_app.cli, [command, "--help"])
    assert result.exit_code == 0
    assert "130  interrupted" in result.output
    assert "3    the API refused the key" in result.output


def test_api_key_help_recommends_the_environment(runner: CliRunner) -> None:
    """--api-key works, but its help says the environment variable is safer."""
    result = runner.invoke(_app.cli, ["watch", "--help"], terminal_width=200)
    line = next(line for line in result.output.splitlines() if "--api-key" in line)
    assert "VSR_API_KEY" in line
    assert "environment is safer" in line


def test_version(runner: CliRunner) -> None:
    """--version prints the installed version."""
    result = runner.invoke(_app.cli, ["--version"])
    assert result.exit_code == 0
    assert "vsr-async, version" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["watch", "task_1"],
        ["status", "task_1"],
        ["create", "--model", "superResolution-720p-lowfps", "https://example.com/a.mp4"],
    ],
)
def test_a_missing_key_is_one_line_and_exit_2(runner: CliRunner, args: list[str]) -> None:
    """No VSR_API_KEY and no --api-key: exit 2 with one clear line, no traceback."""
    result = runner.invoke(_app.cli, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Error: no API key: set VSR_API_KEY (or pass --api-key)"]


def test_a_malformed_key_is_refused_without_being_quoted(runner: CliRunner) -> None:
    """A key the HTTP layer would refuse is a configuration error that never shows the key."""
    result = runner.invoke(_app.cli, ["status", "--api-key", "s3cret-key\n", "task_1"])
    assert result.exit_code == 2
    assert "s3cret" not in result.output
    assert len(result.stderr.splitlines()) == 1


def test_a_bad_base_url_is_a_configuration_error(runner: CliRunner) -> None:
    """A base URL that is not http(s) is one line and exit 2."""
    result = runner.invoke(
        _app.cli, ["status", "--base-url", "ftp://example.com", "task_1"], env={"VSR_API_KEY": KEY}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: base_url must be an http:// or https:// URL")
    assert "Traceback" not in result.output


def test_plain_http_to_another_host_warns_on_one_line(runner: CliRunner, tmp_path) -> None:
    """The library's warning about a key crossing the network unencrypted is one plain line."""
    not_ours = tmp_path / "notes.txt"
    not_ours.write_text("shopping list\n")
    args = ["watch", "--base-url", "http://example.com", "--jsonl", str(not_ours), "task_1"]
    result = runner.invoke(_app.cli, args, env={"VSR_API_KEY": KEY})
    assert result.exit_code == 2  # the file is refused afterwards: nothing is sent
    warning, error = result.stderr.splitlines()
    assert warning.startswith("Warning: base_url 'http://example.com' is plain http")
    assert error.startswith("Error: ")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--interval", "-1"),
        ("--interval", "0"),
        ("--interval", "inf"),
        ("--interval", "nan"),
        ("--interval", "soon"),
        ("--timeout", "-5"),
        ("--timeout", "0"),
        ("--concurrency", "0"),
    ],
)
def test_pace_flags_are_validated(runner: CliRunner, flag: str, value: str) -> None:
    """A negative or zero interval or timeout, or no concurrency, is a usage error (exit 2)."""
    result = runner.invoke(_app.cli, ["watch", flag, value, "task_1"], env={"VSR_API_KEY": KEY})
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.stderr


def test_an_infinite_timeout_means_never(
    runner: CliRunner, emulator: Emulator, base_url: str
) -> None:
    """--timeout inf is accepted: the library takes it as waiting forever."""
    task_id = emulator.add_task(Timeline.completed(queued=0.05, processing=0.05))
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
    result = runner.invoke(
        _app.cli, ["watch", "--timeout", "inf", "--interval", "0.05", task_id], env=env
    )
    assert result.exit_code == 0
    assert "1 of 1 tasks ended" in result.stdout


def test_an_id_file_skips_blanks_comments_whitespace_and_duplicates(
    runner: CliRunner, emulator: Emulator, base_url: str, tmp_path
) -> None:
    """Blank lines and # comments are skipped, whitespace trimmed, duplicates queried once."""
    ids = [emulator.add_task(task_id=f"task_{n}") for n in range(3)]
    listing = tmp_path / "ids.txt"
    listing.write_text(
        "# exported on Monday\n\n"
        f"  {ids[0]}  \n"
        f"{ids[1]}\t# the cat video\n"
        "\t\n"
        f"{ids[0]}\n"
        f"{ids[2]}\r\n"
        "   # indented comment\n"
        "a#b\n"
    )
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
    result = runner.invoke(_app.cli, ["status", "--json", "--from-file", str(listing)], env=env)
    queried = [request.task_id for request in emulator.requests]
    assert sorted(queried) == sorted([*ids, "a#b"])  # each once; '#' inside an ID is kept
    assert "1 duplicate task IDs taken once" in result.stderr
    assert result.exit_code == 1  # a#b does not exist


def test_invalid_ids_are_reported_with_their_line_numbers(
    runner: CliRunner, emulator: Emulator, base_url: str, tmp_path
) -> None:
    """Every invalid line is named with its file and line number, and nothing is sent."""
    listing = tmp_path / "ids.txt"
    listing.write_text("task_ok\n\n../etc\ntask_a task_b\n# fine\n" + "x" * 600 + "\n")
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
    result = runner.invoke(_app.cli, ["watch", "--from-file", str(listing)], env=env)
    assert result.exit_code == 2
    assert f"{listing}, line 3: invalid task ID '../etc'" in result.stderr
    assert f"{listing}, line 4: 'task_a task_b' holds more than one item" in result.stderr
    assert f"{listing}, line 6: invalid task ID" in result.stderr
    assert "longer than 512 characters" in result.stderr
    assert "line 1" not in result.stderr
    assert emulator.requests == []


def test_an_invalid_id_argument_is_named_by_its_position(runner: CliRunner) -> None:
    """An invalid ID on the command line is named by its position, before the key is looked at."""
    result = runner.invoke(_app.cli, ["watch", "task_1", "a/b"])
    assert result.exit_code == 2
    assert "argument 2: invalid task ID 'a/b': it contains '/' or '\\'" in result.stderr


def test_ids_can_come_from_stdin(runner: CliRunner, emulator: Emulator, base_url: str) -> None:
    """A '-' among the IDs (or --from-file -) reads more IDs from stdin, after the arguments."""
    first, second = emulator.add_task(), emulator.add_task()
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
    result = runner.invoke(
        _app.cli, ["status", first, "-", "--from-file", "-"], input=f"{second}\n", env=env
    )
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [first, second]


def test_no_ids_at_all_is_a_usage_error(runner: CliRunner) -> None:
    """watch with no IDs, no file and no stdin says how to give them, exit 2."""
    result = runner.invoke(_app.cli, ["watch"], env={"VSR_API_KEY": KEY})
    assert result.exit_code == 2
    assert (
        "no task IDs: give them as arguments, with --from-file FILE, or - for stdin"
        in result.stderr
    )


def test_resume_from_a_missing_results_file_creates_nothing(runner: CliRunner, tmp_path) -> None:
    """`watch --jsonl typo.jsonl` with no IDs is a usage error that leaves no empty file."""
    typo = tmp_path / "typo.jsonl"
    result = runner.invoke(_app.cli, ["watch", "--jsonl", str(typo)], env={"VSR_API_KEY": KEY})
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert not typo.exists()


def test_a_missing_id_file_is_a_usage_error(runner: CliRunner, tmp_path) -> None:
    """--from-file naming no file is exit 2."""
    result = runner.invoke(_app.cli, ["watch", "--from-file", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert "nope.txt" in result.stderr


def test_many_bad_lines_are_capped_in_the_message() -> None:
    """A file of thousands of bad lines gets the first few quoted and the rest counted."""
    collected = Collected()
    collected.add_lines([f"bad/{n}" for n in range(MAX_REPORTED + 5)], "ids.txt", check_task_id)
    with pytest.raises(BadLinesError) as caught:
        collected.result()
    message = str(caught.value).splitlines()
    assert len(message) == MAX_REPORTED + 1
    assert message[-1] == "... and 5 more"
    assert len(caught.value.problems) == MAX_REPORTED + 5


def test_create_refuses_bad_video_urls_before_creating_anything(
    runner: CliRunner, emulator: Emulator, base_url: str, tmp_path
) -> None:
    """Invalid URLs are named with their line, and no task is created (creates are billed)."""
    listing = tmp_path / "urls.txt"
    listing.write_text("https://example.com/a.mp4\nfile:///etc/passwd\nexample.com/b.mp4\n")
    env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
    args = ["create", "-m", "superResolution-720p-lowfps", "--from-file", str(listing)]
    result = runner.invoke(_app.cli, args, env=env)
    assert result.exit_code == 2
    assert f"{listing}, line 2: video URL must be an http:// or https:// URL" in result.stderr
    assert f"{listing}, line 3:" in result.stderr
    assert emulator.task_ids == []


def test_create_refuses_a_blank_model(runner: CliRunner) -> None:
    """--model with padding is a usage error naming the flag."""
    result = runner.invoke(
        _app.cli,
        ["create", "-m", " x ", "https://example.com/a.mp4"],
        env={"VSR_API_KEY": KEY, "VSR_BASE_URL": NOWHERE},
    )
    assert result.exit_code == 2
    assert "Invalid value for '--model'" in result.stderr


def test_create_jsonl_needs_nothing_else(runner: CliRunner) -> None:
    """create needs --model."""
    result = runner.invoke(
        _app.cli, ["create", "https://example.com/a.mp4"], env={"VSR_API_KEY": KEY}
    )
    assert result.exit_code == 2
    assert "Missing option '-m' / '--model'" in result.stderr


def test_trio_backend_needs_trio(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend trio without trio installed is one line and exit 2."""
    real_find_spec = _app.importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: None if name == "trio" else real_find_spec(name, *a),
    )
    result = runner.invoke(
        _app.cli,
        ["status", "--backend", "trio", "task_1"],
        env={"VSR_API_KEY": KEY, "VSR_BASE_URL": NOWHERE},
    )
    assert result.exit_code == 2
    assert result.stderr == "Error: --backend trio needs trio: pip install trio\n"


def test_emulator_and_demo_need_the_emulator_extra(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hypercorn, `emulator` and `demo` say which extra to install, exit 2."""
    real_find_spec = _app.importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: None if name == "hypercorn" else real_find_spec(name, *a),
    )
    for command in ("emulator", "demo"):
        result = runner.invoke(_app.cli, [command])
        assert result.exit_code == 2
        assert "pip install 'vsr-async[emulator]'" in result.stderr


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Emulator]:
    """The emulators `vsr-async emulator` would serve, in a list instead of on a port."""
    served: list[Emulator] = []
    monkeypatch.setattr(_app, "run", lambda _backend, _serve, app, *_: served.append(app))
    return served


@pytest.mark.parametrize(
    ("args", "quota"),
    [
        ([], None),
        (["--quota", "20"], Quota(20, burst=1)),
        (["--quota", "200"], Quota(200, burst=10)),
        (
            ["--quota", "200", "--quota-burst", "3", "--quota-no-retry-after"],
            Quota(200, burst=3, retry_after=False),
        ),
    ],
)
def test_emulator_quota_options(
    runner: CliRunner, served: list[Emulator], args: list[str], quota: Quota | None
) -> None:
    """`emulator --quota R [--quota-burst N] [--quota-no-retry-after]` serves an emulator with
    that `Quota` (by default a burst of R/20, at least 1, and Retry-After); none without."""
    result = runner.invoke(_app.cli, ["emulator", *args])
    assert result.exit_code == 0, result.output
    (emulator,) = served
    assert emulator.quota == quota


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quota-burst", "3"], "Error: --quota-burst needs --quota"),
        (["--quota-no-retry-after"], "Error: --quota-no-retry-after needs --quota"),
        (["--quota", "0"], "Invalid value for '--quota'"),
        (["--quota", "nan"], "Invalid value for '--quota': nan is not a finite number"),
        (["--quota", "inf"], "Invalid value for '--quota': inf is not a finite number"),
        (["--quota", "soon"], "Invalid value for '--quota'"),
        (["--quota", "5", "--quota-burst", "0.5"], "Invalid value for '--quota-burst'"),
        (["--quota", "5", "--quota-burst", "inf"], "Invalid value for '--quota-burst'"),
    ],
)
def test_emulator_quota_options_are_validated(
    runner: CliRunner, served: list[Emulator], args: list[str], message: str
) -> None:
    """A quota that is not a finite rate > 0 with a burst >= 1, or a quota option without
    --quota, is a usage error (exit 2) before anything is served."""
    result = runner.invoke(_app.cli, ["emulator", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "emulator --help" in result.stderr  # click's usage error, pointing at the help
    assert served == []


def test_without_the_cli_extra_main_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vsr-async` without click or rich installed: one line naming the extra, exit 2."""
    monkeypatch.setitem(sys.modules, "click", None)
    monkeypatch.delitem(sys.modules, "vsr_async._cli._app")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "vsr-async: the command line needs the cli extra: pip install 'vsr-async[cli]'\n"
    )


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a missing click or rich gets the one-line hint; any other ImportError is a bug."""
    monkeypatch.setitem(sys.modules, "rich.live", None)
    monkeypatch.delitem(sys.modules, "vsr_async._cli._app")
    monkeypatch.delitem(sys.modules, "vsr_async._cli._display")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    monkeypatch.setitem(sys.modules, "vsr_async._cli._app", None)
    with pytest.raises(ImportError, match=r"vsr_async\._cli\._app"):
        main()


def test_python_m_vsr_async_runs_main() -> None:
    """`python -m vsr_async` is the same command line as the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "vsr_async", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("vsr-async, version ")


def test_main_runs_the_click_group(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`main()` (the console script) is the click group, named vsr-async."""
    monkeypatch.setattr(sys, "argv", ["vsr-async", "--help"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: vsr-async [OPTIONS] COMMAND")


class _Group(Exception):  # noqa: N818 - stands in for a task group's ExceptionGroup
    def __init__(self, *exceptions: BaseException) -> None:
        super().__init__("group")
        self.exceptions = exceptions


@pytest.mark.parametrize(
    "raised", [KeyboardInterrupt(), _Group(KeyboardInterrupt(), _Group(KeyboardInterrupt()))]
)
def test_ctrl_c_outside_a_batch_is_exit_130(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    """Ctrl-C before a batch listens for it (or wrapped by a task group) is still exit 130."""

    def interrupted(*_: object) -> None:
        raise raised

    monkeypatch.setattr(_app, "run", interrupted)
    result = runner.invoke(_app.cli, ["status", "task_1"], env={"VSR_API_KEY": KEY})
    assert result.exit_code == 130
    assert result.stderr == "\nInterrupted.\n"


def test_other_errors_are_not_taken_for_ctrl_c_or_a_closed_pipe() -> None:
    """Only groups made of nothing but the one kind count; anything else is a real error."""
    assert _exits._only(BrokenPipeError, _Group(BrokenPipeError(), _Group(BrokenPipeError())))
    assert not _exits._only(BrokenPipeError, _Group(BrokenPipeError(), ValueError()))
    assert not _exits._only(BrokenPipeError, _Group())
    assert not _exits._only(KeyboardInterrupt, ValueError())


def test_the_command_to_run_again_is_the_one_typed_without_the_key(
    runner: CliRunner, tmp_path
) -> None:
    """The command a hint names has the options given on the command line (none from the
    environment or defaults, never --api-key, not those left out), a file or stdin by its
    name, each word quoted for a shell, and the arguments last."""
    said: list[str] = []

    @click.command()
    @click.argument("items", nargs=-1)
    @_options.from_file_option
    @click.option("-m", "--model")
    @click.option("--watch", is_flag=True)
    @click.option("--force", is_flag=True)
    @_options.pace_options
    @_options.api_options
    def command(**_: object) -> None:
        said.append(_options.command_line(click.get_current_context(), leave_out=["force"]))

    listed = tmp_path / "my urls.txt"
    listed.write_text("")
    args = ["a b", "--api-key", "s3cret", "-m", "x", "--from-file", str(listed), "--force"]
    args += ["--from-file", "-", "--watch", "--interval", "0.5", "c"]
    result = runner.invoke(command, args, prog_name="vsr-async", env={"VSR_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    expected = f"vsr-async --from-file '{listed}' --from-file - --model x --watch --interval 0.5"
    assert said == [f"{expected} 'a b' c"]
