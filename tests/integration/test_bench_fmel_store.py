"""bench/fmel_store.py runs and reports in its documented format (it measures; this only checks it works)."""

import math
import subprocess
import sys
from pathlib import Path

from tests.bigquery_emulator import find_emulator
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]


def test_fmel_store_benchmark_prints_name_value_lines_with_the_headline_ratio_last():
    program, reason = find_emulator()
    need(program is not None, reason)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "fmel_store.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, check=True, cwd=ROOT).stdout
    lines = out.strip().splitlines()
    assert all("=" in line and " " not in line.split("=", 1)[0] for line in lines), lines
    values = dict(line.split("=", 1) for line in lines)
    assert lines[-1].startswith("worst_target_ratio=")
    assert values["quick"] == "1"
    assert int(values["embedded_write_records"]) == 100_000 and int(values["bigquery_write_records"]) == 2_000
    assert int(values["bigquery_write_inserts"]) >= 4            # 2,000 records in requests of <= 500
    assert int(values["explain_store_records"]) == 20_000
    for key in ("embedded_write_records_per_s", "bigquery_write_records_per_s", "next_stall_max_ms",
                "next_stall_max_ms_instant_sink", "next_stall_max_ms_sink_on_strategy_thread", "explain_p50_ms",
                "explain_p99_ms", "leaderboard_top100_p99_ms", "embedded_write_target_ratio", "next_stall_target_ratio",
                "explain_target_ratio", "leaderboard_target_ratio"):
        assert math.isfinite(float(values[key])) and float(values[key]) > 0, key
    ratios = [float(v) for k, v in values.items() if k.endswith("_target_ratio") and k != "worst_target_ratio"]
    assert abs(float(values["worst_target_ratio"]) - min(ratios)) <= 0.001
    # the slow sink on the strategy thread stalls next() by at least the sink's own delay
    assert float(values["next_stall_max_ms_sink_on_strategy_thread"]) >= float(values["stall_sink_delay_ms"])
