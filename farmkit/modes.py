"""``fk.backtest`` as a notebook calls it: a backtest, or in a paper pod a paper session.

With ``FARM_MODE=paper`` (set by the runner), the same call hands its plan — strategy, parameters,
broker model — to a paper session on live bars, the notebook's bars priming the indicators. This
is the one place where the two modes part; the research tools (sweeps, look-ahead checks, parity)
call :func:`farmkit.research.backtest.backtest` directly and always backtest.
"""

from __future__ import annotations

import functools

from farmkit.research import backtest as engine
from farmkit.live.session import paper_from_plan

__all__ = ["backtest"]


@functools.wraps(engine.plan)
def backtest(*args, **kwargs):
    plan = engine.plan(*args, **kwargs)
    if plan.settings.mode == "paper":
        return paper_from_plan(plan)
    return engine.run(plan)


backtest.__name__ = backtest.__qualname__ = "backtest"
