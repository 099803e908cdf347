"""The drift benchmark runs and reports in its documented format (it measures; the bounds are asserted,
seeded, in tests/unit/test_drift.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_drift_benchmark_prints_name_value_lines_with_the_false_alarm_rate_last():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "drift.py"), "--runs", "20", "--horizon", "200"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    lines = out.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert lines[-1].startswith("false_alarm_rate=") and 0 <= float(values["false_alarm_rate"]) <= 1
    assert values["runs"] == "20" and values["horizon"] == "200" and int(values["baseline_fills"]) > 100
    for name in ("slippage_plus_5bps", "slippage_doubled", "win_rate_halved", "trade_rate_doubled"):
        assert 0 <= float(values[f"{name}_detected"]) <= 1
    for key in ("expected_trades_per_day", "expected_turnover_per_day", "limit_slippage_bps"):
        assert float(values[key]) > 0
    assert {"expected_win_rate", "expected_slippage_bps", "expected_pnl_per_trade"} <= set(values)
