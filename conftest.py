# Every test process points FARM_HOME at a throwaway directory, so that a test that forgets the
# farm_home fixture, or a notebook kernel it starts (kernels inherit this environment), never
# touches ./.farm. tests/integration/test_notebooks.py gives each notebook run a FARM_HOME of its own.
import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="farm-test-home-")
os.environ["FARM_HOME"] = _HOME
os.environ.setdefault("FARM_PROGRESS", "off")


def pytest_unconfigure(config):
    shutil.rmtree(_HOME, ignore_errors=True)
