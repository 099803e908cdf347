"""Searching a parameter space with Optuna's TPE sampler instead of trying every grid point.

A space maps each parameter to its values: a list is a set of choices (as in a grid), a
``(lo, hi)`` tuple a range (whole numbers when both ends are ints, else real numbers), and
:class:`Int` / :class:`Float` say more (a step, a log scale).

>>> from farmkit.research.search import Int, Float
>>> space = {"fast": Int(3, 30), "slow": (20, 200), "stop": Float(0.005, 0.05, log=True), "side": ["long", "both"]}
>>> fk.sweep(SmaCross, bars, space, search="tpe", n_trials=40, seed=1,
...          constraints=lambda p: p["fast"] < p["slow"])

Constraints are a function (or a list of them) of the parameters that returns True for a point
worth running. An infeasible point is never run, registered or counted: the sampler is told it
was infeasible (so it learns to avoid the region) and asks again. A point already run is not run
again either. So the ``n_trials`` trials are distinct feasible points, each a registered run, and
each counted in the sweep's deflated Sharpe ratios. Seeded searches are reproducible: trials are
asked ``workers`` at a time and told back in order, so the same seed and number of workers give the
same trials in the same order, however long each takes.
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from farmkit.errors import ParameterError

__all__ = ["Float", "Int", "SEARCHES", "TpeSearch", "constraint"]

SEARCHES = ("grid", "tpe")
# Asking this many points in a row that are infeasible or already run ends the search early: the
# space has no more distinct feasible points, or the constraints leave almost none.
_MAX_MISSES = 100


@dataclass(frozen=True)
class Int:
    """Whole numbers from ``lo`` to ``hi`` (both included), every ``step``; ``log=True`` samples
    evenly on a log scale (``step`` must then be 1)."""

    lo: int
    hi: int
    step: int = 1
    log: bool = False

    def __post_init__(self):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (self.lo, self.hi, self.step)):
            raise ParameterError(f"Int needs whole numbers, got {self!r}; use Float for real numbers")
        if self.lo > self.hi or self.step < 1 or (self.log and (self.lo < 1 or self.step != 1)):
            raise ParameterError(f"{self!r}: need lo <= hi and step >= 1 (a log scale needs lo >= 1 and step 1)")

    def distribution(self):
        from optuna.distributions import IntDistribution
        return IntDistribution(int(self.lo), int(self.hi), log=self.log, step=int(self.step))


@dataclass(frozen=True)
class Float:
    """Real numbers from ``lo`` to ``hi``; ``step`` makes them a grid of that spacing, ``log=True``
    samples evenly on a log scale (``lo`` must be above 0)."""

    lo: float
    hi: float
    step: float | None = None
    log: bool = False

    def __post_init__(self):
        ends = (self.lo, self.hi)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in ends):
            raise ParameterError(f"Float needs finite numbers, got {self!r}")
        if self.lo > self.hi or (self.log and (self.lo <= 0 or self.step is not None)) \
                or (self.step is not None and not self.step > 0):
            raise ParameterError(f"{self!r}: need lo <= hi, a step > 0, and for a log scale lo > 0 and no step")

    def distribution(self):
        from optuna.distributions import FloatDistribution
        return FloatDistribution(float(self.lo), float(self.hi), log=self.log,
                                 step=None if self.step is None else float(self.step))


@dataclass(frozen=True)
class _Choice:
    values: tuple

    def distribution(self):
        from optuna.distributions import CategoricalDistribution
        return CategoricalDistribution(self.values)


def parse_space(space: Mapping) -> dict[str, Int | Float | _Choice]:
    """Each parameter's domain: lists are choices, ``(lo, hi)`` tuples ranges, Int/Float as given."""
    if not space:
        raise ParameterError("the search space is empty; give e.g. {'fast': (3, 30), 'slow': [50, 100]}")
    out = {}
    for name, values in space.items():
        if isinstance(values, (Int, Float)):
            out[name] = values
        elif isinstance(values, tuple) and len(values) == 2 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            lo, hi = values
            whole = all(isinstance(v, numbers.Integral) for v in values)
            out[name] = Int(int(lo), int(hi)) if whole else Float(float(lo), float(hi))
        elif isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ParameterError(f"space[{name!r}] must be a list of choices, a (lo, hi) range, Int(...) or "
                                 f"Float(...), got {values!r}")
        else:
            choices = tuple(_plain(v) for v in values)
            if not choices:
                raise ParameterError(f"space[{name!r}] is empty; give at least one value")
            out[name] = _Choice(choices)
    return out


def _plain(value):
    # Optuna keeps choices of None, bool, int, float and str; numpy scalars become Python ones.
    value = value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ParameterError(f"a choice must be None, a bool, a number or a string for search='tpe', got {value!r}")
    return value


def _size(domain) -> float:
    if isinstance(domain, _Choice):
        return len(set(domain.values))
    if isinstance(domain, Int):
        return (domain.hi - domain.lo) // domain.step + 1
    if domain.step is not None:
        return math.floor((domain.hi - domain.lo) / domain.step + 1e-9) + 1
    return math.inf


def _constraints(constraints) -> tuple[Callable, ...]:
    if constraints is None:
        return ()
    items = tuple(constraints) if isinstance(constraints, (list, tuple)) else (constraints,)
    for item in items:
        if not callable(item):
            raise ParameterError(f"constraints must be functions of the parameters returning True for a point "
                                 f"to run (e.g. lambda p: p['fast'] < p['slow']), got {item!r}")
    return items


_OPERATORS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
              ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Add: operator.add, ast.Sub: operator.sub,
              ast.Mult: operator.mul, ast.Div: operator.truediv, ast.USub: operator.neg, ast.Not: operator.not_}


def constraint(text: str) -> Callable[[dict], bool]:
    """A constraint from an expression over parameter names: comparisons, ``and``/``or``/``not``,
    ``+ - * /`` and number or string literals, nothing else (no calls, no attributes).

    >>> constraint("fast < slow")({"fast": 5, "slow": 50})
    True
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ParameterError(f"constraint {text!r} is not an expression; write e.g. 'fast < slow'") from None

    def value(node, point):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in point:
                raise ParameterError(f"constraint {text!r} names {node.id!r}, which is not a parameter of the "
                                     f"point ({', '.join(point)})")
            return point[node.id]
        if isinstance(node, ast.Compare):
            left = value(node.left, point)
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node, point)
                if type(op) not in _OPERATORS or not _OPERATORS[type(op)](left, right):
                    return False if type(op) in _OPERATORS else _refuse(op)
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            results = (bool(value(v, point)) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, (ast.BinOp, ast.UnaryOp)) and type(node.op) in _OPERATORS:
            args = (node.left, node.right) if isinstance(node, ast.BinOp) else (node.operand,)
            return _OPERATORS[type(node.op)](*(value(a, point) for a in args))
        return _refuse(node)

    def _refuse(node):
        raise ParameterError(f"constraint {text!r}: {type(node).__name__} is not allowed; use parameter names, "
                             f"numbers, comparisons, and/or/not and + - * /")

    def check(point: dict) -> bool:
        return bool(value(tree.body, point))

    check.__doc__ = text
    return check


class TpeSearch:
    """Optuna's TPE over ``space``, maximizing the trials' scores: ``ask(k)`` gives up to ``k``
    new feasible points (fewer when the space is exhausted), ``tell(point, score)`` reports one
    (None for a failed trial). ``check(point)`` validates a point before it is run (e.g. the
    strategy's parameter types); ``count`` is the number of distinct points asked so far.

    >>> search = TpeSearch({"fast": (3, 30)}, n_trials=20, seed=1)
    >>> for point in search.ask(2): search.tell(point, run(point))
    """

    def __init__(self, space: Mapping, n_trials: int, *, seed: int | None = None, constraints=None,
                 check: Callable[[dict], object] | None = None):
        import optuna

        if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral) or n_trials < 1:
            raise ParameterError(f"n_trials must be a whole number of at least 1 for search='tpe', got {n_trials!r} (on the command line: --trials N)")
        self.domains = parse_space(space)
        self.names = list(self.domains)
        self.n_trials = int(n_trials)
        self.constraints = _constraints(constraints)
        self.check = check
        optuna.logging.set_verbosity(optuna.logging.WARNING)   # one line per trial otherwise
        sampler = optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self._asked: dict[tuple, object] = {}   # point -> its optuna trial, awaiting a score
        self._seen: set[tuple] = set()
        self._scores: dict[tuple, float | None] = {}
        self.count = 0
        self.exhausted = False
        self.size = math.prod(_size(d) for d in self.domains.values())   # inf for a real range

    @property
    def finished(self) -> bool:
        return self.exhausted or self.count >= self.n_trials

    def ask(self, k: int) -> list[dict]:
        """Up to ``k`` distinct feasible points not asked before."""
        from optuna.trial import TrialState

        points, misses = [], 0
        distributions = {name: d.distribution() for name, d in self.domains.items()}
        while len(points) < k and self.count < self.n_trials:
            if len(self._seen) >= self.size:
                self.exhausted = True
                break
            trial = self.study.ask(distributions)
            point = {name: _plain(trial.params[name]) for name in self.names}
            key = tuple(point.values())
            feasible = all(bool(ok(dict(point))) for ok in self.constraints)
            if feasible and key not in self._seen:
                if self.check is not None:
                    self.check(point)
                self._seen.add(key)
                self._asked[key] = trial
                self.count += 1
                points.append(point)
                misses = 0
                continue
            # Told, not run, and not a trial: an infeasible point as infeasible, a repeat with the
            # score it already has (pruned while that is not known yet, or failed).
            trial.set_constraint("infeasible", 0.0 if feasible else 1.0)   # > 0: infeasible
            known = self._scores.get(key) if feasible else None
            if known is not None:
                self.study.tell(trial, known)
            else:
                self.study.tell(trial, state=TrialState.PRUNED)
            misses += 1
            if misses >= _MAX_MISSES:
                self.exhausted = True
                break
        return points

    def tell(self, point: dict, score: float | None) -> None:
        from optuna.trial import TrialState

        key = tuple(point[name] for name in self.names)
        trial = self._asked.pop(key)
        trial.set_constraint("infeasible", 0.0)
        if score is None or not math.isfinite(score):
            self._scores[key] = None
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self._scores[key] = float(score)
            self.study.tell(trial, float(score))

