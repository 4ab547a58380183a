"""The pytest plugin's fixtures (vsr_async.testing.pytest_plugin), used here and by pytester."""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest
from _doc_samples import ROOT, samples

from vsr_async import AsyncVSRClient
from vsr_async.testing import Emulator, EmulatorServer, Timeline

PLUGIN = "vsr_async.testing.pytest_plugin"
#: Whether the installed distribution registers the plugin (the ``pytest11`` entry point).
INSTALLED = any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))
# Load it here when an older install lacks the entry point (loading it twice is an error).
pytest_plugins = ["pytester"] if INSTALLED else ["pytester", PLUGIN]

pytestmark = pytest.mark.anyio

BOTH_BACKENDS = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

QUICK = Timeline.completed(queued=0.05, processing=0.05)


async def test_client_is_wired_to_the_served_emulator(vsr_client, vsr_server, vsr_emulator) -> None:
    """vsr_client talks to vsr_server, which serves vsr_emulator: a task added there ends."""
    assert isinstance(vsr_client, AsyncVSRClient)
    assert isinstance(vsr_server, EmulatorServer)
    assert vsr_server.emulator is vsr_emulator
    assert vsr_client.base_url == vsr_server.base_url
    task_id = vsr_emulator.add_task(QUICK)
    assert (await vsr_client.wait(task_id, interval=0.02)).status == "completed"
    assert vsr_emulator.polls(task_id)


async def test_env_lets_code_build_its_own_client(vsr_env, vsr_emulator) -> None:
    """vsr_env points $VSR_API_KEY and $VSR_BASE_URL at the emulator for AsyncVSRClient()."""
    assert os.environ["VSR_BASE_URL"] == vsr_env.base_url
    task_id = vsr_emulator.add_task(QUICK)
    async with AsyncVSRClient() as client:
        assert (await client.get_task(task_id)).id == task_id


class TestOverride:
    @pytest.fixture
    def vsr_emulator(self) -> Emulator:
        return Emulator(api_key="another-key", timeline=QUICK)

    async def test_overriding_the_emulator_configures_the_rest(self, vsr_client) -> None:
        """An overridden vsr_emulator is the one served, with its own key, to vsr_client."""
        task = await vsr_client.create_task(
            "https://example.com/a.mp4", model="superResolution-2k-lowfps"
        )
        assert (await vsr_client.wait(task.id, interval=0.02)).status == "completed"


def test_client_is_closed_after_the_test(pytester) -> None:
    """The fixtures clean up: after the test, the client is closed and the server stopped."""
    pytester.makeconftest(BOTH_BACKENDS)
    pytester.makepyfile(
        """
        import pytest

        seen = []

        @pytest.mark.anyio
        async def test_uses(vsr_client, vsr_server):
            seen.append((vsr_client, vsr_server))

        def test_after():
            assert len(seen) == 2  # asyncio, trio
            for client, server in seen:
                assert "closed" in repr(client)
                with pytest.raises(RuntimeError):
                    server.port
        """
    )
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=3)


PYTESTER_SAMPLES = [sample for sample in samples() if sample.mark == "pytester"]


@pytest.mark.parametrize("sample", PYTESTER_SAMPLES, ids=[s.name for s in PYTESTER_SAMPLES])
def test_the_documented_user_test_passes(pytester, sample) -> None:
    """The docs' user tests (three lines with the fixtures) pass on asyncio and trio."""
    pytester.makeconftest(BOTH_BACKENDS)
    pytester.makepyfile(test_user=sample.code)
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=2)


def test_entry_point_is_declared() -> None:
    """pyproject.toml registers the plugin in the pytest11 group, so users need no setup."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    header = r"^\[project\.entry-points\.pytest11\]\n(.*?)(?:^\[|\Z)"
    section = re.search(header, pyproject, re.MULTILINE | re.DOTALL)
    assert section is not None
    assert f'"{PLUGIN}"' in section[1]


def _plugin_args() -> list[str]:
    return ["-W", "error", "-p", "no:cacheprovider", *([] if INSTALLED else ["-p", PLUGIN])]
