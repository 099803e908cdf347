"""What a search costs: the Probability of Backtest Overfitting, and the gate a promotion must pass.

PBO by combinatorially symmetric cross-validation (CSCV; Bailey, Borwein, López de Prado and Zhu,
"The Probability of Backtest Overfitting", 2015): the daily returns of every trial of a search are cut
into ``n_splits`` blocks of time; for every way of taking half the blocks as "in sample" and the rest
as "out of sample", the trial with the best in-sample Sharpe ratio is picked and its out-of-sample
rank among all trials is read. PBO is how often that pick lands in the bottom half out of sample: near
0 when the best trial is best for a reason, near 0.5 (or above) when picking it was picking noise.

>>> from farmkit.research.overfit import pbo, gate
>>> res = pbo(returns)                 # DataFrame: rows = days, columns = trials
>>> res.pbo, res.logits
>>> gate(dsr=0.97, pbo=res.pbo)        # Verdict(passed=True, reason=...)
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["MAX_PBO", "MIN_DSR", "PBOResult", "Verdict", "gate", "pbo", "pbo_many", "splits_for"]

MIN_DSR = 0.95   # a deflated Sharpe probability below this: the best trial may be luck of the search
MAX_PBO = 0.5    # a PBO above this: the in-sample best is more often than not below median out of sample


@dataclass(frozen=True)
class PBOResult:
    """CSCV over ``n_trials`` trials in ``n_splits`` blocks: ``pbo`` is the share of the
    ``n_combinations`` splits in which the in-sample best trial ranks at or below the median out
    of sample; ``logits`` are the logits of its relative out-of-sample rank (one per split; ≤ 0 is
    the bottom half); ``is_sharpe``/``oos_sharpe`` are the per-day Sharpe ratios of the chosen trial
    in and out of sample per split, and ``prob_oos_loss`` the share of splits where it lost money
    out of sample."""

    pbo: float
    logits: np.ndarray
    is_sharpe: np.ndarray
    oos_sharpe: np.ndarray
    n_splits: int
    n_trials: int
    n_combinations: int

    @property
    def prob_oos_loss(self) -> float:
        return float(np.mean(self.oos_sharpe < 0))

    def __repr__(self) -> str:
        return (f"PBOResult(pbo={self.pbo:.3f}, n_trials={self.n_trials}, n_splits={self.n_splits}, "
                f"n_combinations={self.n_combinations}, prob_oos_loss={self.prob_oos_loss:.3f})")


@functools.cache
def _halves(n_splits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every choice of n_splits/2 blocks out of n_splits as a 0/1 matrix (combinations × blocks), and
    for each row the row of its complement: the out-of-sample half of one split is the in-sample half
    of another, so each half's figures are computed once."""
    rows = list(itertools.combinations(range(n_splits), n_splits // 2))
    where = {chosen: i for i, chosen in enumerate(rows)}
    out = np.zeros((len(rows), n_splits))
    for i, chosen in enumerate(rows):
        out[i, list(chosen)] = 1.0
    complement = np.array([where[tuple(sorted(set(range(n_splits)) - set(c)))] for c in rows])
    out.setflags(write=False)
    complement.setflags(write=False)
    return out, complement


def _sharpe(total: np.ndarray, squares: np.ndarray, count: np.ndarray) -> np.ndarray:
    # Mean over sample standard deviation from sums; a flat trial (no variance) ranks lowest.
    mean = total / count
    var = squares - total * mean
    var /= count - 1
    flat = var <= 1e-24
    np.maximum(var, 1e-24, out=var)
    np.sqrt(var, out=var)
    mean /= var
    if flat.any():
        mean[flat] = -np.inf
    return mean


def _check(matrix: np.ndarray, n_splits: int) -> None:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2 or n_splits % 2:
        raise ValueError(f"n_splits must be an even whole number of at least 2, got {n_splits!r}")
    periods, n_trials = matrix.shape[-2:]
    if n_trials < 2:
        raise ValueError(f"PBO compares trials: it needs at least 2, got {n_trials}")
    if periods < 2 * n_splits:
        raise ValueError(f"{periods} periods cannot fill {n_splits} blocks of at least 2; "
                         f"use fewer splits (n_splits={max(2, (periods // 4) * 2)}) or more data")


def _cscv(matrix: np.ndarray, n_splits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, in-sample and out-of-sample Sharpe of the chosen trial, for families × periods ×
    trials of returns: each ``families × combinations``."""
    families, periods, n_trials = matrix.shape
    blocks = np.array_split(np.arange(periods), n_splits)
    total = np.stack([matrix[:, b].sum(axis=1) for b in blocks]).reshape(n_splits, -1)   # blocks × (F·N)
    squares = np.stack([(matrix[:, b] ** 2).sum(axis=1) for b in blocks]).reshape(n_splits, -1)
    count = np.array([len(b) for b in blocks], dtype="float64")
    train, complement = _halves(n_splits)
    shape = (len(train), families, n_trials)
    is_all = _sharpe((train @ total).reshape(shape), (train @ squares).reshape(shape),
                     (train @ count)[:, None, None])                                       # C × F × N
    oos_all = is_all[complement]
    best = np.argmax(is_all, axis=2)[..., None]
    chosen = np.take_along_axis(oos_all, best, axis=2)
    # Rank 1..N of the chosen trial out of sample (ties share the average rank), relative in (0, 1).
    rank = (oos_all < chosen).sum(axis=2) + ((oos_all == chosen).sum(axis=2) - 1) / 2 + 1
    omega = rank / (n_trials + 1)
    logits = np.log(omega / (1 - omega))
    return logits.T, np.take_along_axis(is_all, best, axis=2)[..., 0].T, chosen[..., 0].T


def pbo(returns, n_splits: int = 16) -> PBOResult:
    """The Probability of Backtest Overfitting of choosing the best of these trials by Sharpe ratio.

    ``returns`` has one row per period (day) and one column per trial (a DataFrame or a 2-D array);
    NaN counts as no return that period. ``n_splits`` (even, at least 2) blocks of consecutive rows,
    as equal as the rows allow; there must be at least two rows per block and two trials.

    >>> pbo(sw.returns).pbo        # sw = fk.sweep(...): daily returns of every done trial
    """
    matrix = np.asarray(returns.to_numpy(dtype="float64") if isinstance(returns, pd.DataFrame) else returns,
                        dtype="float64")
    if matrix.ndim != 2:
        raise ValueError(f"returns must be a 2-D matrix (rows = periods, columns = trials), got shape {matrix.shape}")
    _check(matrix, n_splits)
    logits, is_sharpe, oos_sharpe = _cscv(np.nan_to_num(matrix, nan=0.0)[None], n_splits)
    return PBOResult(pbo=float(np.mean(logits[0] <= 0)), logits=logits[0], is_sharpe=is_sharpe[0],
                     oos_sharpe=oos_sharpe[0], n_splits=n_splits, n_trials=matrix.shape[1],
                     n_combinations=logits.shape[1])


def pbo_many(returns: np.ndarray, n_splits: int = 16, *, chunk: int = 25) -> np.ndarray:
    """:func:`pbo` of many families at once: ``returns`` is families × periods × trials; one PBO
    per family. For simulations (``bench/promote_gate.py``), where one call per family is slow."""
    matrix = np.nan_to_num(np.asarray(returns, dtype="float64"), nan=0.0)
    if matrix.ndim != 3:
        raise ValueError(f"returns must be families × periods × trials, got shape {matrix.shape}")
    _check(matrix, n_splits)
    return np.concatenate([np.mean(_cscv(matrix[i:i + chunk], n_splits)[0] <= 0, axis=1)
                           for i in range(0, len(matrix), chunk)])


def splits_for(periods: int, n_splits: int = 16) -> int | None:
    """The most blocks up to ``n_splits`` that ``periods`` rows can fill (two rows each, an even
    number, at least 4), or None when there are too few rows for CSCV to say anything."""
    most = min(n_splits, (periods // 4) * 2)
    return most if most >= 4 else None


@dataclass(frozen=True)
class Verdict:
    """Whether a strategy may be promoted on its research record, and why (or why not)."""

    passed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.passed


def gate(dsr: float, pbo: float | None, *, min_dsr: float = MIN_DSR, max_pbo: float = MAX_PBO,
         override: str = "pass thresholds of your own (min_dsr=..., max_pbo=...) and say why") -> Verdict:
    """Refuse a strategy whose search does not price in its own overfitting.

    ``dsr`` is the deflated Sharpe probability of the chosen trial over its family
    (:func:`farmkit.research.trials.deflate`); ``pbo`` the family's Probability of Backtest Overfitting
    (:func:`pbo`), or None when there is no search to measure (a single trial). It passes when
    ``dsr >= min_dsr`` and ``pbo <= max_pbo``; ``override`` tells the reader how to go ahead anyway.

    >>> gate(0.97, 0.12)
    Verdict(passed=True, reason='DSR 0.970 >= 0.95 and PBO 0.120 <= 0.5: ...')
    """
    problems = []
    if dsr is None or not math.isfinite(dsr):
        problems.append("its deflated Sharpe ratio is undefined (fewer than 3 days of returns, or flat "
                        "equity), so nothing says it beats luck")
    elif dsr < min_dsr:
        problems.append(f"DSR {dsr:.3f} < {min_dsr}: after deflating for the trials tried, the chance that "
                        f"its true Sharpe ratio is above zero is only {dsr:.1%}, so the best result of the "
                        f"search may be the luck of trying many")
    if pbo is not None and not math.isfinite(pbo):
        problems.append("its PBO is undefined")
    elif pbo is not None and pbo > max_pbo:
        problems.append(f"PBO {pbo:.3f} > {max_pbo}: in {pbo:.0%} of the in-sample/out-of-sample splits the "
                        f"in-sample best trial ranked in the bottom half out of sample, so the choice is "
                        f"more likely fitted to noise than to something that lasts")
    if problems:
        return Verdict(False, "refused: " + "; ".join(problems) + f". To promote anyway, {override}.")
    pbo_text = f"PBO {pbo:.3f} <= {max_pbo}" if pbo is not None else "PBO not measured (no search of several trials)"
    return Verdict(True, f"DSR {dsr:.3f} >= {min_dsr} and {pbo_text}: the result survives the "
                         f"trials it took to find")
