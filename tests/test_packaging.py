"""The built wheel, as a user's type checker sees it once installed."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # each step takes seconds; this only stops a hang

USER_CODE = """\
from vsr_async import AsyncVSRClient


async def main(client: AsyncVSRClient) -> None:
    task = await client.get_task("task_abc")
    number: int = task.id
"""


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(  # noqa: S603 - our interpreters, on files this test wrote
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _build_wheel(into: Path) -> Path:
    """The wheel of this checkout, built offline by the installed hatchling."""
    into.mkdir()
    built = _run(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"),
        *("--quiet", "--wheel-dir", into, ROOT),
        cwd=into,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = into.glob("vsr_async-*.whl")
    return wheel


def _install(wheel: Path, into: Path) -> Path:
    """A fresh virtualenv holding the wheel alone; returns its interpreter.

    The dependencies come from the environment running this test, through a `.pth` line naming
    its site-packages: a path line, so the `.pth` files there (an editable install of this
    checkout) are not read, and only the wheel provides `vsr_async`.
    """
    venv.create(into, with_pip=False)
    python = into / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=into)
    dependencies = sysconfig.get_path("purelib")
    Path(purelib.stdout.strip(), "dependencies.pth").write_text(dependencies + "\n")
    installed = _run(
        sys.executable,
        *("-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel),
        cwd=into,
    )
    assert installed.returncode == 0, installed.stderr
    return python


def test_the_installed_wheel_is_typed_for_mypy(tmp_path: Path) -> None:
    """The wheel ships `py.typed`, so mypy checks a user's code against our annotations once it
    is installed: a `str` put into an `int` is reported, not waved through as `Any`, and there
    is no `missing library stubs or py.typed marker`."""
    wheel = _build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        assert "vsr_async/py.typed" in archive.namelist()

    python = _install(wheel, tmp_path / "venv")
    project = tmp_path / "project"  # the user's, far from this checkout and its config
    project.mkdir()
    where = _run(python, "-c", "import vsr_async; print(vsr_async.__file__)", cwd=project)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), where.stderr

    (project / "user.py").write_text(USER_CODE)
    (project / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    checked = _run(
        sys.executable,
        *("-m", "mypy", "--config-file", "mypy.ini", "--python-executable", python),
        *("--cache-dir", tmp_path / "mypy-cache", "--no-error-summary", "user.py"),
        cwd=project,
    )
    assert "py.typed" not in checked.stdout
    error = (
        'user.py:6: error: Incompatible types in assignment (expression has type "str", '
        'variable has type "int")  [assignment]'
    )
    assert checked.stdout.splitlines() == [error], checked.stdout + checked.stderr
    assert checked.returncode == 1
