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
