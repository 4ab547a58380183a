"""A fake VSR task API for tests and demos, served in process or on a loopback socket::

    emulator = Emulator(seed=1, faults=Faults(error_rate=0.1))
    async with EmulatorServer(emulator) as server:
        async with AsyncVSRClient(emulator.api_key, base_url=server.base_url) as client:
            task = await client.create_task("https://example.com/in.mp4", model=model)
            task = await client.wait(task.id)

Then ``emulator.requests``, ``emulator.polls(task.id)`` and ``emulator.stats`` tell what the
client sent. In process, give ``httpx.ASGITransport(app=emulator)`` to an ``httpx.AsyncClient``
(which holds whole bodies, and cannot take a dropped connection: serve big files, ``cut_after``
and ``Faults(drop_rate=...)`` with ``EmulatorServer``).
"""

from ._emulator import Emulator, EmulatorStats, Faults, Quota, RecordedRequest, Timeline
from ._server import EmulatorServer

__all__ = [
    "Emulator",
    "EmulatorServer",
    "EmulatorStats",
    "Faults",
    "Quota",
    "RecordedRequest",
    "Timeline",
]
