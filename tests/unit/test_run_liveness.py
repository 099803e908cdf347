"""A run whose process is gone reads as killed: the registry records who runs a run (host, pid and the
pid's start time) and checks it when the run is read."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pandas as pd
import psutil
import pytest

from farmkit.fmel import registry
from farmkit.fmel.registry import RunRegistry

NOW = pd.Timestamp("2024-03-01 12:00", tz="UTC")

# A process that registers a run and then waits to be killed; it prints its run id when the row is in.
OWNER = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from farmkit.fmel.registry import RunRegistry
    RunRegistry(sys.argv[1]).upsert(sys.argv[2], agent_id="A", strategy="S", mode="backtest", status=sys.argv[3],
                                     started_at=pd.Timestamp.now(tz="UTC"))
    print(sys.argv[2], flush=True)
    time.sleep(120)
""")


def register(runs: RunRegistry, run_id: str, status: str = "running", **fields) -> None:
    runs.upsert(run_id, agent_id="A", strategy="S", mode="backtest", status=status, started_at=NOW, **fields)


def stored(runs: RunRegistry, run_id: str, column: str = "status"):
    """The column as the file holds it, without the registry's reading of it."""
    with closing(sqlite3.connect(runs.path)) as con:
        return con.execute(f"SELECT {column} FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]


@pytest.fixture
def runs(tmp_path):
    return RunRegistry(tmp_path / "registry.sqlite")


@pytest.fixture
def owner(runs):
    """Start a child process that registers a run, until it says the row is in; kill it afterwards."""
    started = []

    def start(run_id: str, status: str = "running") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", OWNER, str(runs.path), run_id, status],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == run_id, "the owner process did not register its run"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.fixture
def sleeper():
    """A child process that only waits (to be killed); its row is written by the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_process_identity_is_this_process():
    me = registry.process_identity()
    assert me.host == socket.gethostname() and me.pid == os.getpid()
    if sys.platform.startswith("linux"):
        assert me.pid_started == pytest.approx(psutil.Process().create_time(), abs=1.5)


@pytest.mark.parametrize("status", ["running", "queued"])
def test_a_run_whose_process_was_killed_reads_as_killed(runs, owner, status):
    proc = owner("r-killed", status)
    row = runs.get("r-killed")
    assert row["status"] == status and row["host"] == socket.gethostname() and row["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    row = runs.get("r-killed")
    assert row["status"] == "killed"
    assert pd.isna(row["finished_at"])      # when it died is not known, only that it is gone
    assert runs.frame().set_index("run_id").loc["r-killed", "status"] == "killed"
    assert stored(runs, "r-killed") == "killed"       # written back: every reader sees it


def test_a_killed_run_left_unreaped_reads_as_killed(runs, sleeper):
    # A zombie still holds its pid until its parent waits for it; it is gone all the same.
    register(runs, "r-zombie", **registry.process_identity(sleeper.pid)._asdict())
    sleeper.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.01)    # a poll interval
    assert runs.get("r-zombie")["status"] == "killed"


def test_a_live_owner_stays_running(runs, sleeper):
    register(runs, "r-live", **registry.process_identity(sleeper.pid)._asdict())
    row = runs.get("r-live")
    assert row["status"] == "running" and row["pid"] == sleeper.pid
    assert row["pid_started"] == pytest.approx(psutil.Process(sleeper.pid).create_time(), abs=1.5) \
        if sys.platform.startswith("linux") else row["pid_started"] is None
    assert registry.owner_alive(row) is True
    assert runs.frame().set_index("run_id").loc["r-live", "status"] == "running"
    assert stored(runs, "r-live") == "running"


def test_a_reused_pid_counts_as_gone(runs):
    # This process is alive; a row whose pid is ours but whose start time is not belonged to an
    # earlier process that had our pid.
    register(runs, "r-reused")
    assert runs.get("r-reused")["status"] == "running"
    started = stored(runs, "r-reused", "pid_started")
    if started is None:
        pytest.skip("no process start times on this platform")
    with closing(sqlite3.connect(runs.path)) as con, con:
        con.execute("UPDATE runs SET pid_started = ? WHERE run_id = 'r-reused'", (started - 3600,))
    assert runs.get("r-reused")["status"] == "killed"


def test_a_row_from_another_host_is_left_as_is(runs):
    register(runs, "r-pod", host="agent-sma-0", pid=1, pid_started=1.0)
    row = runs.get("r-pod")
    assert (row["status"], row["host"], row["pid"]) == ("running", "agent-sma-0", 1)    # given: not ours
    assert registry.owner_alive(row) is None


def test_a_row_without_an_owner_is_left_as_is(runs):
    # Registries written before owners were recorded: nothing to check the run against.
    register(runs, "r-old", host=None, pid=None, pid_started=None)
    assert runs.get("r-old")["status"] == "running"


def test_finished_runs_are_not_checked(runs):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    for status in ("done", "failed", "interrupted"):
        register(runs, f"r-{status}", status=status, host=socket.gethostname(), pid=gone.pid)
        assert runs.get(f"r-{status}")["status"] == status


def test_marking_killed_spares_a_run_taken_over_meanwhile(runs):
    register(runs, "r-taken", host=socket.gethostname(), pid=2 ** 22 + 1)      # no such pid

    def judged_then_taken(row, **kwargs):
        verdict = registry.owner_alive(row, **kwargs)
        register(runs, "r-taken")            # a new owner claims the run between the check and the write
        return verdict

    assert runs.mark_killed(alive=judged_then_taken) == []
    assert stored(runs, "r-taken") == "running" and runs.get("r-taken")["pid"] == os.getpid()


def test_a_heartbeat_from_another_host_says_whether_it_lives(runs):
    register(runs, "r-beating", host="agent-sma-0", pid=7)
    register(runs, "r-silent", host="agent-sma-1", pid=7)
    runs.heartbeat("r-beating", now=pd.Timestamp.now(tz="UTC"))
    runs.heartbeat("r-silent", now=pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=registry.HEARTBEAT_STALE + 60))
    frame = runs.frame().set_index("run_id")
    assert frame.loc["r-beating", "status"] == "running" and frame.loc["r-silent", "status"] == "killed"
    assert frame["heartbeat_at"].dt.tz is not None


def test_owner_alive_reads_a_heartbeat_only_where_the_pid_cannot_be_checked():
    here = socket.gethostname()
    old = NOW - pd.Timedelta(hours=1)
    assert registry.owner_alive({"host": "pod", "pid": 3, "heartbeat_at": NOW}, now=NOW) is True
    assert registry.owner_alive({"host": "pod", "pid": 3, "heartbeat_at": old}, now=NOW) is False
    assert registry.owner_alive({"host": "pod", "pid": 3, "heartbeat_at": pd.NaT}, now=NOW) is None
    assert registry.owner_alive({"host": here, "pid": os.getpid(), "heartbeat_at": old}, now=NOW) is True
    assert registry.owner_alive({"host": here, "pid": float("nan"), "heartbeat_at": None}) is None


def test_an_old_registry_gets_the_owner_columns(tmp_path):
    path = tmp_path / "registry.sqlite"
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, agent_id TEXT, strategy TEXT, mode TEXT, "
                    "status TEXT, started_at TEXT)")
        con.execute("INSERT INTO runs VALUES ('r-before', 'A', 'S', 'backtest', 'running', '2024-01-02T00:00:00+00:00')")
    runs = RunRegistry(path)
    row = runs.get("r-before")
    assert row["status"] == "running" and {"host", "pid", "pid_started", "heartbeat_at"} <= set(row)
    register(runs, "r-after")
    assert runs.get("r-after")["pid"] == os.getpid()
