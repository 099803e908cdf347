"""The `farm` command works on the core install: the optional extras (the API's FastAPI, alpaca-py,
the Google Cloud clients) are needed only by the commands that use them, and those say so."""

import os
import subprocess
import sys

BLOCK = """
import sys
for name in ("fastapi", "uvicorn", "alpaca", "google.cloud.pubsub_v1", "google.cloud.bigquery", "kubernetes"):
    sys.modules[name] = None      # as if the extra were not installed
from farmkit.cli import main
"""


def _run(code: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(home), FARM_REDIS="off")
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120, env=env)


def test_the_farm_command_needs_no_extra_to_start(tmp_path):
    done = _run("sys.exit(main(['runs']))", tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run("main(['--help'])", tmp_path)
    assert "serve" in done.stdout and "ingest" in done.stdout and "deploy" in done.stdout


def test_farm_serve_without_the_api_extra_says_what_to_install(tmp_path):
    done = _run("sys.exit(main(['serve']))", tmp_path)
    assert done.returncode == 1 and "pip install" in done.stderr and "[api]" in done.stderr
