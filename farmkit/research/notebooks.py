"""Running research notebooks with papermill: parameters checked, the run registered, artifacts kept."""

from __future__ import annotations

import ast
import functools
import itertools
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd

from farmkit.redact import redact
from farmkit.kernel import new_run_id
from farmkit.errors import FarmError, ParameterError
from farmkit.research.progress import PROGRESS_FILE, watch
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


_IPC_RUNTIME_DIR_MAX = 55   # a kernel's sockets are named <runtime dir>/kernel-<uuid>-ipc-<n> (Unix limit: 107)


def kernel_manager_class() -> type:
    """The kernel manager papermill and sweeps start kernels with: the kernel's channels are Unix
    sockets beside its connection file (in Jupyter's private runtime folder), not TCP ports on
    localhost that anyone on the machine can reach (ipykernel warns about those on every start).
    TCP where Unix sockets are not available or the runtime folder's path is too long for them."""
    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    if os.name != "posix" or len(jupyter_runtime_dir()) > _IPC_RUNTIME_DIR_MAX:
        return AsyncKernelManager
    return _ipc_kernel_manager()


@functools.cache
def _ipc_kernel_manager() -> type:
    import uuid

    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_core.utils import ensure_dir_exists
    from traitlets import CaselessStrEnum, default

    class IpcKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self):
            # Beside the connection file, or (no file chosen yet) a name of its own in the runtime
            # folder: jupyter_client's "kernel-ipc" in the working folder would be shared by every
            # kernel started there.
            if self.connection_file:
                return os.path.splitext(self.connection_file)[0] + "-ipc"
            runtime = jupyter_runtime_dir()
            ensure_dir_exists(runtime, 0o700)
            return os.path.join(runtime, f"kernel-{uuid.uuid4()}-ipc")

    return IpcKernelManager


def parameters(path: str | Path) -> dict:
    """The defaults in a notebook's cell tagged ``parameters``.

    >>> parameters("notebooks/strategies/sma_crossover.ipynb")["fast"]
    10
    """
    path = Path(path)
    if not path.exists():
        raise NotebookError(f"no notebook at {path}")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - not JSON, not a notebook, an unreadable file: all say the same
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise NotebookError(f"{path} is not a Jupyter notebook ({first}); pass an .ipynb file, e.g. "
                            "notebooks/strategies/sma_crossover.ipynb") from None
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
    for k, v in values.items():     # None: the variable is unset for the block
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(v)
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
    run_id, output, started = _register(store, path, params, sweep_id)
    # The kernel's backtests write their progress to the run's folder (their own output would land
    # in the executed notebook); this process shows it under the cell bar.
    shown = settings.progress if progress else "off"
    # A sweep's trial notebooks are kept, not shared: no static images of their figures (farmkit.figures).
    images = "off" if sweep_id else settings.figure_images
    try:
        # The kernel's backtests belong to whoever this run belongs to (FARM_OWNER; unset: nobody's).
        with _environment(FARM_RUN_ID=run_id, FARM_HOME=settings.home, FARM_STORE=settings.store,
                          FARM_PROGRESS=shown, FARM_FIGURE_IMAGES=images, FARM_OWNER=settings.owner,
                          FARM_AGENT_UID=settings.agent_uid), \
                (watch(output.parent / PROGRESS_FILE) if shown != "off" else nullcontext()):
            papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name="python3",
                                       language="python", cwd=str(path.parent), progress_bar=progress, log_output=False,
                                       kernel_manager_class=kernel_manager_class())
    except PapermillExecutionError as exc:
        message = _cell_failed(store, run_id, path, started, exc)
        raise NotebookError(f"{message}\nrun {run_id} is recorded as failed; the executed notebook is {output}",
                            run_id=run_id) from None
    except Exception as exc:  # the kernel died, could not start, ...: still a failed run, said plainly
        store.runs.upsert(run_id, status="failed", error=redact(f"{type(exc).__name__}: {exc}"),
                          finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
        raise NotebookError(f"{path} could not be run: {type(exc).__name__}: {exc}; run {run_id} is "
                            "recorded as failed", run_id=run_id) from exc
    return _finished(store, run_id, path, started, output)


def _register(store, path: Path, params: dict, sweep_id: str | None, *, segment: str | None = None,
              split: dict | None = None) -> tuple[str, Path, float]:
    """Register a notebook run as queued; returns its id, where its executed notebook goes, and when.
    A split trial's ``segment`` and ``split`` (see :func:`farmkit.research.split.trial_split`) tell
    the notebook's backtest which bars to run on."""
    run_id = new_run_id()
    out_dir = store.run_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    extra = {"segment": segment, "split": split} if split is not None else {}
    store.runs.upsert(run_id, agent_id=path.stem, strategy=path.stem, mode="backtest", status="queued",
                      params=params, notebook=str(path), sweep_id=sweep_id,
                      started_at=pd.Timestamp(started, unit="s", tz="UTC"), **extra)
    return run_id, out_dir / "notebook.ipynb", started


def _cell_failed(store, run_id: str, path: Path, started: float, exc) -> str:
    """Record a failing cell (a PapermillExecutionError) on the run; returns the message."""
    row = store.runs.get(run_id) or {}
    message = redact(f"{path}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}\n"
                     f"--- cell source ---\n{exc.source}")
    error = (row.get("error") or "") + ("\n" if row.get("error") else "") + message
    store.runs.upsert(run_id, status="failed", error=error,
                      finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
    return message


def _finished(store, run_id: str, path: Path, started: float, output: Path) -> NotebookRun:
    row = store.runs.get(run_id) or {}
    if row.get("status") == "queued":  # the notebook ran no fk.backtest: nothing was measured
        store.runs.upsert(run_id, status="done", finished_at=pd.Timestamp.now(tz="UTC"),
                          duration_s=time.time() - started)
        row = store.runs.get(run_id)
    else:
        store.runs.upsert(run_id, notebook=str(path), duration_s=time.time() - started)
    tearsheet = output.parent / "tearsheet.html"
    return NotebookRun(run_id=run_id, status=row["status"], output=output,
                       tearsheet=tearsheet if tearsheet.exists() else None, run=row)


def grid_points(path: str | Path, grid: dict[str, list], fixed: dict | None = None) -> list[dict]:
    """Every combination of the grid's values, checked and typed against the notebook's parameters;
    ``fixed`` parameters (typed the same way) are in every point."""
    defaults = parameters(path)
    if not grid:
        raise ParameterError("the grid is empty: give at least one --grid NAME=V1,V2")
    for name, values in grid.items():
        if not values:
            raise ParameterError(f"grid parameter {name} has no values")
    fixed = _fixed(path, grid, fixed, defaults)
    names = list(grid)
    return [{**fixed, **coerce(dict(zip(names, combo)), defaults, path)} for combo in itertools.product(*grid.values())]


def _fixed(path, grid: dict, fixed: dict | None, defaults: dict) -> dict:
    both = sorted(set(grid) & set(fixed or {}))
    if both:
        raise ParameterError(f"{', '.join(both)} given both as a swept and as a fixed parameter (-p)")
    return coerce(dict(fixed or {}), defaults, path)


def search_space(path: str | Path, space: dict, fixed: dict | None = None) -> tuple[dict, dict]:
    """``(space, fixed)`` typed against the notebook's parameters: a list of choices is coerced
    value by value, a ``"LO..HI"`` string becomes a range of the default's type (Int or Float from
    :mod:`farmkit.research.search`), ranges and other values are kept as given.

    >>> search_space(nb, {"fast": "3..30", "slow": ["50", "100"]})[0]
    {'fast': Int(lo=3, hi=30, step=1, log=False), 'slow': [50, 100]}
    """
    from farmkit.research.search import Float, Int

    defaults = parameters(path)
    if not space:
        raise ParameterError("the search space is empty: give at least one --grid NAME=V1,V2 or NAME=LO..HI")
    out = {}
    for name, values in space.items():
        if isinstance(values, str) and ".." in values:
            lo, _, hi = values.partition("..")
            ends = coerce({name: lo.strip()}, defaults, path)[name], coerce({name: hi.strip()}, defaults, path)[name]
            if isinstance(defaults[name], bool) or not all(isinstance(v, (int, float)) for v in ends):
                raise ParameterError(f"{name}={values}: a range LO..HI needs a number parameter; "
                                     f"{name} defaults to {defaults[name]!r}")
            out[name] = Int(*ends) if isinstance(defaults[name], int) else Float(float(ends[0]), float(ends[1]))
        elif isinstance(values, list):
            if not values:
                raise ParameterError(f"grid parameter {name} has no values")
            out[name] = [coerce({name: v}, defaults, path)[name] for v in values]
        else:
            coerce({name: defaults.get(name)}, defaults, path)   # the name must be the notebook's
            out[name] = values
    return out, _fixed(path, space, fixed, defaults)


# -- sweeps: several trials per kernel ------------------------------------------------------------
#
# Starting a kernel and importing farmkit, backtrader and pandas in it costs about a second per
# notebook; a sweep pays it once per worker instead. Each worker (a thread: the work happens in its
# kernel, a separate process) keeps one IPython kernel and runs every trial through papermill's own
# parameterization and execution manager, after a first cell that resets the kernel (see _SETUP).

SETUP_TAG = "farm-trial-setup"

# Run first in every trial, with store_history=False so that the notebook's own cells are numbered
# from 1 as in a fresh kernel. What it restores: the user namespace (IPython's reset, as %reset -f,
# plus a new history session: In/Out, _, execution count), os.environ, the working directory and
# sys.path as they were when the kernel started. What it cannot: imported modules stay imported (that
# is the saving), so module-level state, monkeypatches, global random seeds, plotting defaults,
# threads and open files of one trial are seen by the next trial in the same kernel.
_SETUP = """\
# farmkit sweep: trial {run_id} in a kernel reused across trials; reset to the kernel's starting state
import os, sys, types
base = sys.modules.setdefault("_farmkit_kernel_start", types.SimpleNamespace(
    environ=dict(os.environ), cwd=os.getcwd(), path=list(sys.path)))
os.environ.clear()
os.environ.update(base.environ)
os.environ["FARM_RUN_ID"] = {run_id!r}
os.chdir(base.cwd)
sys.path[:] = base.path
get_ipython().reset(new_session=True)
"""


class _Kernel:
    """One IPython kernel kept alive across trials, started on first use and after it dies."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd, self.env = cwd, env
        self.km = self.kc = None

    def client(self):
        from jupyter_core.utils import run_sync

        if self.km is not None and not run_sync(self.km.is_alive)():
            self.shutdown()
        if self.km is None:
            km = kernel_manager_class()(kernel_name="python3")
            run_sync(km.start_kernel)(cwd=str(self.cwd), env=self.env,
                                      extra_arguments=["--HistoryManager.hist_file=:memory:"])
            kc = km.client()
            kc.start_channels()
            try:
                run_sync(kc.wait_for_ready)(timeout=60)
            except BaseException:
                kc.stop_channels()
                run_sync(km.shutdown_kernel)(now=True)
                raise
            kc.allow_stdin = False
            self.km, self.kc = km, kc
        return self.km, self.kc

    def interrupt(self) -> None:
        """Stop the running cell (a KeyboardInterrupt in the kernel); safe from another thread."""
        km = self.km
        if km is not None and km.provisioner is not None and km.provisioner.process is not None:
            # The kernel runs in its own session (jupyter_client), so Ctrl-C in the terminal misses it.
            km.provisioner.process.send_signal(signal.SIGINT)

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        km, kc, self.km, self.kc = self.km, self.kc, None, None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            try:
                run_sync(km.shutdown_kernel)(now=True)
            except Exception:  # already gone: nothing left to stop
                pass


def _warm_trial(kernel: _Kernel, path: Path, params: dict, store, sweep_id: str, segment: str | None = None,
                split: dict | None = None) -> dict:
    """One trial in a reused kernel, registered like :func:`run`; returns its row of the sweep table."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NotebookExecutionManager
    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import prepare_notebook_metadata, raise_for_execution_errors, remove_error_markers
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook

    class Client(PapermillNotebookClient):
        def execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if SETUP_TAG not in cell.metadata.get("tags", []):
                return super().execute_cell(cell, cell_index, execution_count, store_history)
            cell = super().execute_cell(cell, cell_index, execution_count, store_history=False)
            cell.execution_count = None  # the kernel reports the previous trial's count
            return cell

    row = {**params, "run_id": None, "status": "failed", "error": None}
    run_id, output, started = _register(store, path, params, sweep_id, segment=segment, split=split)
    row["run_id"] = run_id
    nb = parameterize_notebook(load_notebook_node(str(path)), params, kernel_name="python3", language="python")
    setup = nbformat.v4.new_code_cell(_SETUP.format(run_id=run_id))
    setup.metadata.update(tags=[SETUP_TAG], papermill={})
    nb.cells.insert(0, setup)
    nb = remove_error_markers(prepare_notebook_metadata(nb, str(path), str(output)))
    manager = NotebookExecutionManager(nb, output_path=str(output), progress_bar=False)
    try:
        km, kc = kernel.client()
        client = Client(manager, km=km, kernel_name="python3", log=_quiet_log())
        client.kc = kc  # reuse the kernel's channels instead of opening new ones per trial
        manager.notebook_start()
        try:
            client.execute()
        finally:
            manager.notebook_complete()
        raise_for_execution_errors(manager.nb, str(output))
        write_ipynb(manager.nb, str(output))
    except PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":  # stopped by the sweep's Ctrl-C, not by the notebook
            return _interrupted(store, run_id, started, row)
        row["error"] = _cell_failed(store, run_id, path, started, exc).splitlines()[0]
        return row
    except Exception as exc:  # the kernel died (DeadKernelError) or would not start
        kernel.shutdown()  # the next trial starts a fresh one
        error = redact(f"{path} could not be run: {type(exc).__name__}: {exc}")
        store.runs.upsert(run_id, status="failed", error=error, finished_at=pd.Timestamp.now(tz="UTC"),
                          duration_s=time.time() - started)
        row["error"] = error
        return row
    result = _finished(store, run_id, path, started, output)
    # A metric named like a notebook parameter (``days``) does not hide the parameter's value.
    row.update(status=result.status, **{k: v for k, v in (result.run.get("metrics") or {}).items() if k not in params})
    return row


def _interrupted(store, run_id: str, started: float, row: dict) -> dict:
    store.runs.upsert(run_id, status="interrupted", finished_at=pd.Timestamp.now(tz="UTC"),
                      duration_s=time.time() - started)
    return {**row, "status": "interrupted", "error": "interrupted by Ctrl-C"}


def _quiet_log():
    import logging
    log = logging.getLogger("farmkit.research.notebooks.kernel")
    log.setLevel(logging.WARNING)
    return log


@dataclass(frozen=True)
class NotebookSweep:
    """A notebook sweep: ``table`` (one row per trial, in the order they were asked), ``returns``,
    the daily returns of each done trial (a series named by its run id), and with a split ``oos``,
    the out-of-sample run of the chosen trial next to its in-sample figures."""

    sweep_id: str
    table: pd.DataFrame
    returns: list
    interrupted: bool
    oos: pd.DataFrame | None = None


def sweep(path: str | Path, grid: dict[str, list], *, workers: int = 1, settings: Settings | None = None,
          progress: bool = True, fixed: dict | None = None) -> tuple[str, pd.DataFrame]:
    """Run a notebook once per grid point (each a registered run with its executed notebook) under one
    sweep id; returns ``(sweep_id, table)``. A failing trial is a row with its error; the rest go on.
    Each worker reuses one kernel across its trials, reset between them; Ctrl-C stops the sweep and
    keeps the finished trials (``table.attrs["interrupted"]`` is then True). ``fixed`` parameters
    are the same in every trial. :func:`run_sweep` also searches (TPE) and keeps daily returns.

    >>> sweep_id, table = sweep("notebooks/strategies/sma_crossover.ipynb", {"fast": [5, 10], "slow": [30, 60]})
    """
    done = run_sweep(path, grid, workers=workers, settings=settings, progress=progress, fixed=fixed)
    return done.sweep_id, done.table


def run_sweep(path: str | Path, grid: dict, *, workers: int = 1, settings: Settings | None = None,
              progress: bool = True, fixed: dict | None = None, search: str = "grid", n_trials: int | None = None,
              seed: int | None = None, constraints=None, select: str = "sharpe", split=None,
              warmup_bars: int = 0) -> NotebookSweep:
    """:func:`sweep` over every grid point, or with ``search="tpe"`` over ``n_trials`` points that
    Optuna's TPE picks from the space ``grid`` (see :func:`search_space` and
    :mod:`farmkit.research.search`), maximizing ``select``: ``workers`` trials are asked at a time
    and told back in order, so a ``seed`` (with the same ``workers``) gives the same trials whatever the timing.

    With ``split`` (a fraction or a date) the trials run on the in-sample side of the notebook's bars
    (segment ``in_sample``, off the leaderboard), and the done trial with the highest ``select`` is
    run once more on the out-of-sample side after ``warmup_bars`` bars of warm-up (segment
    ``out_of_sample``, its figures those of the out-of-sample part, on the leaderboard): ``oos``."""
    import queue
    import threading

    from tqdm.auto import tqdm

    from farmkit.fmel.stores import open_store
    from farmkit.research import split as splits
    from farmkit.research.search import TpeSearch

    path = Path(path).absolute()
    if search == "grid":
        points = grid_points(path, grid, fixed)
        total, fixed_typed = len(points), _fixed(path, grid, fixed, parameters(path))
    else:
        space, fixed_typed = search_space(path, grid, fixed)
        TpeSearch(space, n_trials, seed=seed, constraints=constraints)   # every mistake before the first run
        points, total = None, int(n_trials)
    asked = splits.trial_split(split, "in_sample", warmup_bars) if split is not None else None
    if asked is None and warmup_bars:
        raise ParameterError("warmup_bars warms up the out-of-sample run; it needs a split (e.g. --split 0.7)")
    settings = (settings or Settings.from_env()).replace(run_id=None)
    store = open_store(settings.store)
    sweep_id = new_run_id("sw")
    env = {k: v for k, v in os.environ.items() if k != "FARM_RUN_ID"}
    # no progress bars nor figure images (farmkit.figures) in trials: nobody watches or shares them
    env.update(FARM_HOME=str(settings.home), FARM_STORE=settings.store, FARM_PROGRESS="off", FARM_FIGURE_IMAGES="off")
    kernels = [_Kernel(path.parent, env) for _ in range(max(1, min(workers, total)))]
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work(kernel: _Kernel) -> None:
        try:
            while not stop.is_set():
                try:
                    i, point, segment, spec = todo.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    row = _warm_trial(kernel, path, point, store, sweep_id, segment, spec)
                    returns = _trial_returns(store, row["run_id"]) if row["status"] == "done" else None
                    done.put((i, row, returns))
                except Exception as exc:  # e.g. the registry could not be written: say so in the row
                    done.put((i, {**point, "run_id": None, "status": "failed",
                                  "error": f"{type(exc).__name__}: {exc}"}, None))
        finally:
            kernel.shutdown()

    rows: dict[int, dict] = {}
    returns: dict[int, pd.Series] = {}
    bar = tqdm(total=total + (asked is not None), unit="trial", desc=f"sweep {path.stem}", disable=not progress)
    threads = [threading.Thread(target=work, args=(k,), name=f"farm-sweep-{n}", daemon=True)
               for n, k in enumerate(kernels)]

    def collect(i: int, row: dict, series) -> None:
        rows[i] = row
        if series is not None:
            returns[i] = series.rename(row["run_id"])

    def wait_for(count: int) -> None:
        while len(rows) < count and any(t.is_alive() for t in threads):
            try:
                collect(*done.get(timeout=0.2))
            except queue.Empty:
                continue
            best = max((r.get("sharpe", float("nan")) for r in rows.values() if r["status"] == "done"),
                       default=float("nan"))
            bar.set_postfix(best_sharpe=f"{best:.2f}")
            bar.update()

    sent: dict[int, dict] = {}   # what each trial was asked to run: the row's parameters, typed

    def run_oos(point: dict) -> dict | None:
        i = len(points)
        todo.put((i, point, "out_of_sample", {**asked, "side": "out_of_sample"}))
        wait_for(i + 1)
        return rows.pop(i, None)   # the out-of-sample run is not a trial: it goes in oos, not the table

    segment = "in_sample" if asked is not None else None
    interrupted, oos = False, None
    try:
        for thread in threads:
            thread.start()
        try:
            if points is not None:
                for i, point in enumerate(points):
                    sent[i] = point
                    todo.put((i, point, segment, asked))
                wait_for(len(points))
            else:
                searcher, points = TpeSearch(space, n_trials, seed=seed, constraints=constraints), []
                while not searcher.finished:
                    batch = searcher.ask(len(kernels))
                    for i, point in enumerate(batch, start=len(points)):
                        sent[i] = {**fixed_typed, **point}
                        todo.put((i, sent[i], segment, asked))
                    wait_for(len(points) + len(batch))
                    for i, point in enumerate(batch, start=len(points)):
                        row = rows.get(i, {})
                        score = row.get(select) if row.get("status") == "done" else None
                        searcher.tell(point, None if score is None or pd.isna(score) else float(score))
                    points += batch
            if asked is not None:
                oos = _out_of_sample(rows, sent, list(grid), select, run_oos, store)
        except KeyboardInterrupt:
            # No new trials; running ones are interrupted in their kernels and recorded as such,
            # then every kernel is shut down by its worker.
            interrupted = True
            stop.set()
            for kernel in kernels:
                kernel.interrupt()
            for thread in threads:
                thread.join(timeout=30)
            while not done.empty():
                collect(*done.get_nowait())
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for kernel in kernels:  # a worker that did not finish in time: do not leave its kernel behind
            kernel.shutdown()
        bar.close()
    table = pd.DataFrame([rows[i] for i in sorted(rows)])  # the order trials were asked in
    if segment is not None and len(table):
        table.insert(0, "segment", segment)
    returns.pop(len(points or []), None)   # the out-of-sample run is not a trial of the search
    table.attrs["interrupted"] = interrupted
    out = settings.home / "sweeps" / sweep_id
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "trials.csv", index=False)
    if oos is not None:
        oos.to_csv(out / "oos.csv", index=False)
    return NotebookSweep(sweep_id, table, [returns[i] for i in sorted(returns)], interrupted, oos)


def _out_of_sample(rows: dict, sent: dict, names: list[str], select: str, run, store) -> pd.DataFrame:
    """The done in-sample trial with the highest ``select``, run out of sample: one row of
    ``SweepResult.oos`` (``run(point)`` runs it and returns its row, or None when interrupted)."""
    from farmkit.research.split import SIDE_BY_SIDE, best_trial

    order = sorted(rows)
    table = pd.DataFrame([rows[i] for i in order])
    try:
        best = best_trial(table, select)
    except (ValueError, KeyError) as exc:   # every in-sample trial failed: nothing to take out of sample
        return pd.DataFrame([{"window": 1, "oos_error": f"in sample: {exc}"}])
    chosen, point = best.to_dict(), sent[order[best.name]]
    row = run(point) or {}
    where = ((store.runs.get(row["run_id"]) or {}).get("split") or {}) if row.get("run_id") else {}
    out = {"window": 1, **{n: point.get(n) for n in names}, "is_run_id": chosen.get("run_id"),
           "oos_run_id": row.get("run_id"),
           **{k: pd.Timestamp(where[k]) if k in where else pd.NaT
              for k in ("is_start", "is_end", "oos_start", "oos_end")}}
    oos = (store.runs.get(row["run_id"]) or {}).get("metrics") or {} if row.get("status") == "done" else {}
    for name in SIDE_BY_SIDE:
        out[f"is_{name}"] = chosen.get(name, float("nan"))
        out[f"oos_{name}"] = oos.get(name, float("nan"))
    out.update(is_dsr=chosen.get("dsr", float("nan")), oos_psr=oos.get("psr", float("nan")),
               oos_warmup_trades=oos.get("warmup_trades", float("nan")),
               oos_error=None if row.get("status") == "done" else (row.get("error") or "interrupted"))
    return pd.DataFrame([out])


def _trial_returns(store, run_id: str) -> pd.Series | None:
    """The daily returns of a trial's run, from the equity its FMEL recorded."""
    import json

    from farmkit import metrics

    records = store.fmel(run_id)
    if records.empty:   # the notebook ran no fk.backtest
        return None
    equity = pd.Series(records["performance"].map(lambda p: json.loads(p)["equity"]).to_numpy(dtype="float64"),
                       index=pd.DatetimeIndex(records["timestamp"]).tz_convert("UTC"))
    return metrics.daily_returns(equity)
