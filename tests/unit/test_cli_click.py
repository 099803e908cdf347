"""The `farm` command's shell: version, tab completion, did-you-mean, and one-line errors that say
what to do (a traceback only with --debug or FARM_DEBUG=1)."""

from pathlib import Path

import pytest

from farmkit import cli
from farmkit.version import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_farm_version_prints_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"farm {__version__}"


def test_bash_completion_script_comes_from_the_completion_variable(monkeypatch, capsys):
    monkeypatch.setenv("_FARM_COMPLETE", "bash_source")
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "_farm_completion()" in out and "complete -o nosort -F _farm_completion farm" in out


def test_completion_offers_the_commands_that_match(monkeypatch, capsys):
    monkeypatch.setenv("_FARM_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "farm chec")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert cli.main([]) == 0
    assert capsys.readouterr().out.split() == ["plain,check-lookahead"]


def test_the_help_says_how_to_turn_completion_on(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert 'eval "$(_FARM_COMPLETE=bash_source farm)"' in out
    assert "--version" in out and "--debug" in out


def test_the_readme_documents_the_completion_line():
    assert 'eval "$(_FARM_COMPLETE=bash_source farm)"' in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", ["backtest", "sweep", "check-lookahead", "promote", "parity", "leaderboard",
                                     "runs", "explain", "paper", "runner", "ingest", "archive", "deploy", "serve"])
def test_every_command_help_shows_an_example(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"  farm {command}" in out or f" farm {command} " in out, out


def test_a_mistyped_command_gets_the_one_it_meant(capsys):
    assert cli.main(["backtst", "x.ipynb"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: No such command 'backtst'. Did you mean 'backtest'? (see farm --help)"


def test_an_unknown_command_far_from_any_is_still_one_line(capsys):
    assert cli.main(["zzzz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No such command 'zzzz'.") and "Did you mean" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, meant", [(["leaderboard", "--metrc", "dsr"], "--metric"),
                                         (["paper", "agents/sma-crossover", "--bras", "3"], "--bars")])
def test_a_mistyped_option_gets_the_one_it_meant(argv, meant, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No such option") and f"Did you mean '{meant}'?" in err
    assert len(err.splitlines()) == 1


def test_a_usage_error_is_one_line_that_names_the_fix(capsys):
    assert cli.main(["explain", "some-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: give one of --bar N or --at TIMESTAMP, e.g. farm explain RUN_ID --bar 120 " \
                  "(see farm explain --help)"


def test_farm_alone_shows_the_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "Commands:" in capsys.readouterr().out


def test_a_readme_is_no_notebook_in_one_line_without_a_traceback(farm_home, capsys):
    assert cli.main(["backtest", str(ROOT / "README.md")]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "README.md is not a Jupyter notebook" in line and "pass an .ipynb file" in line
    assert "Traceback" not in err


def test_debug_shows_the_traceback_too(farm_home, capsys):
    assert cli.main(["--debug", "backtest", str(ROOT / "README.md")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "NotebookError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: ") and "README.md is not a Jupyter notebook" in err


def test_farm_debug_variable_shows_the_traceback(farm_home, monkeypatch, capsys):
    monkeypatch.setenv("FARM_DEBUG", "1")
    assert cli.main(["backtest", str(ROOT / "README.md")]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_missing_notebook_is_one_line(farm_home, tmp_path, capsys):
    assert cli.main(["backtest", str(tmp_path / "nope.ipynb")]) == 1
    err = capsys.readouterr().err
    assert f"error: no notebook at {tmp_path / 'nope.ipynb'}" in err and "Traceback" not in err


def test_paper_on_a_folder_without_agent_yaml_says_how_to_promote(farm_home, tmp_path, capsys):
    assert cli.main(["paper", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "has no agent.yaml" in err and "farm promote NOTEBOOK --name NAME" in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_promote_without_a_name_is_a_usage_error_with_the_command_to_run(capsys):
    assert cli.main(["promote", "notebooks/strategies/sma_crossover.ipynb"]) == 2
    err = capsys.readouterr().err
    assert "farm promote notebooks/strategies/sma_crossover.ipynb --name my-agent" in err
