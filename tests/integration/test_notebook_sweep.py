"""`notebooks.sweep`: several trials per kernel, each registered, isolated and equal to a cold run."""

import _thread
import threading
import time

import nbformat
import psutil
import pytest
from pathlib import Path

import farmkit as fk
from farmkit.research import notebooks

DAYS = 2
METRICS = ["sharpe", "total_return", "trades", "final_value", "max_drawdown"]

SOURCE = [
    # parameters
    "fast = 5\nslow = 20\nraise_at = -1\ndie_at = -1\nsleep_at = -1\ndays = 2",
    "import os, time\nimport backtrader as bt\nimport farmkit as fk\n"
    "bars = fk.data.synthetic('AAPL', start='2024-01-02', days=days, freq='1min', seed=3)",
    # A cell that sees what the previous trial in this kernel left behind fails.
    "assert 'leftover' not in globals(), f'namespace leaked: leftover={leftover}'\n"
    "assert 'SWEEP_TEST_LEAK' not in os.environ, 'os.environ leaked'\n"
    "leftover = fast\nos.environ['SWEEP_TEST_LEAK'] = str(fast)",
    "if fast == raise_at:\n    raise ValueError(f'bad grid point fast={fast}')\n"
    "if fast == die_at:\n    os._exit(1)\n"
    "if fast == sleep_at:\n    time.sleep(60)",
    "class Cross(fk.Strategy):\n    params = dict(fast=5, slow=20)\n\n"
    "    def __init__(self):\n"
    "        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))\n\n"
    "    def next(self):\n"
    "        if self.cross > 0:\n            self.buy(reason='up')\n"
    "        elif self.cross < 0 and self.position:\n            self.close(reason='down')",
    "res = fk.backtest(Cross, bars, fast=fast, slow=slow)",
]


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in SOURCE]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "cross.ipynb"
    nbformat.write(nb, path)
    return path


def _metrics(table, fast):
    return table.set_index("fast").loc[fast, METRICS].to_dict()


def test_trials_share_a_kernel_without_sharing_state(farm_home, notebook):
    # One worker: every trial runs in the same kernel, after a failing cell and after a dead kernel.
    sweep_id, table = notebooks.sweep(notebook, {"fast": [3, 4, 5, 6], "raise_at": [4], "die_at": [5]},
                                      workers=1, progress=False)
    assert list(table.fast) == [3, 4, 5, 6]
    assert list(table.status) == ["done", "failed", "failed", "done"], table.error.tolist()
    assert "cell 5 raised ValueError: bad grid point fast=4" in table.error[1]
    assert "DeadKernelError" in table.error[2]
    runs = fk.runs().set_index("run_id")
    assert set(runs.loc[table.run_id, "sweep_id"]) == {sweep_id}
    assert list(runs.loc[table.run_id, "status"]) == ["done", "failed", "failed", "done"]
    assert "raise ValueError" in runs.loc[table.run_id[1], "error"]  # the failing cell's source
    for run_id in table.run_id[[0, 3]]:  # each done trial has its own FMEL, one record per bar
        assert len(fk.fmel.load(run_id)) == DAYS * 390
    executed = nbformat.read(farm_home.home / "runs" / table.run_id[3] / "notebook.ipynb", as_version=4)
    setup, *cells = executed.cells
    assert notebooks.SETUP_TAG in setup.metadata.tags and table.run_id[3] in setup.source
    injected = [c for c in cells if "injected-parameters" in c.metadata.tags]
    assert len(injected) == 1 and injected[0].source.startswith("# Parameters\nfast = 6\n")
    # Numbered as in a fresh kernel: the reset cell takes no execution count.
    assert [c.execution_count for c in cells] == [1, 2, 3, 4, 5, 6, 7]


def test_results_match_cold_runs_and_do_not_depend_on_workers(farm_home, notebook):
    grid = {"fast": [3, 5, 8]}
    _, one = notebooks.sweep(notebook, grid, workers=1, progress=False)
    _, two = notebooks.sweep(notebook, grid, workers=2, progress=False)
    assert (one.status == "done").all() and (two.status == "done").all()
    for fast in grid["fast"]:
        assert _metrics(one, fast) == pytest.approx(_metrics(two, fast))
    cold = notebooks.run(notebook, {"fast": 5}, progress=False)
    assert cold.status == "done"
    assert {k: cold.run["metrics"][k] for k in METRICS} == pytest.approx(_metrics(one, 5))


def test_ctrl_c_keeps_finished_trials_and_shuts_kernels_down(farm_home, notebook):
    def interrupt_when_fast_2_runs():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = fk.runs()
            if any(p.get("fast") == 2 for p in runs.params):
                time.sleep(1.0)  # let it reach the sleeping cell
                _thread.interrupt_main()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=interrupt_when_fast_2_runs, daemon=True)
    watcher.start()
    started = time.monotonic()
    _, table = notebooks.sweep(notebook, {"fast": [1, 2, 3], "sleep_at": [2]}, workers=1, progress=False)
    watcher.join()
    assert time.monotonic() - started < 50  # the sleeping cell was interrupted, not waited for
    assert table.attrs["interrupted"]
    assert list(table.fast) == [1, 2] and list(table.status) == ["done", "interrupted"]
    assert fk.runs().set_index("run_id").loc[table.run_id[1], "status"] == "interrupted"
    kernels = [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert not [p for p in kernels if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_fk_sweep_takes_a_notebook(farm_home):
    import farmkit as fk
    root = Path(__file__).resolve().parents[2]
    res = fk.sweep(root / "notebooks" / "strategies" / "sma_crossover.ipynb", None,
                   {"fast": [3, 5], "days": [4]}, workers=1, progress=False)
    assert list(res.table.fast) == [3, 5] and (res.table.status == "done").all()
    assert res.best("sharpe")["fast"] in (3, 5)
    with pytest.raises(fk.ParameterError, match="data=None"):
        fk.sweep(root / "notebooks" / "strategies" / "sma_crossover.ipynb", fk.data.synthetic("X", days=1), {"fast": [3]})
