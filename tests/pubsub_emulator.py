"""The Pub/Sub emulator on a free loopback port, for tests that talk to real Pub/Sub semantics.

Runs the emulator jar directly with java (faster than the gcloud wrapper, and killing the wrapper would
leave the Java child holding the port) in its own process group.

    with PubSubEmulator() as emulator:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        ...
        emulator.restart()      # same port, empty state: a crash of the service mid-stream

In tests, use the session fixture ``pubsub_emulator`` (import it into the test module); it skips with a
reason on a laptop without java or the emulator, and fails under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import need

READY_TIMEOUT = 30.0


def find_emulator_jar() -> tuple[str | None, str]:
    """(path of the emulator jar, or None, and why it was not found)."""
    if shutil.which("java") is None:
        return None, "java is not on PATH (the Pub/Sub emulator is a Java program)"
    if shutil.which("gcloud") is None:
        return None, "gcloud is not on PATH (the Pub/Sub emulator comes with google-cloud-cli)"
    try:
        sdk = subprocess.run(["gcloud", "info", "--format=value(installation.sdk_root)"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"`gcloud info` failed: {exc}"
    jars = sorted(glob.glob(os.path.join(sdk, "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar")))
    if not jars:
        return None, (f"no Pub/Sub emulator jar under {sdk}/platform/pubsub-emulator/lib "
                      "(install the google-cloud-cli-pubsub-emulator component)")
    return jars[-1], ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PubSubEmulator:
    """One emulator process; ``host`` is what ``PUBSUB_EMULATOR_HOST`` should be."""

    def __init__(self, jar: str | None = None, port: int | None = None):
        self.jar = jar or find_emulator_jar()[0]
        if self.jar is None:
            raise RuntimeError(find_emulator_jar()[1])
        self.port = port or _free_port()
        self._logdir = Path(tempfile.mkdtemp(prefix="pubsub-emulator-"))
        self._proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "PubSubEmulator":
        log = open(self._logdir / f"emulator-{self.starts}.log", "wb")
        self._proc = subprocess.Popen(
            ["java", "-jar", self.jar, "--host=127.0.0.1", f"--port={self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group, so stop() reaches every child
        log.close()
        self.starts += 1
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Pub/Sub emulator exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)  # a poll interval, not a wait for correctness
        self.stop()
        raise RuntimeError(f"Pub/Sub emulator not ready on {self.host} after {READY_TIMEOUT:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Kill the emulator and start a fresh one on the same port (topics and subscriptions are gone)."""
        self.stop()
        self.start()

    def log(self) -> str:
        files = sorted(self._logdir.glob("emulator-*.log"))
        return files[-1].read_text(errors="replace")[-4000:] if files else ""

    def __enter__(self) -> "PubSubEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)


@pytest.fixture(scope="session")
def pubsub_emulator():
    """A running emulator for the whole session (skips on a laptop without it, fails under CI=true)."""
    jar, reason = find_emulator_jar()
    need(jar is not None, reason)
    with PubSubEmulator(jar) as emulator:
        yield emulator
