"""Backtest throughput: plain backtrader vs backtrader with analyzers vs fk.backtest with full FMEL.

SMA(10)/SMA(30) crossover on one symbol of synthetic minute bars, side by side in one run:
  a  plain backtrader: PandasData, default Cerebro settings
  b  a + SharpeRatio, DrawDown, TradeAnalyzer and Returns analyzers
  c  fk.backtest: FMEL for every bar written to the embedded store, metrics, result tables
Each measurement runs in a fresh process (so peak RSS is its own); the variants are interleaved and
repeated, and the medians are reported. Prints name=value lines, the headline ratio last.

    python bench/backtest.py            # 1,000,000 bars
    python bench/backtest.py --quick    # 50,000 bars, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = ("a", "b", "c")


def _bars(n: int):
    import farmkit as fk
    days = -(-n // 390)
    frame = fk.data.synthetic("SYN", start="2015-01-02", days=days, seed=11)["SYN"].iloc[:n]
    return frame


def _child(variant: str, n: int) -> dict:
    import backtrader as bt

    import farmkit as fk

    frame = _bars(n)

    class PlainCross(bt.Strategy):
        params = dict(fast=10, slow=30)

        def __init__(self):
            self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

        def next(self):
            if self.cross > 0:
                self.buy()
            elif self.cross < 0 and self.position:
                self.close()

    class FarmCross(fk.Strategy):
        params = dict(fast=10, slow=30)

        def __init__(self):
            self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
            self.cross = bt.ind.CrossOver(self.fast, self.slow)
            self.track(fast=self.fast, slow=self.slow)

        def next(self):
            if self.cross > 0:
                self.buy(reason="fast SMA crossed above slow")
            elif self.cross < 0 and self.position:
                self.close(reason="fast SMA crossed below slow")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant in ("a", "b"):
        cerebro = bt.Cerebro()
        cerebro.adddata(bt.feeds.PandasData(dataname=frame))
        cerebro.broker.setcash(100_000)
        cerebro.broker.setcommission(commission=0.0005)
        cerebro.addstrategy(PlainCross)
        if variant == "b":
            cerebro.addanalyzer(bt.analyzers.SharpeRatio)
            cerebro.addanalyzer(bt.analyzers.DrawDown)
            cerebro.addanalyzer(bt.analyzers.TradeAnalyzer)
            cerebro.addanalyzer(bt.analyzers.Returns)
        cerebro.run()
        value = cerebro.broker.getvalue()
        records = 0
    else:
        with tempfile.TemporaryDirectory() as home:
            # The leaderboard (Redis) is not part of what this compares: FMEL and metrics against analyzers.
            settings = fk.Settings.from_env({"FARM_HOME": home, "FARM_PROGRESS": "off", "FARM_REDIS": "off"})
            res = fk.backtest(FarmCross, {"SYN": frame}, cash=100_000, commission=0.0005, settings=settings)
            value = res.final_value
            records = int(res.store.sql("SELECT count(*) AS n FROM fmel").n.iloc[0])
            assert records == n, (records, n)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "wall": wall, "peak_rss_mb": rss / 1024, "rss_before_mb": rss_before / 1024,
            "final_value": value, "records": records}


def _measure(variant: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--bars", str(n)],
                         capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50,000 bars, 3 rounds (CI size)")
    parser.add_argument("--bars", type=int, default=None, help="bars (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3 quick, 1 full)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.bars or (50_000 if args.quick else 1_000_000)
    if args.child:
        print(json.dumps(_child(args.child, n)))
        return
    rounds = args.rounds or 3
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
            results[variant].append(_measure(variant, n))
            print(f"# round {r + 1}/{rounds} {variant}: {results[variant][-1]['wall']:.2f}s", file=sys.stderr)
    if len({round(x["final_value"], 6) for v in VARIANTS for x in results[v]}) != 1:
        raise SystemExit("variants disagree on the final value: " + str({v: results[v][0]["final_value"] for v in VARIANTS}))
    wall = {v: statistics.median(x["wall"] for x in results[v]) for v in VARIANTS}
    rss = {v: statistics.median(x["peak_rss_mb"] for x in results[v]) for v in VARIANTS}
    print(f"bars={n}")
    print(f"rounds={rounds}")
    print(f"final_value={results['a'][0]['final_value']:.4f}")
    for v in VARIANTS:
        print(f"{v}_wall_s={wall[v]:.3f}")
        print(f"{v}_bars_per_s={n / wall[v]:.0f}")
        print(f"{v}_peak_rss_mb={rss[v]:.0f}")
    print(f"fmel_records_c={results['c'][0]['records']}")
    print(f"rss_ratio_c_over_a={rss['c'] / rss['a']:.3f}")
    print(f"wall_ratio_c_over_a={wall['c'] / wall['a']:.3f}")
    print(f"wall_ratio_c_over_b={wall['c'] / wall['b']:.3f}")


if __name__ == "__main__":
    main()
