"""Tearsheet of a backtest: price with fills, equity, drawdown and position on one time axis.

Works from any result object that has these attributes (duck-typed; nothing here imports the engine):

    run_id: str                   the run's id
    strategy: str                 the strategy's name
    metrics: dict[str, float]     total_return, cagr, volatility, sharpe, sortino, max_drawdown,
                                  max_drawdown_duration_days, calmar, trades, win_rate, profit_factor,
                                  exposure, turnover, final_value (missing keys are left out)
    prices: dict[str, DataFrame]  symbol -> bars: UTC DatetimeIndex, float open/high/low/close/volume
    equity: Series                portfolio value per bar, UTC index
    drawdown: Series              <= 0, fraction below the running peak, same index as equity
    positions: DataFrame          same index as equity, one column per symbol, position in shares
    orders: DataFrame             symbol, side ('buy'/'sell'), status ('filled', 'cancelled',
                                  'rejected', ...), executed_at (UTC Timestamp or NaT),
                                  executed_price, size (signed), reason (str or None)

>>> fig = fk.report.tearsheet(result)          # fig.show() in a notebook
>>> fk.report.metrics_table(result.metrics)
>>> fk.report.to_html(result, "reports/sma_cross.html")
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from farmkit.errors import ParameterError

CANDLES_UP_TO = 2_000      # more candles than this are unreadable, and slow to draw: a close line then
WEBGL_ABOVE = 5_000        # SVG lines get sluggish past a few thousand points; WebGL does not
_BUY, _SELL = "#2ca02c", "#d62728"

# key -> (pretty name, kind); the order here is the order of the table.
_METRICS = {
    "total_return": ("Total return", "percent"),
    "cagr": ("CAGR", "percent"),
    "volatility": ("Volatility (ann.)", "percent"),
    "sharpe": ("Sharpe ratio", "ratio"),
    "sortino": ("Sortino ratio", "ratio"),
    "calmar": ("Calmar ratio", "ratio"),
    "max_drawdown": ("Max drawdown", "percent"),
    "max_drawdown_duration_days": ("Max drawdown duration", "days"),
    "max_drawdown_bars": ("Max drawdown duration (bars)", "count"),
    "trades": ("Trades", "count"),
    "win_rate": ("Win rate", "percent"),
    "profit_factor": ("Profit factor", "ratio"),
    "exposure": ("Exposure", "percent"),
    "turnover": ("Turnover (ann.)", "ratio"),
    "psr": ("Probabilistic Sharpe", "percent"),
    "dsr": ("Deflated Sharpe", "percent"),
    "trials": ("Trials in strategy family", "count"),
    "days": ("Daily returns", "count"),
    "min_track_record_days": ("Min track record (95%)", "days"),
    "start_value": ("Start value", "money"),
    "final_value": ("Final value", "money"),
}


def _format(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    if math.isinf(value):      # e.g. profit factor with no losing trade
        return "∞" if value > 0 else "-∞"
    if kind == "percent":
        return f"{value:.2%}"
    if kind == "days":
        return f"{value:,.0f} days"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "money":
        return f"{value:,.2f}"
    return f"{value:,.2f}"


def metric_keys(metrics) -> list[str]:
    """The keys of ``metrics`` in the table's order: the known metrics first, then the others."""
    return [k for k in _METRICS if k in metrics] + [k for k in metrics.keys() if k not in _METRICS]


def metrics_table(metrics) -> pd.DataFrame:
    """The metrics as a display table: pretty names, percentages and ratios formatted as text, and
    a note on each figure computed from fewer observations than it needs.

    ``metrics`` is a mapping or ``res.metrics``. Known metrics come first in a fixed order; unknown
    keys follow, formatted as plain numbers; counters kept as a dict (a paper run's ``messages``)
    show one row per entry.

    >>> fk.report.metrics_table({"total_return": 0.1234, "sharpe": 1.5, "days": 2})
                    value                                    note
    metric
    Total return   12.34%
    Sharpe ratio     1.50  from 2 daily returns; needs 30 or more
    Daily returns       2
    """
    from farmkit.metrics import caveats

    metrics = dict(metrics.items())
    notes = caveats(metrics)
    names, values, remarks = [], [], []
    for key in metric_keys(metrics):
        name, kind = _METRICS.get(key, (key.replace("_", " ").capitalize(), "ratio"))
        value = metrics[key]
        if isinstance(value, dict):
            for part, count in value.items():
                names.append(f"{name}: {part}")
                values.append(_format(count, "count"))
                remarks.append("")
            continue
        names.append(name)
        values.append(_format(value, kind))
        remarks.append(notes.get(key, ""))
    return pd.DataFrame({"value": values, "note": remarks}, index=pd.Index(names, name="metric"))


def _naive_utc(index) -> pd.DatetimeIndex:
    # plotly.js ignores UTC offsets in date strings; handing it naive UTC makes that explicit, and
    # the axis says "UTC".
    index = pd.DatetimeIndex(index)
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


def _minmax_positions(values: np.ndarray, max_points: int) -> np.ndarray:
    """Positions of the points to draw: at most ``max_points``, the first and last always included.

    Splits the series into buckets of consecutive bars and keeps the lowest and the highest bar of
    each. Unlike last-per-bucket, a spike or the drawdown trough cannot fall between two kept points.
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    size = -(-n // buckets)                               # ceil: every bucket holds a real bar
    grid = np.full(buckets * size, np.nan)
    grid[:n] = values
    grid = grid.reshape(buckets, size)
    offsets = np.arange(buckets) * size
    lows = np.where(np.isnan(grid), np.inf, grid).argmin(axis=1) + offsets
    highs = np.where(np.isnan(grid), -np.inf, grid).argmax(axis=1) + offsets
    keep = np.unique(np.concatenate(([0, n - 1], lows, highs)))
    return keep[keep < n]


def _breaks(index: pd.DatetimeIndex) -> list[dict]:
    """plotly rangebreaks for the stretches with no bar (nights, weekends, holidays), found in the
    data: every gap longer than an hour and than 1.5 bars. A market that never closes has none."""
    if len(index) < 3:
        return []
    ns = index.as_unit("ns").asi8
    diffs = np.diff(ns)
    spacing = int(np.median(diffs))
    if spacing <= 0:
        return []
    gap = diffs > max(1.5 * spacing, 3_600 * 10**9)
    by_size: dict[int, list[int]] = {}
    for start, size in zip(ns[:-1][gap] + spacing, diffs[gap] - spacing):
        by_size.setdefault(int(size), []).append(int(start))   # plotly sizes all values of a break alike
    return [dict(values=pd.to_datetime(starts).strftime("%Y-%m-%d %H:%M:%S.%f").tolist(), dvalue=size / 1e6)
            for size, starts in sorted(by_size.items())]


def _percent_format(drawdown: pd.Series) -> str:
    """A tick format with the decimals the drawdown's depth needs, so labels never repeat: -20%,
    -0.5%, -0.02%."""
    deepest = float(np.nanmax(np.abs(drawdown.to_numpy(dtype=float, na_value=np.nan)), initial=0.0))
    if not deepest > 0:
        return ".1~%"
    decimals = min(4, max(1, 1 - math.floor(math.log10(deepest * 100 / 4))))
    return f".{decimals}~%"


def _line(series: pd.Series, name: str, max_points: int, **style) -> go.Scatter | go.Scattergl:
    values = series.to_numpy(dtype=float, na_value=np.nan)
    keep = _minmax_positions(values, max_points)
    trace = go.Scattergl if len(keep) > WEBGL_ABOVE else go.Scatter
    return trace(x=_naive_utc(series.index)[keep], y=values[keep], name=name, mode="lines", **style)


def _fills(orders: pd.DataFrame, symbol: str) -> pd.DataFrame:
    if orders is None or orders.empty:
        return pd.DataFrame(columns=["side", "executed_at", "executed_price", "size", "reason"])
    executed_at = pd.to_datetime(orders["executed_at"], utc=True)
    done = (orders["status"] == "filled") & executed_at.notna() & (orders["symbol"] == symbol)
    fills = orders.loc[done, ["side", "executed_price", "size", "reason"]].copy()
    fills["executed_at"] = _naive_utc(executed_at[done])
    fills["reason"] = fills["reason"].map(lambda r: r if isinstance(r, str) and r else "—")
    return fills


def _markers(fills: pd.DataFrame, side: str, svg: bool = False) -> go.Scatter | go.Scattergl:
    # Fills are never downsampled: every trade the strategy made stays on the chart.
    rows = fills[fills["side"] == side]
    trace = go.Scattergl if len(rows) > WEBGL_ABOVE and not svg else go.Scatter
    colour = _BUY if side == "buy" else _SELL
    return trace(
        x=rows["executed_at"], y=rows["executed_price"].astype(float), name=f"{side}s",
        mode="markers",
        marker=dict(symbol="triangle-up" if side == "buy" else "triangle-down", size=11,
                    color=colour, line=dict(width=1, color="white")),
        customdata=np.column_stack([rows["size"].astype(float), rows["reason"].astype(object)]),
        hovertemplate=(f"<b>{side}</b> %{{x|%Y-%m-%d %H:%M:%S}} UTC<br>price %{{y:,.4f}}"
                       "<br>size %{customdata[0]:,}<br>%{customdata[1]}<extra></extra>"),
    )


def _pick_symbol(result, symbol: str | None) -> str:
    known = list(result.prices)
    if not known:
        raise ParameterError(f"run {result.run_id} has no prices to chart")
    if symbol is None:
        return known[0]
    if symbol not in result.prices:
        raise ParameterError(f"symbol {symbol!r} is not in run {result.run_id}; "
                             f"known symbols: {', '.join(map(str, known))}")
    return symbol


def _headline(metrics: dict[str, float]) -> str:
    parts = [f"{name} {_format(metrics[key], kind)}" for key, (name, kind) in _METRICS.items()
             if key in ("total_return", "sharpe", "max_drawdown", "trades") and key in metrics]
    return " · ".join(parts)


def tearsheet(result, symbol: str | None = None, max_points: int = 20_000) -> go.Figure:
    """Price with buy/sell fills, equity, drawdown and position, stacked on a shared time axis.

    ``symbol`` picks the instrument to chart (default: the first in ``result.prices``). Lines
    longer than ``max_points`` are thinned for display (lowest and highest bar per bucket, so
    extremes stay visible); fill markers are always all drawn. Stretches with no bar at all
    (nights, weekends, holidays) are cut out of the time axis; plotly cuts them only for SVG
    traces, so lines then keep at most ``WEBGL_ABOVE`` points (still a few per pixel).

    >>> fk.report.tearsheet(result, symbol="AAPL").show()
    """
    if max_points < 10:
        raise ParameterError(f"max_points must be at least 10, got {max_points}")
    symbol = _pick_symbol(result, symbol)
    bars = result.prices[symbol]
    # Breaks come from the run's clock (every symbol's bars), so no symbol's trading is cut out.
    clock = result.equity.index if len(result.equity) else bars.index
    breaks = _breaks(_naive_utc(clock))
    svg = bool(breaks)
    if svg:
        max_points = min(max_points, WEBGL_ABOVE)   # so every line is an SVG trace
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.025,
                        row_heights=[0.46, 0.22, 0.16, 0.16],
                        subplot_titles=(symbol, "Equity", "Drawdown", "Position"))

    if len(bars) <= min(CANDLES_UP_TO, max_points):
        # Grey candles: green and red are kept for the buy and sell markers drawn on top.
        price = go.Candlestick(x=_naive_utc(bars.index), open=bars["open"], high=bars["high"],
                               low=bars["low"], close=bars["close"], name="price",
                               increasing_line_color="#7f7f7f", decreasing_line_color="#1f1f1f",
                               opacity=0.8)
    else:
        price = _line(bars["close"], "price", max_points, line=dict(width=1, color="#444"))
    fig.add_trace(price, row=1, col=1)
    fills = _fills(result.orders, symbol)
    fig.add_trace(_markers(fills, "buy", svg), row=1, col=1)
    fig.add_trace(_markers(fills, "sell", svg), row=1, col=1)

    fig.add_trace(_line(result.equity, "equity", max_points, line=dict(width=1.5, color="#1f77b4")),
                  row=2, col=1)
    fig.add_trace(_line(result.drawdown, "drawdown", max_points, fill="tozeroy",
                        line=dict(width=1, color=_SELL), fillcolor="rgba(214,39,40,0.25)"),
                  row=3, col=1)
    # An engine leaves out a column for a symbol it never held: that is a flat zero position.
    held = result.positions[symbol] if symbol in result.positions else pd.Series(0.0, result.equity.index)
    fig.add_trace(_line(held, "position", max_points, line=dict(width=1.5, color="#9467bd", shape="hv")),
                  row=4, col=1)

    fig.update_layout(
        title=dict(text=f"{html.escape(str(result.strategy))} · run {html.escape(str(result.run_id))}"
                        f"<br><sup>{_headline(result.metrics)}</sup>", x=0.01),
        height=900, hovermode="x unified", template="plotly_white",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
        margin=dict(l=60, r=20, t=110, b=40),
    )
    # Candlesticks add a range slider by default; with four stacked panels it only takes space.
    fig.update_xaxes(rangeslider_visible=False, showspikes=True, spikemode="across", spikethickness=1)
    fig.update_xaxes(title_text="time (UTC)", row=4, col=1)
    if breaks:
        fig.update_xaxes(rangebreaks=breaks)
    fig.update_yaxes(tickformat=_percent_format(result.drawdown), row=3, col=1)
    return fig


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #222; }}
  table.metrics {{ border-collapse: collapse; margin-top: 0.5rem; }}
  table.metrics th, table.metrics td {{ padding: 0.25rem 1rem; border-bottom: 1px solid #ddd; }}
  table.metrics td {{ text-align: right; font-variant-numeric: tabular-nums; }}
  table.metrics th {{ text-align: left; font-weight: normal; }}
</style>
</head>
<body>
<h1>{title}</h1>
{figure}
<h2>Metrics</h2>
{table}
</body>
</html>
"""


def to_html(result, path: str | Path) -> Path:
    """Write the tearsheet and metrics as one self-contained HTML file that opens offline.

    plotly.js is embedded inline (about 5 MB) and the page loads nothing from the network, so the
    file can be mailed, archived or opened on a machine without internet. Parent directories are
    created. Returns the path written.

    >>> fk.report.to_html(result, "reports/sma_cross.html")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = tearsheet(result).to_html(
        include_plotlyjs=True, full_html=False, div_id="tearsheet",
        config={"displaylogo": False, "responsive": True},
    )
    table = metrics_table(result.metrics).to_html(classes="metrics", border=0, header=False,
                                                  index_names=False)
    title = html.escape(f"{result.strategy} · run {result.run_id}")
    path.write_text(_PAGE.format(title=title, figure=figure, table=table), encoding="utf-8")
    return path
