"""Whole command runs in process (click's runner) against the emulator on a loopback port:
what watch, create, status and demo print, record and exit with."""

from __future__ import annotations

import collections
import json
import logging
import random
import socket
import time

import pytest
from _cli_helpers import CONTROL, KEY, CreateLog, add_tasks, cli_env, records, serve_in_thread
from click.testing import CliRunner, Result

from vsr_async._cli import _app, _demo
from vsr_async.testing import Emulator, Faults, Timeline

FAST = ["--interval", "0.05"]


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=3)


@pytest.fixture
def base_url(emulator: Emulator) -> object:
    with serve_in_thread(emulator) as url:
        yield url


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, base_url: str):
    """Run the CLI with the emulator's key and URL in the environment."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        env = {"VSR_API_KEY": KEY, "VSR_BASE_URL": base_url}
        return runner.invoke(_app.cli, list(args), input=input, env=env)

    return invoke


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_prints_one_plain_line_per_transition(
    invoke, emulator: Emulator, backend: str
) -> None:
    """Off a terminal: a line per status change, then a summary naming the failure; exit 1."""
    # Processing from 0.5 s to 1.5 s at the earliest: a busy machine's first poll comes in time.
    ids = add_tasks(emulator, "cfc", first=1.5, step=0.5)
    result = invoke("watch", *FAST, "--backend", backend, *ids)
    assert result.exit_code == 1
    assert not CONTROL.search(result.output)
    lines = result.stdout.splitlines()
    for task_id in ids:
        assert any(f"{task_id}  new -> " in line for line in lines)
    assert any(f"{ids[0]}  processing -> completed  http://" in line for line in lines)
    assert any(f"{ids[1]}  processing -> failed  (Bad input)" in line for line in lines)
    assert "3 of 3 tasks ended: 2 completed, 1 failed" in result.stdout
    assert f"   failed  {ids[1]}  Bad input" in lines


def test_watch_exits_0_when_every_task_completed(invoke, emulator: Emulator) -> None:
    """Exit 0 only when every task completed."""
    ids = add_tasks(emulator, "cc", first=0.1, step=0.05)
    result = invoke("watch", *FAST, *ids)
    assert result.exit_code == 0
    assert "2 of 2 tasks ended: 2 completed" in result.stdout


def test_watch_gives_a_task_up_after_timeout(invoke, emulator: Emulator, tmp_path) -> None:
    """--timeout gives a stuck task up: it is listed as given up, recorded why, exit 1."""
    stuck, done = add_tasks(emulator, "rc", first=0.1, step=0.05)
    results = tmp_path / "results.jsonl"
    result = invoke("watch", *FAST, "--timeout", "0.4", "--jsonl", str(results), stuck, done)
    assert result.exit_code == 1
    assert f"{stuck}  gave up: task '{stuck}' did not finish within 0.4 s" in result.stdout
    final = [record for record in records(results) if record["task_id"] == stuck][-1]
    assert final["client_error"].startswith("WaitTimeoutError: ")
    assert final["status"] == "processing"


def test_watch_gives_an_unknown_task_up(invoke, emulator: Emulator) -> None:
    """An ID the API does not know (404) is given up; the others are watched to the end."""
    (known,) = add_tasks(emulator, "c", first=0.1)
    result = invoke("watch", *FAST, known, "task_nope")
    assert result.exit_code == 1
    assert "task_nope  gave up: GET " in result.stdout
    assert "1 completed, 1 gave up" in result.stdout


def test_watch_jsonl_records_every_transition(invoke, emulator: Emulator, tmp_path) -> None:
    """Each transition is a JSON line with the task's fields and when it was seen."""
    # The emulator's clock counts the requests it answered, so each task is seen processing
    # however slowly a busy machine starts the watch: task 0 completes at the 6th request,
    # task 1 fails at the 9th, a few rounds of polls in.
    emulator._clock = lambda: float(len(emulator.requests))
    ids = add_tasks(emulator, "cf", first=6, step=3)
    results = tmp_path / "results.jsonl"
    invoke("watch", *FAST, "--jsonl", str(results), *ids)
    lines = records(results)
    assert {tuple(line) for line in lines} == {
        (
            "task_id",
            "previous",
            "status",
            "video_url",
            "actualDuration",
            "error",
            "client_error",
            "observed_at",
        )
    }
    completed = next(line for line in lines if line["status"] == "completed")
    assert completed["video_url"].endswith(f"/files/{ids[0]}.mp4")
    assert completed["actualDuration"] == 12.0
    assert completed["previous"] == "processing"
    assert completed["observed_at"].endswith("+00:00")
    failed = next(line for line in lines if line["status"] == "failed")
    assert failed["error"] == "Bad input"
    assert failed["client_error"] is None
    firsts = [line for line in lines if line["previous"] is None]
    assert sorted(line["task_id"] for line in firsts) == sorted(ids)


def test_watch_resumes_from_its_results_file(invoke, emulator: Emulator, tmp_path) -> None:
    """A rerun skips tasks the file holds as ended (never polling them) and watches the rest;
    the summary and the exit code count both."""
    done, failed, pending = add_tasks(emulator, "cfc", first=0.1, step=0.05)
    results = tmp_path / "results.jsonl"
    earlier = [
        {
            "task_id": done,
            "previous": "processing",
            "status": "completed",
            "video_url": "http://x/1.mp4",
        },
        {"task_id": failed, "previous": None, "status": "processing"},
        {"task_id": failed, "previous": "processing", "status": "failed", "error": "Bad input"},
        {"task_id": pending, "previous": None, "status": "queued"},
    ]
    results.write_text("".join(json.dumps(record) + "\n" for record in earlier))
    result = invoke("watch", *FAST, "--jsonl", str(results), done, failed, pending)
    assert emulator.polls(done) == emulator.polls(failed) == []
    assert emulator.polls(pending)
    assert "2 tasks already ended in" in result.stdout
    assert "3 of 3 tasks ended (2 ended in an earlier run): 2 completed, 1 failed" in result.stdout
    assert f"   failed  {failed}  Bad input" in result.stdout
    assert result.exit_code == 1
    added = records(results)[len(earlier) :]
    assert {r["task_id"] for r in added} == {pending}
    assert added[-1]["status"] == "completed"


def test_watch_with_only_a_results_file_watches_its_unfinished_tasks(
    invoke, emulator: Emulator, tmp_path
) -> None:
    """`watch --jsonl FILE` with no IDs picks up the tasks FILE has not seen end."""
    done, pending = add_tasks(emulator, "cc", first=0.1, step=0.05)
    results = tmp_path / "results.jsonl"
    results.write_text(
        json.dumps({"task_id": done, "status": "completed"})
        + "\n"
        + json.dumps({"task_id": pending, "status": "queued"})
        + "\n"
    )
    result = invoke("watch", *FAST, "--jsonl", str(results))
    assert result.exit_code == 0
    assert emulator.polls(done) == []
    assert "2 of 2 tasks ended (1 ended in an earlier run)" in result.stdout


def test_watch_with_an_empty_results_file_and_no_ids_is_a_usage_error(invoke, tmp_path) -> None:
    """No IDs and a results file that has none: exit 2."""
    result = invoke("watch", "--jsonl", str(tmp_path / "new.jsonl"))
    assert result.exit_code == 2
    assert "no task IDs" in result.stderr


def test_a_refused_key_exits_3_without_printing_the_key(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    """A 401 ends the batch: exit 3 with one error line; the key appears nowhere."""
    ids = add_tasks(emulator, "cc")
    secret = "sk-live-do-not-print-0123456789"
    results = tmp_path / "results.jsonl"
    for command in (["watch", "--jsonl", str(results)], ["status"]):
        args = [*command, "--api-key", secret, "--base-url", base_url, *ids]
        result = CliRunner().invoke(_app.cli, args)
        assert result.exit_code == 3
        assert secret not in result.output
        assert "Error: the API refused the key: " in result.stderr
        assert "401: Invalid or missing API key" in result.stderr
    assert secret not in results.read_text()


def test_create_prints_the_new_ids_one_per_line(invoke, emulator: Emulator) -> None:
    """create without --watch prints each new ID alone on a line of stdout, ready to pipe."""
    urls = [f"https://example.com/{n}.mp4" for n in range(5)]
    result = invoke(
        "create", "-m", "superResolution-4k-highfps", *urls[:2], "-", input="\n".join(urls[2:])
    )
    assert result.exit_code == 0
    assert sorted(result.stdout.split()) == sorted(emulator.task_ids)
    assert len(emulator.task_ids) == 5
    assert result.stderr == "Created 5 tasks.\n"


def test_create_reports_refused_creates_and_exits_1(invoke, emulator: Emulator) -> None:
    """A model the API refuses: a warning first, every create's refusal, exit 1."""
    result = invoke("create", "-m", "superResolution-16k", "https://example.com/a.mp4")
    assert result.exit_code == 1
    assert "Warning: 'superResolution-16k' is not a model this version knows" in result.stderr
    assert "Could not create from https://example.com/a.mp4: " in result.stderr
    assert "returned 400" in result.stderr
    assert "Created 0 tasks; 1 failed." in result.stderr
    assert emulator.task_ids == []


def test_create_watch_watches_the_new_tasks(invoke, emulator: Emulator, tmp_path) -> None:
    """create --watch creates, prints each ID, and watches them to the end, recording each new
    task at once and every transition after."""
    emulator._timeline = Timeline.completed(queued=0.05, processing=0.1)
    results = tmp_path / "results.jsonl"
    urls = [f"https://example.com/{n}.mp4" for n in range(4)]
    args = [
        "create",
        "--watch",
        "-m",
        "superResolution-720p-lowfps",
        *FAST,
        "--jsonl",
        str(results),
    ]
    result = invoke(*args, *urls)
    assert result.exit_code == 0
    for task_id in emulator.task_ids:
        assert f"{task_id}  created from https://example.com/" in result.stdout
    assert "4 of 4 tasks ended: 4 completed" in result.stdout
    lines = records(results)
    for task_id in emulator.task_ids:
        statuses = [(r["previous"], r["status"]) for r in lines if r["task_id"] == task_id]
        assert statuses[0] == (None, "queued")  # recorded when created, not again when first seen
        assert statuses.count((None, "queued")) == 1
        assert statuses[-1][1] == "completed"


def test_create_jsonl_then_watch_jsonl_picks_the_tasks_up(
    invoke, emulator: Emulator, tmp_path
) -> None:
    """The IDs of tasks created with --jsonl are on disk, so `watch --jsonl` can follow them."""
    emulator._timeline = Timeline.completed(queued=0.05, processing=0.05)
    results = tmp_path / "results.jsonl"
    invoke(
        "create",
        "-m",
        "superResolution-720p-lowfps",
        "--jsonl",
        str(results),
        "https://example.com/a.mp4",
    )
    result = invoke("watch", *FAST, "--jsonl", str(results))
    assert result.exit_code == 0
    assert f"{emulator.task_ids[0]}  " in result.stdout


def test_create_jsonl_run_again_creates_nothing_it_holds_unless_forced(
    invoke, emulator: Emulator, tmp_path
) -> None:
    """The same `create --jsonl` again creates no (model, video URL) the file holds a task
    for, says so, and prints the batch's IDs; another model is another task; --force creates
    (and bills) them all again."""
    results = tmp_path / "results.jsonl"
    urls = [f"https://example.com/{n}.mp4" for n in range(3)]
    args = ["create", "-m", "superResolution-720p-lowfps", "--jsonl", str(results), *urls]
    first = invoke(*args)
    assert first.exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0
    assert len(emulator.task_ids) == 3
    assert again.stderr == (
        f"Note: {results} holds a task for 3 of the 3 video URLs: not created again (--force "
        "creates them again).\nCreated 0 tasks.\n"
    )
    assert sorted(again.stdout.split()) == sorted(first.stdout.split())  # the whole batch
    other_model = invoke("create", "-m", "superResolution-4k-lowfps", *args[3:])
    assert other_model.exit_code == 0
    assert len(emulator.task_ids) == 6
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0
    assert forced.stderr == "Created 3 tasks.\n"
    assert len(emulator.task_ids) == 9
    pairs = collections.Counter((r["model"], r["input_url"]) for r in records(results))
    assert pairs == {
        **{("superResolution-720p-lowfps", url): 2 for url in urls},
        **{("superResolution-4k-lowfps", url): 1 for url in urls},
    }


def test_a_create_that_failed_is_tried_again_by_a_rerun(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A create that failed has no task ID, so the file holds no task for its video URL: the
    same command again tries it (and only it) again."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    urls = [f"https://example.com/{n}.mp4" for n in range(3)]
    emulator = CreateLog(seed=5, refuse=[urls[1]])
    results = tmp_path / "results.jsonl"
    args = ["create", "-m", "superResolution-720p-lowfps", "--jsonl", str(results), *urls]
    with serve_in_thread(emulator) as base_url:
        first = CliRunner().invoke(_app.cli, args, env=cli_env(base_url))
        assert first.exit_code == 1
        assert f"Could not create from {urls[1]}: " in first.stderr
        emulator.refuse.clear()
        again = CliRunner().invoke(_app.cli, args, env=cli_env(base_url))
    assert again.exit_code == 0, again.output
    assert "holds a task for 2 of the 3 video URLs" in again.stderr
    assert collections.Counter(url for _, url in emulator.creates) == {
        urls[0]: 1,
        urls[1]: 2,
        urls[2]: 1,
    }
    assert len(emulator.task_ids) == 3
    assert {r["input_url"] for r in records(results)} == set(urls)


def test_status_prints_a_line_per_task_in_input_order(invoke, emulator: Emulator) -> None:
    """status off a terminal: `ID<TAB>status<TAB>URL or reason`, in the order given; exit 1
    when one failed or is unknown."""
    done, failed, running = add_tasks(emulator, "cfr", first=0.0, step=0.0)
    result = invoke("status", "--concurrency", "2", running, "task_nope", done, failed)
    assert result.exit_code == 1
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:2] for row in rows] == [
        [running, "processing"],
        ["task_nope", "not found"],
        [done, "completed"],
        [failed, "failed"],
    ]
    assert rows[1][2].endswith("returned 404: Task not found")
    assert rows[2][2].endswith(f"/files/{done}.mp4")
    assert rows[3][2] == "Bad input"


def test_status_exits_0_when_nothing_failed(invoke, emulator: Emulator) -> None:
    """Tasks still running are not failures: exit 0."""
    ids = add_tasks(emulator, "cr", first=0.0, step=0.0)
    assert invoke("status", *ids).exit_code == 0


def test_status_json_is_one_object_per_line(invoke, emulator: Emulator) -> None:
    """--json: one JSON object per task and line."""
    ids = add_tasks(emulator, "cf", first=0.0, step=0.0)
    result = invoke("status", "--json", *ids)
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["task_id"], o["status"]) for o in objects] == [
        (ids[0], "completed"),
        (ids[1], "failed"),
    ]
    assert objects[0]["actualDuration"] == 12.0
    assert objects[0]["created"].endswith("+00:00")
    assert objects[1]["error"] == "Bad input"


def test_verbose_logs_every_retry_on_stderr(
    invoke, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-v shows the watch riding out faults, one `Debug:` line each, on stderr only; the
    library's logger is left as it was."""
    monkeypatch.setattr("vsr_async._retry.BACKOFF_FACTOR", 0.01)  # retries in milliseconds
    monkeypatch.setattr("vsr_async._retry.BACKOFF_MAX", 0.05)
    logger = logging.getLogger("vsr_async")
    level, handlers = logger.level, list(logger.handlers)
    emulator.faults = Faults(error_rate=0.5, retry_after=None)
    quiet = invoke("watch", *FAST, *add_tasks(emulator, "cc", first=0.2, step=0.1))
    assert "Debug:" not in quiet.output
    # Tasks of their own, running long enough for a dozen polls each: a few fail, always.
    verbose = invoke("-v", "watch", *FAST, *add_tasks(emulator, "cc", first=0.6, prefix="v"))
    assert verbose.exit_code == 0
    assert "Debug: polling 'v_" in verbose.stderr
    assert "Debug:" not in verbose.stdout
    assert (logger.level, logger.handlers) == (level, handlers)


def test_the_emulator_command_refuses_a_port_in_use(invoke) -> None:
    """`emulator --port N` on a taken port: one line, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("emulator", "--port", str(port))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot serve on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_accounts_for_every_task_while_faults_are_injected(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """The demo creates and watches its tasks through faults and exits 0 when each ended
    once (here with quick timelines; test_cli_pty runs it at full length)."""
    monkeypatch.setattr(
        _demo, "demo_timeline", lambda _rng: Timeline.completed(queued=0.1, processing=0.2)
    )
    monkeypatch.setattr(_demo, "PACE", _demo.Pace(interval=0.05, timeout=None, concurrency=4))
    result = CliRunner().invoke(
        _app.cli, ["demo", "--tasks", "8", "--seed", "1", "--plain", "--backend", backend]
    )
    assert result.exit_code == 0, result.output
    assert "Created 8 tasks; the emulator now fails 10% of polls" in result.stdout
    assert "8 of 8 tasks ended: 8 completed" in result.stdout
    assert "faults injected and ridden out: " in result.stdout.splitlines()[-1]


def test_demo_timeline_mixes_durations_and_outcomes() -> None:
    """The demo's tasks take 1 to 10 s, and some fail."""
    rng = random.Random(0)
    timelines = [_demo.demo_timeline(rng) for _ in range(200)]
    ends = [t.terminal_after for t in timelines]
    assert all(end is not None and 0.8 <= end <= 10 for end in ends)
    outcomes = {t.steps[-1][1] for t in timelines}
    assert outcomes == {"completed", "failed"}


def test_server_text_cannot_drive_the_terminal(invoke, emulator: Emulator) -> None:
    """A failure message full of escape sequences (retitle, clear screen, carriage return) is
    printed escaped by watch and status, so plain output holds no control characters."""
    hostile = "bad\x1b]0;PWNED\x07\rOVERWRITE\x1b[2Jx"
    task_id = emulator.add_task(Timeline.failed(queued=0.05, processing=0.05, error=hostile))
    for result in (invoke("watch", *FAST, task_id), invoke("status", task_id)):
        assert result.exit_code == 1
        assert not any(ch in result.output for ch in "\x1b\x07\r")
        assert "bad\\x1b]0;PWNED\\x07\\rOVERWRITE" in result.output


@pytest.mark.parametrize("seconds", [0.5, 4.0, 120.0])
def test_the_emulator_command_s_tasks_end_within_task_seconds(
    invoke, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> None:
    """`emulator --task-seconds S`: each task it creates ends within S seconds (and not all
    at once: their ends spread over the first S)."""
    served: list[Emulator] = []
    monkeypatch.setattr(_app, "serve", lambda app, *_: served.append(app))
    monkeypatch.setattr(_app, "run", lambda _backend, function, *args: function(*args))
    assert invoke("emulator", "--task-seconds", str(seconds)).exit_code == 0
    (app,) = served
    ends = [app.terminal_at(app.add_task()) for _ in range(200)]
    assert all(end is not None for end in ends)
    now = time.monotonic()  # (the emulator's clock)
    spans = [end - now for end in ends if end is not None]
    assert max(spans) <= seconds
    assert min(spans) < seconds * 0.5 < max(spans)
