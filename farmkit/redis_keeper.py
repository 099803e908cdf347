"""The keeper of an embedded redis-server: stops it once no process that used it is alive.

The embedded Redis (``farmkit.embedded_redis``) is shared by the processes that use it, and the last
one to let go stops it. A process that never lets go (killed with SIGKILL, a kernel torn down, a
service stopped by a signal it does not handle) would leave the server running for ever, and once
its folder is deleted (a test's temporary ``FARM_HOME``), Redis cannot save its final snapshot and
refuses to stop on SHUTDOWN or SIGTERM. So each server started gets a keeper: a small process that
checks ``PATH.users`` every second, under ``PATH.lock`` like every process attaching or leaving, and

- when no listed process has been alive for ``IDLE_ROUNDS`` checks, stops the server with SIGTERM
  (Redis saves the RDB and exits; SIGKILL after ``STOP_TIMEOUT`` seconds if it does not);
- when the server's folder is gone, kills it at once: there is nothing left to save to;
- ends when the server has ended, whoever stopped it.

It runs as a script (``python redis_keeper.py PATH PID``), importing nothing of farmkit, so that it
starts in a fraction of a second and holds a few MB; ``farmkit.embedded_redis`` imports its
``live_users`` and ``file_lock`` so both sides read the users file the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

INTERVAL = 1.0        # seconds between checks
IDLE_ROUNDS = 3       # checks in a row without a live user before the server is stopped
STOP_TIMEOUT = 10.0   # seconds Redis gets to save and exit on SIGTERM


def started(pid: int) -> float:
    """When ``pid`` started; raises psutil.NoSuchProcess for a process that has ended (or is a zombie)."""
    import psutil
    process = psutil.Process(pid)
    if process.status() == psutil.STATUS_ZOMBIE:
        raise psutil.NoSuchProcess(pid)
    return round(process.create_time(), 2)


def live_users(path: Path) -> set[tuple[int, float]]:
    """The processes listed in ``PATH.users`` that still run (a process killed with SIGKILL never
    removed itself; a pid the system reused for another process does not count)."""
    import psutil
    users = set()
    try:
        lines = Path(str(path) + ".users").read_text().split()
    except FileNotFoundError:
        return users
    for pid, when in zip(lines[::2], lines[1::2]):
        try:
            if abs(started(int(pid)) - float(when)) < 0.05:
                users.add((int(pid), float(when)))
        except psutil.AccessDenied:   # another user's process that still runs: it holds the server
            users.add((int(pid), float(when)))
        except (psutil.NoSuchProcess, ValueError):
            pass
    return users


@contextmanager
def file_lock(path: Path, timeout: float | None = None):
    """``path`` locked (flock) for the block; yields False instead when ``timeout`` passes first
    (None: wait as long as it takes)."""
    import fcntl   # here, not at the top: farmkit.embedded_redis imports this module on every platform

    with open(path, "a") as handle:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)  # a poll interval while another process starts or stops the server
        yield True


def _alive(pid: int) -> bool:
    try:
        started(pid)
        return True
    except Exception:
        return False


def _stop(pid: int, *, save: bool) -> None:
    try:
        os.kill(pid, signal.SIGTERM if save else signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def keep(path: Path, pid: int, *, interval: float = INTERVAL, idle_rounds: int = IDLE_ROUNDS) -> str:
    """Watch the server ``pid`` serving ``path`` until it ends; returns why it ended."""
    idle = 0
    lock = path.with_name(path.name + ".lock")
    while _alive(pid):
        time.sleep(interval)
        if not path.parent.is_dir():
            _stop(pid, save=False)
            return "folder gone"
        try:
            with file_lock(lock, timeout=interval) as held:
                if not held:
                    continue          # a process is attaching or leaving: look again next round
                idle = 0 if live_users(path) else idle + 1
                if idle >= idle_rounds and _alive(pid):
                    _stop(pid, save=True)
                    return "no users"
        except FileNotFoundError:   # the folder went while we looked
            continue
    return "server ended"


def main(argv: list[str]) -> int:
    path, pid = Path(argv[0]), int(argv[1])
    # Detach: the process that started the keeper waits for this first fork only, so no zombie is
    # left behind it, and the keeper lives on in a session of its own.
    if os.fork():
        os._exit(0)
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C in the terminal that started it
    keep(path, pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
