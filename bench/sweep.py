"""Sweep throughput: a serial loop vs fk.sweep vs notebook sweeps under papermill.

A grid of SMA crossovers (fast × slow) on one symbol of synthetic minute bars, side by side in one run:
  serial  a loop of fk.backtest over the grid, in one process
  sweep   fk.sweep(workers=2): the same backtests in a fork process pool
  warm    notebooks.sweep(workers=2) on a notebook that builds the same bars and runs the same
          strategy: one papermill-parameterized notebook per trial, each worker reusing one kernel
  naive   one cold papermill run (a new kernel) per trial, two at a time: what warm replaces;
          measured on the small grid only, with sweep and warm on that grid for comparison
Each measurement runs in a fresh process; peak RSS is the largest sum over that process and all its
children (pool workers, kernels), sampled every 50 ms. Variants are interleaved when repeated, and
medians reported. Prints name=value lines, the headline ratio last:
  speedup_sweep_over_serial  wall(serial) / wall(sweep)
  papermill_overhead_ratio   (wall(warm) − wall(sweep)) / wall(sweep): the cost of running each trial
                             as a notebook, relative to running it in-process, on the full grid

    python bench/sweep.py            # 200,000 bars, 16 trials (4 on the small grid)
    python bench/sweep.py --quick    # 20,000 bars, 4 trials (2 on the small grid), for CI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FASTS = [5, 10, 15, 20]
SLOWS = [30, 40, 50, 60]
WORKERS = 2
SEED = 11

# The strategy and the bars, as source: the in-process variants exec it, the notebook carries it.
STRATEGY = '''\
class BenchCross(fk.Strategy):
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
'''
BARS = 'bars = fk.data.synthetic("SYN", start="2015-01-02", days=-(-n_bars // 390), seed={seed})["SYN"].iloc[:n_bars]'
RUN = 'res = fk.backtest(BenchCross, {"SYN": bars}, cash=100_000, commission=0.0005, fast=fast, slow=slow)'


def grid(trials: int) -> dict[str, list[int]]:
    """A fast × slow grid of ``trials`` points (a power of two up to 16)."""
    if trials not in (1, 2, 4, 8, 16):
        raise SystemExit(f"--trials must be 1, 2, 4, 8 or 16, got {trials}")
    side = 2 ** math.ceil(math.log2(trials) / 2)
    return {"fast": FASTS[:side], "slow": SLOWS[:trials // side]}


def _notebook(directory: Path, n_bars: int) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(f"n_bars = {n_bars}\nfast = 10\nslow = 30"),
                nbformat.v4.new_code_cell("import backtrader as bt\nimport farmkit as fk\n\n" + BARS.format(seed=SEED)),
                nbformat.v4.new_code_cell(STRATEGY),
                nbformat.v4.new_code_cell(RUN + "\nres.metrics['final_value']")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = directory / "bench_cross.ipynb"
    nbformat.write(nb, path)
    return path


class _PeakRss:
    """Largest RSS summed over this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.05):
        import psutil
        self.me, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil
        while True:
            total = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _cold_trial(path: str, point: dict) -> dict:
    from farmkit.research import notebooks
    result = notebooks.run(path, point, progress=False)
    return {**point, "status": result.status, **(result.run.get("metrics") or {})}


def _child(variant: str, n_bars: int, trials: int, home: Path) -> dict:
    import backtrader as bt

    import farmkit as fk
    from farmkit.research import notebooks
    from farmkit.fmel.stores import open_store

    points = grid(trials)
    os.environ.update(FARM_HOME=str(home / "farm"), FARM_PROGRESS="off", FARM_REDIS="off")  # leaderboard: not measured here
    settings = fk.Settings.from_env()
    scope = {"bt": bt, "fk": fk, "n_bars": n_bars}
    exec(BARS.format(seed=SEED), scope)
    exec(STRATEGY, scope)
    strategy = scope["BenchCross"]
    strategy.__module__ = "__main__"  # fk.sweep forks: workers inherit it from the parent

    with _PeakRss() as rss:
        start = time.perf_counter()
        if variant == "serial":
            rows = []
            for fast in points["fast"]:
                for slow in points["slow"]:
                    res = fk.backtest(strategy, {"SYN": scope["bars"]}, cash=100_000, commission=0.0005,
                                      settings=settings, progress="off", fast=fast, slow=slow)
                    rows.append({"fast": fast, "slow": slow, "status": "done", **res.metrics})
        elif variant == "sweep":
            res = fk.sweep(strategy, {"SYN": scope["bars"]}, points, workers=WORKERS, cash=100_000,
                           commission=0.0005, settings=settings, progress=False)
            rows = res.table.to_dict("records")
        elif variant == "warm":
            _, table = notebooks.sweep(_notebook(home, n_bars), points, workers=WORKERS, settings=settings,
                                       progress=False)
            rows = table.to_dict("records")
        else:  # naive: the previous notebooks.sweep, one cold papermill run per trial in a fork pool
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            path = str(_notebook(home, n_bars))
            # Create the registry before forking: two processes creating it at once can hit
            # "database is locked" on its journal-mode switch.
            open_store(settings.store)
            todo = [{"fast": f, "slow": s} for f in points["fast"] for s in points["slow"]]
            with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
                rows = list(pool.map(_cold_trial, [path] * len(todo), todo))
        wall = time.perf_counter() - start
    failed = [r for r in rows if r["status"] != "done"]
    if failed or len(rows) != trials:
        raise SystemExit(f"{variant}: {len(failed)} of {len(rows)} trials failed: {failed[:1]}")
    return {"variant": variant, "trials": trials, "wall": wall, "peak_rss_mb": rss.peak / 2**20,
            "final_values": {f"{r['fast']},{r['slow']}": r["final_value"] for r in rows}}


def _child_in_temp_home(variant: str, n_bars: int, trials: int) -> dict:
    import shutil
    home = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        return _child(variant, n_bars, trials, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # 16 runs of FMEL and tearsheets: not worth keeping


def _measure(variant: str, trials: int, n_bars: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--bars", str(n_bars),
                          "--trials", str(trials)],
                         capture_output=True, text=True, check=False, env={**env, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} ({trials} trials) failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 bars, 4 trials (CI size)")
    parser.add_argument("--bars", type=int, default=None, help="bars (default 200,000; 20,000 with --quick)")
    parser.add_argument("--trials", type=int, default=None, help="trials on the full grid (default 16; 4 quick)")
    parser.add_argument("--small-trials", type=int, default=None,
                        help="trials on the small grid (default a quarter of --trials, at least 1)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--child", choices=("serial", "sweep", "warm", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_bars = args.bars or (20_000 if args.quick else 200_000)
    trials = args.trials or (4 if args.quick else 16)
    if args.child:
        print(json.dumps(_child_in_temp_home(args.child, n_bars, trials)))
        return
    small = args.small_trials or max(1, trials // 4 if not args.quick else trials // 2)
    grid(trials), grid(small)  # reject bad sizes before measuring
    plan = [("serial", trials), ("sweep", trials), ("warm", trials),
            ("sweep", small), ("warm", small), ("naive", small)]
    results: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    for r in range(args.rounds):
        for key in plan if r % 2 == 0 else reversed(plan):
            results[key].append(_measure(*key, n_bars))
            print(f"# round {r + 1}/{args.rounds} {key[0]} ({key[1]} trials): "
                  f"{results[key][-1]['wall']:.2f}s", file=sys.stderr)
    finals = {json.dumps({k: round(v, 6) for k, v in x["final_values"].items()}, sort_keys=True)
              for (_, n), xs in results.items() if n == trials for x in xs}
    if len(finals) != 1:
        raise SystemExit(f"variants disagree on final values: {finals}")
    wall = {key: statistics.median(x["wall"] for x in xs) for key, xs in results.items()}
    rss = {key: statistics.median(x["peak_rss_mb"] for x in xs) for key, xs in results.items()}

    def per_trial_overhead(variant: str, n: int) -> float:
        # Extra worker-seconds per trial over the in-process sweep on the same grid.
        return (wall[variant, n] - wall["sweep", n]) * min(WORKERS, n) / n

    print(f"bars={n_bars}")
    print(f"trials={trials}")
    print(f"small_trials={small}")
    print(f"workers={WORKERS}")
    print(f"rounds={args.rounds}")
    print(f"cpus={os.cpu_count()}")
    for variant, n in plan:
        suffix = "" if n == trials else "_small"
        print(f"{variant}{suffix}_wall_s={wall[variant, n]:.3f}")
        print(f"{variant}{suffix}_peak_rss_mb={rss[variant, n]:.0f}")
    print(f"serial_per_trial_s={wall['serial', trials] / trials:.3f}")
    print(f"sweep_rss_growth_full_over_small={rss['sweep', trials] / rss['sweep', small]:.3f}")
    print(f"warm_small_overhead_per_trial_s={per_trial_overhead('warm', small):.3f}")
    print(f"naive_small_overhead_per_trial_s={per_trial_overhead('naive', small):.3f}")
    print(f"naive_small_overhead_ratio={(wall['naive', small] - wall['sweep', small]) / wall['sweep', small]:.3f}")
    print(f"warm_small_overhead_ratio={(wall['warm', small] - wall['sweep', small]) / wall['sweep', small]:.3f}")
    print(f"papermill_overhead_per_trial_s={per_trial_overhead('warm', trials):.3f}")
    print(f"speedup_sweep_over_serial={wall['serial', trials] / wall['sweep', trials]:.3f}")
    print(f"papermill_overhead_ratio={(wall['warm', trials] - wall['sweep', trials]) / wall['sweep', trials]:.3f}")


if __name__ == "__main__":
    main()
