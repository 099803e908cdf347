"""Known look-ahead patterns in a notebook cell's source: where to look first when a check fails.

A pattern here is a suspicion, not a proof: ``x.max()`` of a whole series is a leak when a bar
reads it and harmless in a summary cell. The look-ahead check names a cell from these together with
where the notebook's own values first differ on cut data (:mod:`farmkit.research.lookahead`).

>>> [p.kind for p in leak_patterns("sig = df.close.shift(-5) > df.close")]
['negative shift']
"""

from __future__ import annotations

import ast
from typing import NamedTuple

_WHOLE_SERIES = {"mean", "std", "var", "max", "min", "median", "sum", "quantile", "idxmax", "idxmin", "rank"}
_WINDOWED = {"rolling", "expanding", "ewm", "groupby", "resample"}
_CUMULATIVE = {"cumsum", "cummax", "cummin", "cumprod"}
_FILLS_BACKWARDS = {"bfill", "backfill", "interpolate"}


class LeakPattern(NamedTuple):
    kind: str       # e.g. "negative shift"
    line: int       # 1-based line in the cell
    text: str       # that line, stripped


def leak_patterns(source: str) -> list[LeakPattern]:
    """The known look-ahead patterns in ``source`` (Python; IPython magics are ignored), in line order."""
    lines = source.splitlines()
    # Magics and shell escapes are not Python: blank them, keeping the line numbers.
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = {}
    for node in ast.walk(tree):
        kind = _kind(node)
        if kind is not None:
            found.setdefault((node.lineno, kind), LeakPattern(kind, node.lineno, lines[node.lineno - 1].strip()))
    return [found[k] for k in sorted(found)]


def _kind(node) -> str | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    name, receiver = node.func.attr, node.func.value
    keywords = {k.arg: k.value for k in node.keywords if k.arg}
    if name == "shift":
        periods = node.args[0] if node.args else keywords.get("periods")
        if isinstance(periods, ast.UnaryOp) and isinstance(periods.op, ast.USub):
            return "negative shift"
        if isinstance(periods, ast.Constant) and isinstance(periods.value, (int, float)) and periods.value < 0:
            return "negative shift"
    if name == "rolling" and _is_true(keywords.get("center")):
        return "centred rolling window"
    if name in _CUMULATIVE and _reversed(receiver):
        return "reversed cumulative operation"
    if name in _FILLS_BACKWARDS:
        return "backward fill"
    if name in ("fillna", "reindex", "asof") and _text(keywords.get("method")) in ("bfill", "backfill"):
        return "backward fill"
    if name == "resample" and _text(keywords.get("label")) != "right":
        return "resample labelled by the period's start"
    if name in _WHOLE_SERIES and not node.args and not _windowed(receiver):
        return "whole-series statistic"
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _text(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _reversed(node) -> bool:
    # x[::-1].cumsum(), x.iloc[::-1].cummax(), (x[::-1] * 2).cumsum(): a step of -1 anywhere before it.
    for sub in ast.walk(node):
        if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Slice) and sub.slice.step is not None:
            step = sub.slice.step
            if isinstance(step, ast.UnaryOp) and isinstance(step.op, ast.USub):
                return True
            if isinstance(step, ast.Constant) and isinstance(step.value, int) and step.value < 0:
                return True
    return False


def _windowed(node) -> bool:
    # df.close.rolling(5).max() is a trailing window; df.close.max() is the whole series.
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in _WINDOWED:
                return True
            node = node.func
        else:
            node = node.value
    return False
