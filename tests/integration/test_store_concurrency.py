"""The embedded store with two writer processes and a reader at the same time."""

import multiprocessing as mp
import time

import pandas as pd

import farmkit as fk
from farmkit.fmel.local import LocalStore
from tests.unit.test_engine import TrackedCross

RUNS_PER_WRITER = 4


def _writer(home: str, seed: int, out) -> None:
    settings = fk.Settings.from_env({"FARM_HOME": home, "FARM_PROGRESS": "off"})
    bars = fk.data.synthetic(["AAPL"], days=2, seed=seed)
    ids = []
    for i in range(RUNS_PER_WRITER):
        res = fk.backtest(TrackedCross, bars, settings=settings, fast=3 + i)
        ids.append((res.run_id, len(bars["AAPL"])))
    out.put(ids)


def test_two_writers_and_a_reader_at_once(tmp_path):
    home = str(tmp_path / "farm")
    store = LocalStore(home)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(home, seed, out)) for seed in (1, 2)]
    for w in writers:
        w.start()
    reads, errors = 0, []
    deadline = time.time() + 240
    while any(w.is_alive() for w in writers) and time.time() < deadline:
        try:  # a reader querying while the writers write: no lock errors, never a partial file
            counts = store.sql("SELECT run_id, count(*) AS n FROM fmel GROUP BY run_id")
            store.runs.frame()
            assert (counts.n % 390 == 0).all(), counts
            reads += 1
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))
        time.sleep(0.05)
    results = [out.get(timeout=60) for _ in writers]
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert not errors, errors[:3]
    assert reads > 0
    written = dict(run for ids in results for run in ids)
    assert len(written) == 2 * RUNS_PER_WRITER
    counts = store.sql("SELECT run_id, count(*) AS n, count(DISTINCT record_id) AS u FROM fmel GROUP BY run_id")
    counts = counts.set_index("run_id")
    for run_id, bars in written.items():
        assert counts.loc[run_id, "n"] == counts.loc[run_id, "u"] == bars
    runs = store.runs.frame().set_index("run_id")
    assert (runs.loc[list(written), "status"] == "done").all()
    assert isinstance(runs.loc[list(written)[0], "started_at"], pd.Timestamp)


def _open(home, barrier, out):
    barrier.wait()
    try:
        LocalStore(home).runs.upsert("r-" + str(time.time_ns()), agent_id="a", strategy="s", mode="backtest",
                                     status="done", started_at=pd.Timestamp.now(tz="UTC"))
        out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported by the assertion below
        out.put(repr(exc))


def test_processes_opening_a_new_store_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(tmp_path / "fresh"), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 4
    assert len(LocalStore(tmp_path / "fresh").runs.frame()) == 4
