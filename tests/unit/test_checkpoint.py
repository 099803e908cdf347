"""Checkpoints: round trip, atomic replacement, and errors that name the file."""

import json
import os

import pytest

from farmkit.live import checkpoint
from farmkit.live.checkpoint import Checkpoint, CheckpointError


def sample(**changes) -> Checkpoint:
    values = dict(run_id="paper-1", agent_id="sma", bars_written=120, last={"AAPL": 1_700_000_000_000_000_000},
                  cash=99_000.5, value=100_250.0, start_value=100_000.0, peak=100_300.0,
                  positions={"AAPL": [10.0, 150.25]}, orders_placed=3,
                  open_orders=[{"ref": 7, "symbol": "AAPL", "side": "buy", "size": 10.0, "exectype": "market",
                                "price": None, "client_order_id": "paper-1-3"}],
                  tail={"AAPL": [[1_700_000_000_000_000_000, 1.0, 2.0, 0.5, 1.5, 100.0]]})
    return Checkpoint(**{**values, **changes})


def test_round_trip(tmp_path):
    checkpoint.save(sample(), tmp_path)
    loaded = checkpoint.load(tmp_path)
    assert loaded.saved_at > 0
    assert {**loaded.to_dict(), "saved_at": 0.0} == sample().to_dict()


def test_no_checkpoint_is_a_first_start(tmp_path):
    assert checkpoint.load(tmp_path) is None and checkpoint.load(None) is None


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    checkpoint.save(sample(bars_written=100), tmp_path)
    real_replace = os.replace

    def crash(src, dst):       # the process dies between writing the temporary file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(sample(bars_written=200), tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert checkpoint.load(tmp_path).bars_written == 100      # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    checkpoint.save(sample(bars_written=200), tmp_path)
    assert checkpoint.load(tmp_path).bars_written == 200


def test_bad_files_are_errors_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="checkpoint.json.*not JSON"):
        checkpoint.load(tmp_path)
    path.write_text(json.dumps({**sample().to_dict(), "surprise": 1}))
    with pytest.raises(CheckpointError, match="unknown field.*surprise"):
        checkpoint.load(tmp_path)
    path.write_text(json.dumps({"run_id": "x", "agent_id": "y"}))
    with pytest.raises(CheckpointError, match="missing field.*bars_written"):
        checkpoint.load(tmp_path)
    path.write_text(json.dumps({**sample().to_dict(), "version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        checkpoint.load(tmp_path)


def test_stop_requests(tmp_path):
    assert not checkpoint.stop_requested(tmp_path)
    checkpoint.request_stop(tmp_path)
    assert checkpoint.stop_requested(tmp_path)
    checkpoint.clear_stop(tmp_path)
    assert not checkpoint.stop_requested(tmp_path) and not checkpoint.stop_requested(None)


def test_inbox_keeps_what_is_not_checkpointed_and_skips_a_torn_line(tmp_path):
    import pandas as pd

    from farmkit.live.inbox import Inbox
    from farmkit.model import Bar

    stamps = pd.date_range("2024-01-02 14:30", periods=4, freq="1min", tz="UTC")
    bars = [Bar(symbol=s, timestamp=t, open=1.0, high=2.0, low=0.5, close=1.5, volume=10.0)
            for t in stamps for s in ("AAPL", "MSFT")]
    inbox = Inbox(tmp_path / "inbox.jsonl")
    for bar in bars:
        inbox.append(bar)
    assert inbox.read() == bars
    kept = inbox.compact({"AAPL": stamps[1].value, "MSFT": stamps[2].value})
    assert kept == 3 and [(b.symbol, b.timestamp) for b in inbox.read()] == [
        ("AAPL", stamps[2]), ("AAPL", stamps[3]), ("MSFT", stamps[3])]
    inbox.append(bars[0])
    inbox.close()
    with open(tmp_path / "inbox.jsonl", "ab") as handle:
        handle.write(b'{"type": "bar", "symbol": "AA')       # killed mid-write
    assert len(Inbox(tmp_path / "inbox.jsonl").read()) == 4
