"""`farm backtest`: the kernel's backtest progress is streamed to the farm process's terminal, not into the notebook."""

import re
from pathlib import Path

import nbformat

import farmkit as fk
from farmkit import cli

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"


def test_farm_backtest_streams_bar_progress_to_the_terminal(farm_home, capfd, monkeypatch):
    monkeypatch.setenv("FARM_PROGRESS", "on")   # at once: the test does not depend on how fast this machine is
    assert cli.main(["backtest", str(SMA), "-p", "days", "60"]) == 0
    err = capfd.readouterr().err
    running = re.findall(r"backtest SmaCross: [\d,]+/23,400 bars, [\d,?]+ bars/s, ETA [\w ?]+", err)
    assert running, err[-2000:]
    assert re.search(r"backtest SmaCross: 23,400 bars in [\d.]+ s, [\d,]+ bars/s\n", err), err[-2000:]
    run = fk.runs().iloc[-1]
    run_dir = farm_home.home / "runs" / run.run_id
    executed = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
    noise = [o for c in executed.cells for o in c.get("outputs", [])
             if o.get("name") == "stderr" or "bars/s" in str(o.get("text", "")) or "bar/s" in str(o.get("text", ""))]
    assert not noise, noise
    assert not (run_dir / "progress.json").exists()
