"""Serving an `Emulator` on a real loopback socket with hypercorn, on asyncio or trio."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import anyio
import sniffio

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._emulator import Emulator, Message, Receive, Scope, Send

# hypercorn's INFO lines ("Running on ... (CTRL + C to quit)") are noise for an embedded server.
_LOGGER = logging.getLogger(__name__)
_LOGGER.setLevel(logging.WARNING)

# Requests in flight are cancelled at stop, so this only bounds a connection hypercorn leaves
# hanging: on trio, one whose next keep-alive request races the stop.
GRACEFUL_TIMEOUT = 0.1
STOP_TIMEOUT = 1.0  # after which the server task is cancelled
BACKLOG = 1024  # connections waiting to be accepted, for bursts of new clients


class EmulatorServer:
    """Serves an `Emulator` on a real loopback socket, inside the running event loop.

    Works on asyncio and trio; needs the `emulator` extra (hypercorn). The socket is bound and
    listening when `async with` enters, so `port` and `base_url` are known at once.

    Args:
        emulator: The app to serve.
        host: The address to bind.
        port: The port to bind; 0 picks a free one.
    """

    def __init__(self, emulator: Emulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            from hypercorn.config import Config  # noqa: PLC0415 - the `emulator` extra is optional
        except ImportError as error:
            raise ImportError(
                "EmulatorServer needs hypercorn: pip install 'vsr-async[emulator]'"
            ) from error
        self.emulator = emulator
        self.host = host
        self._wanted_port = port
        self._config = Config()
        self._config.accesslog = None
        self._config.errorlog = _LOGGER
        self._config.graceful_timeout = GRACEFUL_TIMEOUT
        self._config.backlog = BACKLOG
        self._port: int | None = None
        self._running: tuple[TaskGroup, socket.socket, anyio.Event] | None = None
        self._in_flight: set[anyio.CancelScope] = set()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise RuntimeError("EmulatorServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """The server's root URL (where `/files` lives)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API's base URL: `url` and the emulator's prefix."""
        return self.url + self.emulator.prefix

    async def __aenter__(self) -> EmulatorServer:
        """Bind, listen, and start serving in the background."""
        if self._running is not None:
            raise RuntimeError("EmulatorServer is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self._wanted_port), family=family, backlog=BACKLOG)
        # Inherited by accepted connections: without it, hypercorn's separate writes of headers
        # and body meet delayed ACKs and a keep-alive request takes 40 ms on asyncio.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stopping = anyio.Event()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(self._serve, sock, stopping)
        self._running = (task_group, sock, stopping)
        self._port = sock.getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop serving: cancel requests in flight (answered 500) and close connections."""
        if self._running is None:
            raise RuntimeError("EmulatorServer is not running")
        task_group, sock, stopping = self._running
        self._running = self._port = None
        stopping.set()
        for cancel_scope in self._in_flight:
            cancel_scope.cancel()
        task_group.cancel_scope.deadline = anyio.current_time() + STOP_TIMEOUT
        try:
            await task_group.__aexit__(None, None, None)
        finally:
            sock.close()  # hypercorn closes it too: the same object, so this is a no-op then

    async def _serve(self, sock: socket.socket, stopping: anyio.Event) -> None:
        # hypercorn's public serve() only binds sockets itself (or wraps an fd:// in a second
        # socket object that it closes); worker_serve() takes our socket, as its multi-worker
        # runner does, so one object owns the descriptor.
        from hypercorn.config import Sockets  # noqa: PLC0415
        from hypercorn.utils import wrap_app  # noqa: PLC0415

        # hypercorn types ASGI messages as TypedDicts; the emulator takes plain mappings.
        app = wrap_app(self._app, self._config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
        if sniffio.current_async_library() == "trio":
            from hypercorn.trio.run import worker_serve as serve_on_trio  # noqa: PLC0415

            await serve_on_trio(app, self._config, sockets=sockets, shutdown_trigger=stopping.wait)
        else:
            from hypercorn.asyncio.run import worker_serve as serve_on_asyncio  # noqa: PLC0415

            await serve_on_asyncio(
                app, self._config, sockets=sockets, shutdown_trigger=stopping.wait
            )

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The emulator, with its HTTP requests cancelled when the server stops.

        Otherwise a request sleeping out an injected latency would hold its connection open,
        and asyncio's `Server.wait_closed()` (Python 3.12+) with it. Sends are shielded: a
        cancellation inside hypercorn's send leaves the connection open until the graceful
        timeout.
        """
        if scope["type"] != "http":
            await self.emulator(scope, receive, send)
            return

        async def shielded_send(message: Message) -> None:
            with anyio.CancelScope(shield=True):
                await send(message)

        with anyio.CancelScope() as cancel_scope:
            self._in_flight.add(cancel_scope)
            try:
                await self.emulator(scope, receive, shielded_send)
            finally:
                self._in_flight.discard(cancel_scope)
