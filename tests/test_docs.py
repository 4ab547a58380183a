"""Every Python sample of README.md and docs/*.md runs against the emulator (see _doc_samples)."""

from __future__ import annotations

import ast
import builtins
import contextlib
import inspect
import re

import anyio
import pytest
from _doc_samples import PROGRAM_PAGES, ROOT, samples

from vsr_async import AsyncVSRClient, Model
from vsr_async.testing import Emulator, EmulatorServer, Timeline

pytestmark = pytest.mark.anyio

RUNNABLE = [sample for sample in samples() if sample.mark is None]
PROGRAMS = [sample for sample in RUNNABLE if sample.program]


@pytest.fixture
async def namespace(monkeypatch, tmp_path):
    """What the docs say the samples may use, with the key and URL in the environment."""
    emulator = Emulator(seed=7, timeline=Timeline.completed(queued=0, processing=0))
    async with EmulatorServer(emulator) as server:
        monkeypatch.setenv("VSR_API_KEY", emulator.api_key)
        monkeypatch.setenv("VSR_BASE_URL", server.base_url)
        saved: list[str] = []
        async with AsyncVSRClient() as client:
            yield {
                "__name__": "docs_sample",
                "AsyncVSRClient": AsyncVSRClient,  # the README's later samples assume it
                "anyio": anyio,
                "contextlib": contextlib,
                "client": client,
                "emulator": emulator,
                "server": server,
                "task_id": emulator.add_task(),
                "task_ids": [emulator.add_task() for _ in range(3)],
                "urls": [f"https://example.com/in-{n}.mp4" for n in range(3)],
                "model": Model.SUPER_RESOLUTION_1080P_LOWFPS,
                "save": saved.append,
                "tmp_path": tmp_path,
            }


@pytest.mark.parametrize("sample", RUNNABLE, ids=[sample.name for sample in RUNNABLE])
async def test_sample_runs(sample, namespace) -> None:
    """The sample runs to its end against the emulator, on asyncio and trio."""
    if sample.program:  # runs its own event loop: in a thread, with nothing provided
        code = compile(sample.code, sample.name, "exec")
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(exec, code, {"__name__": "__main__"})
        return
    code = compile(sample.code, sample.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    with anyio.fail_after(60):  # a guard against a hang: samples take milliseconds
        result = eval(code, dict(namespace))  # noqa: S307 (our own documentation)
        if inspect.iscoroutine(result):
            await result


def test_every_sample_is_run_or_says_why_not() -> None:
    """No sample is left out silently: each is run here, run by pytester, or skipped with a
    reason; and every page with Python in it has at least one sample run."""
    every = samples()
    assert len(RUNNABLE) >= 15
    for sample in every:
        assert sample.mark in (None, "skip", "pytester"), sample.name
        assert sample.mark != "skip" or sample.reason, sample.name
    skipped = [sample.name for sample in every if sample.mark == "skip"]
    assert len(skipped) <= 4, skipped


def _free_names(code: str) -> set[str]:
    """The names a sample reads but neither binds nor imports (nor gets from builtins)."""
    tree = ast.parse(code)
    bound: set[str] = set(dir(builtins))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add(node.asname or node.name.partition(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


def test_quick_start_samples_are_complete_programs() -> None:
    """The quick start's samples are all run, as programs: they start their own event loop, use
    no top-level ``await`` and no name the harness provides (``task_id``, ``client``...)."""
    quickstart = [sample for sample in samples() if sample.page in PROGRAM_PAGES]
    assert quickstart
    assert all(sample.mark is None for sample in quickstart), [s.name for s in quickstart]
    assert quickstart == PROGRAMS
    for sample in quickstart:
        compile(sample.code, sample.name, "exec")  # a SyntaxError if it awaits at top level
        assert _free_names(sample.code) == set(), sample.name
        assert re.search(r"^(anyio|trio)\.run\(main", sample.code, re.MULTILINE), sample.name


def test_every_page_is_in_the_site() -> None:
    """Every page in docs/ is in mkdocs.yml's nav, and every nav entry exists."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", config, re.MULTILINE))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert listed == pages


def test_reference_documents_every_public_name() -> None:
    """The API reference page renders every name in ``vsr_async.__all__`` and
    ``vsr_async.testing.__all__``."""
    import vsr_async  # noqa: PLC0415
    import vsr_async.testing  # noqa: PLC0415

    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for name in vsr_async.__all__:
        if name != "__version__":
            assert f"::: vsr_async.{name}\n" in reference, name
    for name in vsr_async.testing.__all__:
        assert f"::: vsr_async.testing.{name}\n" in reference, name
    assert "vsr_async.__version__" in reference
