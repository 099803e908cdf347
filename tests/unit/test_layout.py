"""farmkit's import structure: no circles, wings that point one way, and no import of the services."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "farmkit"

# Each wing may import the wings listed for it (and itself); everything may import the base.
WINGS = {
    "face": {"ops", "api", "research", "live", "kernel", "inputs", "stores"},
    "cli": {"ops", "api", "research", "live", "kernel", "inputs", "stores"},
    "api": {"ops", "research", "live", "kernel", "inputs", "stores"},
    "ops": {"research", "live", "kernel", "inputs", "stores"},
    "research": {"kernel", "inputs", "stores"},
    "live": {"kernel", "inputs", "stores"},
    "kernel": {"inputs", "stores"},
    "inputs": {"stores"},      # the market archive lives in the store
    "stores": set(),           # fmel/: FMEL, the run registry and their stores
    "base": set(),
}
KERNEL = {"kernel", "feeds", "strategy", "result", "metrics", "report", "figures", "leaderboard", "track_record", "embedded_redis", "redis_keeper", "secret_manager", "brokers"}
BASE = {"model", "settings", "errors", "health", "version", "redact"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _wing(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in ("__init__", "modes"):
        return "face"
    if top in ("research", "live", "ops", "api", "cli"):
        return top
    if top == "commandgroup":    # the farm command's click group
        return "cli"
    if top in ("data", "bus"):
        return "inputs"
    if top == "fmel":
        return "stores"
    if top in KERNEL:
        return "kernel"
    if top in BASE:
        return "base"
    raise AssertionError(f"{module} belongs to no wing: add it to tests/unit/test_layout.py")


def _imports() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
        graph[name] = found
    return graph


GRAPH = _imports()


def test_the_library_never_imports_the_services():
    offenders = {m: sorted(i for i in found if i.split(".")[0] in ("runner", "ingester"))
                 for m, found in GRAPH.items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_import_circles():
    graph = {m: {i for i in found if i in GRAPH and i != m and not m.startswith(i + ".")}
             for m, found in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_wings_import_only_downwards():
    wrong = []
    for module, found in GRAPH.items():
        wing = _wing(module)
        for target in found:
            if not target.startswith("farmkit.") or target == "farmkit":
                continue
            other = _wing(target)
            if other not in (wing, "base") and other not in WINGS[wing]:
                wrong.append(f"{module} ({wing}) imports {target} ({other})")
    assert wrong == []
