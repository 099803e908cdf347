"""Runs whose process is SIGKILLed read as killed, not running: real processes (a backtest, `farm
backtest` and its notebook kernel) killed mid-run, then `farm runs`, fk.runs(), the REST API and the
BigQuery registry (against the emulator) asked about them."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

import farmkit as fk
from farmkit import cli
from farmkit.fmel import registry
from tests.bigquery_emulator import PROJECT, bigquery_emulator, new_dataset  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"

# A backtest that takes minutes (10 ms a bar): it is killed long before it ends.
SLOW_BACKTEST = """
import time
import farmkit as fk

class Slow(fk.Strategy):
    def next(self):
        time.sleep(0.01)

fk.backtest(Slow, fk.data.synthetic(["AAPL"], days=30, seed=1))
"""


def farm_command(*args: str) -> list[str]:
    """`farm ARGS` as installed next to this Python (.venv/bin/farm), or the module where it is not."""
    program = Path(sys.executable).with_name("farm")
    return [str(program), *args] if program.exists() else [sys.executable, "-m", "farmkit.cli", *args]


def eventually(condition, what: str, timeout: float = 60.0, *, process: subprocess.Popen | None = None,
               log=lambda: ""):
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout``, or
    as soon as ``process`` has exited, showing ``log()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode} first\n{log()}")
        time.sleep(0.05)  # a poll interval, not a wait for correctness
    pytest.fail(f"not within {timeout:.0f} s: {what}\n{log()}")


def stored(home: Path, status: str | None = None) -> list[dict]:
    """The registry's rows as the file holds them (no liveness reading), optionally of one status."""
    path = home / "registry.sqlite"
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(path, timeout=10)) as con:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM runs")]
    except sqlite3.OperationalError:    # the table is being created
        return []
    return [r for r in rows if status is None or r["status"] == status]


class Processes:
    """Processes a test starts, each in a session of its own; ``kill`` SIGKILLs one with its process
    group and everything under it (notebook kernels run in sessions of their own), and teardown kills
    whatever is left."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []
        self.tree: list[psutil.Process] = []

    def start(self, command: list[str]) -> subprocess.Popen:
        with open(self.logs / f"process-{len(self.started)}.log", "wb") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, start_new_session=True)
        self.started.append(proc)
        return proc

    def log(self) -> str:
        """The output of the processes started so far (the end of each)."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("process-*.log")))

    def children(self, proc: subprocess.Popen) -> list[psutil.Process]:
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            root = psutil.Process(proc.pid)
            root.suspend()                      # it starts no new child while its tree is listed
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        self.tree += tree[1:]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree[1:], timeout=10)
        assert all(_gone(p) for p in alive), f"still running after SIGKILL: {alive}"

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                self.kill(proc)
        left = [p for p in self.tree if not _gone(p)]
        assert not left, f"processes left running: {left}"


def _command_line(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return ""


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.close()


def farm_runs() -> str:
    done = subprocess.run(farm_command("runs"), capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_in_listing(listing: str, run_id: str) -> str:
    header, *lines = listing.splitlines()
    column = header.split().index("status")
    line = next((line for line in lines if line.split()[0] == run_id), None)
    assert line is not None, f"run {run_id} not in `farm runs`:\n{listing}"
    return line.split()[column]


def test_a_killed_backtest_reads_as_killed_everywhere(farm_home, processes, tmp_path):
    from fastapi.testclient import TestClient

    from farmkit.api.app import create_app
    from farmkit.api.settings import ApiSettings

    proc = processes.start([sys.executable, "-c", SLOW_BACKTEST])
    row, = eventually(lambda: stored(farm_home.home, "running"), "the backtest registered as running",
                      process=proc, log=processes.log)
    assert (row["host"], row["pid"]) == (socket.gethostname(), proc.pid)
    processes.kill(proc)

    assert status_in_listing(farm_runs(), row["run_id"]) == "killed"
    assert stored(farm_home.home)[0]["status"] == "killed"     # written back by `farm runs`: all see it
    assert fk.runs().set_index("run_id").loc[row["run_id"], "status"] == "killed"
    assert fk.fmel.sql("SELECT status FROM runs")["status"].tolist() == ["killed"]

    app = create_app(farm_home, ApiSettings(token="t0ken", agents=str(tmp_path / "agents")))
    reply = TestClient(app).get("/api/fmel/runs", params={"status": "killed"},
                                headers={"Authorization": "Bearer t0ken"})
    assert reply.status_code == 200, reply.text
    assert [(r["run_id"], r["status"]) for r in reply.json()["items"]] == [(row["run_id"], "killed")]


def test_a_killed_farm_backtest_reads_as_killed(farm_home, processes, capsys):
    proc = processes.start(farm_command("backtest", str(SMA), "-p", "days", "250", "--no-progress"))
    row, = eventually(lambda: stored(farm_home.home, "running"), "the notebook's backtest registered as running",
                      process=proc, log=processes.log)
    kernel = row["pid"]
    assert kernel != proc.pid and kernel in [p.pid for p in processes.children(proc)]   # the kernel claimed it
    processes.kill(proc)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE

    assert cli.main(["runs"]) == 0       # in this process: the first test runs `farm runs` as a command
    listing = capsys.readouterr()
    assert status_in_listing(listing.out, row["run_id"]) == "killed" and "killed: the run's process" in listing.err
    assert fk.runs().set_index("run_id").loc[row["run_id"], "status"] == "killed"


def test_a_farm_backtest_killed_while_queued_reads_as_killed(farm_home, processes, tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("seconds = 60")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")]
    path = tmp_path / "waits.ipynb"
    nbformat.write(nb, path)

    proc = processes.start(farm_command("backtest", str(path), "--no-progress"))
    row, = eventually(lambda: stored(farm_home.home, "queued"), "`farm backtest` registered its run as queued",
                      process=proc, log=processes.log)
    assert row["pid"] == proc.pid
    eventually(lambda: any("ipykernel" in _command_line(p) for p in processes.children(proc)),
               "the notebook's kernel started", process=proc, log=processes.log)
    processes.kill(proc)

    assert cli.main(["runs"]) == 0
    assert status_in_listing(capsys.readouterr().out, row["run_id"]) == "killed"
    assert fk.runs().set_index("run_id").loc[row["run_id"], "status"] == "killed"


# -- the BigQuery registry, against the emulator ----------------------------------------------------
@pytest.fixture
def bq_store(bigquery_emulator, tmp_path):
    from farmkit.fmel.bigquery import BigQueryStore
    return BigQueryStore(PROJECT, new_dataset(), home=tmp_path, endpoint=bigquery_emulator.endpoint,
                         attempts=2, backoff=0.01)


def register(runs, run_id: str, status: str = "running", **owner) -> None:
    runs.upsert(run_id, agent_id="A", strategy="S", mode="backtest", status=status,
                started_at=pd.Timestamp.now(tz="UTC"), **owner)


def test_a_killed_run_in_bigquery_reads_as_killed(bq_store, processes):
    child = processes.start([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = registry.process_identity(child.pid)._asdict()
    register(bq_store.runs, "r-killed", **owner)
    register(bq_store.runs, "r-queued", status="queued", **owner)
    register(bq_store.runs, "r-live")                                    # this process: alive
    register(bq_store.runs, "r-pod", host="agent-sma-0", pid=child.pid)  # another host: cannot tell
    assert bq_store.runs.get("r-killed")["status"] == "running"
    processes.kill(child)

    assert bq_store.runs.get("r-killed")["status"] == "killed"
    frame = bq_store.runs.frame().set_index("run_id")
    assert frame["status"].to_dict() == {"r-killed": "killed", "r-queued": "killed", "r-live": "running",
                                         "r-pod": "running"}
    assert frame.loc["r-live", "pid"] == os.getpid() and frame.loc["r-pod", "host"] == "agent-sma-0"
    table = bq_store.query(f"SELECT run_id, status FROM `{bq_store.table('runs')}` ORDER BY run_id")
    assert dict(zip(table.run_id, table.status)) == frame["status"].to_dict()      # written back


def test_a_bigquery_heartbeat_says_whether_a_pod_lives(bq_store):
    register(bq_store.runs, "r-beating", host="agent-sma-0", pid=7)
    register(bq_store.runs, "r-silent", host="agent-sma-1", pid=7)
    bq_store.runs.heartbeat("r-beating")
    bq_store.runs.heartbeat("r-silent", now=pd.Timestamp.now(tz="UTC")
                            - pd.Timedelta(seconds=registry.HEARTBEAT_STALE + 60))
    assert bq_store.runs.frame().set_index("run_id")["status"].to_dict() == {"r-beating": "running",
                                                                             "r-silent": "killed"}


def test_an_old_bigquery_runs_table_gets_the_owner_columns(bigquery_emulator, tmp_path):
    from google.cloud import bigquery

    from farmkit.fmel.bigquery import BigQueryStore
    from farmkit.fmel.schema import fields
    dataset = new_dataset()
    client = bigquery_emulator.client()
    client.create_dataset(f"{PROJECT}.{dataset}")
    new = {"host", "pid", "pid_started", "heartbeat_at"}
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.runs", schema=[
        bigquery.SchemaField.from_api_repr(f) for f in fields("runs") if f["name"] not in new]))
    store = BigQueryStore(PROJECT, dataset, home=tmp_path, client=client)
    register(store.runs, "r-1")
    assert store.runs.get("r-1")["pid"] == os.getpid()
    again = BigQueryStore(PROJECT, dataset, home=tmp_path, client=client)      # adding them again is harmless
    assert again.runs.get("r-1")["host"] == socket.gethostname()
