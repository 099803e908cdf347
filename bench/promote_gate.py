"""How often the promote gate lets luck through: pure-noise strategies against the gate, and skilled ones.

Each simulated strategy is a family of ``--trials`` trials of ``--days`` daily returns, normal with
standard deviation 1%: the researcher keeps the trial with the best Sharpe ratio, whose DSR is deflated
with the family's number of trials and variance of daily Sharpes (farmkit.research.trials.daily_stats and
deflate, as a sweep does), and whose PBO is CSCV over the family's returns (farmkit.research.overfit.pbo).
Noise strategies have no drift; in a skilled one, one trial (the parameters that capture a real edge)
has a daily mean return of ``--drift`` standard deviations, and the search has to find it among noise. Seeded: the same figures every run.
Prints name=value lines, the headline last:
  skilled_pass_rate          share of skilled strategies the gate passes (should be high)
  noise_pass_rate            share of noise strategies the gate passes (at most 0.05)

    python bench/promote_gate.py                    # 1,000 noise and 200 skilled strategies
    python bench/promote_gate.py --strategies 200   # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from farmkit.research import overfit, trials

SIGMA = 0.01


def families(rng: np.random.Generator, strategies: int, n_trials: int, days: int, drift: float = 0.0) -> np.ndarray:
    """``strategies × days × n_trials`` daily returns: noise, the first trial of each family plus
    ``drift`` standard deviations a day."""
    returns = rng.normal(0.0, SIGMA, size=(strategies, days, n_trials))
    returns[:, :, 0] += drift * SIGMA
    return returns


def verdicts(returns: np.ndarray, *, n_splits: int = 16, **thresholds) -> list[overfit.Verdict]:
    """The gate's verdict on each family's best trial by Sharpe ratio."""
    strategies, days, _ = returns.shape
    mean, std = returns.mean(axis=1), returns.std(axis=1, ddof=1)
    sharpes = mean / std                                             # strategies × trials, per day
    best = sharpes.argmax(axis=1)
    index = pd.date_range("2024-01-01", periods=days + 1, freq="D", tz="UTC")
    pbos = overfit.pbo_many(returns, n_splits=n_splits)
    out = []
    for k in range(strategies):
        equity = pd.Series(np.concatenate([[1.0], np.cumprod(1.0 + returns[k, :, best[k]])]), index=index)
        n_trials, variance = trials.family_stats(sharpes[k])
        dsr = trials.deflate(trials.daily_stats(equity), n_trials, variance)["dsr"]
        out.append(overfit.gate(dsr, float(pbos[k]), **thresholds))
    return out


def pass_rate(returns: np.ndarray, **options) -> float:
    return float(np.mean([v.passed for v in verdicts(returns, **options)]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", type=int, default=1000, help="noise strategies (default 1000)")
    parser.add_argument("--skilled", type=int, default=200, help="skilled strategies (default 200)")
    parser.add_argument("--trials", type=int, default=10, help="trials per family (default 10)")
    parser.add_argument("--days", type=int, default=500, help="daily returns per trial (default 500)")
    parser.add_argument("--drift", type=float, default=0.25, help="the skilled trial's daily mean / sd (default 0.25)")
    parser.add_argument("--splits", type=int, default=16, help="CSCV blocks for PBO (default 16, as a sweep)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    noise = verdicts(families(rng, args.strategies, args.trials, args.days), n_splits=args.splits)
    skilled = verdicts(families(rng, args.skilled, args.trials, args.days, args.drift), n_splits=args.splits)
    wall = time.perf_counter() - started
    refused_by = {"dsr": sum("DSR" in v.reason for v in noise if not v.passed),
                  "pbo": sum("PBO" in v.reason for v in noise if not v.passed)}
    print(f"strategies={args.strategies}")
    print(f"skilled_strategies={args.skilled}")
    print(f"trials={args.trials}")
    print(f"days={args.days}")
    print(f"drift={args.drift}")
    print(f"splits={args.splits}")
    print(f"seed={args.seed}")
    print(f"noise_refused_for_dsr={refused_by['dsr']}")
    print(f"noise_refused_for_pbo={refused_by['pbo']}")
    print(f"wall_s={wall:.3f}")
    print(f"skilled_pass_rate={np.mean([v.passed for v in skilled]):.4f}")
    print(f"noise_pass_rate={np.mean([v.passed for v in noise]):.4f}")


if __name__ == "__main__":
    main()
