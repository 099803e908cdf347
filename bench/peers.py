"""Peers: fk.backtest vs plain backtrader vs backtesting.py vs vectorbt, on 1 to 200 symbols.

SMA(10)/SMA(30) crossover per symbol (buy 100 shares when fast crosses above slow and the symbol is
flat, close when it crosses below, no commission) on the same synthetic minute bars
(fk.data.synthetic, 20 trading days = 7,800 bars per symbol, seed 7), side by side in one run:
  fk    fk.backtest with full FMEL: every bar written to the embedded store (temp FARM_HOME), fast
        and slow tracked per symbol, metrics, result tables; FARM_REDIS, FARM_PROGRESS and
        FARM_FIGURE_IMAGES off
  bt    plain backtrader: one Cerebro with a PandasData feed per symbol, SharpeRatio, DrawDown,
        TradeAnalyzer and Returns analyzers; default Cerebro settings, so its standard observers
        (Broker, BuySell per feed, Trades) run too (--bt-no-stdstats: off, as fk.backtest has them)
  btpy  backtesting.py: one Backtest per symbol in a loop (it is single-asset), equity summed
  vbt   vectorbt: one Portfolio.from_signals over all symbols at once; numba compiles in every
        measured process (NUMBA_CACHE_DIR is a fresh empty directory), as a new session would;
        vbt_N_warm_wall_s is the same run again in that process, compiled
Cash is 100,000 per symbol (fk/bt: 100,000 x symbols in one broker; btpy: 100,000 per Backtest;
vbt: 100,000 per column), so no order is refused. The bars are generated once in this process and
written to one Parquet file per size; every measured process reads it.

backtesting.py and vectorbt are not in the project's environment: the first run makes a virtualenv
of their own, bench/.venv-peers, and pip installs backtesting, vectorbt, pandas, numpy and pyarrow
into it (once; a stamp file records what was installed, --reinstall-peers redoes it). An engine
whose install or import fails is reported as ENGINE_status=unavailable (reason), and the others run.

Each measurement runs in a fresh process: ENGINE_N_wall_s is the backtest itself (bars in memory,
result computed), ENGINE_N_first_result_s the process start to the result (interpreter, imports,
reading the Parquet file, numba compile for vbt), ENGINE_N_rss_mb its own peak RSS (VmHWM, or its
largest child's, for fk.sweep's workers); beside them its final portfolio value and closed trades.
Engines are interleaved and repeated (--rounds), medians are reported. The run fails (exit 1) if
fk and bt disagree on the final value (rel 1e-9) or the number of closed trades; btpy and vbt fill
differently (next open for btpy, the signal bar's close for vbt; their crossover tests treat ties
their own way), so their figures are printed beside, not checked.

With --sweep, a sweep row too: 16 trials (fast 5,10,15,20 x slow 30,40,50,60) on 10 symbols,
fk.sweep(workers=2) vs one vectorbt broadcast over the same grid (cold: fresh process, compile).

Prints name=value lines; the throughput ratio ENGINE over ENGINE is bars/s of the first over the
second (so fk_vs_btpy_throughput_50 > 1 means farmkit is faster); the headline ratio is last.

    python bench/peers.py                      # sizes 1,10,50; 3 rounds
    python bench/peers.py --quick              # sizes 1,10; 1 round
    python bench/peers.py --sizes 1,10,50,200  # 200 symbols too (1.56M bars)
    python bench/peers.py --sweep              # add the 16-trial sweep row
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
from pathlib import Path

ENGINES = ("fk", "bt", "btpy", "vbt")
PEER_ENGINES = {"btpy": "backtesting", "vbt": "vectorbt"}
PEER_BASE = ("pandas", "numpy", "pyarrow")
PEERS_VENV = Path(__file__).resolve().parent / ".venv-peers"
STAMP = PEERS_VENV / ".peers-installed.json"
DAYS, SEED, START = 20, 7, "2024-01-02"
FAST, SLOW, SIZE = 10, 30, 100
CASH_PER_SYMBOL = 100_000.0
GRID = {"fast": [5, 10, 15, 20], "slow": [30, 40, 50, 60]}
SWEEP_SYMBOLS = 10
FARM_ENV = {"FARM_REDIS": "off", "FARM_PROGRESS": "off", "FARM_FIGURE_IMAGES": "off"}


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- children

def _rss_mb() -> float:
    """The process's own peak RSS (VmHWM: ru_maxrss would carry the launching process's peak over
    the exec), or its largest child's if bigger (fk.sweep's forked trial workers)."""
    own = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                own = float(line.split()[1])
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def _read(path: str):
    """The bars of one size: a dict symbol -> DataFrame (naive UTC index, open/high/low/close/volume)."""
    import pandas as pd
    long = pd.read_parquet(path)
    return {sym: frame.drop(columns="symbol") for sym, frame in long.groupby("symbol", sort=False)}


def _child_fk(frames: dict, sweep: bool) -> dict:
    import backtrader as bt

    import farmkit as fk

    class FarmCross(fk.Strategy):
        params = dict(fast=FAST, slow=SLOW)

        def __init__(self):
            self.crosses = []
            for d in self.datas:
                fast, slow = bt.ind.SMA(d.close, period=self.p.fast), bt.ind.SMA(d.close, period=self.p.slow)
                self.crosses.append(bt.ind.CrossOver(fast, slow))
                self.track(**{f"{d._name}_fast": fast, f"{d._name}_slow": slow})

        def next(self):
            for d, cross in zip(self.datas, self.crosses):
                if cross[0] > 0 and not self.getposition(d).size:
                    self.buy(data=d, size=SIZE, reason="fast SMA crossed above slow")
                elif cross[0] < 0 and self.getposition(d).size:
                    self.close(data=d, reason="fast SMA crossed below slow")

    # fk.data's own frames carry a UTC index; the Parquet file holds naive UTC.
    bars = {sym: f.tz_localize("UTC") for sym, f in frames.items()}
    cash = CASH_PER_SYMBOL * len(bars)
    with tempfile.TemporaryDirectory() as home:
        settings = fk.Settings.from_env({**FARM_ENV, "FARM_HOME": home})
        start = time.perf_counter()
        if sweep:
            res = fk.sweep(FarmCross, bars, grid=GRID, workers=2, cash=cash, commission=0.0,
                           settings=settings, progress=False)
            wall = time.perf_counter() - start
            table = res.table
            done = int((table["status"] == "done").sum()) if "status" in table else len(table)
            return {"wall": wall, "trials": len(table), "done": done}
        res = fk.backtest(FarmCross, bars, cash=cash, commission=0.0, settings=settings)
        value, trades = float(res.final_value), len(res.trades)
        wall = time.perf_counter() - start
    return {"wall": wall, "final_value": value, "trades": trades}


def _child_bt(frames: dict, stdstats: bool = True) -> dict:
    import backtrader as bt

    class PlainCross(bt.Strategy):
        params = dict(fast=FAST, slow=SLOW)

        def __init__(self):
            self.crosses = [bt.ind.CrossOver(bt.ind.SMA(d.close, period=self.p.fast),
                                             bt.ind.SMA(d.close, period=self.p.slow)) for d in self.datas]

        def next(self):
            for d, cross in zip(self.datas, self.crosses):
                if cross[0] > 0 and not self.getposition(d).size:
                    self.buy(data=d, size=SIZE)
                elif cross[0] < 0 and self.getposition(d).size:
                    self.close(data=d)

    start = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=stdstats)
    for sym, frame in frames.items():
        cerebro.adddata(bt.feeds.PandasData(dataname=frame, timeframe=bt.TimeFrame.Minutes, compression=1),
                        name=sym)
    cerebro.broker.setcash(CASH_PER_SYMBOL * len(frames))
    cerebro.broker.setcommission(commission=0.0)
    cerebro.addstrategy(PlainCross)
    cerebro.addanalyzer(bt.analyzers.SharpeRatio, _name="sharpe")
    cerebro.addanalyzer(bt.analyzers.DrawDown, _name="drawdown")
    cerebro.addanalyzer(bt.analyzers.TradeAnalyzer, _name="trades")
    cerebro.addanalyzer(bt.analyzers.Returns, _name="returns")
    strat = cerebro.run()[0]
    value = float(cerebro.broker.getvalue())
    ta = strat.analyzers.trades.get_analysis()
    trades = int(ta.get("total", {}).get("closed", 0) or 0)
    wall = time.perf_counter() - start
    return {"wall": wall, "final_value": value, "trades": trades}


def _child_btpy(frames: dict) -> dict:
    import warnings

    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def sma(values, n):
        return pd.Series(values).rolling(n).mean().to_numpy()

    class PyCross(Strategy):
        fast, slow = FAST, SLOW

        def init(self):
            self.sma_fast = self.I(sma, self.data.Close, self.fast)
            self.sma_slow = self.I(sma, self.data.Close, self.slow)

        def next(self):
            if crossover(self.sma_fast, self.sma_slow):
                if not self.position:
                    self.buy(size=SIZE)
            elif crossover(self.sma_slow, self.sma_fast) and self.position:
                self.position.close()

    data = {sym: f.rename(columns=str.capitalize) for sym, f in frames.items()}
    start = time.perf_counter()
    value, trades = 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for frame in data.values():
            stats = Backtest(frame, PyCross, cash=CASH_PER_SYMBOL, commission=0.0).run()
            value += float(stats["Equity Final [$]"])
            trades += int(stats["# Trades"])
    wall = time.perf_counter() - start
    return {"wall": wall, "final_value": value, "trades": trades}


def _child_vbt(frames: dict, sweep: bool) -> dict:
    import warnings

    import pandas as pd
    import vectorbt as vbt

    close = pd.DataFrame({sym: f["close"] for sym, f in frames.items()})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sweep:  # the grid as one broadcast: 16 (fast, slow) pairs x the symbols, one column each
            fasts = [f for f in GRID["fast"] for _ in GRID["slow"]]
            slows = [s for _ in GRID["fast"] for s in GRID["slow"]]
        else:
            fasts, slows = FAST, SLOW
        pf = _vbt_run(vbt, close, fasts, slows)
        value = float(pf.final_value().sum())
        trades = int(pf.trades.closed.count().sum())
        columns = int(pf.wrapper.shape_2d[1])
        wall = time.perf_counter() - start
        # The same again in the same process: compiled, as a second call in a session would be.
        again = time.perf_counter()
        _vbt_run(vbt, close, fasts, slows)
        warm = time.perf_counter() - again
    out = {"wall": wall, "warm_wall": warm, "final_value": value, "trades": trades, "columns": columns}
    if sweep:
        out["trials"] = columns // len(frames)
    return out


def _vbt_run(vbt, close, fasts, slows):
    fast = vbt.MA.run(close, window=fasts, short_name="fast")
    slow = vbt.MA.run(close, window=slows, short_name="slow")
    entries, exits = fast.ma_crossed_above(slow), fast.ma_crossed_below(slow)
    pf = vbt.Portfolio.from_signals(close, entries, exits, size=SIZE, init_cash=CASH_PER_SYMBOL,
                                    fees=0.0, freq="1min")
    pf.final_value(), pf.trades.closed.count()
    return pf


def child(engine: str, data: str, t0: float, sweep: bool) -> dict:
    frames = _read(data)
    if engine == "fk":
        out = _child_fk(frames, sweep)
    elif engine == "bt":
        out = _child_bt(frames, stdstats=os.environ.get("PEERS_BT_STDSTATS", "on") != "off")
    elif engine == "btpy":
        out = _child_btpy(frames)
    else:
        out = _child_vbt(frames, sweep)
    out["first_result"] = time.time() - t0
    out["rss_mb"] = _rss_mb()
    return out


# ----------------------------------------------------------------------------------- the peers' venv

def _peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_peers(reinstall: bool) -> dict[str, str | None]:
    """Make bench/.venv-peers once; returns engine -> None (usable) or the reason it is not."""
    stamp = json.loads(STAMP.read_text()) if STAMP.exists() and not reinstall else None
    if stamp is None:
        stamp = {}
        py = _peers_python()
        if not py.exists() or reinstall:
            log(f"creating {PEERS_VENV} (a virtualenv for backtesting.py and vectorbt)")
            made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)],
                                  capture_output=True, text=True, check=False)
            if made.returncode:
                reason = f"venv failed: {_last_line(made.stderr)}"
                return {e: reason for e in PEER_ENGINES}
        steps = [("base", list(PEER_BASE))] + [(e, [pkg]) for e, pkg in PEER_ENGINES.items()]
        for key, pkgs in steps:
            log(f"pip install {' '.join(pkgs)} into {PEERS_VENV}")
            done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pkgs],
                                  capture_output=True, text=True, check=False)
            stamp[key] = None if done.returncode == 0 else f"pip install {' '.join(pkgs)} failed: " \
                                                            f"{_last_line(done.stderr)}"
            if stamp[key]:
                log(stamp[key])
        STAMP.write_text(json.dumps(stamp, indent=1))
    status = {}
    for engine, pkg in PEER_ENGINES.items():
        reason = stamp.get("base") or stamp.get(engine)
        if reason is None:
            probe = subprocess.run([str(_peers_python()), "-c", f"import {pkg}; print({pkg}.__version__)"],
                                   capture_output=True, text=True, check=False,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if probe.returncode:
                reason = f"import {pkg} failed: {_last_line(probe.stderr)}"
            else:
                status[f"{engine}_version"] = probe.stdout.strip()
        status[engine] = reason
    return status


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:200]


# ----------------------------------------------------------------------------------- parent

def write_bars(sizes: list[int], folder: Path) -> dict[int, Path]:
    """One Parquet file per size: the first N symbols of one synthetic universe, long format."""
    import pandas as pd

    import farmkit as fk

    symbols = [f"S{i:03d}" for i in range(max(sizes))]
    bars = fk.data.synthetic(symbols, start=START, days=DAYS, seed=SEED)
    paths = {}
    for n in sizes:
        frames = []
        for sym in symbols[:n]:
            frame = bars[sym][["open", "high", "low", "close", "volume"]].astype("float64")
            frame.index = frame.index.tz_convert("UTC").tz_localize(None)
            frames.append(frame.assign(symbol=sym))
        paths[n] = folder / f"bars_{n}.parquet"
        pd.concat(frames).to_parquet(paths[n])
    return paths


def measure(engine: str, data: Path, sweep: bool = False) -> dict:
    py = sys.executable if engine in ("fk", "bt") else str(_peers_python())
    with tempfile.TemporaryDirectory() as numba_cache:
        env = {**os.environ, **FARM_ENV, "PYTHONWARNINGS": "ignore", "NUMBA_CACHE_DIR": numba_cache}
        cmd = [py, __file__, "--child", engine, "--data", str(data), "--t0", repr(time.time())]
        if sweep:
            cmd.append("--sweep-child")
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"error": _last_line(out.stderr)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e6 else f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 1,10 and 1 round")
    parser.add_argument("--sizes", default=None, help="symbol counts, comma separated (default 1,10,50; "
                        "200 only when asked, e.g. --sizes 1,10,50,200)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run (default fk,bt,btpy,vbt)")
    parser.add_argument("--sweep", action="store_true", help="also the 16-trial x 10-symbol sweep row "
                        "(fk.sweep workers=2 vs one vectorbt broadcast), once per round")
    parser.add_argument("--bt-no-stdstats", action="store_true", help="plain backtrader without its default "
                        "observers (Broker, BuySell, Trades), as fk.backtest runs cerebro")
    parser.add_argument("--reinstall-peers", action="store_true", help="recreate bench/.venv-peers")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.t0, args.sweep_child)))
        return

    sizes = [int(s) for s in (args.sizes or ("1,10" if args.quick else "1,10,50")).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    engines = [e for e in args.engines.split(",") if e]
    if not {"fk", "bt"} <= set(engines):
        raise SystemExit("--engines must include fk and bt (they are checked against each other)")
    began = time.time()
    if args.bt_no_stdstats:
        os.environ["PEERS_BT_STDSTATS"] = "off"
    status: dict[str, str | None] = {e: None for e in engines}
    peers = ensure_peers(args.reinstall_peers) if set(engines) & set(PEER_ENGINES) else {}
    for e in PEER_ENGINES:
        if e in engines:
            status[e] = peers.get(e)
    live = [e for e in engines if status[e] is None]

    results: dict[tuple[str, int], list[dict]] = {}
    sweep_results: dict[str, list[dict]] = {"fk": [], "vbt": []}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_bars(sorted(set(sizes) | ({SWEEP_SYMBOLS} if args.sweep else set())), Path(folder))
        for r in range(rounds):
            for n in sizes:
                order = live if (r + sizes.index(n)) % 2 == 0 else list(reversed(live))
                for engine in order:
                    if status[engine] is not None:
                        continue
                    res = measure(engine, paths[n])
                    if "error" in res:
                        if engine in ("fk", "bt"):
                            raise SystemExit(f"{engine} on {n} symbols failed: {res['error']}")
                        status[engine] = f"failed on {n} symbols: {res['error']}"
                        log(f"{engine} unavailable: {status[engine]}")
                        continue
                    results.setdefault((engine, n), []).append(res)
                    log(f"round {r + 1}/{rounds} {n} symbols {engine}: wall {res['wall']:.2f}s, "
                        f"first result {res['first_result']:.2f}s, rss {res['rss_mb']:.0f} MB")
            if args.sweep:
                for engine in ("fk", "vbt") if r % 2 == 0 else ("vbt", "fk"):
                    if status.get(engine) is not None or engine not in live:
                        continue
                    res = measure(engine, paths[SWEEP_SYMBOLS], sweep=True)
                    if "error" in res:
                        log(f"sweep {engine} failed: {res['error']}")
                        sweep_results[engine] = None
                        continue
                    if sweep_results[engine] is not None:
                        sweep_results[engine].append(res)
                    log(f"round {r + 1}/{rounds} sweep {engine}: wall {res['wall']:.2f}s, "
                        f"first result {res['first_result']:.2f}s")

    def med(engine, n, key):
        rows = results.get((engine, n))
        return statistics.median(x[key] for x in rows) if rows else None

    print(f"sizes={','.join(map(str, sizes))}")
    print(f"rounds={rounds}")
    print(f"bars_per_symbol={DAYS * 390}")
    print(f"bt_stdstats={'off' if args.bt_no_stdstats else 'on'}")
    for e in engines:
        if e in PEER_ENGINES and peers.get(f"{e}_version"):
            print(f"{e}_version={peers[f'{e}_version']}")
        print(f"{e}_status=" + ("ok" if status[e] is None else f"unavailable ({status[e]})"))
    failures = []
    for n in sizes:
        bars = n * DAYS * 390
        print(f"bars_{n}={bars}")
        for e in engines:
            if (e, n) not in results:
                continue
            wall = med(e, n, "wall")
            print(f"{e}_{n}_wall_s={wall:.3f}")
            print(f"{e}_{n}_bars_per_s={bars / wall:.0f}")
            print(f"{e}_{n}_first_result_s={med(e, n, 'first_result'):.3f}")
            print(f"{e}_{n}_rss_mb={med(e, n, 'rss_mb'):.0f}")
            print(f"{e}_{n}_final_value={_fmt(results[(e, n)][0]['final_value'])}")
            print(f"{e}_{n}_trades={results[(e, n)][0]['trades']}")
            if e == "vbt":
                print(f"vbt_{n}_warm_wall_s={med(e, n, 'warm_wall'):.3f}")
        fk_rows, bt_rows = results[("fk", n)], results[("bt", n)]
        for a in fk_rows + bt_rows:
            ref = bt_rows[0]
            if abs(a["final_value"] - ref["final_value"]) > 1e-9 * abs(ref["final_value"]) \
                    or a["trades"] != ref["trades"]:
                failures.append(f"{n} symbols: fk final_value={fk_rows[0]['final_value']!r} "
                                f"trades={fk_rows[0]['trades']}, bt final_value={ref['final_value']!r} "
                                f"trades={ref['trades']}")
                break
    ratios = {}
    for n in sizes:
        fk_wall = med("fk", n, "wall")
        print(f"fk_vs_bt_throughput_{n}={med('bt', n, 'wall') / fk_wall:.3f}")
        print(f"fk_vs_bt_rss_{n}={med('fk', n, 'rss_mb') / med('bt', n, 'rss_mb'):.3f}")
        for e in ("btpy", "vbt"):
            if (e, n) in results:
                ratios[(e, n)] = med(e, n, "wall") / fk_wall
                print(f"fk_vs_{e}_throughput_{n}={ratios[(e, n)]:.3f}")
                print(f"fk_vs_{e}_rss_{n}={med('fk', n, 'rss_mb') / med(e, n, 'rss_mb'):.3f}")
                print(f"first_result_fk_vs_{e}_{n}={med('fk', n, 'first_result') / med(e, n, 'first_result'):.3f}")
    top = max(sizes)
    if ("btpy", top) in results:
        print(f"first_result_fk_vs_btpy={med('fk', top, 'first_result') / med('btpy', top, 'first_result'):.3f}")
    if args.sweep:
        trials = len(GRID["fast"]) * len(GRID["slow"])
        print(f"sweep_trials={trials}")
        print(f"sweep_symbols={SWEEP_SYMBOLS}")
        walls = {}
        for e in ("fk", "vbt"):
            rows = sweep_results.get(e)
            if not rows:
                print(f"sweep_{e}_status=unavailable")
                continue
            walls[e] = statistics.median(x["wall"] for x in rows)
            print(f"sweep_{e}_wall_s={walls[e]:.3f}")
            print(f"sweep_{e}_first_result_s={statistics.median(x['first_result'] for x in rows):.3f}")
            print(f"sweep_{e}_rss_mb={statistics.median(x['rss_mb'] for x in rows):.0f}")
            print(f"sweep_{e}_trials={rows[0]['trials']}")
            if e == "vbt":
                print(f"sweep_vbt_warm_wall_s={statistics.median(x['warm_wall'] for x in rows):.3f}")
        if len(walls) == 2:
            print(f"sweep_fk_vs_vbt_throughput={walls['vbt'] / walls['fk']:.4f}")
    print(f"elapsed_s={time.time() - began:.0f}")
    if failures:
        raise SystemExit("fk and backtrader disagree:\n  " + "\n  ".join(failures))
    if ("btpy", top) in ratios:
        print(f"headline_fk_vs_btpy_throughput_{top}={ratios[('btpy', top)]:.3f}")
    else:
        print(f"headline_fk_vs_bt_throughput_{top}={med('bt', top, 'wall') / med('fk', top, 'wall'):.3f}")


if __name__ == "__main__":
    main()
