"""Running research notebooks with papermill: parameters checked, the run registered, artifacts kept."""

from __future__ import annotations

import ast
import itertools
import multiprocessing
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd

from farmkit.engine import new_run_id
from farmkit.errors import FarmError, ParameterError
from farmkit.settings import Settings


class NotebookError(FarmError, RuntimeError):
    """A notebook could not be run, or one of its cells raised. ``run_id`` names the failed run."""

    def __init__(self, message: str, run_id: str | None = None):
        self.run_id = run_id
        super().__init__(message)


@dataclass(frozen=True)
class NotebookRun:
    run_id: str
    status: str
    output: Path
    tearsheet: Path | None
    run: dict


def parameters(path: str | Path) -> dict:
    """The defaults in a notebook's cell tagged ``parameters``.

    >>> parameters("notebooks/strategies/sma_crossover.ipynb")["fast"]
    10
    """
    path = Path(path)
    if not path.exists():
        raise NotebookError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return _assignments(cell.source, path)
    raise NotebookError(f"{path} has no cell tagged 'parameters'. In JupyterLab, select the cell with the "
                        "defaults, open the property inspector (gear icon) and add the tag 'parameters'.")


def _assignments(source: str, path: Path) -> dict:
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        raise NotebookError(f"{path}: parameter {target.id} must be a literal value "
                                            f"(number, string, list...), got {ast.unparse(node.value)}") from None
    return values


def coerce(params: dict, defaults: dict, notebook: str | Path = "notebook") -> dict:
    """Check names against the notebook's parameters and turn command-line strings into the
    type of each default: ``"5"`` → 5 for an int, ``"AAPL,MSFT"`` → ["AAPL", "MSFT"] for a list."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ParameterError(f"{notebook} has no parameter(s) {', '.join(unknown)}; its parameters are: "
                             + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
    out = {}
    for name, value in params.items():
        default = defaults[name]
        if not isinstance(value, str) or isinstance(default, str):
            out[name] = value
            continue
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[name] = value.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                out[name] = int(value)
            elif isinstance(default, float):
                out[name] = float(value)
            elif isinstance(default, list):
                parsed = ast.literal_eval(value) if value.startswith("[") else value.split(",")
                kind = type(default[0]) if default else str
                out[name] = [kind(v) for v in parsed]
            elif default is None:
                try:
                    out[name] = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    out[name] = value
            else:
                out[name] = type(default)(ast.literal_eval(value))
        except (ValueError, SyntaxError, TypeError):
            raise ParameterError(f"parameter {name} expects {type(default).__name__} like {default!r}, "
                                 f"got {value!r}") from None
    return out


@contextmanager
def _environment(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(path: str | Path, params: dict | None = None, *, settings: Settings | None = None,
        store=None, progress: bool = True, sweep_id: str | None = None) -> NotebookRun:
    """Run a strategy notebook as a backtest under papermill.

    The run is registered before the notebook starts (its first ``fk.backtest`` takes the id); the
    executed notebook and the HTML tearsheet go to ``FARM_HOME/runs/RUN_ID/``. A failing cell marks
    the run failed and raises :class:`NotebookError` naming the cell and the error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from farmkit.fmel.stores import open_store

    path = Path(path)
    params = coerce(dict(params or {}), parameters(path), path)
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    run_id = new_run_id()
    out_dir = store.run_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "notebook.ipynb"
    started = time.time()
    store.runs.upsert(run_id, agent_id=path.stem, strategy=path.stem, mode="backtest", status="queued",
                      params=params, notebook=str(path), sweep_id=sweep_id,
                      started_at=pd.Timestamp(started, unit="s", tz="UTC"))
    try:
        with _environment(FARM_RUN_ID=run_id, FARM_HOME=settings.home, FARM_STORE=settings.store,
                          FARM_PROGRESS="off"):
            papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name="python3",
                                       language="python", cwd=str(path.parent), progress_bar=progress, log_output=False)
    except PapermillExecutionError as exc:
        row = store.runs.get(run_id) or {}
        message = (f"{path}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}\n"
                   f"--- cell source ---\n{exc.source}")
        error = (row.get("error") or "") + ("\n" if row.get("error") else "") + message
        store.runs.upsert(run_id, status="failed", error=error,
                          finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
        raise NotebookError(f"{message}\nrun {run_id} is recorded as failed; the executed notebook is {output}",
                            run_id=run_id) from None
    except Exception as exc:  # the kernel died, could not start, ...: still a failed run, said plainly
        store.runs.upsert(run_id, status="failed", error=f"{type(exc).__name__}: {exc}",
                          finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
        raise NotebookError(f"{path} could not be run: {type(exc).__name__}: {exc}; run {run_id} is "
                            "recorded as failed", run_id=run_id) from exc
    row = store.runs.get(run_id) or {}
    if row.get("status") == "queued":  # the notebook ran no fk.backtest: nothing was measured
        store.runs.upsert(run_id, status="done", finished_at=pd.Timestamp.now(tz="UTC"),
                          duration_s=time.time() - started)
        row = store.runs.get(run_id)
    else:
        store.runs.upsert(run_id, notebook=str(path), duration_s=time.time() - started)
    tearsheet = out_dir / "tearsheet.html"
    return NotebookRun(run_id=run_id, status=row["status"], output=output,
                       tearsheet=tearsheet if tearsheet.exists() else None, run=row)


def grid_points(path: str | Path, grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, checked and typed against the notebook's parameters."""
    defaults = parameters(path)
    if not grid:
        raise ParameterError("the grid is empty: give at least one --grid NAME=V1,V2")
    for name, values in grid.items():
        if not values:
            raise ParameterError(f"grid parameter {name} has no values")
    names = list(grid)
    return [coerce(dict(zip(names, combo)), defaults, path) for combo in itertools.product(*grid.values())]


def _trial(path: str, params: dict, settings: Settings, sweep_id: str) -> dict:
    row = {**params, "run_id": None, "status": "failed", "error": None}
    try:
        result = run(path, params, settings=settings, progress=False, sweep_id=sweep_id)
        row.update(run_id=result.run_id, status=result.status, **(result.run.get("metrics") or {}))
    except NotebookError as exc:
        row.update(error=str(exc).splitlines()[0], run_id=exc.run_id)
    return row


def sweep(path: str | Path, grid: dict[str, list], *, workers: int = 1, settings: Settings | None = None,
          progress: bool = True) -> tuple[str, pd.DataFrame]:
    """Run a notebook once per grid point (one papermill run, one registered run each) under one
    sweep id; returns ``(sweep_id, table)``. A failing trial is a row with its error; the rest go on.

    >>> sweep_id, table = sweep("notebooks/strategies/sma_crossover.ipynb", {"fast": [5, 10], "slow": [30, 60]})
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    points = grid_points(path, grid)
    settings = (settings or Settings.from_env()).replace(run_id=None)
    sweep_id = new_run_id("sw")
    rows: list[dict | None] = [None] * len(points)
    bar = tqdm(total=len(points), unit="trial", desc=f"sweep {Path(path).stem}", disable=not progress)
    # Each trial starts its own kernel; processes (not threads) because a run is named to its
    # kernel through the environment, which is per process.
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context) as pool:
            futures = {pool.submit(_trial, str(path), p, settings, sweep_id): i for i, p in enumerate(points)}
            try:
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    best = max((r.get("sharpe", float("nan")) for r in rows if r and r["status"] == "done"),
                               default=float("nan"))
                    bar.set_postfix(best_sharpe=f"{best:.2f}")
                    bar.update()
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()
    table = pd.DataFrame([r for r in rows if r is not None])  # grid order
    out = settings.home / "sweeps" / sweep_id
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "trials.csv", index=False)
    return sweep_id, table
