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
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.conftest import need
from tests.local_process import LocalProcess

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


class PubSubEmulator(LocalProcess):
    """One emulator process; ``host`` is what ``PUBSUB_EMULATOR_HOST`` should be. ``restart()`` gives
    the same port with empty state (topics and subscriptions are gone): a crash of the service."""

    name = "pubsub-emulator"
    ready_timeout = READY_TIMEOUT
    stop_signal = signal.SIGKILL

    def __init__(self, jar: str | None = None, port: int | None = None):
        self.jar = jar or find_emulator_jar()[0]
        if self.jar is None:
            raise RuntimeError(find_emulator_jar()[1])
        super().__init__(port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return ["java", "-jar", self.jar, "--host=127.0.0.1", f"--port={self.port}"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as reply:
                return reply.status == 200
        except urllib.error.URLError:
            return False


@pytest.fixture(scope="session")
def pubsub_emulator():
    """A running emulator for the whole session (skips on a laptop without it, fails under CI=true)."""
    jar, reason = find_emulator_jar()
    need(jar is not None, reason)
    with PubSubEmulator(jar) as emulator:
        yield emulator
