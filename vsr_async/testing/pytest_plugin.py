"""pytest fixtures: the bundled emulator on a loopback port and a client wired to it.

Installed with the package (the ``pytest11`` entry point), so a test of your code needs no
setup. The async fixtures run under anyio's pytest plugin, on asyncio or trio::

    @pytest.mark.anyio
    async def test_wait(vsr_client, vsr_emulator):
        task_id = vsr_emulator.add_task(Timeline.completed(queued=0.1, processing=0.1))
        assert (await vsr_client.wait(task_id, interval=0.05)).status == "completed"

Override `vsr_emulator` in a ``conftest.py`` to configure the emulator (faults, timelines, a
seed); every other fixture uses it. Serving it needs the ``emulator`` extra (hypercorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from vsr_async import AsyncVSRClient
from vsr_async._config import API_KEY_ENV, BASE_URL_ENV

from ._emulator import Emulator
from ._server import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["vsr_client", "vsr_emulator", "vsr_env", "vsr_server"]


@pytest.fixture
def vsr_emulator() -> Emulator:
    """A fresh `Emulator` with its defaults: override this fixture to configure it."""
    return Emulator()


@pytest.fixture
async def vsr_server(vsr_emulator: Emulator) -> AsyncIterator[EmulatorServer]:
    """`vsr_emulator` served on a free loopback port for the test's duration."""
    async with EmulatorServer(vsr_emulator) as server:
        yield server


@pytest.fixture
async def vsr_client(
    vsr_emulator: Emulator, vsr_server: EmulatorServer
) -> AsyncIterator[AsyncVSRClient]:
    """An open `AsyncVSRClient` with the emulator's key and URL, closed after the test."""
    async with AsyncVSRClient(vsr_emulator.api_key, base_url=vsr_server.base_url) as client:
        yield client


@pytest.fixture
def vsr_env(
    vsr_emulator: Emulator, vsr_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> EmulatorServer:
    """Sets ``VSR_API_KEY`` and ``VSR_BASE_URL`` to the emulator's, for code that builds its
    own ``AsyncVSRClient()`` from the environment (a web app's lifespan, say)."""
    monkeypatch.setenv(API_KEY_ENV, vsr_emulator.api_key)
    monkeypatch.setenv(BASE_URL_ENV, vsr_server.base_url)
    return vsr_server
