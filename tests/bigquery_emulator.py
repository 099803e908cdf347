"""The BigQuery API emulator (``bqemulator`` from PyPI) on free loopback ports, driven by the real
google-cloud-bigquery client.

It lives in its own virtualenv, ``.venv-bq`` (its pins clash with the main stack), with a private
HOME that holds the DuckDB spatial extension it loads (otherwise it tries to download it). bin/test
creates both. Its state is kept in a data folder, so ``restart()`` is a crash and a comeback, not a
wipe.

    with BigQueryEmulator() as emulator:
        store = BigQueryStore("farm-local", "fmel_test", endpoint=emulator.endpoint)

In tests, use the session fixture ``bigquery_emulator`` (import it into the test module); it skips
with a reason on a laptop without ``.venv-bq``, and fails under ``CI=true``.
"""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import need
from tests.local_process import LocalProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-bq"
PROJECT = "farm-local"
DUCKDB = "v1.5.5"


def find_emulator(venv: Path = VENV) -> tuple[Path | None, str]:
    """(the bqemulator program, or None, and why it was not found)."""
    program = venv / "bin" / "bqemulator"
    if not program.exists():
        return None, f"no BigQuery emulator at {program} (bin/test installs it into .venv-bq)"
    extension = venv / "home" / ".duckdb" / "extensions" / DUCKDB / "linux_amd64" / "spatial.duckdb_extension"
    if not extension.exists():
        return None, f"the emulator's DuckDB spatial extension is missing at {extension} (bin/test copies it there)"
    return program, ""


class BigQueryEmulator(LocalProcess):
    """One emulator process; ``endpoint`` is its REST address, ``client()`` a real client for it."""

    name = "bqemulator"
    ready_timeout = 60.0
    stop_signal = signal.SIGKILL     # a crash, not a shutdown: its data folder survives for restart()

    def __init__(self, program: Path | None = None, port: int | None = None):
        self.program = program or find_emulator()[0]
        if self.program is None:
            raise RuntimeError(find_emulator()[1])
        super().__init__(port)
        self.grpc_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        home = Path(self.program).parent.parent / "home"
        (self.directory / "data").mkdir(exist_ok=True)
        return ["env", f"HOME={home}", str(self.program), "start", "--rest-port", str(self.port),
                "--grpc-port", str(self.grpc_port), "--project", PROJECT, "--persistent",
                "--data-dir", str(self.directory / "data"), "--log-level", "warning"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/bigquery/v2/projects/{PROJECT}/datasets",
                                        timeout=1) as reply:
                return reply.status == 200
        except urllib.error.URLError:
            return False

    def client(self):
        from farmkit.fmel.bigquery import _client
        return _client(PROJECT, self.endpoint)

    def url(self, dataset: str | None = None) -> str:
        """A store URL on a fresh dataset."""
        return f"bigquery://{PROJECT}/{dataset or new_dataset()}?endpoint={self.endpoint}"


def new_dataset() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def bigquery_emulator():
    """A running emulator for the whole session (skips on a laptop without it, fails under CI=true)."""
    program, reason = find_emulator()
    need(program is not None, reason)
    pytest.importorskip("google.cloud.bigquery", reason="google-cloud-bigquery is not installed (the test extra)")
    with BigQueryEmulator(program) as emulator:
        yield emulator
