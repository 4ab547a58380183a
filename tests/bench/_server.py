"""A loopback file server for the benchmarks, run in a process of its own so it stays out of
what is measured.

It answers ``GET /file/<size>`` (and ``HEAD``) with the first ``<size>`` bytes of one
deterministic body, over HTTP/1.1 keep-alive, with ``Content-Length``, a strong ``ETag`` and
``Accept-Ranges``; ``Range: bytes=a-[b]`` (with ``If-Range``) gets a 206. The body sits in a
file (on ``/dev/shm`` when there is one) and goes out with ``sendfile``: the kernel copies it,
and the server's own CPU is a few system calls per request. Other request headers are ignored.

Run as ``python -m tests.bench._server --size BYTES``: it prints its port on the first line
of stdout and serves until its stdin closes (so it never outlives the benchmark).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import sys
import tempfile
import threading
from pathlib import Path

#: The body is 1 MiB blocks of one random block, each stamped with its index in its first
#: 8 bytes: any byte's value depends on its offset, so a shifted or repeated block shows.
BLOCK = 1024 * 1024
_SEED = 20240917
_BASE = random.Random(_SEED).randbytes(BLOCK)
_PATH = re.compile(r"/file/(\d+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_REASONS = {200: "OK", 206: "Partial Content", 404: "Not Found", 416: "Range Not Satisfiable"}


def block(index: int) -> bytes:
    return index.to_bytes(8, "big") + _BASE[8:]


def body(offset: int, length: int) -> bytes:
    """The body's bytes from ``offset``: what any download must have written there."""
    first, last = offset // BLOCK, (offset + length - 1) // BLOCK
    data = b"".join(block(index) for index in range(first, last + 1))
    start = offset - first * BLOCK
    return data[start : start + length]


def etag(size: int) -> str:
    return f'"bench-{_SEED}-{size}"'


def write_body(size: int, directory: str | None) -> Path:
    fd, name = tempfile.mkstemp(prefix="vsr-bench-body-", dir=directory)
    with os.fdopen(fd, "wb") as file:
        for index in range(-(-size // BLOCK)):
            file.write(block(index)[: size - index * BLOCK])
    return Path(name)


class _Server:
    def __init__(self, body_fd: int, size: int) -> None:
        self.body_fd = body_fd
        self.size = size

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    self.answer(conn, method, target, headers)
                except OSError:
                    return  # the client went away mid-body
                if headers.get("connection", "").lower() == "close":
                    return

    def answer(
        self, conn: socket.socket, method: str, target: str, headers: dict[str, str]
    ) -> None:
        match = _PATH.fullmatch(target.partition("?")[0])
        size = int(match[1]) if match else 0
        if not match or size > self.size or method not in ("GET", "HEAD"):
            conn.sendall(_head(404, {"Content-Length": "0"}))
            return
        tag = etag(size)
        start, end, status = 0, size, 200
        wanted = _RANGE.fullmatch(headers.get("range", ""))
        if wanted and headers.get("if-range", tag) == tag:
            start = int(wanted[1])
            end = min(size, int(wanted[2]) + 1) if wanted[2] else size
            if start >= size or start >= end:
                conn.sendall(
                    _head(416, {"Content-Length": "0", "Content-Range": f"bytes */{size}"})
                )
                return
            status = 206
        fields = {
            "Content-Length": str(end - start),
            "Content-Type": "video/mp4",
            "ETag": tag,
            "Accept-Ranges": "bytes",
        }
        if status == 206:
            fields["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        conn.sendall(_head(status, fields))
        if method == "GET":
            offset = start
            while offset < end:
                sent = os.sendfile(conn.fileno(), self.body_fd, offset, end - offset)
                if sent == 0:
                    raise ConnectionResetError
                offset += sent


def _head(status: int, fields: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--size", type=int, required=True, help="the largest body, in bytes")
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: PTH112, S108
    path = write_body(args.size, shm)
    body_fd = os.open(path, os.O_RDONLY)
    path.unlink()  # the open descriptor keeps it; nothing is left behind however we end
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    server = _Server(body_fd, args.size)
    threading.Thread(target=server.serve, args=(listener,), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin, or ends


if __name__ == "__main__":
    main()
