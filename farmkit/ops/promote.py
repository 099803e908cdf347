"""Promote a research notebook to a deployable agent: ``agents/NAME/agent.ipynb`` + ``agent.yaml``.

A promotion is only kept if the promoted notebook makes the same decisions as the original: both
are run as backtests with their default parameters and their FMEL decisions compared bar by bar.
And it is refused (``allow_overfit=True``, ``--allow-overfit``, overrides it, and the manifest says
so) when the result is likely noise: the run's deflated Sharpe ratio over every trial of its family
is below 0.95, or the family's Probability of Backtest Overfitting (its trials on the same data) is
above 0.5 (:func:`farmkit.research.overfit.gate`).

The manifest says what reproduces the run: the data's fingerprint, the warm-up the strategy actually
needed (the bars before its first ``next()``: backtrader's minimum period - 1), Python and the versions of
the packages that matter, with every installed package pinned in ``requirements.lock`` beside it (and
its sha256 in the manifest), and the runner image (``FARM_RUNNER_IMAGE``, ideally by digest).
:func:`check` (``farm promote --check AGENT``) re-verifies an agent against all of it.

>>> agent = promote("notebooks/strategies/sma_crossover.ipynb", "sma-cross")
>>> agent.path, agent.manifest["strategy"], agent.manifest["warmup_bars"]
(PosixPath('agents/sma-cross'), 'SmaCross', 30)
>>> print(check("agents/sma-cross"))
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.metadata
import json
import platform
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
import yaml

from farmkit.version import __version__
from farmkit.research import notebooks, overfit, trials
from farmkit.errors import FarmError
from farmkit.fmel.stores import open_store
from farmkit.settings import Settings

# A Kubernetes DNS-1123 label: the agent name becomes the StatefulSet and pod name.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_WARMUP_RULE = ("warmup_bars: bars before the verified backtest's first next() (the strategy's minimum "
                "period - 1): the history a paper run primes its indicators with")
LOCK = "requirements.lock"
# Named in the manifest itself (the lock has everything): what decides a backtest's numbers.
_KEY_PACKAGES = ("backtrader", "numpy", "pandas", "pyarrow", "duckdb", "papermill", "ipykernel", "nbformat")
_DIST = "thefarm"
CHECK_SEGMENT = "promote-check"   # the registry's segment of `farm promote --check`'s re-run
_BAR_SIZE_KEYS = ("freq", "bar_size", "timeframe")
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


class PromoteError(FarmError, RuntimeError):
    """A notebook cannot be promoted; the message says what to fix."""


@dataclass(frozen=True)
class Agent:
    name: str
    path: Path
    manifest: dict


def promote(notebook: str | Path, name: str, *, agents_dir: str | Path = "agents", force: bool = False,
            settings: Settings | None = None, image: str | None = None, allow_overfit: bool = False) -> Agent:
    """Copy a strategy notebook to ``AGENTS_DIR/NAME/`` with a manifest, after checking it runs,
    defines a Strategy and that the copy decides exactly as the original did. ``image`` is the runner
    image the agent is pinned to (default ``FARM_RUNNER_IMAGE``; ``REPO/runner@sha256:...`` pins it).
    ``allow_overfit`` promotes a strategy the overfitting gate refuses (the manifest's ``overfitting``
    says it was overridden).

    >>> promote("notebooks/strategies/sma_crossover.ipynb", "sma-cross", force=True).manifest["verification"]
    {'decisions_sha256': '...', 'bars': 15600, 'run_ids': {'source': 'bt-...', 'agent': 'bt-...'}}
    """
    notebook = Path(notebook)
    _check_name(name)
    folder = Path(agents_dir) / name
    if folder.exists() and not force:
        raise PromoteError(f"agent {name!r} already exists at {folder}; choose another name, "
                           "or pass force=True (--force) to replace it")
    try:
        defaults = notebooks.parameters(notebook)
    except notebooks.NotebookError as exc:
        raise PromoteError(f"cannot promote {notebook}: {exc}") from None

    settings = settings or Settings.from_env()
    store = open_store(settings.store)
    source_run = _run(notebook, settings, store, "it")
    strategy = _strategy_class(source_run, notebook)
    source_decisions = _decisions(store, source_run.run_id)
    if not source_decisions:
        raise PromoteError(f"cannot promote {notebook}: it recorded no FMEL decisions; call "
                           f"fk.backtest({strategy}, ...) in the notebook so the promotion can be verified")
    overfitting = _overfitting(store, store.runs.get(source_run.run_id) or {})
    if not overfitting["passed"] and not allow_overfit:
        raise PromoteError(f"cannot promote {notebook}: {overfitting['reason']}")
    overfitting["overridden"] = not overfitting["passed"]

    # With force the old agent is set aside, not deleted, so a failed verification can put it back.
    backup = folder.with_name(f".{name}.previous-{uuid.uuid4().hex[:8]}") if folder.exists() else None
    if backup:
        folder.rename(backup)
    try:
        folder.mkdir(parents=True)
        agent_nb = folder / "agent.ipynb"
        nbformat.write(_stripped(nbformat.read(notebook, as_version=4)), agent_nb)
        agent_run = _run(agent_nb, settings, store, "the promoted copy")
        agent_decisions = _decisions(store, agent_run.run_id)
        bad_bar = _first_difference(source_decisions, agent_decisions)
        if bad_bar is not None:
            raise PromoteError(
                f"cannot promote {notebook}: the promoted copy decided differently from bar {bad_bar} on "
                f"(runs {source_run.run_id} and {agent_run.run_id}; compare them with "
                f"fk.fmel.explain(run_id, bar={bad_bar})). Make the notebook deterministic: fix random seeds "
                "and do not read the clock or files that change between runs")
        row = store.runs.get(source_run.run_id) or {}
        manifest = _manifest(name, strategy, defaults, agent_nb, warmup=row.get("warmup_bars"))
        manifest["verification"] = {"decisions_sha256": _decisions_hash(source_decisions),
                                    "bars": len(source_decisions),
                                    "run_ids": {"source": source_run.run_id, "agent": agent_run.run_id}}
        manifest["reproduce"] = {"data_fingerprint": row.get("data_fingerprint"),
                                 "warmup_bars": manifest["warmup_bars"]}
        manifest["environment"] = _write_lock(folder)
        manifest["image"] = _image(image if image is not None else settings.runner_image)
        manifest["overfitting"] = overfitting
        (folder / "agent.yaml").write_text(_dump(manifest), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        if backup:
            backup.rename(folder)
        raise
    if backup:
        shutil.rmtree(backup, ignore_errors=True)
    return Agent(name=name, path=folder, manifest=manifest)


def load_manifest(path: str | Path) -> dict:
    """Read an ``agent.yaml`` (or the agent folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "agent.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _check_name(name: str) -> None:
    if isinstance(name, str) and len(name) <= 63 and _NAME.match(name):
        return
    suggestion = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")[:63].strip("-") or "my-agent"
    raise PromoteError(f"agent name {name!r} is not valid: use lowercase letters, digits and dashes, "
                       f"starting and ending with a letter or digit, at most 63 characters "
                       f"(it becomes a Kubernetes name), e.g. {suggestion!r}")


def _run(path: Path, settings: Settings, store, what: str) -> notebooks.NotebookRun:
    try:
        return notebooks.run(path, {}, settings=settings, store=store, progress=False)
    except notebooks.NotebookError as exc:
        raise PromoteError(f"cannot promote: {what} fails when run with its default parameters; fix the "
                           f"failing cell and try again.\n{exc}") from None


def _strategy_class(run: notebooks.NotebookRun, notebook: Path) -> str:
    """The Strategy subclass the notebook defines; if several, the one its backtest ran."""
    found = []
    for cell in nbformat.read(run.output, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        # IPython magics and shell escapes are not Python: drop those lines before parsing.
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_is_strategy(base) for base in node.bases):
                found.append(node.name)
    if not found:
        raise PromoteError(f"cannot promote {notebook}: it defines no Strategy subclass; an agent needs "
                           "one, e.g. `class MyStrategy(fk.Strategy):` with a next() method")
    ran = (run.run or {}).get("strategy")
    return ran if ran in found else found[0]


def _is_strategy(base: ast.expr) -> bool:
    # fk.Strategy, bt.Strategy, farmkit.Strategy, a bare imported Strategy
    return ((isinstance(base, ast.Name) and base.id == "Strategy")
            or (isinstance(base, ast.Attribute) and base.attr == "Strategy"))


def _stripped(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    # Outputs and counts would make the file (and its sha256) change with every run of the same code.
    nb = copy.deepcopy(nb)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def _decisions(store, run_id: str) -> list[tuple[int, str]]:
    """(bar_number, canonical JSON of the decisions) per bar, without fields that may legitimately
    differ between two runs of the same code (confidence, signals, order ids)."""
    frame = store.fmel(run_id)
    rows = []
    for bar, text in zip(frame["bar_number"], frame["decisions"]):
        kept = [{k: d.get(k) for k in ("action", "symbol", "size", "reason")} for d in json.loads(text or "[]")]
        rows.append((int(bar), json.dumps(kept, sort_keys=True, separators=(",", ":"))))
    return rows


def _decisions_hash(rows: list[tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for bar, decisions in rows:
        digest.update(f"{bar}\t{decisions}\n".encode())
    return digest.hexdigest()


def _first_difference(a: list[tuple[int, str]], b: list[tuple[int, str]]) -> int | None:
    if _decisions_hash(a) == _decisions_hash(b):
        return None
    for (bar_a, dec_a), (bar_b, dec_b) in zip(a, b):
        if (bar_a, dec_a) != (bar_b, dec_b):
            return min(bar_a, bar_b)
    shorter = a if len(a) < len(b) else b  # one run stopped early: the first bar it lacks
    return shorter[-1][0] + 1 if shorter else 0


def _manifest(name: str, strategy: str, defaults: dict, agent_nb: Path, *, warmup) -> dict:
    symbols = defaults.get("symbols", defaults.get("symbol", []))
    bar_size = next((defaults[k] for k in _BAR_SIZE_KEYS if isinstance(defaults.get(k), str)), "1min")
    return {
        "name": name,
        "strategy": strategy,
        "notebook": agent_nb.name,
        "notebook_sha256": hashlib.sha256(agent_nb.read_bytes()).hexdigest(),
        "farmkit_version": __version__,
        "parameters": [{"name": k, "type": _type_name(v), "default": v} for k, v in defaults.items()],
        "symbols": [symbols] if isinstance(symbols, str) else list(symbols),
        "bar_size": bar_size,
        "warmup_bars": int(warmup) if _given(warmup) else 0,
        "resources": copy.deepcopy(RESOURCES),
    }


_OVERRIDE = "pass allow_overfit=True (farm promote --allow-overfit) and say why in the notebook"
_MAX_PBO_TRIALS = 200    # the family's latest trials on the same data that PBO is measured over


def _overfitting(store, row: dict) -> dict:
    """The overfitting gate's verdict on the source run, with its DSR and its family's PBO."""
    dsr = (row.get("metrics") or {}).get("dsr")
    dsr = float(dsr) if isinstance(dsr, (int, float)) else float("nan")
    pbo, n_trials = _family_pbo(store, row)
    verdict = overfit.gate(dsr, pbo, override=_OVERRIDE)
    return {"passed": bool(verdict.passed), "reason": verdict.reason, "dsr": None if dsr != dsr else round(dsr, 6),
            "pbo": None if pbo is None else round(float(pbo), 6), "pbo_trials": n_trials,
            "family": row.get("family") or row.get("strategy")}


def _family_pbo(store, row: dict) -> tuple[float | None, int]:
    # PBO compares trials on the same data: the family's done trials with the run's data fingerprint.
    key = row.get("family") or row.get("strategy")
    if not key or not row.get("data_fingerprint"):
        return None, 0
    frame = trials.family(store, key=key)
    frame = frame[frame["data_fingerprint"] == row["data_fingerprint"]].tail(_MAX_PBO_TRIALS)
    columns = {}
    for run_id in frame["run_id"]:
        returns = notebooks._trial_returns(store, run_id)
        if returns is not None and len(returns):
            columns[run_id] = returns
    if len(columns) < 2:
        return None, len(columns)
    matrix = pd.DataFrame(columns).sort_index()
    blocks = min(16, (len(matrix) // 2) // 2 * 2)     # even, at least two rows per block
    if blocks < 2:
        return None, len(columns)
    return overfit.pbo(matrix, n_splits=blocks).pbo, len(columns)


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def installed_packages() -> dict[str, str]:
    """Every installed distribution, ``{normalised name: version}`` (the first one on the path wins,
    as it does for an import)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        raw = dist.metadata["Name"]
        if raw:
            found.setdefault(_normalised(raw), dist.version)
    return dict(sorted(found.items()))


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_text(packages: dict[str, str]) -> str:
    lines = [f"{name}=={version}" for name, version in packages.items()]
    return ("# every package installed when this agent was promoted; "
            "`farm promote --check` compares it with the environment it runs in\n" + "\n".join(lines) + "\n")


def _read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normalised(name.strip())] = version.strip()
    return pins


def _write_lock(folder: Path) -> dict:
    packages = installed_packages()
    text = _lock_text(packages)
    (folder / LOCK).write_text(text, encoding="utf-8")
    keys = [_DIST, *_KEY_PACKAGES]
    return {"python": platform.python_version(), "implementation": sys.implementation.name,
            "platform": f"{platform.system().lower()}-{platform.machine()}",
            "packages": {k: packages[k] for k in keys if k in packages},
            "lock": LOCK, "lock_sha256": hashlib.sha256(text.encode()).hexdigest()}


def _image(ref: str | None) -> dict | None:
    if not ref:
        return None
    digest = ref.split("@", 1)[1] if "@sha256:" in ref else None
    return {"runner": ref, "digest": digest}


def _type_name(value) -> str:
    if value is None:
        return "any"
    if isinstance(value, list):
        kinds = {type(v).__name__ for v in value}
        return f"list[{kinds.pop()}]" if len(kinds) == 1 else "list"
    return type(value).__name__


def _dump(manifest: dict) -> str:
    text = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=120)
    # safe_dump writes no comments: put the warm-up rule above its key, where a reader looks for it.
    text = text.replace("\nwarmup_bars:", f"\n# {_WARMUP_RULE}\nwarmup_bars:", 1)
    return f"# farmkit agent manifest: agent.ipynb is the notebook to run, verified against its source\n{text}"


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found: one item per thing the manifest pins."""

    agent: str
    path: Path
    items: tuple[CheckItem, ...]

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    def __str__(self) -> str:
        head = (f"{self.agent}: reproduces its manifest" if self.ok else
                f"{self.agent}: does not reproduce its manifest "
                f"({', '.join(i.name for i in self.items if not i.ok)} differ)")
        return "\n".join([head, *(f"  {'ok  ' if i.ok else 'FAIL'} {i.name:<9} {i.detail}" for i in self.items)])


def check(agent_dir: str | Path, *, settings: Settings | None = None) -> CheckReport:
    """Re-verify an agent against its ``agent.yaml``: the notebook's sha256, the lock file and the
    installed packages, then a backtest of the agent with its default parameters, whose decisions,
    data fingerprint and warm-up must be the manifest's. The re-run is kept off the leaderboards and
    out of the strategy's trials (registry segment ``promote-check``).

    >>> report = check("agents/sma-crossover")
    >>> report.ok, [i.name for i in report.items if not i.ok]
    """
    folder = Path(agent_dir)
    try:
        manifest = load_manifest(folder)
    except FileNotFoundError:
        raise PromoteError(f"{folder} is not an agent: it has no agent.yaml; make one with "
                           "`farm promote NOTEBOOK --name NAME`") from None
    nb_path = folder / manifest.get("notebook", "agent.ipynb")
    items = [_same("notebook", manifest.get("notebook_sha256"),
                   hashlib.sha256(nb_path.read_bytes()).hexdigest() if nb_path.exists() else "missing", short=12)]
    env = manifest.get("environment") or {}
    lock = folder / env.get("lock", LOCK)
    if not env or not lock.exists():
        items.append(CheckItem("lock", False, f"no {lock.name} beside the manifest: promote the notebook again "
                                              "to pin its environment"))
    else:
        items.append(_same("lock", env.get("lock_sha256"), hashlib.sha256(lock.read_bytes()).hexdigest(), short=12))
        items.append(_packages(env, _read_lock(lock)))

    settings = (settings or Settings.from_env()).replace(run_id=None, redis="off")
    store = open_store(settings.store)
    with notebooks._environment(FARM_REDIS="off"):
        try:
            run = notebooks.run(nb_path, {}, settings=settings, store=store, progress=False)
        except notebooks.NotebookError as exc:
            run = None
            items.append(CheckItem("decisions", False, f"the agent's notebook fails now: {exc}"))
    if run is not None:
        store.runs.upsert(run.run_id, segment=CHECK_SEGMENT)
        row = store.runs.get(run.run_id) or {}
        decisions = _decisions(store, run.run_id)
        want = manifest.get("verification") or {}
        items.append(_same("decisions", want.get("decisions_sha256"), _decisions_hash(decisions), short=12,
                           extra=f"{len(decisions)} bars, run {run.run_id}"))
        items.append(_same("data", (manifest.get("reproduce") or {}).get("data_fingerprint"),
                           row.get("data_fingerprint")))
        items.append(_same("warm-up", manifest.get("warmup_bars"), row.get("warmup_bars")))
    image = manifest.get("image") or {}
    if image.get("digest"):
        here = _image(settings.runner_image) or {}
        items.append(_same("image", image["digest"], here.get("digest") or "not given (set FARM_RUNNER_IMAGE)"))
    return CheckReport(agent=manifest.get("name", folder.name), path=folder, items=tuple(items))


def _same(name: str, expected, found, *, short: int | None = None, extra: str = "") -> CheckItem:
    def show(v):
        return str(v)[:short] if short and isinstance(v, str) else str(v)
    more = f" ({extra})" if extra else ""
    if expected == found:
        return CheckItem(name, True, f"{show(found)}{more}")
    return CheckItem(name, False, f"manifest {show(expected)}, now {show(found)}{more}")


def _packages(env: dict, pins: dict[str, str]) -> CheckItem:
    installed = installed_packages()
    differ = [f"python: {env.get('python')} in the manifest, {platform.python_version()} installed"] \
        if env.get("python") != platform.python_version() else []
    for name, version in pins.items():
        if name not in installed:
            differ.append(f"{name}: {version} in the lock, not installed")
        elif installed[name] != version:
            differ.append(f"{name}: {version} in the lock, {installed[name]} installed")
    extra = sorted(set(installed) - set(pins))
    tail = f"; {len(extra)} installed package(s) not in the lock: {', '.join(extra[:5])}" if extra else ""
    if differ:
        return CheckItem("packages", False, "; ".join(differ) + tail
                         + f" — install the lock (pip install -r {env.get('lock', LOCK)}) to reproduce")
    return CheckItem("packages", True, f"{len(pins)} pinned, all installed at the lock's versions{tail}")
