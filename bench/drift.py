"""Drift alarms: false-alarm rate on clean paper runs, detection delay on injected drift.

The baseline is the backtest of the bundled agent (``agents/sma-crossover``: its notebook's strategy
on its promotion data, ``fk.data.synthetic`` with the manifest's parameters), read back from its
FMEL as the paper session reads it. Synthetic bars open at the previous close, so there a market
order fills exactly at its decision bar's close: slippage is 0 on every fill, a stream any slippage at
all flags at the first fill. So that slippage has a spread to drift in, each bar's open is moved by
a random gap (``--gap-bps``, standard deviation; high and low widened to hold it) before the backtest. Paper runs are then drawn from that baseline (bootstrap, see
``farmkit.live.drift.simulate``), ``--horizon`` observations per stream, each through the
:class:`~farmkit.live.drift.DriftMonitor` the paper session uses:

  clean                 drawn from the baseline as it is: any alarm is a false one
  slippage_plus_5bps    every fill 5 bps worse against the decision bar's close
  slippage_doubled      every fill's slippage twice the baseline's (x 2, adverse and favourable alike)
                        plus its mean absolute slippage again, adverse: what a broker charging the spread twice does
  win_rate_halved       each winning round trip, with probability 1/2, replaced by a losing one of the baseline
  trade_rate_doubled    the bars between fills halved

``*_detected``: share of drifted runs flagged within the horizon; ``*_delay_median``/``_p90``: observations
(fills, or round trips for the win rate) of the drifted stream up to the alarm, over the flagged runs.
Prints name=value lines, the headline (the measured false-alarm rate, stated: at most ``alpha``) last.

    python bench/drift.py --runs 2000 --horizon 500
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gapped(bars, bps: float, seed: int = 0):
    """``bars`` with every open moved from the previous close by a normal gap of ``bps`` basis points."""
    import farmkit as fk

    rng = np.random.default_rng(seed)
    out = {}
    for symbol, frame in bars.items():
        frame = frame.copy()
        frame["open"] = frame["open"] * np.exp(rng.normal(0.0, bps / 1e4, len(frame)))
        frame["high"] = frame[["open", "high"]].max(axis=1)
        frame["low"] = frame[["open", "low"]].min(axis=1)
        out[symbol] = frame
    return fk.Bars(out)


def agent_baseline(home: Path, gap_bps: float = 3.0):
    """The bundled agent's backtest on its promotion data, as a :class:`Baseline` read from FMEL."""
    import yaml

    import farmkit as fk
    from farmkit.fmel.stores import open_store
    from farmkit.live.drift import Baseline
    from farmkit.research.parity import load_strategy

    agent = ROOT / "agents" / "sma-crossover"
    manifest = yaml.safe_load((agent / "agent.yaml").read_text())
    defaults = {p["name"]: p["default"] for p in manifest["parameters"]}
    strategy = load_strategy(str(agent))
    names = set(strategy.params._getkeys())
    bars = fk.data.synthetic(defaults["symbols"], start=defaults["start"], days=defaults["days"], freq="1min",
                             seed=defaults["seed"])
    bars = gapped(bars, gap_bps, seed=defaults["seed"]) if gap_bps else bars
    settings = fk.Settings.from_env({"FARM_HOME": str(home), "FARM_REDIS": "off", "FARM_PROGRESS": "off"})
    res = fk.backtest(strategy, bars, cash=defaults["cash"], commission=defaults["commission"], settings=settings,
                      params={k: v for k, v in defaults.items() if k in names})
    return Baseline.from_run(open_store(settings.store), res.run_id)


def drifts(samples) -> dict:
    losers = samples["trade_pnl"][samples["trade_win"] == 0]
    mean_abs = float(np.mean(np.abs(samples["slippage_bps"])))

    def slippage_plus_5bps(draws, rng):
        return {**draws, "slippage_bps": draws["slippage_bps"] + 5.0}

    def slippage_doubled(draws, rng):
        return {**draws, "slippage_bps": 2.0 * draws["slippage_bps"] + mean_abs}

    def win_rate_halved(draws, rng):
        flip = (draws["trade_win"] == 1) & (rng.random(len(draws["trade_win"])) < 0.5)
        pnl = draws["trade_pnl"].copy()
        pnl[flip] = losers[rng.integers(0, len(losers), int(flip.sum()))]
        return {**draws, "trade_pnl": pnl, "trade_win": np.where(flip, 0.0, draws["trade_win"])}

    def trade_rate_doubled(draws, rng):
        return {**draws, "fill_gap_bars": np.maximum(1.0, np.round(draws["fill_gap_bars"] / 2))}

    return {f.__name__: f for f in (slippage_plus_5bps, slippage_doubled, win_rate_halved, trade_rate_doubled)}


def measure(monitor, *, runs: int, seed: int) -> dict[str, float]:
    """The figures the bench prints (a deterministic function of the monitor, ``runs`` and ``seed``)."""
    from farmkit.live.drift import simulate

    out: dict[str, float] = {}
    for i, (name, drift) in enumerate(drifts(monitor.baseline.samples).items()):
        alarms = simulate(monitor, runs=runs, drift=drift, seed=seed + 1 + i)
        delays = [a.observations for a in alarms if a is not None]
        out[f"{name}_detected"] = len(delays) / runs
        out[f"{name}_delay_median"] = float(np.median(delays)) if delays else float("nan")
        out[f"{name}_delay_p90"] = float(np.percentile(delays, 90)) if delays else float("nan")
    clean = simulate(monitor, runs=runs, seed=seed)
    flagged = [a for a in clean if a is not None]
    for stream in monitor.watched:
        out[f"false_alarms_{stream}"] = sum(a.stream == stream for a in flagged)
    out["false_alarm_rate"] = len(flagged) / runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="simulated paper runs per scenario (default 2000)")
    parser.add_argument("--horizon", type=int, default=500, help="observations per stream and run (default 500)")
    parser.add_argument("--alpha", type=float, default=0.01, help="stated false-alarm rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap-bps", type=float, default=3.0,
                        help="sd of the gap between a bar's open and the previous close (default 3; 0: none)")
    args = parser.parse_args()
    os.environ.setdefault("FARM_PROGRESS", "off")
    from farmkit.live.drift import DriftMonitor

    with tempfile.TemporaryDirectory() as home:
        baseline = agent_baseline(Path(home), args.gap_bps)
    started = time.perf_counter()
    monitor = DriftMonitor(baseline, alpha=args.alpha, horizon=args.horizon)
    calibration = time.perf_counter() - started
    expected = baseline.expected()
    lines = {"baseline_fills": baseline.fills, "baseline_trades": len(baseline.samples["trade_pnl"]),
             **{f"expected_{k}": v for k, v in expected.items()}, "streams_watched": len(monitor.watched),
             **{f"limit_{n}": s.limit for n, s in sorted(monitor.streams.items())},
             "calibration_s": calibration, "gap_bps": args.gap_bps, "runs": args.runs, "horizon": args.horizon, "alpha": args.alpha}
    started = time.perf_counter()
    figures = measure(monitor, runs=args.runs, seed=args.seed)
    lines["simulation_s"] = time.perf_counter() - started
    lines.update(figures)
    headline = lines.pop("false_alarm_rate")
    for name, value in lines.items():
        print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    print(f"false_alarm_rate={headline:.4g}")


if __name__ == "__main__":
    main()
