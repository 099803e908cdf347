"""The quickstart tells a story: its strategy records conditions, so why-not has something to say, and
the leaderboard notebook right after it shows a small field of agents (backtests and paper replays)."""

import os
from pathlib import Path

import nbformat
import papermill

import farmkit as fk
from farmkit import cli

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"
LEADERBOARD = ROOT / "notebooks" / "analysis" / "leaderboard.ipynb"


def _outputs(executed: Path, startswith: str) -> str:
    nb = nbformat.read(executed, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(startswith))
    return "\n".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in cell.outputs)


def test_quickstart_then_leaderboard(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "farm"))   # the embedded Redis too: boards are on
    monkeypatch.setenv("FARM_PROGRESS", "off")

    assert cli.main(["backtest", str(SMA), "-p", "days", "3", "--no-progress"]) == 0
    run = fk.runs().iloc[-1]
    holds = fk.fmel.decisions(run.run_id, action="hold")
    reasons = fk.fmel.why_not(run.run_id, bar=int(holds.bar_number.iloc[-1]))
    conditions = reasons[reasons.kind == "condition"]
    assert set(conditions.condition) == {"AAPL fast above slow", "MSFT fast above slow"}, reasons
    assert conditions.distance.notna().all()

    executed = tmp_path / "leaderboard.ipynb"
    papermill.execute_notebook(str(LEADERBOARD), str(executed), kernel_name="python3", language="python",
                               cwd=str(LEADERBOARD.parent), progress_bar=False)
    backtests = _outputs(executed, 'shown = ["rank"')
    assert sum(f"cross-{p}" in backtests for p in ("5-20", "10-30", "20-60")) == 3, backtests
    paper = _outputs(executed, 'top["paper"]')
    assert "cross-" in paper, paper


def test_the_fmel_explorer_chart_cuts_nights_like_the_tearsheet(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "farm"))
    monkeypatch.setenv("FARM_PROGRESS", "off")
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "off")
    monkeypatch.setenv("FARM_REDIS", "off")
    explorer = ROOT / "notebooks" / "analysis" / "fmel_explorer.ipynb"
    executed = tmp_path / "explorer.ipynb"
    papermill.execute_notebook(str(explorer), str(executed), kernel_name="python3", language="python",
                               cwd=str(explorer.parent), progress_bar=False)   # its demo: 3 days of minute bars
    nb = nbformat.read(executed, as_version=4)
    (figure,) = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})][:1]
    axes = [v for k, v in figure["layout"].items() if k.startswith("xaxis")]
    assert axes and all(len(a.get("rangebreaks", [])) == 1 for a in axes), axes   # two nights, one size
    assert {t["type"] for t in figure["data"]} == {"scatter"}                      # SVG: WebGL ignores cuts


def test_farm_backtest_says_what_its_run_needs_before_the_board_ranks_it(tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "farm"))   # the embedded Redis: boards are on
    monkeypatch.setenv("FARM_PROGRESS", "off")
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "off")
    # 20 days and a Sharpe just above 0: far too short a record to rank
    assert cli.main(["backtest", str(SMA), "-p", "days", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    run = fk.runs().iloc[-1]
    (short,) = fk.leaderboard.too_short("backtest").itertuples()
    assert short.run_id == run.run_id
    assert f"leaderboard:       not ranked yet, {short.needs}" in out, out
