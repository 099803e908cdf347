"""Drift alarms: does a paper agent still trade the way its backtest did?

The **baseline** is a backtest run of the agent (by default the verification run of its promotion,
``agent.yaml``'s ``verification.run_ids.source``), read from its FMEL: every fill (the decision bar's
close is the reference price, from ``market_state``; the fill's price, size and commission from
``actions``; the equity from ``performance``) and every round trip rebuilt from the fills. What paper
trading should look like is then (:meth:`Baseline.expected`): trades per day, turnover per day (traded
notional over equity), win rate, slippage against the decision bar's close, PnL per trade.

The paper run feeds each fill to a :class:`DriftMonitor` (``add_fill``: a few float operations), which
watches five streams of observations:

- ``slippage_bps``  per fill: (fill price - decision bar's close) / close, in basis points, positive when
  it costs the agent;
- ``notional``      per fill: |size x price| / equity (turnover);
- ``fill_gap_bars`` per fill after the first: bars since the previous fill (how often it trades);
- ``trade_pnl``     per round trip: PnL net of commission;
- ``trade_win``     per round trip: 1 when that PnL is > 0 (win rate).

**The test** is a two-sided CUSUM (Page) per stream on observations standardised by the baseline's mean
and standard deviation, clipped to +-4 (one outlier, an overnight gap say, then moves a sum by at most
4, and the limits need not make room for it): ``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``,
alarm when either passes ``h``. ``k = 0.25`` tunes it to shifts of about half a standard deviation. ``h`` is calibrated per stream
by simulation on the baseline's own observations (bootstrap paths of ``horizon`` observations; the
tail of their CUSUM maxima is extended with an exponential fit), so that a stream drawn from the
baseline raises a false alarm within ``horizon`` observations with probability ``alpha / streams``:
by the union bound, **a clean paper run of up to ``horizon`` (500) observations per stream raises a
false alarm with probability at most ``alpha`` (1%)**. ``bench/drift.py`` measures the rate and the
detection delay on injected drift. The guarantee holds for streams drawn from the baseline's
distribution: a stream with fewer than ``min_samples`` (20) baseline observations, whose
distribution it would estimate poorly, is not watched, nor is one constant in the baseline (slippage
on bars that open at the previous close, as synthetic bars do): it has no spread to measure against. Once a stream alarms the run stays flagged
(a new run starts clean; a resumed one starts its monitor again).

    baseline = Baseline.from_run(store, "bt-20261124-233656-62f315")
    monitor = DriftMonitor(baseline)
    alarms = monitor.add_fill(Fill(bar=812, symbol="AAPL", side=1, size=100, price=187.3,
                                   reference=187.1, commission=9.4, equity=100_250.0))
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import backtrader as bt
import numpy as np

__all__ = ["STREAMS", "Alarm", "Baseline", "DriftHook", "DriftMonitor", "Fill", "RoundTrips", "calibrate",
           "fills_from_fmel", "monitor_for", "simulate"]

log = logging.getLogger(__name__)

STREAMS = ("slippage_bps", "notional", "fill_gap_bars", "trade_pnl", "trade_win")
_FILL_STREAMS, _TRADE_STREAMS = STREAMS[:3], STREAMS[3:]
_EPS = 1e-9
CLIP = 4.0          # standardised observations are clipped to +-CLIP


class Fill(NamedTuple):
    """One execution: ``side`` +1 buy / -1 sell, ``size`` > 0, ``reference`` the close of the bar the
    order was decided on, ``commission`` of this execution, ``equity`` of the account at the fill."""
    bar: int
    symbol: str
    side: int
    size: float
    price: float
    reference: float
    commission: float
    equity: float


class Alarm(NamedTuple):
    """A stream that left its baseline: which way (``up``/``down``), after how many observations,
    the baseline's mean and the run's mean so far."""
    stream: str
    direction: str
    observations: int
    expected: float
    observed: float

    def describe(self) -> str:
        return (f"{self.stream} drifted {self.direction} after {self.observations} observations: "
                f"mean {self.observed:.4g} against {self.expected:.4g} in the baseline")


class RoundTrips:
    """Rebuilds round trips from fills, per symbol: a trade closes when the position is back at zero
    (a fill that crosses zero closes one and opens the next); its PnL is net of commission."""

    def __init__(self):
        self._position: dict[str, float] = {}
        self._flow: dict[str, float] = {}

    def add(self, fill: Fill) -> list[float]:
        """PnL of each trade this fill closes (none, one, or one when it reverses the position)."""
        pos, flow = self._position.get(fill.symbol, 0.0), self._flow.get(fill.symbol, 0.0)
        signed = fill.side * fill.size
        closed = []
        if pos and (pos > 0) != (signed > 0) and abs(signed) > abs(pos) + _EPS:
            part = abs(pos) / abs(signed)       # the share of the fill that closes the trade
            flow -= part * (signed * fill.price + fill.commission)
            closed.append(flow)
            signed, commission, pos, flow = signed * (1 - part), fill.commission * (1 - part), 0.0, 0.0
        else:
            commission = fill.commission
        flow -= signed * fill.price + commission
        pos += signed
        if abs(pos) <= _EPS * max(1.0, abs(fill.size)):
            closed.append(flow)
            pos, flow = 0.0, 0.0
        self._position[fill.symbol], self._flow[fill.symbol] = pos, flow
        return closed


def _fill_values(fill: Fill, last_bar: int | None) -> dict[str, float]:
    values = {"slippage_bps": fill.side * (fill.price - fill.reference) / fill.reference * 1e4
              if fill.reference else math.nan,
              "notional": abs(fill.size * fill.price) / fill.equity if fill.equity else math.nan}
    if last_bar is not None:
        values["fill_gap_bars"] = float(fill.bar - last_bar)
    return values


def observations(fills: Iterable[Fill]) -> dict[str, np.ndarray]:
    """Each stream's observations for a sequence of fills, in order."""
    out: dict[str, list] = {s: [] for s in STREAMS}
    trips, last = RoundTrips(), None
    for fill in fills:
        for name, value in _fill_values(fill, last).items():
            out[name].append(value)
        last = fill.bar
        for pnl in trips.add(fill):
            out["trade_pnl"].append(pnl)
            out["trade_win"].append(1.0 if pnl > 0 else 0.0)
    arrays = {s: np.array(v, dtype="float64") for s, v in out.items()}
    return {s: a[np.isfinite(a)] for s, a in arrays.items()}


def fills_from_fmel(frame) -> list[Fill]:
    """The fills of a run from its FMEL records (a frame with ``bar_number``, ``decisions``,
    ``market_state``, ``actions`` and ``performance``, as ``store.fmel(run_id)`` returns). A fill's
    reference is the close of the bar whose decision placed the order (what backtrader's
    ``order.created.pclose`` holds in the paper run)."""
    decided: dict[int, dict] = {}        # order ref -> market state of the bar that decided it
    commissions: dict[int, float] = {}   # order ref -> commission charged so far (FMEL's is cumulative)
    fills = []
    for bar, decisions, market, actions, performance in zip(frame.bar_number, frame.decisions, frame.market_state,
                                                            frame.actions, frame.performance):
        placed = [ref for d in json.loads(decisions) for ref in d.get("orders") or ()] if decisions else []
        events = json.loads(actions) if actions else []
        if not events and not placed:
            continue
        market = json.loads(market) if market else {}
        decided.update((ref, market) for ref in placed)
        equity = (json.loads(performance) if performance else {}).get("equity")
        for event in events:
            ref, symbol = event.get("order"), event.get("symbol")
            if ref not in decided:      # an order no decision names: its submission bar
                decided[ref] = market
            size = event.get("filled_size")
            if not size:
                continue
            total = event.get("commission") or 0.0
            commission, commissions[ref] = total - commissions.get(ref, 0.0), total
            reference = (decided[ref].get(symbol) or {}).get("close") or event.get("fill_price")
            fills.append(Fill(bar=int(bar), symbol=symbol, side=1 if event.get("side") == "buy" else -1,
                              size=abs(float(size)), price=float(event["fill_price"]), reference=float(reference),
                              commission=float(commission), equity=float(equity) if equity else math.nan))
    return fills


@dataclass(frozen=True)
class Baseline:
    """What a run's trading looked like: each stream's observations and the run's length in days."""
    run_id: str
    samples: Mapping[str, np.ndarray]
    days: float
    fills: int = 0

    @classmethod
    def from_fills(cls, fills: list[Fill], *, days: float, run_id: str = "") -> Baseline:
        return cls(run_id=run_id, samples=observations(fills), days=float(days), fills=len(fills))

    @classmethod
    def from_fmel(cls, frame, run_id: str = "") -> Baseline:
        """From a run's FMEL records (its days: the distinct UTC dates of its bars)."""
        import pandas as pd

        days = max(1, pd.DatetimeIndex(frame.timestamp).normalize().nunique()) if len(frame) else 1
        return cls.from_fills(fills_from_fmel(frame), days=days, run_id=run_id)

    @classmethod
    def from_run(cls, store, run_id: str) -> Baseline:
        """From the FMEL of run ``run_id`` in ``store``; a run with no records is an error naming it."""
        frame = store.fmel(run_id)
        if frame is None or not len(frame):
            raise LookupError(f"no FMEL records of baseline run {run_id!r} in the store; a drift baseline is a "
                              "backtest run of the agent (FARM_DRIFT_BASELINE, or the agent's verification run)")
        return cls.from_fmel(frame, run_id=run_id)

    def expected(self) -> dict[str, float]:
        """What paper trading should look like, per day and per trade."""
        s = self.samples
        mean = (lambda a: float(np.mean(a)) if len(a) else math.nan)
        return {"trades_per_day": len(s["trade_pnl"]) / self.days,
                "fills_per_day": self.fills / self.days,
                "turnover_per_day": float(np.sum(s["notional"])) / self.days,
                "win_rate": mean(s["trade_win"]), "slippage_bps": mean(s["slippage_bps"]),
                "pnl_per_trade": mean(s["trade_pnl"])}


def _scale(values: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(values))
    return mean, max(float(np.std(values)), _EPS, 1e-6 * abs(mean))


def _cusum_maxima(z: np.ndarray, k: float, horizon: int, sims: int, rng: np.random.Generator) -> np.ndarray:
    # The largest two-sided CUSUM value of each of ``sims`` bootstrap paths of ``horizon`` draws of z.
    up, down, peak = np.zeros(sims), np.zeros(sims), np.zeros(sims)
    for _ in range(horizon):
        draw = z[rng.integers(0, len(z), sims)]
        np.maximum(up + draw - k, 0.0, out=up)
        np.maximum(down - draw - k, 0.0, out=down)
        np.maximum(peak, np.maximum(up, down), out=peak)
    return peak


def calibrate(z: np.ndarray, *, k: float, horizon: int, level: float, sims: int = 4000, seed: int = 0) -> float:
    """The CUSUM limit ``h`` a path of ``horizon`` draws from ``z`` passes with probability ``level``:
    simulated maxima, their top 10% fitted with an exponential tail (CUSUM maxima have one) to reach
    levels beyond what the simulations see."""
    maxima = np.sort(_cusum_maxima(np.asarray(z, dtype="float64"), k, horizon, sims, np.random.default_rng(seed)))
    u = float(np.quantile(maxima, 0.9))
    if level >= 0.1:
        return max(float(np.quantile(maxima, 1 - level)), k)
    excess = maxima[maxima > u] - u
    scale = float(np.mean(excess)) if len(excess) else 0.0
    return max(u + scale * math.log(0.1 / level), k)


@dataclass
class _Stream:
    mean: float
    std: float
    limit: float
    up: float = 0.0
    down: float = 0.0
    n: int = 0
    total: float = 0.0
    alarm: Alarm | None = None


@dataclass
class DriftMonitor:
    """Sequential drift test of one paper run against its :class:`Baseline` (see the module's doc).
    ``add_fill`` returns the alarms that fill raised; ``drifting`` says whether any stream alarmed."""
    baseline: Baseline
    alpha: float = 0.01
    horizon: int = 500
    k: float = 0.25
    min_samples: int = 20
    seed: int = 0
    streams: dict = field(init=False)

    def __post_init__(self):
        usable = {s: v for s, v in self.baseline.samples.items() if len(v) >= self.min_samples and np.ptp(v) > 0}
        self.streams = {}
        for i, (name, values) in enumerate(sorted(usable.items())):
            mean, std = _scale(values)
            limit = calibrate(np.clip((values - mean) / std, -CLIP, CLIP), k=self.k, horizon=self.horizon,
                              level=self.alpha / max(1, len(usable)), seed=self.seed + i)
            self.streams[name] = _Stream(mean, std, limit)
        self.reset()

    def reset(self) -> None:
        """Forget every observation and alarm (the limits stay): the monitor of a new run."""
        for stream in self.streams.values():
            stream.up = stream.down = stream.total = 0.0
            stream.n, stream.alarm = 0, None
        self.alarms: list[Alarm] = []
        self._trips, self._last_bar = RoundTrips(), None

    @property
    def watched(self) -> list[str]:
        return sorted(self.streams)

    @property
    def drifting(self) -> bool:
        return bool(self.alarms)

    def add_fill(self, fill: Fill) -> list[Alarm]:
        raised = []
        for name, value in _fill_values(fill, self._last_bar).items():
            raised += self.observe(name, value)
        self._last_bar = fill.bar
        for pnl in self._trips.add(fill):
            raised += self.observe("trade_pnl", pnl)
            raised += self.observe("trade_win", 1.0 if pnl > 0 else 0.0)
        return raised

    def observe(self, name: str, value: float) -> list[Alarm]:
        """One observation of one stream (what ``add_fill`` derives from a fill); the alarm it raises."""
        stream = self.streams.get(name)
        if stream is None or not math.isfinite(value):
            return []
        z = min(CLIP, max(-CLIP, (value - stream.mean) / stream.std))
        stream.up = max(0.0, stream.up + z - self.k)
        stream.down = max(0.0, stream.down - z - self.k)
        stream.n += 1
        stream.total += value
        if stream.alarm is None and max(stream.up, stream.down) > stream.limit:
            stream.alarm = Alarm(name, "up" if stream.up > stream.down else "down", stream.n, stream.mean,
                                 stream.total / stream.n)
            self.alarms.append(stream.alarm)
            return [stream.alarm]
        return []

    def state(self) -> dict:
        """For the status file and the leaderboard row: whether it drifts, which streams, and why."""
        return {"drifting": self.drifting, "baseline": self.baseline.run_id,
                "alarms": [a._asdict() for a in self.alarms],
                "observations": {n: s.n for n, s in self.streams.items()}}


def simulate(monitor: DriftMonitor, *, runs: int, horizon: int | None = None, drift=None,
             seed: int = 0) -> list[Alarm | None]:
    """Paper runs drawn from the monitor's baseline (bootstrap: each fill's slippage and notional
    together, each round trip's PnL and win together), ``horizon`` observations per stream, through
    ``monitor`` (reset for each); the first alarm of each run, or None. ``drift(draws, rng)`` changes
    a run's draws (a dict of stream -> array) before they are observed: an injected drift.

    >>> clean = simulate(monitor, runs=2000)
    >>> sum(a is not None for a in clean) / len(clean)      # the false-alarm rate
    """
    rng = np.random.default_rng(seed)
    samples, horizon = monitor.baseline.samples, horizon or monitor.horizon
    groups = [("slippage_bps", "notional"), ("fill_gap_bars",), ("trade_pnl", "trade_win")]
    first = []
    for _ in range(runs):
        draws = {}
        for group in groups:
            size = min(len(samples[s]) for s in group)
            if size == 0:
                continue
            index = rng.integers(0, size, horizon)
            draws.update({s: samples[s][index] for s in group})
        if drift is not None:
            draws = drift(draws, rng)
        monitor.reset()
        alarm = None
        for i in range(horizon):
            for name, values in draws.items():
                raised = monitor.observe(name, float(values[i]))
                if raised and alarm is None:
                    alarm = raised[0]
            if alarm is not None:
                break
        first.append(alarm)
    monitor.reset()
    return first


def monitor_for(given, configured: str | None, store) -> DriftMonitor | None:
    """The monitor of a paper run: ``given`` (a run id, a :class:`Baseline` or a monitor) or else the
    ``configured`` run id (``FARM_DRIFT_BASELINE``); None without either. A baseline given must be in
    ``store``; a configured one (a pod's, from the agent's manifest) may be a run of another machine's
    store: then the run goes on without drift alarms, and the log says so."""
    source = given if given is not None else configured
    if source is None or isinstance(source, DriftMonitor):
        return source
    try:
        baseline = source if isinstance(source, Baseline) else Baseline.from_run(store, str(source))
    except LookupError as exc:
        if given is not None:
            raise
        log.warning("no drift alarms for this run: %s", exc)
        return None
    monitor = DriftMonitor(baseline)
    log.info("drift alarms against baseline run %s on %s", baseline.run_id,
             ", ".join(monitor.watched) or "no stream (the baseline has too few fills)")
    return monitor


class DriftHook(bt.Analyzer):
    """Feeds a paper run's fills to its :class:`DriftMonitor` as the broker reports them (the strategy
    thread, a few float operations per fill). An alarm is logged and noted as a ``drift`` data event in
    the FMEL of the bar it is raised on. Orders replayed after a restart are not fills of this run."""

    params = (("monitor", None), ("recorder", None))

    def start(self):
        self._filled: dict[int, float] = {}
        self._charged: dict[int, float] = {}

    def notify_order(self, order):
        recorder, ref = self.p.recorder, order.ref
        if recorder.replaying or ref in recorder.ignored:
            return
        executed = order.executed.size
        delta = executed - self._filled.get(ref, 0.0)
        if not delta:
            return
        self._filled[ref] = executed
        commission = order.executed.comm - self._charged.get(ref, 0.0)
        self._charged[ref] = order.executed.comm
        fill = Fill(bar=recorder.first_bar + recorder.bars, symbol=order.data._name, side=1 if delta > 0 else -1,
                    size=abs(delta), price=order.executed.price, reference=order.created.pclose or order.executed.price,
                    commission=commission, equity=self.strategy.broker.getvalue())
        for alarm in self.p.monitor.add_fill(fill):
            text = f"{alarm.describe()} (baseline run {self.p.monitor.baseline.run_id})"
            log.warning("drift: %s", text)
            recorder.note_event(fill.symbol if alarm.stream in _FILL_STREAMS else None, "drift", text)

    def get_analysis(self):
        return self.p.monitor.state()
