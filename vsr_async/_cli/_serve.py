"""``vsr-async emulator``: the bundled emulator on a socket, until Ctrl-C."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import anyio
import click

from vsr_async._config import API_KEY_ENV, BASE_URL_ENV
from vsr_async.testing import EmulatorServer
from vsr_async.testing._emulator import STATS_PATH

from ._run import run_until_interrupted

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from vsr_async.testing import Emulator, RecordedRequest

#: ``vsr-async -v emulator`` shows its DEBUG lines, through the ``vsr_async`` logger's handler.
logger = logging.getLogger("vsr_async.emulator")


def log_request(request: RecordedRequest) -> None:
    """One line per request (an `Emulator` ``on_request`` hook): method, path, status, fault."""
    if request.fault == "quota":
        fault = " (over the quota)"
    else:
        fault = f" (injected {request.fault})" if request.fault else ""
    logger.debug("%s %s %d%s", request.method, request.path, request.status_code, fault)


async def serve(emulator: Emulator, host: str, port: int) -> None:
    """Serve ``emulator`` on ``host:port`` until SIGINT or SIGTERM, after printing where."""
    async with EmulatorServer(emulator, host=host, port=port) as server:
        click.echo(f"export {BASE_URL_ENV}={server.base_url}")
        click.echo(f"export {API_KEY_ENV}={emulator.api_key}")
        click.echo(
            "Serving the VSR API emulator: run the lines above in another shell, then "
            "`vsr-async create --watch ...` or your own code. Its counts: "
            f"{server.url}{STATS_PATH}. Ctrl-C stops it.",
            err=True,
        )

        async def forever(_: TaskGroup) -> None:
            await anyio.sleep_forever()

        await run_until_interrupted(forever, signals=(signal.SIGINT, signal.SIGTERM))
