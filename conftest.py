# Every test process points FARM_HOME at a throwaway directory, so that a test that forgets the
# farm_home fixture, or a notebook kernel it starts (kernels inherit this environment), never
# touches ./.farm. tests/integration/test_notebooks.py gives each notebook run a FARM_HOME of its own.
#
# Every process the suite starts inherits THEFARM_TEST_SESSION; when the suite ends (after every
# fixture's teardown) none of them may still run: a survivor is listed, killed, and fails the run.
import os
import shutil
import tempfile
import time
import uuid

import pytest

_HOME = tempfile.mkdtemp(prefix="farm-test-home-")
os.environ["FARM_HOME"] = _HOME
os.environ.setdefault("FARM_PROGRESS", "off")
os.environ.setdefault("FARM_FIGURE_IMAGES", "off")   # no Chromium per kernel; tests/integration/test_shared_images.py turns it on
_MARK, _SESSION = "THEFARM_TEST_SESSION", uuid.uuid4().hex
os.environ[_MARK] = _SESSION
_GRACE = 20.0   # seconds the suite's processes get to end after it: embedded Redis keepers need ~4


def _survivors() -> list:
    import psutil
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            # multiprocessing's own helpers of this process (sweeps with workers): they end with it
            if process.ppid() == os.getpid() and "multiprocessing." in " ".join(process.cmdline()):
                continue
            if process.environ().get(_MARK) == _SESSION:
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
