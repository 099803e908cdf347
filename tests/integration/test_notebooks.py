"""Every notebook under notebooks/ and agents/ runs, and running it again reproduces its outputs.

Each notebook runs under papermill with the small parameters it declares for CI in its metadata,
``metadata["farm"]["ci_parameters"]`` (e.g. ``{"days": 2}``), then nbval re-runs the executed copy in
a fresh kernel and compares every output, with ``tests/nbval_sanitize.cfg`` masking what legitimately
changes between runs (run ids, temp paths, wall times, plotly's div ids).

Both executions start from an empty FARM_HOME of their own, so that a notebook that reads the
registry (a run's trial count, the last sweep) sees the same state twice. A notebook that needs data
there prepares it itself when asked by a CI parameter (sweep_report: ``demo_if_empty``).
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

from farmkit.research import notebooks

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
# nbval sanitizes string outputs only; plotly's default mime bundle is a JSON dict it compares as is
# (and the sma tearsheet's title carries the run id). As HTML, the same figure JSON is a string.
PLOTLY_RENDERER = "notebook_connected"


def _notebooks() -> list[Path]:
    found = []
    for folder in ("notebooks", "agents"):
        found += [p for p in sorted((ROOT / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    return found


def _ci_parameters(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    params = dict(nb.metadata.get("farm", {}).get("ci_parameters", {}))
    if params:  # papermill only warns about a misspelt parameter; here it is an error
        notebooks.coerce(params, notebooks.parameters(path), path.relative_to(ROOT))
    return params


def _environment(monkeypatch, home: Path) -> dict:
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)  # FARM_RUN_ID, FARM_STORE... of the calling shell must not leak in
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.setenv("FARM_PROGRESS", "off")
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "off")   # a PNG of a figure titled with its run id would differ
    monkeypatch.setenv("PLOTLY_RENDERER", PLOTLY_RENDERER)
    return dict(os.environ)


def _execute(path: Path, output: Path, params: dict) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name="python3",
                                   language="python", cwd=str(path.parent), progress_bar=False, log_output=False)
    except PapermillExecutionError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} stopped at cell {exc.exec_count} with {exc.ename}: {exc.evalue}\n"
                    f"--- cell source ---\n{exc.source}\n--- executed notebook: {output}", pytrace=False)


def _in_source_folder(executed: Path, folder: Path) -> None:
    # nbval starts its kernel in the folder of the file it tests, which is tmp_path; papermill ran the
    # notebook in its own folder. An unrun first cell puts the kernel there too (nbval checks no
    # outputs of unrun cells).
    nb = nbformat.read(executed, as_version=4)
    cell = nbformat.v4.new_code_cell(f"import os\nos.chdir({str(folder)!r})")
    cell.metadata["tags"] = ["nbval-ignore-output"]
    nb.cells.insert(0, cell)
    nbformat.write(nb, executed)


def _nbval(executed: Path, env: dict, workdir: Path) -> subprocess.CompletedProcess:
    # An empty ini of its own: pytest would otherwise find this repo's pyproject.toml (the sanitize
    # file's path counts when it looks for a config), and any addopts there (--nbval-lax) would apply.
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n")
    command = [sys.executable, "-m", "pytest", "--nbval", str(executed), f"--nbval-sanitize-with={SANITIZE}",
               "--nbval-current-env", "-c", str(ini), "--rootdir", str(workdir), "-p", "no:cacheprovider", "-q"]
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_runs_and_reproduces_its_outputs(path, tmp_path, monkeypatch):
    params = _ci_parameters(path)
    executed = tmp_path / path.name
    _environment(monkeypatch, tmp_path / "home-papermill")
    _execute(path, executed, params)

    _in_source_folder(executed, path.parent)
    env = _environment(monkeypatch, tmp_path / "home-nbval")
    result = _nbval(executed, env, tmp_path)
    output = (result.stdout + result.stderr)[-20_000:]
    assert result.returncode == 0, (f"re-running {path.relative_to(ROOT)} (with {params}) did not reproduce "
                                    f"its outputs; nbval said:\n{output}")


def test_sweep_report_without_split_says_how_to_ask_for_one(tmp_path, monkeypatch):
    path = ROOT / "notebooks" / "analysis" / "sweep_report.ipynb"
    _environment(monkeypatch, tmp_path / "home")
    executed = tmp_path / path.name
    _execute(path, executed, {"demo_if_empty": True, "demo_split": None, "metric": "dsr"})
    nb = nbformat.read(executed, as_version=4)
    shown = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "")
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "had no out-of-sample split" in shown and "split=0.7" in shown
    assert "6 trials, 6 done, 0 failed" in shown and "grid: fast × slow" in shown
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stderr"]
    assert not errors, errors


def test_sweep_report_sets_in_sample_beside_out_of_sample_under_readable_headers(tmp_path, monkeypatch):
    path = ROOT / "notebooks" / "analysis" / "sweep_report.ipynb"
    _environment(monkeypatch, tmp_path / "home")
    executed = tmp_path / path.name
    _execute(path, executed, {"demo_if_empty": True, "demo_split": 0.7})
    nb = nbformat.read(executed, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "oos = table[~in_sample]" in c.source)
    pages = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    (html,) = [p for p in pages if "<table" in p]
    # a table with a header per figure over "in-sample" and "out-of-sample", not a plotly table
    # squeezing a dozen "out-of-sample total_return" headers into one row
    assert html.count(">in-sample</th>") == html.count(">out-of-sample</th>") >= 4 and ">sharpe</th>" in html
    (figure,) = [p for p in pages if "plotly-graph-div" in p]     # the notebook_connected renderer's HTML
    assert '"type":"bar"' in figure and '"header":{"values"' not in figure   # no go.Table of its own


@pytest.mark.parametrize("text, expected", [
    ("BacktestResult(SmaCross run=bt-20261124-210040-50ee9c", "BacktestResult(SmaCross run=RUN-ID"),
    ("sweep `sweep-20261124-214523-796dc7`, trial of sw-20261124-214523-00aa11", "sweep `RUN-ID`, trial of RUN-ID"),
    ('<div id="c3821e6d-3d3f-43ae-9f1b-2290e3ea5b7c" class="plotly-graph-div"',
     '<div id="UUID" class="plotly-graph-div"'),
    ("No sweep in /tmp/farm-home-5jwrcp7f yet", "No sweep in TMPPATH yet"),
    ("/tmp/ipykernel_25338/3922115737.py:10: UserWarning", "TMPPATH:10: UserWarning"),
    ("started 2026-11-24T21:45:42.123456+00:00", "started WALLTIME"),
    ("bar at 2024-01-02 14:30:00+00:00", "bar at 2024-01-02 14:30:00+00:00"),  # data, not wall time
    ("CPU times: user 1.2 s, sys: 30 ms, total: 1.23 s", "CPU times: DURATION"),
    ("took 1.25 s; duration_s=3.4", "took DURATION; duration_s=DURATION"),
    ("sweep: 100%|##########| 6/6 [00:01<00:00, 4.12trial/s]", "sweep: 100%|##########| 6/6 [PROGRESS]"),
    ("<Figure object at 0x7f3a2c1d5e10>", "<Figure object at 0xADDRESS>"),
    ("fast=5 slow=30 sharpe=-1.25 total_return=-0.0054", "fast=5 slow=30 sharpe=-1.25 total_return=-0.0054"),
])
def test_sanitize_rules_mask_what_changes_and_nothing_else(text, expected):
    import re

    for regex, replace in get_sanitize_patterns(SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    assert text == expected
