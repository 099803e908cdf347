"""A server the tests start on a free loopback port, in its own process group, with a log."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalProcess:
    """Subclasses give ``command()`` and ``ready()``; ``start()`` polls ``ready()`` until the server
    answers (or dies, or ``ready_timeout`` passes) and ``stop()`` ends its whole process group."""

    name = "server"
    ready_timeout = 30.0
    stop_signal = signal.SIGTERM

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self._proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self):
        log = open(self.directory / f"{self.name}-{self.starts}.log", "wb")
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL,
                                      start_new_session=True)  # its own process group, for stop()
        log.close()
        self.starts += 1
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n{self.log()}")
            try:
                if self.ready():
                    return self
            except OSError:
                pass
            time.sleep(0.05)  # a poll interval, not a wait for correctness
        self.stop()
        raise RuntimeError(f"{self.name} not ready on port {self.port} after {self.ready_timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, self.stop_signal)
            self._proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Stop the server and start a fresh one on the same port."""
        self.stop()
        self.start()

    def log(self) -> str:
        files = sorted(self.directory.glob(f"{self.name}-*.log"))
        return files[-1].read_text(errors="replace")[-4000:] if files else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
