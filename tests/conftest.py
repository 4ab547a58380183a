from __future__ import annotations

import pytest

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
