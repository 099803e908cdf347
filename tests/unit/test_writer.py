"""The FMEL writer thread with deferred assembly: the strategy thread hands raw batches, the writer
makes the rows; whatever fails on the way is spilled and written later, exactly once."""

import pyarrow as pa
import pytest

import farmkit as fk
from farmkit.brokers import BrokerConfig
from farmkit.kernel import build_cerebro, history_feeds
from farmkit.fmel.recorder import Assembler, Batch, FmelRecorder
from farmkit.fmel.writer import BatchWriter
from tests.unit.test_engine import TrackedCross


@pytest.fixture(scope="module")
def raw_batches():
    """The raw batches of a short run (4 x 50 bars), and the same run's rows assembled in place."""
    bars = fk.data.synthetic("AAPL", days=1, seed=4)
    bars = fk.Bars(AAPL=bars["AAPL"].iloc[:200])
    got = []
    recorder = FmelRecorder("run-w", "agent", mode="paper", batch_bars=50, flush_seconds=1e9,
                            defer_assembly=True, sink=got.append)
    cerebro = build_cerebro(TrackedCross, history_feeds(bars), BrokerConfig(), recorder, {})
    cerebro.run()
    recorder.flush()
    assert all(isinstance(b, Batch) for b in got) and [b.first_bar for b in got] == [0, 50, 100, 150]
    return got


def test_a_raw_batch_assembles_into_canonical_rows(raw_batches):
    table = raw_batches[1].assemble()
    assert table.column("bar_number").to_pylist() == list(range(50, 100))
    assert table.schema.names == fk.fmel.schema.names("fmel")
    # through a table and back (what a spill does), it assembles to the same rows
    again = Batch.from_table(raw_batches[1].to_table()).assemble()
    assert again.drop(["recorded_at"]).equals(table.drop(["recorded_at"]))
    assert Batch.from_table(table) is None


def test_failures_before_and_after_assembly_are_spilled_and_written_once(raw_batches, tmp_path):
    written, calls = [], {"sink": 0, "prepare": 0}
    assembler = Assembler()

    def flaky_prepare(item):
        calls["prepare"] += 1
        if calls["prepare"] == 2:
            raise RuntimeError("assembly failed once")
        return assembler(item)

    def flaky_sink(table: pa.Table):
        calls["sink"] += 1
        if calls["sink"] == 2:
            raise OSError("the store is away")
        written.append(table)

    writer = BatchWriter(flaky_sink, tmp_path / "spill", retry_every=1e9, prepare=flaky_prepare)
    for batch in raw_batches:
        writer.put(batch)
    left = writer.close()
    assembler.close()
    assert left == 0 and writer.failures == 2
    numbers = sorted(n for t in written for n in t.column("bar_number").to_pylist())
    assert numbers == list(range(200))
    assert all(t.schema.names == fk.fmel.schema.names("fmel") for t in written)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_writer_thread_runs_at_a_lower_priority_than_the_strategy_thread(tmp_path):
    import os
    import threading

    from farmkit.fmel.writer import WRITER_NICE

    seen = []
    me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = BatchWriter(lambda table: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
                         tmp_path / "spill")
    writer.put(pa.table({"x": [1]}))
    assert writer.close() == 0
    assert seen == [max(me, WRITER_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me   # only the writer's own thread
