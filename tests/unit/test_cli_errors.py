"""Mistakes on the command line get one line that says what to do, not a traceback."""

from pathlib import Path

from farmkit.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_backtesting_a_file_that_is_no_notebook_says_so_in_one_line(farm_home, capsys):
    assert main(["backtest", str(README)]) == 1
    err = capsys.readouterr().err
    assert "README.md is not a Jupyter notebook" in err and "pass an .ipynb file" in err
    assert "Traceback" not in err and "NotJSONError" not in err
