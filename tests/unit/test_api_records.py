"""The API's hold of finished runs' records for explain: read once, looked up after, bounded."""

import threading
import time

import pandas as pd

from farmkit.api.cache import RunRecords


def frame(n: int, first: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"bar_number": range(first, first + n), "value": [f"v{b}" for b in range(first, first + n)]})


def test_a_run_is_read_once_and_its_bars_looked_up():
    reads = []
    records = RunRecords(max_rows=1000)
    load = lambda: reads.append(1) or frame(100, first=5)
    assert records.row("r", 7, load)["value"] == "v7"
    assert records.row("r", 104, load)["value"] == "v104"
    assert records.row("r", 3, load) is None and records.row("r", 105, load) is None     # no such bar
    assert len(reads) == 1


def test_least_recently_used_runs_go_and_large_runs_are_not_held():
    records = RunRecords(max_rows=400)
    records.row("a", 0, lambda: frame(100))
    records.row("b", 0, lambda: frame(100))
    records.row("a", 1, lambda: frame(100))          # a is now the most recent
    records.row("c", 0, lambda: frame(100))
    records.row("d", 0, lambda: frame(100))          # 400 rows: all four fit
    records.row("e", 0, lambda: frame(100))          # b goes (least recently used), then...
    assert set(records._runs) == {"a", "c", "d", "e"}
    assert records.row("big", 0, lambda: frame(101)) is None      # over a quarter: not held
    assert "big" not in records._runs


def test_concurrent_requests_for_a_run_share_one_read():
    reads = []
    records = RunRecords()

    def slow_load():
        reads.append(1)
        time.sleep(0.2)
        return frame(10)

    threads = [threading.Thread(target=records.row, args=("r", i, slow_load)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
