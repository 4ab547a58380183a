"""Imports run one way (docs/architecture.md): each module imports only from the layers below
its own, and nothing imports the command line or the emulator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "vsr_async"

#: Each private module's layer: a module may import from lower layers only.
LAYERS = {
    "_config": 0,
    "_models": 0,
    "_aiohttp": 0,
    "_validate": 1,
    "_errors": 1,
    "_converter": 2,
    "_schedule": 2,
    "_http": 2,
    "_retry": 2,
    "_rate": 2,
    "_hooks": 2,
    "_session": 3,
    "_tasks": 4,
    "_scheduler": 5,
    "_download": 5,
    "_watch": 6,
    "_client": 7,
}
#: What the command line and the emulator may use beside the public names: defaults and checks.
BOTTOM = {"_config", "_validate"}


def imported(path: Path) -> set[str]:
    """The package's modules ``path`` imports, by name (``_session``, ``_cli``, ``vsr_async``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level == 1 and path.parent == PACKAGE:
                names.add(node.module.split(".")[0])
            elif node.level == 0 and node.module.split(".")[0] == "vsr_async":
                names.add(".".join(node.module.split(".")[:2]).removeprefix("vsr_async."))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("vsr_async."))
    return names


def test_every_module_has_a_layer() -> None:
    """A new module is placed in a layer before it is used."""
    modules = {p.stem for p in PACKAGE.glob("_*.py") if p.stem != "__main__"} - {"__init__"}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_module_imports_only_from_below(name: str) -> None:
    """No module imports its own layer or one above (no cycle can form)."""
    above = {m for m in imported(PACKAGE / f"{name}.py") if LAYERS.get(m, 99) >= LAYERS[name]}
    assert not above, f"{name} (layer {LAYERS[name]}) imports {sorted(above)}"


ON_TOP = sorted(
    [*PACKAGE.glob("_cli/*.py"), *PACKAGE.glob("testing/*.py"), *PACKAGE.glob("fleet/*.py")]
)


@pytest.mark.parametrize("path", ON_TOP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_cli_the_emulator_and_the_fleet_use_the_public_api(path: Path) -> None:
    """The command line, the emulator and the fleet build on the public names (and the
    defaults and input checks), like any user's code; the library never imports them."""
    private = {m for m in imported(path) if m in LAYERS and m not in BOTTOM}
    assert not private, f"{path.relative_to(PACKAGE)} reaches into {sorted(private)}"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_the_library_never_imports_the_cli_or_the_emulator(name: str) -> None:
    """The command line and the emulator sit on top: nothing below imports them."""
    assert not imported(PACKAGE / f"{name}.py") & {"_cli", "testing", "fleet"}
