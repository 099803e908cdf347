"""The embedded store's one-bar read: the file that holds the bar, found by name and footer."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from farmkit.fmel import schema
from farmkit.fmel.local import ROW_GROUP_BARS, LocalStore


def records(run_id: str, start: int, n: int, note: str = "") -> pa.Table:
    bars = list(range(start, start + n))
    return pa.table({
        "record_id": [f"{run_id}:{b}" for b in bars], "run_id": [run_id] * n, "agent_id": ["A"] * n,
        "mode": ["paper"] * n, "timestamp": pd.date_range("2024-01-02 14:30", periods=start + n, freq="1min",
                                                          tz="UTC")[start:],
        "recorded_at": [pd.Timestamp.now(tz="UTC")] * n, "bar_number": bars,
        "market_state": [json.dumps({"AAPL": {"close": float(b)}, "note": note}) for b in bars],
        "strategy_state": ["{}"] * n, "decisions": ["[]"] * n, "actions": ["[]"] * n, "performance": ["{}"] * n,
    }).cast(schema.arrow_schema("fmel"))


def test_one_bar_is_read_from_the_file_that_holds_it(tmp_path):
    store = LocalStore(tmp_path)
    for start in (0, 500, 1000):
        store.write_fmel(records("r", start, 500))
    store.write_fmel(records("other", 0, 50))
    for bar in (0, 499, 500, 777, 1499):
        row = store.bar("r", bar)
        assert list(row.bar_number) == [bar] and row.record_id.iloc[0] == f"r:{bar}"
        pd.testing.assert_frame_equal(row, store.sql(f"SELECT * FROM fmel WHERE bar_number = {bar}", run_id="r"))
    assert store.bar("r", 1500).empty and store.bar("nope", 3).empty
    assert list(store.bar("r", 3).columns) == schema.names("fmel")


def test_a_record_written_twice_counts_once_the_latest(tmp_path):
    store = LocalStore(tmp_path)
    store.write_fmel(records("r", 0, 100, note="first"))
    later = records("r", 40, 20, note="again")           # e.g. a spilled batch replayed under its own name
    store.write_fmel(later)
    row = store.bar("r", 45)
    assert len(row) == 1 and json.loads(row.market_state.iloc[0])["note"] == "again"


def test_runs_are_written_in_row_groups_a_bar_read_can_skip(tmp_path):
    store = LocalStore(tmp_path)
    path = store.write_fmel(records("r", 0, 3 * ROW_GROUP_BARS))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
