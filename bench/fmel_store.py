"""FMEL stores at scale: write throughput, a slow sink against the strategy loop, explain() on a big
store, leaderboard reads.

  embedded_write      LocalStore.write_fmel of synthetic FMEL records in 50,000-record batches
                      (records built beforehand, only the writes timed)                  target >= 200k/s
  bigquery_write      BigQueryStore.write_fmel against the BigQuery API emulator (a local emulator:
                      this measures the emulator as much as us; reported, no target)
  next_stall          the longest gap between two Strategy.next() calls of a run whose FMEL sink
                      sleeps on every batch: through the BatchWriter thread as paper runs do
                      (target <= 5 ms); for contrast, the same with a sink that returns at once
                      (what the machine itself adds) and with the slow sink on the strategy thread
  explain             fk.fmel.explain() p50/p99 at random (run, bar) on an embedded store of
                      10,000,000 records (200 runs x 50,000 bars, written directly as Parquet)
                                                                                      target <= 100 ms
  leaderboard_top100  fk.leaderboard.top(n=100) p99 over 1,000 agents; FARM_REDIS if set, else the
                      embedded Redis                                                   target <= 5 ms

Prints name=value lines; each target gets a ``*_target_ratio`` (>= 1 met), and the headline last is
``worst_target_ratio``, the smallest of them.

    python bench/fmel_store.py            # the sizes above
    python bench/fmel_store.py --quick    # small sizes, for CI (figures not comparable to the targets)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fmel_records(run_id: str, n: int, start: int = 0, agent_id: str = "bench", seed: int = 0):
    """``n`` FMEL records of one run, shaped like a one-symbol strategy's, built column-wise."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from farmkit.fmel import schema

    rng = np.random.default_rng(seed)
    close = np.round(100 + np.cumsum(rng.normal(0, 0.05, n)), 4)
    fast, slow = np.round(close + rng.normal(0, 0.02, n), 4), np.round(close + rng.normal(0, 0.04, n), 4)
    equity = np.round(100_000 + np.cumsum(rng.normal(0, 5, n)), 2)
    text = lambda values: pc.cast(pa.array(values), pa.string())
    join = lambda *parts: pc.binary_join_element_wise(*parts, "")
    bars = np.arange(start, start + n)
    stamps = pd.Timestamp("2020-01-02 14:30", tz="UTC") + pd.to_timedelta(bars, unit="min")
    return pa.table({
        "record_id": join(run_id + ":", text(bars)),
        "run_id": pa.array([run_id] * n), "agent_id": pa.array([agent_id] * n), "mode": pa.array(["backtest"] * n),
        "timestamp": pa.array(stamps), "recorded_at": pa.array([pd.Timestamp.now(tz="UTC")] * n),
        "bar_number": pa.array(bars),
        "market_state": join('{"SYN": {"open": ', text(close), ', "high": ', text(close + 0.05), ', "low": ',
                             text(close - 0.05), ', "close": ', text(close), ', "volume": 1200.0}}'),
        "strategy_state": join('{"tracked": {"fast": ', text(fast), ', "slow": ', text(slow),
                               '}, "positions": {"SYN": 0.0}, "cash": ', text(equity), "}"),
        "decisions": pa.array(['[{"action": "hold", "symbol": null, "size": null, "reason": null, '
                               '"confidence": null, "signals": null}]'] * n),
        "actions": pa.array(["[]"] * n),
        "performance": join('{"equity": ', text(equity), ', "cash": ', text(equity), ', "drawdown": 0.0}'),
    }).cast(schema.arrow_schema("fmel"))


def embedded_write(n: int) -> dict:
    from farmkit.fmel.local import LocalStore

    batch = 50_000
    tables = [fmel_records("w", min(batch, n - s), start=s) for s in range(0, n, batch)]
    with tempfile.TemporaryDirectory() as home:
        store = LocalStore(home)
        start = time.perf_counter()
        for table in tables:
            store.write_fmel(table)
        wall = time.perf_counter() - start
        count = int(store.sql("SELECT count(*) AS n FROM fmel").n[0])
    assert count == n, (count, n)
    return {"embedded_write_records": n, "embedded_write_s": wall, "embedded_write_records_per_s": n / wall}


def bigquery_write(n: int) -> dict:
    try:
        from tests.bigquery_emulator import PROJECT, BigQueryEmulator, find_emulator, new_dataset
        from farmkit.fmel.bigquery import BigQueryStore
    except ImportError as exc:
        return {"bigquery_write_records_per_s": float("nan"), "bigquery_note": f"missing: {exc}"}
    program, reason = find_emulator()
    if program is None:
        return {"bigquery_write_records_per_s": float("nan"), "bigquery_note": reason}
    tables = [fmel_records("bq", min(5_000, n - s), start=s) for s in range(0, n, 5_000)]
    with BigQueryEmulator(program) as emulator, tempfile.TemporaryDirectory() as home:
        store = BigQueryStore(PROJECT, new_dataset(), home=home, endpoint=emulator.endpoint)
        start = time.perf_counter()
        for table in tables:
            store.write_fmel(table)
        wall = time.perf_counter() - start
        count = int(store.sql("SELECT count(*) AS n FROM fmel").n[0])
        assert count == n and store.pending()["records"] == 0, (count, store.pending())
        # The raw client doing the same inserts (same rows, 500 a request, no retry or spill logic):
        # the emulator's own speed, against which ours is a ratio.
        from farmkit.fmel.bigquery import batches, rows_of
        rows = [row for table in tables for row in rows_of(table)]
        for row in rows:
            row["run_id"] = "raw"
        start = time.perf_counter()
        for batch in batches(rows):
            assert not store.client.insert_rows_json(store.table("fmel"), batch,
                                                     row_ids=[r["record_id"] for r in batch], retry=None)
        raw = time.perf_counter() - start
    return {"bigquery_write_records": n, "bigquery_write_inserts": store.stats["inserts"],
            "bigquery_write_records_per_s": n / wall, "bigquery_raw_client_records_per_s": n / raw,
            "bigquery_write_ratio_to_raw_client": raw / wall}


def _stall(bars: int, delay: float, batch_bars: int, through_writer: bool) -> tuple[float, float]:
    import farmkit as fk
    from farmkit.brokers import BrokerConfig
    from farmkit.kernel import build_cerebro, history_feeds
    from farmkit.data.bars import to_bars
    from farmkit.fmel.recorder import Assembler, FmelRecorder
    from farmkit.fmel.writer import BatchWriter

    gaps: list[float] = []

    class Timed(fk.Strategy):
        def __init__(self):
            import backtrader as bt
            self.fast, self.slow = bt.ind.SMA(period=10), bt.ind.SMA(period=30)
            self.track(fast=self.fast, slow=self.slow)
            self.last = None

        def next(self):
            now = time.perf_counter()
            if self.last is not None:
                gaps.append(now - self.last)
            if self.fast[0] > self.slow[0] and not self.position:
                self.buy(reason="fast above slow")
            elif self.fast[0] < self.slow[0] and self.position:
                self.close(reason="fast below slow")
            self.last = time.perf_counter()

    def slow_sink(table):
        time.sleep(delay)       # a sink that takes this long per batch (a slow network, a busy table)

    frame = fk.data.synthetic("SYN", start="2020-01-02", days=-(-bars // 390), seed=3)["SYN"].iloc[:bars]
    with tempfile.TemporaryDirectory() as spill:
        recorder = FmelRecorder("stall", "bench", mode="paper", batch_bars=batch_bars, flush_seconds=3600,
                                defer_assembly=through_writer)
        writer = BatchWriter(slow_sink, spill, prepare=Assembler()) if through_writer else None
        recorder.sink = writer.put if writer else slow_sink
        cerebro = build_cerebro(Timed, history_feeds(to_bars({"SYN": frame})), BrokerConfig(cash=100_000.0),
                                recorder, {})
        cerebro.run()
        recorder.flush()
        if writer:
            assert writer.close(timeout=600) == 0
    return max(gaps) * 1000, float(np.percentile(gaps, 99.9)) * 1000


def next_stall(bars: int, delay: float, batch_bars: int) -> dict:
    slow, slow_p999 = _stall(bars, delay, batch_bars, through_writer=True)
    instant, _ = _stall(bars, 0.0, batch_bars, through_writer=True)
    on_thread, _ = _stall(min(bars, 3 * batch_bars), delay, batch_bars, through_writer=False)
    return {"stall_bars": bars, "stall_sink_delay_ms": delay * 1000, "stall_batch_bars": batch_bars,
            "next_stall_max_ms": slow, "next_gap_p999_ms": slow_p999, "next_stall_max_ms_instant_sink": instant,
            "next_stall_max_ms_sink_on_strategy_thread": on_thread}


def explain(runs: int, bars: int, calls: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    import farmkit as fk
    from farmkit.fmel.local import LocalStore

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as home:
        store = LocalStore(home)
        start = time.perf_counter()
        template = fmel_records("r", bars)
        for r in range(runs):
            run_id = f"run{r:04d}"
            ids = pc.binary_join_element_wise(run_id + ":", pc.cast(template.column("bar_number"), pa.string()), "")
            table = template.set_column(0, "record_id", ids).set_column(1, "run_id", pa.array([run_id] * bars))
            store.write_fmel(table)      # as a backtest writes a run: one file, in the store's row groups
        generate = time.perf_counter() - start
        times = []
        for _ in range(calls):
            run_id, bar = f"run{rng.integers(runs):04d}", int(rng.integers(bars))
            t0 = time.perf_counter()
            table = fk.fmel.explain(run_id, bar=bar, store=store)
            times.append((time.perf_counter() - t0) * 1000)
            assert table.attrs["bar_number"] == bar
    return {"explain_store_records": runs * bars, "explain_store_runs": runs, "explain_generate_s": generate,
            "explain_calls": calls, "explain_p50_ms": statistics.median(times),
            "explain_p99_ms": float(np.percentile(times, 99))}


def leaderboard_top(agents: int, calls: int) -> dict:
    import farmkit as fk
    from farmkit import leaderboard

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as home:
        env = {"FARM_HOME": home}
        if os.environ.get("FARM_REDIS"):
            env["FARM_REDIS"] = os.environ["FARM_REDIS"]
        settings = fk.Settings.from_env(env)
        client = leaderboard.connect(settings)
        try:
            prefix = f"bench{time.time_ns()}"
            for i in range(agents):
                metrics = {"sharpe": float(rng.normal(1, 0.5)), "total_return": float(rng.normal(0.1, 0.1)),
                           "max_drawdown": -abs(float(rng.normal(0.1, 0.05))), "dsr": float(rng.random()),
                           "days": 252, "min_track_record_days": 30.0}   # long enough to rank
                leaderboard.record_run(client, {"run_id": f"{prefix}-{i}", "agent_id": f"{prefix}-agent{i}",
                                                "strategy": "Bench", "mode": "backtest", "status": "done",
                                                "params": {"fast": i % 50}, "metrics": metrics,
                                                "finished_at": "2026-01-02T00:00:00Z"})
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                frame = leaderboard.top("sharpe", n=100, client=client)
                times.append((time.perf_counter() - t0) * 1000)
            assert len(frame) == min(100, agents)
        finally:
            leaderboard.close(settings)
    return {"leaderboard_agents": agents, "leaderboard_calls": calls,
            "leaderboard_top100_p50_ms": statistics.median(times),
            "leaderboard_top100_p99_ms": float(np.percentile(times, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    args = parser.parse_args()
    quick = args.quick
    results: dict = {"quick": int(quick)}
    steps = [
        ("embedded write", lambda: embedded_write(100_000 if quick else 2_000_000)),
        ("bigquery write", lambda: bigquery_write(2_000 if quick else 20_000)),
        ("next() stall", lambda: next_stall(2_000 if quick else 20_000, 0.05 if quick else 0.2, 200 if quick else 500)),
        ("explain", lambda: explain(4 if quick else 200, 5_000 if quick else 50_000, 20 if quick else 200)),
        ("leaderboard", lambda: leaderboard_top(200 if quick else 1_000, 100 if quick else 1_000)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        results.update(step())
        print(f"# {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    ratios = {
        "embedded_write_target_ratio": results["embedded_write_records_per_s"] / 200_000,
        "next_stall_target_ratio": 5.0 / results["next_stall_max_ms"],
        "explain_target_ratio": 100.0 / results["explain_p50_ms"],
        "leaderboard_target_ratio": 5.0 / results["leaderboard_top100_p99_ms"],
    }
    for key, value in {**results, **ratios}.items():
        print(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}")
    print(f"worst_target_ratio={min(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
