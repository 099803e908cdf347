"""The API benchmark runs and reports in its documented format (it measures throughput and latency on
a shared machine; this checks only that it works, not how fast)."""

import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_name_value_lines_with_the_headline_last():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "api.py"), "--quick", "--seconds", "1"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines)        # nothing but name=value lines, each name once
    assert lines[-1].startswith("leaderboard_rps_over_target=")
    assert int(values["clients"]) == 50
    for phase in ("leaderboard_closed", "leaderboard_open", "explain_cold_closed", "explain_closed", "explain_open"):
        for figure in ("rps", "p50_ms", "p99_ms"):
            assert math.isfinite(float(values[f"{phase}_{figure}"])), (phase, figure)
        assert int(values[f"{phase}_errors"]) == 0, phase
    assert float(values["explain_uncached_inprocess_ms"]) > 0 and float(values["leaderboard_rps_over_target"]) > 0
