from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

import vsr_async._rate
import vsr_async._retry

# The package's pytest11 plugin, loaded here rather than by its entry point (pyproject's addopts
# has ``-p no:vsr-async``): the entry point imports vsr_async before pytest-cov starts coverage,
# which then misses every module-level line and warns "module-not-measured". A conftest loads
# after coverage starts. pytester runs in tests/test_pytest_plugin.py still load it through the
# entry point, as users get it.
pytest_plugins = ["vsr_async.testing.pytest_plugin"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No $VSR_API_KEY or $VSR_BASE_URL from the environment the tests run in."""
    monkeypatch.delenv("VSR_API_KEY", raising=False)
    monkeypatch.delenv("VSR_BASE_URL", raising=False)


class _FastForwardAnyio:
    """`anyio` as `vsr_async._rate` sees it, with a clock that a `sleep` moves forward at
    once."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    def current_time(self) -> float:
        return anyio.current_time() + self.skipped

    async def sleep(self, delay: float) -> None:
        self.skipped += delay
        await checkpoint()


class _RecordingAnyio:
    """`anyio` as `vsr_async._retry` sees it, with `sleep` recorded and instant."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await checkpoint()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the client slept before its retries (without really sleeping them)."""
    recorder = _RecordingAnyio()
    monkeypatch.setattr(vsr_async._retry, "anyio", recorder)
    # The pause a Retry-After puts on the rate budget holds the retry as long again: skipped
    # too, on a clock of the budget's that jumps over what it sleeps.
    monkeypatch.setattr(vsr_async._rate, "anyio", _FastForwardAnyio())
    return recorder.delays


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff between retries in milliseconds, not seconds."""
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(vsr_async._retry, "BACKOFF_MAX", 0.05)
