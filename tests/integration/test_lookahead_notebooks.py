"""The whole-notebook look-ahead check over the leak corpus (tests/lookahead_corpus/), and its command.

Every corpus notebook says in its metadata (``farm_lookahead_corpus``) what the check must find: a
leak and the code cell it is planted in, or none; and, where it is asked, whether its values depend
on how much history came before (``warmup``). One kernel runs the whole corpus: starting one per
notebook would cost more than the runs themselves.
"""

import os
from pathlib import Path

import nbformat
import pandas as pd

import farmkit as fk
from farmkit import cli, leaderboard
from farmkit.fmel.stores import open_store
from farmkit.research import notebooks, trials
from farmkit.research.lookahead import check_notebook
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)

CORPUS = Path(__file__).resolve().parents[1] / "lookahead_corpus"


def _expected(path: Path) -> dict:
    return nbformat.read(path, as_version=4).metadata["farm_lookahead_corpus"]


def test_every_planted_leak_is_caught_in_its_cell_and_every_control_passes(farm_home):
    env = {k: v for k, v in os.environ.items() if k != "FARM_RUN_ID"}
    kernel = notebooks._Kernel(CORPUS, env)
    paths = sorted(CORPUS.glob("[!.]*.ipynb"))
    assert len(paths) >= 14
    reports = {}
    try:
        for path in paths:
            warmup = _expected(path)["warmup"]
            reports[path.stem] = check_notebook(path, {"days": 1}, cuts=2, recursive=warmup is not None,
                                                kernel=kernel)
    finally:
        kernel.shutdown()
    wrong = []
    for path in paths:
        expected, report = _expected(path), reports[path.stem]
        if expected["lookahead"] == "leak":
            if report.ok:
                wrong.append(f"{path.stem}: leak not found: {report}")
            elif report.cell is None or report.cell.number != expected["cell"]:
                wrong.append(f"{path.stem}: expected code cell {expected['cell']}, got {report.cell}")
        elif not report.ok:
            wrong.append(f"{path.stem}: a clean notebook was reported: {report}")
        if expected["warmup"] == "dependent" and report.recursive_ok:
            wrong.append(f"{path.stem}: its dependence on the start was not found: {report}")
        if expected["warmup"] == "clean" and (not report.recursive_ok or not report.recursive.cuts):
            wrong.append(f"{path.stem}: warm-up check failed or did not run: {report}")
    assert not wrong, "\n".join(wrong)

    # A planted leak whose values show in the notebook is named with high confidence; the one inside
    # the strategy class (the notebook's values are clean) with less.
    shift = reports["leak_negative_shift"]
    assert shift.cell.confidence == "high" and "negative shift" in shift.cell.reason
    assert shift.cell.first_line == "feature = close.shift(-5) / close - 1"
    assert "feature" in shift.cell.reason
    assert reports["leak_whole_series_zscore"].largest_difference > 0.01     # the size of the difference
    # The first leaking bar: five bars before the first cut, where shift(-5) runs out of data.
    assert shift.first_bar == shift.lookahead.cuts[0] - 5
    assert shift.first_timestamp <= shift.cut_timestamps[0]
    assert reports["leak_strategy_reads_next_bar"].cell.confidence == "medium"
    assert "Warm-up dependent" in str(reports["warmup_cumsum"]) and "not look-ahead" in str(reports["warmup_cumsum"])

    # The verdicts are on the notebooks' own runs; the check's runs are off the boards and families.
    store = open_store(farm_home.store)
    runs = store.runs.frame("")
    own = runs[runs.run_id.isin([r.full_run_id for r in reports.values()])].set_index("run_id")
    for report in reports.values():
        assert own.loc[report.full_run_id, "lookahead"] == ("passed" if report.ok else "failed")
        assert own.loc[report.full_run_id, "notebook"] == report.notebook
        assert pd.isna(own.loc[report.full_run_id, "segment"])
    checks = runs[~runs.run_id.isin(own.index)]
    assert len(checks) == sum(len(r.lookahead.truncated_run_ids) + len(r.recursive.truncated_run_ids if r.recursive
                                                                        else ()) for r in reports.values())
    assert set(checks.segment) == {"lookahead"} and checks.lookahead.isna().all()
    family = trials.family(store, "FollowsFeature", own.loc[shift.full_run_id, "code_hash"])
    assert set(family.run_id) <= set(own.index) and len(family) >= 12


def test_farm_check_lookahead_finds_a_negative_shift_and_withdraws_the_version(
        farm_home, redis_server, monkeypatch, capsys):  # noqa: F811 (the fixture)
    redis_server.flush()
    monkeypatch.setenv("FARM_REDIS", redis_server.url)      # the notebook's own run goes on the board
    settings = fk.Settings.from_env()
    notebook = CORPUS / "leak_negative_shift.ipynb"
    assert cli.main(["check-lookahead", str(notebook), "--cuts", "2", "-p", "days", "2"]) == 1
    out = capsys.readouterr().out
    assert "LOOK-AHEAD: FollowsFeature looks ahead: at bar 151" in out
    assert "Likely cell: code cell 3 ('feature = close.shift(-5) / close - 1'), high confidence" in out
    assert "Warm-up: no dependence found" in out and "tracked.feature" in out
    runs = fk.runs().set_index("run_id")
    failed = runs[runs.lookahead == "failed"]
    assert len(failed) == 1 and failed.segment.isna().all() and failed.notebook.iloc[0] == str(notebook)
    assert f"verdict written on run {failed.index[0]}" in out
    listed = set(leaderboard.top("sharpe", 100, settings=settings).run_id)
    listed |= set(leaderboard.too_short(settings=settings).get("run_id", []))
    assert not listed & set(runs.index), listed                # withdrawn, and the check's runs never went up
    assert not leaderboard.publish(settings, open_store(settings.store).runs.get(failed.index[0]))
    assert not list(CORPUS.glob(".leak_negative_shift.lookahead-*"))   # the temporary copies are gone
