"""``vsr-async --otel``: a command's spans and metrics go where OpenTelemetry's variables say."""

from __future__ import annotations

import sys

import pytest
from _cli_helpers import KEY, add_tasks, serve_in_thread
from click.testing import CliRunner

from vsr_async._cli import _app
from vsr_async.testing import Emulator


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=4)


@pytest.fixture
def env(emulator: Emulator):
    with serve_in_thread(emulator) as url:
        yield {
            "VSR_API_KEY": KEY,
            "VSR_BASE_URL": url,
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "batch-7",
        }


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_exports_spans_and_metrics(emulator: Emulator, env: dict[str, str], backend: str):
    """A watch under --otel writes its vsr.watch and vsr.poll spans and its metrics (console
    exporters, on stderr), flushed when the command ends; its output is unchanged."""
    ids = add_tasks(emulator, "cf", first=0.3, step=0.1)
    result = CliRunner().invoke(
        _app.cli, ["--otel", "watch", "--interval", "0.05", "--backend", backend, *ids], env=env
    )
    assert result.exit_code == 1, result.output  # one failed
    assert "2 of 2 tasks ended: 1 completed, 1 failed" in result.stdout
    assert '"vsr.watch"' not in result.stdout  # telemetry stays off the results
    for name in ('"name": "vsr.watch"', '"name": "vsr.poll"', '"name": "vsr.polls"'):
        assert name in result.stderr, name
    assert '"service.name": "batch-7"' in result.stderr
    for task_id in ids:
        assert f'"vsr.task.id": "{task_id}"' in result.stderr


def test_vsr_otel_in_the_environment_turns_it_on(emulator: Emulator, env: dict[str, str]):
    """VSR_OTEL=1 is --otel, for a worker started by a service manager."""
    ids = add_tasks(emulator, "c", first=0.1, step=0.1)
    result = CliRunner().invoke(
        _app.cli, ["watch", "--interval", "0.05", *ids], env={**env, "VSR_OTEL": "1"}
    )
    assert result.exit_code == 0, result.output
    assert '"name": "vsr.watch"' in result.stderr


def test_the_service_name_comes_from_resource_attributes(emulator: Emulator, env: dict[str, str]):
    """OTEL_RESOURCE_ATTRIBUTES names the service as well as OTEL_SERVICE_NAME does; with
    neither, it is vsr-async."""
    ids = add_tasks(emulator, "c", first=0.1, step=0.1)
    env = {k: v for k, v in env.items() if k != "OTEL_SERVICE_NAME"}
    for extra, name in (
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=nightly"}, "nightly"),
        ({}, "vsr-async"),
    ):
        result = CliRunner().invoke(
            _app.cli, ["--otel", "watch", "--interval", "0.05", *ids], env={**env, **extra}
        )
        assert result.exit_code == 0, result.output
        assert f'"service.name": "{name}"' in result.stderr


def test_otel_sdk_disabled_records_nothing(emulator: Emulator, env: dict[str, str]):
    """OTEL_SDK_DISABLED=true turns --otel off, as it turns the SDK off."""
    ids = add_tasks(emulator, "c", first=0.1, step=0.1)
    result = CliRunner().invoke(
        _app.cli,
        ["--otel", "watch", "--interval", "0.05", *ids],
        env={**env, "OTEL_SDK_DISABLED": "true"},
    )
    assert result.exit_code == 0, result.output
    assert "vsr.watch" not in result.stderr


def test_a_protocol_other_than_http_is_named(env: dict[str, str]):
    """gRPC is not what --otel sends: said, by the variable's name, before anything runs."""
    result = CliRunner().invoke(
        _app.cli, ["--otel", "status", "x"], env={**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert result.exit_code == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in result.stderr


def test_an_unknown_exporter_is_named(env: dict[str, str]):
    """A typo in OTEL_TRACES_EXPORTER is a usage error naming the variable and the choices."""
    result = CliRunner().invoke(
        _app.cli, ["--otel", "status", "x"], env={**env, "OTEL_TRACES_EXPORTER": "jaegerr"}
    )
    assert result.exit_code == 2
    assert "OTEL_TRACES_EXPORTER='jaegerr'" in result.stderr
    assert "otlp, console and none" in result.stderr


def test_without_the_sdk_it_says_what_to_install(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """--otel without OpenTelemetry's SDK is a usage error saying what to pip install."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    result = CliRunner().invoke(_app.cli, ["--otel", "status", "x"], env=env)
    assert result.exit_code == 2
    assert "pip install 'vsr-async[cli,otel]' opentelemetry-sdk" in result.stderr
