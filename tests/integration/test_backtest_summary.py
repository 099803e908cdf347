"""`farm backtest`'s summary carries the metrics table's notes on figures from too few days."""

from pathlib import Path

from farmkit import cli

SMA = Path(__file__).resolve().parents[2] / "notebooks" / "strategies" / "sma_crossover.ipynb"


def test_farm_backtest_on_two_days_says_the_sharpe_is_from_two_daily_returns(farm_home, capsys):
    assert cli.main(["backtest", str(SMA), "-p", "days", "2"]) == 0
    out = capsys.readouterr().out
    sharpe = next(line for line in out.splitlines() if line.strip().startswith("Sharpe ratio"))
    assert "from 2 daily returns; needs 30 or more" in sharpe, out
    assert "Daily returns" in out
