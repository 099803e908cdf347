"""The benchmark runs and reports in its documented format (it measures; this only checks it works)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_backtest_benchmark_prints_name_value_lines_with_the_headline_ratio_last():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "backtest.py"), "--bars", "3000", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    lines = out.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert lines[-1].startswith("wall_ratio_c_over_b=")
    assert values["bars"] == "3000" and values["fmel_records_c"] == "3000"
    for key in ("a_wall_s", "b_wall_s", "c_wall_s", "c_peak_rss_mb", "rss_ratio_c_over_a", "wall_ratio_c_over_a"):
        assert float(values[key]) > 0
