# The notebooks under notebooks/ run under nbval in their own kernels, which inherit this process's
# environment: point them at a throwaway FARM_HOME so test runs never touch ./.farm.
import os
import tempfile

os.environ["FARM_HOME"] = tempfile.mkdtemp(prefix="farm-test-home-")
os.environ.setdefault("FARM_PROGRESS", "off")
