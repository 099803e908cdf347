"""The promote gate lets at most 5% of pure-noise searches through, and a genuine edge passes.

Runs the simulation of bench/promote_gate.py (seeded) at a size that takes a few seconds: CSCV with 8
blocks instead of the sweep's 16 keeps it fast (70 splits per family instead of 12,870).
"""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("promote_gate", Path(__file__).parents[2] / "bench" / "promote_gate.py")
promote_gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(promote_gate)


def test_at_most_five_percent_of_a_thousand_noise_strategies_pass_the_gate():
    returns = promote_gate.families(np.random.default_rng(2015), 1000, 10, 250)
    rate = promote_gate.pass_rate(returns, n_splits=8)
    print(f"noise pass rate: {rate:.3f}")
    assert rate <= 0.05


def test_a_strategy_with_a_real_edge_among_its_trials_passes():
    returns = promote_gate.families(np.random.default_rng(2014), 40, 10, 500, drift=0.25)
    verdicts = promote_gate.verdicts(returns, n_splits=8)
    rate = np.mean([v.passed for v in verdicts])
    print(f"skilled pass rate: {rate:.3f}")
    assert rate >= 0.8


def test_the_benchmark_prints_name_value_lines_with_the_noise_pass_rate_last(capsys):
    promote_gate.main(["--strategies", "40", "--skilled", "10", "--splits", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines)  # nothing but name=value lines
    assert lines[-1].startswith("noise_pass_rate=") and lines[-2].startswith("skilled_pass_rate=")
    assert values["strategies"] == "40" and values["splits"] == "8"
    assert 0 <= float(values["noise_pass_rate"]) <= 1 and float(values["wall_s"]) > 0
