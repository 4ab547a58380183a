"""Sessions: ``nox`` runs tests on every installed Python from 3.10 to 3.13, lint, typecheck and
docs; ``nox -s demo`` runs the demo, ``nox -s chaos`` the chaos suite's large run and
``nox -s bench`` the benchmarks."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.error_on_missing_interpreters = False  # skip Pythons this machine lacks
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Where ``nox -s bench`` writes its tables by default: docs/performance.md includes them.
FIGURES = ["--out", "tests/bench/figures.md"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The suite on asyncio and trio, with the branch coverage floor from pyproject.toml."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install(
        "-e",
        ".[aiohttp,cli,emulator,otel,redis]",
        "opentelemetry-sdk",
        "mypy>=1.10",
        "pytest",
        "trio",
    )
    session.run("mypy", "-p", "vsr_async")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built with --strict: a broken link or reference fails it."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job, on asyncio and on trio."""
    session.install(".[cli,emulator]")
    session.run("vsr-async", "demo", "--seed", "1")
    session.run("vsr-async", "demo", "--seed", "2", "--backend", "trio")


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos suite's large run, 20,000 tasks on asyncio and trio; writes the figures that
    docs/reliability.md includes (tests/chaos-figures.md)."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "tests/chaos.py",
        "--tasks",
        "20000",
        "--backend",
        "asyncio",
        "--backend",
        "trio",
        "--out",
        "tests/chaos-figures.md",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark of tests/bench, each against a baseline measured in the same run; their
    tables go to tests/bench/figures.md, which docs/performance.md includes. ``-- --out FILE``
    writes them elsewhere, ``-- --strict`` exits
    1 on a missed target, ``-- download --reps 15`` runs one with its own options. The fleet
    benchmark measures ``transport="aiohttp"`` and an aiohttp baseline, hence the extra; the web
    app's serves examples/webapp.py (Starlette) with hypercorn (the emulator extra); the fleet on
    Redis runs `vsr-async worker` processes (the cli and redis extras) and needs redis-server; the
    CLI under faults runs `python -m vsr_async create --watch` against `python -m vsr_async
    emulator` processes (the cli and emulator extras); the hooks' measures OpenTelemetryHooks on
    the SDK (the otel extra and opentelemetry-sdk)."""
    session.install(
        "-e",
        ".[aiohttp,cli,emulator,otel,redis]",
        "trio",
        "aiohttp",
        "starlette",
        "opentelemetry-sdk",
    )
    session.run("python", "-m", "tests.bench", *(session.posargs or FIGURES))
