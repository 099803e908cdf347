"""`farm backtest NOTEBOOK`: papermill runs, parameters, artifacts, registry, failures."""

import json
from pathlib import Path

import nbformat
import pytest

import farmkit as fk
from farmkit import cli
from farmkit.research import notebooks

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"


def test_parameters_cell_is_read():
    defaults = notebooks.parameters(SMA)
    assert defaults["fast"] == 60 and defaults["symbols"] == ["AAPL", "MSFT"]


def test_command_line_values_take_the_default_type():
    defaults = {"fast": 10, "cash": 1.0, "symbols": ["A"], "name": "x", "flag": False}
    got = notebooks.coerce({"fast": "5", "cash": "2.5", "symbols": "AAPL,MSFT", "name": "y", "flag": "true"},
                           defaults)
    assert got == {"fast": 5, "cash": 2.5, "symbols": ["AAPL", "MSFT"], "name": "y", "flag": True}
    with pytest.raises(fk.ParameterError, match="no parameter.*fsat"):
        notebooks.coerce({"fsat": "5"}, defaults)
    with pytest.raises(fk.ParameterError, match="fast expects int"):
        notebooks.coerce({"fast": "five"}, defaults)


def test_farm_backtest_runs_the_notebook(farm_home, capfd):
    code = cli.main(["backtest", str(SMA), "-p", "fast", "5", "-p", "slow", "20", "-p", "days", "3",
                     "--no-progress"])
    out, err = capfd.readouterr()   # file descriptors: the kernel process writes to the same stderr
    assert code == 0, out
    assert "without encryption" not in err   # the kernel's channels are Unix sockets, not open TCP ports
    run = fk.runs().iloc[-1]
    assert run.status == "done" and run.params == {"fast": 5, "slow": 20, "size": 100}
    assert f"run {run.run_id}" in out and "Sharpe ratio" in out
    run_dir = farm_home.home / "runs" / run.run_id
    executed = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
    assert any("fast = 5" in c.source for c in executed.cells)  # papermill's injected parameters
    noise = [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not noise, noise  # no warnings or deprecation spam in the researcher's notebook
    assert (run_dir / "tearsheet.html").stat().st_size < 1_000_000  # plotly.js is shared, in runs/
    assert list(run_dir.parent.glob("plotly-*.min.js"))
    assert len(fk.fmel.load(run.run_id)) == 3 * 390  # one record per minute bar


def test_failing_notebook_names_the_cell_and_is_recorded(farm_home, tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("import farmkit as fk\nraise ValueError(f'bad x={x}')")]
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["backtest", str(path), "-p", "x", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "raised ValueError: bad x=2" in err and "raise ValueError" in err
    run = fk.runs().iloc[-1]
    assert run.status == "failed" and "bad x=2" in run.error


def test_notebook_without_parameters_cell_says_how_to_tag_one(farm_home, tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "untagged.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["backtest", str(path)]) == 1
    assert "add the tag 'parameters'" in capsys.readouterr().err


def test_explain_and_runs_commands(farm_home, capsys, minute_bars):
    from tests.unit.test_engine import TrackedCross
    res = fk.backtest(TrackedCross, minute_bars)
    assert cli.main(["runs"]) == 0
    assert res.run_id in capsys.readouterr().out
    assert cli.main(["explain", res.run_id, "--bar", "30"]) == 0
    out = capsys.readouterr().out
    assert "bar 30" in out and "slow" in out and "equity" in out
    assert cli.main(["explain", res.run_id, "--bar", "999999"]) == 1
    assert "has no bar 999999" in capsys.readouterr().err


def test_farm_promote_command(farm_home, tmp_path, capsys):
    agents = tmp_path / "agents"
    # Twenty days of random bars: the overfitting gate calls the result luck, and says how to override.
    assert cli.main(["promote", str(SMA), "--name", "sma-cross", "--agents-dir", str(agents)]) == 1
    assert "refused: DSR" in capsys.readouterr().err and not (agents / "sma-cross").exists()
    code = cli.main(["promote", str(SMA), "--name", "sma-cross", "--agents-dir", str(agents), "--allow-overfit"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "verified identical" in out and "overfitting gate overridden" in err
    assert (agents / "sma-cross" / "agent.ipynb").exists() and (agents / "sma-cross" / "agent.yaml").exists()
    assert cli.main(["promote", str(SMA), "--name", "sma-cross", "--agents-dir", str(agents)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_farm_sweep_runs_one_registered_trial_per_grid_point(farm_home, capfd):
    code = cli.main(["sweep", str(SMA), "--grid", "fast=3,5", "--grid", "slow=20", "--grid", "days=2",
                     "--workers", "2", "--no-progress"])
    out, err = capfd.readouterr()
    assert code == 0, out
    assert "without encryption" not in err
    runs = fk.runs()
    trials = runs[runs.sweep_id.notna()]
    assert len(trials) == 2 and trials.sweep_id.nunique() == 1 and (trials.status == "done").all()
    assert sorted(p["fast"] for p in trials.params) == [3, 5]
    sweep_id = trials.sweep_id.iloc[0]
    assert f"sweep {sweep_id}: 2 trials, 2 done" in out
    assert (farm_home.home / "sweeps" / sweep_id / "trials.csv").exists()
    with pytest.raises(fk.ParameterError, match="no parameter.*fsat"):
        notebooks.grid_points(SMA, {"fsat": ["1"]})


LEAKY = '''import backtrader as bt
import farmkit as fk

class PeeksAhead(fk.Strategy):
    def __init__(self):
        self.next_close = self.data.close(1)   # the next bar's close: the future
        self.track(next_close=self.next_close)

    def next(self):
        if self.next_close[0] > self.data.close[0] and not self.position:
            self.buy(size=1, reason="knows the next close is higher")
        elif self.next_close[0] < self.data.close[0] and self.position:
            self.close(reason="knows the next close is lower")

res = fk.backtest(PeeksAhead, fk.data.synthetic("AAPL", days=days, seed=3))'''


def test_farm_check_lookahead(farm_home, tmp_path, capsys):
    assert cli.main(["check-lookahead", str(SMA), "-p", "days", "2", "--cuts", "3"]) == 0
    assert "OK: SmaCross: no look-ahead found" in capsys.readouterr().out
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("days = 2")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(LEAKY)]
    path = tmp_path / "leaky.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["check-lookahead", str(path), "--cuts", "3"]) == 1
    out = capsys.readouterr().out
    assert "LOOK-AHEAD: PeeksAhead looks ahead: at bar" in out and "tracked.next_close" in out
    assert not list(tmp_path.glob(".leaky.lookahead-*"))  # the temporary copy is gone
