# Every test process points FARM_HOME at a throwaway directory, so that a test that forgets the
# farm_home fixture, or a notebook kernel it starts (kernels inherit this environment), never
# touches ./.farm. tests/integration/test_notebooks.py gives each notebook run a FARM_HOME of its own.
#
# Every process the suite starts inherits THEFARM_TEST_SESSION; when the suite ends (after every
# fixture's teardown) none of them may still run: a survivor is listed, killed, and fails the run.
# A process started with a scrubbed environment (a sandbox, a server that drops its variables) is
# found all the same: on Linux the suite's process is a child subreaper, so whatever it starts stays
# below it in the process tree even after its parent is gone.
import ctypes
import os
import sys
import shutil
import tempfile
import time
import uuid

import pytest

_HOME = tempfile.mkdtemp(prefix="farm-test-home-")
os.environ["FARM_HOME"] = _HOME
os.environ.setdefault("FARM_PROGRESS", "off")
_MARK, _SESSION = "THEFARM_TEST_SESSION", uuid.uuid4().hex
os.environ[_MARK] = _SESSION
_GRACE = 20.0   # seconds the suite's processes get to end after it: embedded Redis keepers need ~4
_PR_SET_CHILD_SUBREAPER = 36
_SUBREAPER = sys.platform.startswith("linux") and \
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _survivors() -> list:
    import psutil
    below = set()
    if _SUBREAPER:
        try:
            below = {p.pid for p in psutil.Process().children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(process.cmdline())
            # multiprocessing's own helpers of this process (sweeps with workers): they end with it;
            # and pytest-xdist's workers, which run their own check
            if process.ppid() == os.getpid() and ("multiprocessing." in command or "execnet" in command):
                continue
            if process.pid in below or process.environ().get(_MARK) == _SESSION:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    from farmkit import embedded_redis

    embedded_redis.release_all()
    deadline = time.monotonic() + _GRACE
    while (left := _survivors()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    lines = []
    for process in left:
        try:
            lines.append(f"  pid {process.pid}: {' '.join(process.cmdline())[:200]}")
            process.kill()
        except Exception:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"{len(left)} process(es) started by the tests still ran {_GRACE:.0f} s after the suite "
               "ended (now killed):\n" + "\n".join(lines))
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    shutil.rmtree(_HOME, ignore_errors=True)
