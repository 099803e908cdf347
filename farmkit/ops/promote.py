"""Promote a research notebook to a deployable agent: ``agents/NAME/agent.ipynb`` + ``agent.yaml``.

A promotion is only kept if the promoted notebook makes the same decisions as the original: both
are run as backtests with their default parameters and their FMEL decisions compared bar by bar.

>>> agent = promote("notebooks/strategies/sma_crossover.ipynb", "sma-cross")
>>> agent.path, agent.manifest["strategy"], agent.manifest["warmup_bars"]
(PosixPath('agents/sma-cross'), 'SmaCross', 30)
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from farmkit.version import __version__
from farmkit.research import notebooks
from farmkit.errors import FarmError
from farmkit.fmel.stores import open_store
from farmkit.settings import Settings

# A Kubernetes DNS-1123 label: the agent name becomes the StatefulSet and pod name.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_WARMUP_HINTS = ("slow", "period", "lookback", "window")
_WARMUP_RULE = ("warmup_bars: the largest int parameter whose name contains "
                + ", ".join(_WARMUP_HINTS) + " (0 if there is none)")
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
            settings: Settings | None = None) -> Agent:
    """Copy a strategy notebook to ``AGENTS_DIR/NAME/`` with a manifest, after checking it runs,
    defines a Strategy and that the copy decides exactly as the original did.

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
        manifest = _manifest(name, strategy, defaults, agent_nb)
        manifest["verification"] = {"decisions_sha256": _decisions_hash(source_decisions),
                                    "bars": len(source_decisions),
                                    "run_ids": {"source": source_run.run_id, "agent": agent_run.run_id}}
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


def _manifest(name: str, strategy: str, defaults: dict, agent_nb: Path) -> dict:
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
        "warmup_bars": _warmup(defaults),
        "resources": copy.deepcopy(RESOURCES),
    }


def _warmup(defaults: dict) -> int:
    periods = [v for k, v in defaults.items()
               if isinstance(v, int) and not isinstance(v, bool) and any(h in k.lower() for h in _WARMUP_HINTS)]
    return max(periods, default=0)


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
