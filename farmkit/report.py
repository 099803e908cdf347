"""Tearsheet of a backtest: every symbol's price with fills and indicators, equity against a benchmark,
drawdown, exposure and trade P&L on one time axis, and monthly returns.

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
    "alpha": ("Alpha (ann.) vs buy and hold", "percent"),
    "beta": ("Beta vs buy and hold", "ratio"),
    "information_ratio": ("Information ratio vs buy and hold", "ratio"),
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


def rangebreaks(index) -> list[dict]:
    """The stretches of ``index`` (a run's bar times) with no bar at all — nights, weekends,
    holidays — as plotly ``rangebreaks``, to cut them from a chart's time axis as the tearsheet does.
    plotly cuts them for SVG traces only: draw with ``go.Scatter``, not ``go.Scattergl``.

    >>> fig.update_xaxes(rangebreaks=fk.report.rangebreaks(res.equity.index))
    """
    return _breaks(_naive_utc(index))


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


def _thin_fills(rows: pd.DataFrame, max_markers: int) -> pd.DataFrame:
    """At most ``max_markers`` markers for one side's fills: past that, the fills of each stretch of
    time become one marker at their size-weighted price, with their count, total size and reasons."""
    rows = rows.sort_values("executed_at")
    if len(rows) <= max_markers:
        return rows.assign(count=1)
    ns = rows["executed_at"].to_numpy(dtype="datetime64[ns]").astype("int64")
    span = max(int(ns[-1] - ns[0]), 1)
    bucket = np.minimum(((ns - ns[0]) / span * max_markers).astype("int64"), max_markers - 1)
    out = []
    for _, group in rows.groupby(bucket, sort=True):
        size = group["size"].astype(float)
        weights = size.abs().to_numpy()
        prices = group["executed_price"].astype(float).to_numpy()
        price = float(np.average(prices, weights=weights)) if weights.sum() > 0 else float(prices.mean())
        counts = group["reason"].value_counts()
        reasons = "<br>".join(f"{n}× {html.escape(str(r))}" for r, n in counts.head(3).items())
        if len(counts) > 3:
            reasons += f"<br>… {len(counts) - 3} other reasons"
        out.append({"side": group["side"].iloc[0], "executed_at": group["executed_at"].iloc[0],
                    "executed_price": price, "size": float(size.sum()), "reason": reasons, "count": len(group)})
    return pd.DataFrame(out)


def _markers(fills: pd.DataFrame, side: str, svg: bool = False, *, name: str | None = None,
             max_markers: int | None = None) -> go.Scatter | go.Scattergl:
    # Up to max_markers per side every fill is drawn; past that, nearby fills share a marker and
    # its hover lists how many there were and why.
    rows = fills[fills["side"] == side]
    rows = _thin_fills(rows, max_markers) if max_markers else rows.assign(count=1)
    trace = go.Scattergl if len(rows) > WEBGL_ABOVE and not svg else go.Scatter
    colour = _BUY if side == "buy" else _SELL
    return trace(
        x=rows["executed_at"], y=rows["executed_price"].astype(float), name=name or f"{side}s",
        mode="markers",
        marker=dict(symbol="triangle-up" if side == "buy" else "triangle-down", size=11,
                    color=colour, line=dict(width=1, color="white")),
        customdata=np.column_stack([rows["size"].astype(float), rows["reason"].astype(object),
                                    rows["count"].astype(int)]) if len(rows) else None,
        hovertemplate=(f"<b>{side}</b> %{{x|%Y-%m-%d %H:%M:%S}} UTC<br>price %{{y:,.4f}}"
                       "<br>size %{customdata[0]:,}<br>%{customdata[1]}"
                       + ("<br>%{customdata[2]} fills from here on" if len(rows) and rows["count"].max() > 1 else "")
                       + "<extra></extra>"),
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


def benchmark_series(result, benchmark=None) -> tuple[pd.Series | None, str]:
    """The benchmark's value on the run's clock, starting at the run's first equity value, and its
    name: ``None`` buy-and-hold of every traded symbol; a symbol of the run; a Series of prices or
    values (rescaled); ``False`` none."""
    from farmkit import metrics as _m

    equity = result.equity
    if benchmark is False or not len(equity):
        return None, ""
    start = float(equity.iloc[0])
    if benchmark is None:
        return _m.buy_and_hold(result.prices, equity.index, start), "buy and hold"
    if isinstance(benchmark, str):
        if benchmark not in result.prices:
            raise ParameterError(f"benchmark {benchmark!r} is not a symbol of run {result.run_id}; pass one of "
                                 f"{', '.join(map(str, result.prices))}, or a Series of its prices")
        return _m.buy_and_hold({benchmark: result.prices[benchmark]}, equity.index, start), f"{benchmark} held"
    if isinstance(benchmark, pd.Series):
        values = benchmark.astype(float)
        if values.index.tz is None:
            values.index = values.index.tz_localize("UTC")
        values = values.reindex(equity.index.union(values.index)).ffill().reindex(equity.index)
        first = values.first_valid_index()
        if first is None:
            raise ParameterError("the benchmark Series has no value during the run")
        return (start * values / values[first]).rename(values.name), str(benchmark.name or "benchmark")
    raise ParameterError(f"benchmark must be None (buy and hold), a symbol, a pandas Series or False, "
                         f"got {type(benchmark).__name__}")


def _exposure(result) -> pd.Series:
    exposure = getattr(result, "exposure", None)
    if exposure is not None and len(exposure):
        return exposure.astype(float)
    closes = pd.DataFrame({s: f["close"] for s, f in result.prices.items()}).reindex(result.equity.index).ffill()
    held = result.positions.reindex(columns=closes.columns, fill_value=0.0)
    gross = (held.abs() * closes).sum(axis=1)
    return gross / result.equity.where(result.equity != 0)


def _exposure_traces(exposure: pd.Series, max_points: int) -> list:
    """Gross exposure. On more bars than a chart can separate (a year of minute bars), each day's mean
    and peak instead: a strategy in the market 5% of the time no longer looks fully invested."""
    exposure = exposure.dropna()
    days = exposure.index.normalize().nunique() if len(exposure) else 0
    if len(exposure) <= 2_000 or days < 5:
        return [_line(exposure, "exposure", max_points, line=dict(width=1, color="#9467bd", shape="hv"),
                      fill="tozeroy", fillcolor="rgba(148,103,189,0.25)")]
    by_day = exposure.groupby(exposure.index.normalize())
    mean, peak = by_day.mean(), by_day.max()
    # the day's bar at 12:00 UTC: inside no night break, and at the day's place on the axis
    where = _naive_utc(mean.index) + pd.Timedelta(hours=16)
    return [go.Scatter(x=where, y=peak.to_numpy(), name="exposure (day's peak)", mode="lines",
                       line=dict(width=0.8, color="#c5b0d5", shape="hv")),
            go.Scatter(x=where, y=mean.to_numpy(), name="exposure (day's mean)", mode="lines",
                       line=dict(width=1.2, color="#9467bd", shape="hv"), fill="tozeroy",
                       fillcolor="rgba(148,103,189,0.3)")]


def _trade_traces(trades: pd.DataFrame | None) -> list:
    """Each closed trade from entry to exit at its net P&L, green when it made money, red when not."""
    if trades is None or not len(trades) or "closed_at" not in trades:
        return [go.Scatter(x=[], y=[], name="trades", mode="markers")]
    trades = trades.dropna(subset=["closed_at"])
    pnl = trades["pnl_net"] if "pnl_net" in trades else trades["pnl"]
    out = []
    for won, colour, name in ((True, _BUY, "winning trades"), (False, _SELL, "losing trades")):
        rows = trades[(pnl > 0) == won]
        value = pnl[rows.index].astype(float).to_numpy()
        opened, closed = _naive_utc(rows["opened_at"]), _naive_utc(rows["closed_at"])
        if 0 < len(rows) <= 2_000:     # segments entry -> exit; past that, the exits alone
            xs = np.column_stack([opened.to_pydatetime(), closed.to_pydatetime(),
                                  np.full(len(rows), None)]).ravel()
            ys = np.column_stack([value, value, np.full(len(rows), None)]).ravel()
            out.append(go.Scatter(x=xs, y=ys, mode="lines", line=dict(width=2, color=colour), opacity=0.5,
                                  name=name, legendgroup=name, showlegend=False, hoverinfo="skip"))
        custom = np.column_stack([rows.get("symbol", pd.Series("", rows.index)).astype(str),
                                  rows.get("size", pd.Series(np.nan, rows.index)).astype(float),
                                  rows.get("entry_price", pd.Series(np.nan, rows.index)).astype(float),
                                  rows.get("exit_price", pd.Series(np.nan, rows.index)).astype(float),
                                  opened.strftime("%Y-%m-%d %H:%M")]) if len(rows) else None
        out.append(go.Scatter(x=closed, y=value, mode="markers", name=name, legendgroup=name,
                              marker=dict(size=6, color=colour), customdata=custom,
                              hovertemplate=("<b>%{customdata[0]}</b> %{customdata[1]:,} from %{customdata[4]}"
                                             "<br>entry %{customdata[2]:,.4f} exit %{customdata[3]:,.4f}"
                                             "<br>P&L %{y:,.2f}<extra></extra>")))
    return out


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def monthly_returns(equity: pd.Series) -> pd.DataFrame:
    """Return of each calendar month (rows: years, columns: Jan..Dec, then the year's ``Year``);
    the first month is measured from the first value, a month without bars is NaN."""
    equity = equity.dropna()
    table = pd.DataFrame(np.nan, index=pd.Index([], name="year"), columns=[*_MONTHS, "Year"])
    if equity.empty:
        return table
    index = equity.index.tz_convert("UTC") if equity.index.tz is not None else equity.index
    ends = equity.groupby([index.year, index.month]).last()
    previous = ends.shift(1)
    previous.iloc[0] = equity.iloc[0]
    months = ends / previous - 1.0
    years = sorted({y for y, _ in months.index})
    table = pd.DataFrame(np.nan, index=pd.Index(years, name="year"), columns=[*_MONTHS, "Year"])
    for (year, month), value in months.items():
        table.loc[year, _MONTHS[month - 1]] = value
    table["Year"] = (1.0 + table[_MONTHS]).prod(axis=1, min_count=1) - 1.0
    return table


def _heatmap(equity: pd.Series) -> go.Heatmap:
    table = monthly_returns(equity)
    z = table.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.01
    digits = 1 if limit >= 0.01 else 2 if limit >= 0.001 else 3     # small months still read apart
    text = [["" if np.isnan(v) else f"{v:.{digits}%}" for v in row] for row in z]
    return go.Heatmap(z=z, x=list(table.columns), y=[str(y) for y in table.index], text=text,
                      texttemplate="%{text}", colorscale="RdYlGn", zmid=0, zmin=-limit, zmax=limit,
                      showscale=False, name="monthly returns", xgap=2, ygap=2,
                      hovertemplate="%{y} %{x}: %{text}<extra></extra>")


def _indicator_columns(result, symbol: str, symbols: list[str]) -> list[str]:
    """The tracked lines to draw on ``symbol``'s price: those computed on it (by backtrader's clock,
    else a name with the symbol in it, else every line when there is one symbol) whose values are on
    the scale of its price (an SMA is, an RSI is not)."""
    lines = getattr(result, "indicators", None)
    if lines is None or lines.empty:
        return []
    owners = getattr(result, "indicator_symbols", None) or {}
    close = result.prices[symbol]["close"]
    level = float(close.median()) if len(close) else math.nan
    picked = []
    for name in lines.columns:
        owner = owners.get(name)
        if owner is None:
            named = [s for s in symbols if str(s).lower() in str(name).lower()]
            owner = named[0] if len(named) == 1 else (symbol if len(symbols) == 1 else None)
        if owner != symbol:
            continue
        middle = float(np.nanmedian(lines[name].to_numpy(dtype=float))) if lines[name].notna().any() else math.nan
        if level > 0 and 0.5 * level <= middle <= 2.0 * level:
            picked.append(name)
    return picked


_INDICATOR_COLOURS = ["#ff7f0e", "#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f"]


def tearsheet(result, symbol: str | None = None, max_points: int = 20_000, *, benchmark=None,
              max_fills: int = 160) -> go.Figure:
    """The run on one page: price with fills and tracked indicators, equity against a benchmark,
    underwater curve, exposure, trade P&L on a shared time axis, and a monthly returns heatmap.

    Every symbol of the run is charted: a selector above the price picks which one (``symbol`` the
    one shown first). ``benchmark`` is buy-and-hold of the traded symbols by default, a symbol,
    a Series of prices or values, or False for none; its alpha, beta and information ratio are in
    the title. Lines longer than ``max_points`` are thinned for display (lowest and highest bar per
    bucket, so extremes stay visible); past ``max_fills`` fills of a symbol (half each side), nearby fills
    share a marker whose hover says how many and why. Stretches with no bar at all (nights,
    weekends, holidays) are cut out of the time axis; plotly cuts them only for SVG traces, so
    lines then keep at most ``WEBGL_ABOVE`` points (still a few per pixel).

    >>> fk.report.tearsheet(result, symbol="MSFT", benchmark="AAPL").show()
    """
    from farmkit import metrics as _m

    if max_points < 10:
        raise ParameterError(f"max_points must be at least 10, got {max_points}")
    first = _pick_symbol(result, symbol)
    symbols = [first, *[s for s in result.prices if s != first]]
    # Breaks come from the run's clock (every symbol's bars), so no symbol's trading is cut out.
    clock = result.equity.index if len(result.equity) else result.prices[first].index
    breaks = _breaks(_naive_utc(clock))
    svg = bool(breaks)
    if svg:
        max_points = min(max_points, WEBGL_ABOVE)   # so every line is an SVG trace
    years = max(1, len(monthly_returns(result.equity)))
    heat = 0.05 + 0.035 * years
    rest = 1.0 - heat
    fig = make_subplots(rows=6, cols=1, vertical_spacing=0.03,
                        row_heights=[rest * 0.4, rest * 0.2, rest * 0.12, rest * 0.12, rest * 0.16, heat],
                        subplot_titles=(str(first), "Equity", "Drawdown", "Exposure (gross, of equity)",
                                        "Trade P&L (entry to exit; times UTC)", "Monthly returns"))
    owner: list[str | None] = []      # each trace's symbol (the selector shows one symbol's), or None

    def add(trace, row, of=None):
        trace.visible = of is None or of == first
        fig.add_trace(trace, row=row, col=1)
        owner.append(of)

    for s in symbols:
        bars = result.prices[s]
        if len(bars) <= min(CANDLES_UP_TO, max_points):
            # Grey candles: green and red are kept for the buy and sell markers drawn on top.
            price = go.Candlestick(x=_naive_utc(bars.index), open=bars["open"], high=bars["high"],
                                   low=bars["low"], close=bars["close"], name=str(s),
                                   increasing_line_color="#7f7f7f", decreasing_line_color="#1f1f1f",
                                   opacity=0.8)
        else:
            price = _line(bars["close"], str(s), max_points, line=dict(width=1, color="#444"))
        add(price, 1, s)
        for j, name in enumerate(_indicator_columns(result, s, symbols)):
            add(_line(result.indicators[name], str(name), max_points,
                      line=dict(width=1.2, color=_INDICATOR_COLOURS[j % len(_INDICATOR_COLOURS)])), 1, s)
        fills = _fills(result.orders, s)
        add(_markers(fills, "buy", svg, name=f"{s} buys", max_markers=max(1, max_fills // 2)), 1, s)
        add(_markers(fills, "sell", svg, name=f"{s} sells", max_markers=max(1, max_fills // 2)), 1, s)

    bench, bench_name = benchmark_series(result, benchmark)
    add(_line(result.equity, "equity", max_points, line=dict(width=1.5, color="#1f77b4")), 2)
    if bench is not None:
        add(_line(bench, bench_name, max_points, line=dict(width=1.2, color="#7f7f7f", dash="dot")), 2)
    add(_line(result.drawdown, "drawdown", max_points, fill="tozeroy",
              line=dict(width=1, color=_SELL), fillcolor="rgba(214,39,40,0.25)"), 3)
    for trace in _exposure_traces(_exposure(result), max_points):
        add(trace, 4)
    for trace in _trade_traces(getattr(result, "trades", None)):
        add(trace, 5)
    add(_heatmap(result.equity), 6)

    headline = _headline(result.metrics)
    if bench is not None:
        rel = _m.relative(result.equity, bench)
        headline += (f"</sup><br><sup>vs {html.escape(bench_name)}: alpha {_format(rel['alpha'], 'percent')}, beta "
                     f"{_format(rel['beta'], 'ratio')}, information ratio {_format(rel['information_ratio'], 'ratio')}")
    fig.update_layout(
        title=dict(text=f"{html.escape(str(result.strategy))} · run {html.escape(str(result.run_id))}"
                        f"<br><sup>{headline}</sup>", x=0.01),
        height=1150 + 30 * years, hovermode="x unified", template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0),
        margin=dict(l=60, r=20, t=120, b=90),
    )
    # The five time panels share one axis; the heatmap has months for its own.
    for row in range(2, 6):
        fig.update_xaxes(matches="x", row=row, col=1)
    for row in range(1, 5):
        fig.update_xaxes(showticklabels=False, row=row, col=1)
    # Candlesticks add a range slider by default; with stacked panels it only takes space.
    fig.update_xaxes(rangeslider_visible=False)
    # one-line tick labels: plotly's two-line default (a date over its year) would run into the heatmap's title
    stops = [dict(dtickrange=[None, 86_400_000], value="%m-%d %H:%M"), dict(dtickrange=[86_400_000, None], value="%Y-%m-%d")]
    for row in range(1, 6):
        fig.update_xaxes(showspikes=True, spikemode="across", spikethickness=1, tickformatstops=stops, row=row, col=1)
        if breaks:
            fig.update_xaxes(rangebreaks=breaks, row=row, col=1)
    fig.update_yaxes(autorange="reversed", row=6, col=1)
    fig.update_yaxes(tickformat=_percent_format(result.drawdown), row=3, col=1)
    fig.update_yaxes(tickformat=_percent_format(_exposure(result)), rangemode="tozero", row=4, col=1)
    if len(symbols) > 1:
        fig.update_layout(updatemenus=[dict(
            type="dropdown", x=0.0, xanchor="left", y=1.0, yanchor="bottom", pad=dict(t=0, b=0),
            active=0, showactive=True,
            buttons=[dict(label=str(s), method="update",
                          args=[{"visible": [o is None or o == s for o in owner]},
                                {"annotations[0].text": str(s)}]) for s in symbols])])
        fig.layout.annotations[0].text = f"{first} (pick a symbol: {len(symbols)} traded)"
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


def to_html(result, path: str | Path, *, plotlyjs: str | Path = "inline", benchmark=None) -> Path:
    """Write the tearsheet and metrics as one HTML page that opens offline.

    ``plotlyjs="inline"`` (the default) embeds plotly.js (about 5 MB): the file can be mailed,
    archived or opened on a machine without internet. A folder instead (a run's tearsheet uses the
    runs folder) keeps one copy of plotly.js there, ``plotly-VERSION.min.js``, that every page
    beside or below it loads by a relative path: a sweep's hundred tearsheets share one bundle.
    Either way the page loads nothing from the network. Parent directories are created. Returns
    the path written.

    >>> fk.report.to_html(result, "reports/sma_cross.html")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    script = True if str(plotlyjs) == "inline" else _shared_bundle(Path(plotlyjs), path)
    figure = tearsheet(result, benchmark=benchmark).to_html(
        include_plotlyjs=script, full_html=False, div_id="tearsheet",
        config={"displaylogo": False, "responsive": True},
    )
    if script is not True:
        figure = _MISSING_BUNDLE.format(bundle=html.escape(script)) + figure
    table = metrics_table(result.metrics).to_html(classes="metrics", border=0, header=False,
                                                  index_names=False)
    title = html.escape(f"{result.strategy} · run {result.run_id}")
    path.write_text(_PAGE.format(title=title, figure=figure, table=table), encoding="utf-8")
    return path


# Shown when a page with a shared bundle was copied away from it.
_MISSING_BUNDLE = """<script>window.addEventListener("DOMContentLoaded", function () {{
  if (typeof Plotly === "undefined") {{
    document.getElementById("tearsheet").innerHTML = "<p>The charts need {bundle} beside this page's runs " +
      "folder; to share one page alone, write it self-contained: res.to_html(\"tearsheet.html\").</p>";
  }}
}});</script>
"""


def _shared_bundle(folder: Path, page: Path) -> str:
    """plotly.js written once into ``folder`` (atomically: pages may be written side by side); the
    relative URL of it from ``page``."""
    import os
    import tempfile

    from plotly import __version__ as version
    from plotly.offline import get_plotlyjs

    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / f"plotly-{version}.min.js"
    if not bundle.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".plotly-", suffix=".js")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(get_plotlyjs())
        os.chmod(tmp, 0o644)      # readable as the pages are (mkstemp makes it private)
        os.replace(tmp, bundle)
    return Path(os.path.relpath(bundle.resolve(), page.parent.resolve())).as_posix()
