"""A real redis-server for the fleet's tests, started on a free port in a temporary directory.

``.ci/run`` installs it (Debian's ``redis-server``); with ``CI`` set a missing server fails the
tests that need it, elsewhere it skips them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `restart` keeps its port (and, with AOF, its data).

    With ``tls``, it listens for TLS only, with a certificate for 127.0.0.1 from a CA made for
    it (``ca``): `url` is a ``rediss://`` URL that trusts that CA.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False, tls: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ca = directory / "ca.crt" if tls else None
        self._tls_files = _certificate(directory) if tls else ("", "")

    @property
    def url(self) -> str:
        if self.ca is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        if self.ca is None:
            command += ["--port", str(self.port)]
        else:
            cert, key = self._tls_files
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", cert, "--tls-key-file", key]
            command += ["--tls-ca-cert-file", str(self.ca)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Whether it answers PING."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
        ):
            if self.ca is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(16).startswith(b"+PONG")
            context = ssl.create_default_context(cafile=self.ca)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _certificate(directory: Path) -> tuple[str, str]:
    """A CA (``ca.crt``) and a certificate it signed for 127.0.0.1: the cert and key files."""
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, request = (
        directory / "server.crt",
        directory / "server.key",
        directory / "server.csr",
    )
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid,issuer\n")
    make_ca = "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-CA"
    make_key = "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1"
    sign = "x509 -req -days 2 -CAcreateserial"
    for command, files in (
        (make_ca, ["-keyout", ca_key, "-out", ca]),
        (make_key, ["-keyout", key, "-out", request]),
        (sign, ["-in", request, "-CA", ca, "-CAkey", ca_key, "-extfile", extensions, "-out", cert]),
    ):
        arguments = ["openssl", *command.split(), *map(str, files)]
        subprocess.run(arguments, check=True, capture_output=True)  # noqa: S603
    return str(cert), str(key)


def redis_server(
    directory: Path, *, appendonly: bool = False, tls: bool = False
) -> Iterator[RedisServer]:
    """A started server (stopped after), or a skip (a failure with ``CI`` set) without one."""
    for program, package in [("redis-server", "redis-server")] + tls * [("openssl", "openssl")]:
        if shutil.which(program) is None:
            message = f"{program} is not installed (apt-get install {package})"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    server = RedisServer(directory, appendonly=appendonly, tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
