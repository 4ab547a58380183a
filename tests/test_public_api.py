from __future__ import annotations

import importlib.metadata
import types

import vsr_async


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted, so additions are easy to review."""
    assert vsr_async.__all__ == sorted(vsr_async.__all__)


def test_all_lists_exactly_the_public_names() -> None:
    """Every public name of the package is in ``__all__``, and ``__all__`` names nothing else."""
    public = {
        name
        for name, value in vars(vsr_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)  # not subpackages
    }
    assert set(vsr_async.__all__) == public | {"__version__"}
    assert len(vsr_async.__all__) == len(set(vsr_async.__all__))
    for name in vsr_async.__all__:
        assert hasattr(vsr_async, name), name


def test_exported_members_claim_the_package() -> None:
    """Exported classes come from the private modules (not from a third-party package)."""
    for name in vsr_async.__all__:
        if name == "__version__":
            continue
        member = getattr(vsr_async, name)
        assert member.__module__.startswith("vsr_async._"), name


def test_version_matches_the_installed_metadata() -> None:
    """``__version__`` is the installed distribution's version, not a copy that can drift."""
    assert vsr_async.__version__ == importlib.metadata.version("vsr-async")
    assert isinstance(vsr_async.__version__, str)
    assert vsr_async.__version__
