"""The sweep benchmark runs and reports in its documented format (it measures; this only checks it works)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_benchmark_prints_name_value_lines_with_the_headline_ratio_last():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--bars", "2000", "--trials", "2",
                          "--small-trials", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    lines = out.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines)  # nothing but name=value lines
    assert lines[-1].startswith("papermill_overhead_ratio=")
    assert lines[-2].startswith("speedup_sweep_over_serial=")
    assert values["bars"] == "2000" and values["trials"] == "2" and values["small_trials"] == "1"
    for variant in ("serial", "sweep", "warm", "sweep_small", "warm_small", "naive_small"):
        assert float(values[f"{variant}_wall_s"]) > 0 and float(values[f"{variant}_peak_rss_mb"]) > 0
    for key in ("sweep_rss_growth_full_over_small", "papermill_overhead_per_trial_s", "naive_small_overhead_ratio",
                "warm_small_overhead_ratio", "speedup_sweep_over_serial", "papermill_overhead_ratio"):
        float(values[key])  # a number, whatever its sign on a busy machine
