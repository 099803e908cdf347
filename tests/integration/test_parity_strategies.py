"""`farm parity --strategy` takes every form the README and --help name: a file, a module, a notebook
and an agent folder."""

import threading

import nbformat
import pytest
import yaml

import farmkit as fk
from farmkit import cli
from farmkit.brokers import BrokerConfig
from farmkit.bus import open_bus
from farmkit.errors import ParameterError
from farmkit.research.parity import load_strategy
from tests.integration.test_paper import bars_of, publisher

SOURCE = '''import backtrader as bt
import farmkit as fk

FAST = 3


class Cross(fk.Strategy):
    params = dict(fast=FAST, slow=12)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.cross > 0:
            self.buy(size=5, reason="up")
        elif self.cross < 0 and self.position:
            self.close(reason="down")
'''


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("days = 1\nsymbols = ['AAPL']")
    parameters.metadata["tags"] = ["parameters"]
    head, body = SOURCE.split("FAST = 3\n")
    nb.cells = [parameters, nbformat.v4.new_code_cell(head + "FAST = 3"), nbformat.v4.new_markdown_cell("# Cross"),
                nbformat.v4.new_code_cell(body),
                nbformat.v4.new_code_cell("raise RuntimeError('a cell that runs a backtest must not run here')\n"
                                          "fk.backtest(Cross, fk.data.synthetic(symbols, days=days))")]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def forms(tmp_path, monkeypatch):
    (tmp_path / "strategies.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    notebook = _notebook(tmp_path / "cross.ipynb")
    agent = tmp_path / "agents" / "cross"
    agent.mkdir(parents=True)
    _notebook(agent / "agent.ipynb")
    (agent / "agent.yaml").write_text(yaml.safe_dump({"name": "cross", "strategy": "Cross",
                                                      "notebook": "agent.ipynb"}))
    return {"file": f"{tmp_path / 'strategies.py'}:Cross", "module": "strategies:Cross",
            "notebook": str(notebook), "notebook:class": f"{notebook}:Cross", "agent": str(agent)}


def test_farm_parity_takes_every_documented_strategy_form(farm_home, forms, capsys):
    strategy = load_strategy(forms["file"])
    frame = fk.data.synthetic("AAPL", days=1, seed=5)["AAPL"].iloc[:80]
    bus = open_bus("memory://")
    res = fk.paper(strategy, ["AAPL"], bus=bus, max_bars=80, duration=60,
                   on_start=publisher(bus, bars_of(frame, "AAPL"), threading.Event()))
    bus.close()
    for form, spec in forms.items():
        assert cli.main(["parity", res.run_id, "--strategy", spec]) == 0, (form, capsys.readouterr().err)
        assert "identical decisions on all 80 bars" in capsys.readouterr().out, form


def test_a_strategy_that_cannot_be_found_says_what_is_there(tmp_path, forms):
    with pytest.raises(ParameterError, match="defines no Nope; it defines: .*Cross"):
        load_strategy(forms["file"].replace(":Cross", ":Nope"))
    with pytest.raises(ParameterError, match="folder without agent.yaml"):
        load_strategy(str(tmp_path))
    with pytest.raises(ParameterError, match="no such file"):
        load_strategy(f"{tmp_path / 'missing.py'}:Cross")


def test_parity_replays_the_paper_runs_broker_model_and_compares_fills(farm_home, forms):
    strategy = load_strategy(forms["file"])
    frame = fk.data.synthetic("AAPL", days=1, seed=5)["AAPL"].iloc[:120]
    bus = open_bus("memory://")
    model = BrokerConfig(cash=30_000.0, commission=0.001, slippage_perc=0.003)
    res = fk.paper(strategy, ["AAPL"], bus=bus, broker=model, max_bars=120, duration=60,
                   on_start=publisher(bus, bars_of(frame, "AAPL"), threading.Event()))
    bus.close()
    assert (res.orders.executed_size.fillna(0) != 0).sum() >= 2
    same = fk.parity(res.run_id, strategy)          # the recorded broker model: slipped prices, commission
    assert same.identical, str(same)
    cheaper = fk.parity(res.run_id, strategy, commission=0.0)
    assert not cheaper.identical
    first = cheaper.differences.iloc[0]
    assert first.field == "fills" and first.decisions_a == first.decisions_b
    assert "in fills" in str(cheaper)
