"""bench/ingest.py --quick runs and prints its figures as name=value lines, headline last."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import need
from tests.pubsub_emulator import find_emulator_jar

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ingest_quick_output_format():
    jar, reason = find_emulator_jar()
    need(jar is not None, reason)
    done = subprocess.run([sys.executable, "bench/ingest.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z_0-9]+=[-0-9.]+", line) for line in lines), lines
    figures = dict(line.split("=") for line in lines)
    for name in ("bars", "ingest_s", "ingest_msgs_per_s", "raw_s", "raw_ordered_s", "lost"):
        assert name in figures
    assert figures["lost"] == "0" and figures["ingest_exit"] == "0"
    assert lines[-1].startswith("ratio_ingest_to_raw=")
