"""The tearsheet figure, the metrics table and the self-contained HTML page."""

from __future__ import annotations

import math
import re
import types

import numpy as np
import pandas as pd
import pytest

from farmkit import report
from farmkit.errors import ParameterError


# A stand-in with the result's attributes; the real engine result is exercised by the engine's tests.
def fake_result(bars: int = 300, freq: str = "1D", fills_every: int = 50, seed: int = 3):
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-02 14:30", periods=bars, freq=freq, tz="UTC")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, bars)))
    prices = pd.DataFrame({"open": close, "high": close * 1.002, "low": close * 0.998,
                           "close": close, "volume": 1_000.0}, index=index)
    equity = pd.Series(100_000 * np.exp(np.cumsum(rng.normal(0, 0.001, bars))), index=index)
    # Alternate buys and sells of 100 shares every `fills_every` bars.
    at = np.arange(fills_every, bars, fills_every)
    sides = np.where(np.arange(len(at)) % 2 == 0, "buy", "sell")
    position = pd.Series(0.0, index=index)
    for bar, side in zip(at, sides):
        position.iloc[bar:] += 100 if side == "buy" else -100
    orders = pd.DataFrame({
        "symbol": "AAPL", "side": sides, "status": "filled", "executed_at": index[at],
        "executed_price": close[at], "size": np.where(sides == "buy", 100.0, -100.0),
        "reason": ["sma cross" if i % 3 else None for i in range(len(at))],
    })
    # Orders that never filled, and a fill in another symbol: none of them belongs on the AAPL chart.
    noise = pd.DataFrame({
        "symbol": ["AAPL", "AAPL", "MSFT"], "side": ["buy", "sell", "buy"],
        "status": ["cancelled", "rejected", "filled"],
        "executed_at": [pd.NaT, pd.NaT, index[1]], "executed_price": [np.nan, np.nan, 50.0],
        "size": [10.0, -10.0, 10.0], "reason": [None, "margin", None],
    })
    return types.SimpleNamespace(
        run_id="run-7f3a9c", strategy="sma_cross",
        metrics={"total_return": 0.1234, "sharpe": 1.456, "max_drawdown": -0.0812, "trades": 12},
        prices={"AAPL": prices, "MSFT": prices * 0.5},
        equity=equity, drawdown=equity / equity.cummax() - 1,
        positions=pd.DataFrame({"AAPL": position, "MSFT": 0.0}),
        orders=pd.concat([orders, noise], ignore_index=True),
    )


def traces(fig) -> dict:
    return {trace.name: trace for trace in fig.data}


def completed(result, symbol="AAPL", side=None) -> pd.DataFrame:
    o = result.orders
    rows = o[(o["status"] == "filled") & (o["symbol"] == symbol)]
    return rows if side is None else rows[rows["side"] == side]


def test_the_figure_stacks_price_fills_equity_drawdown_and_position():
    result = fake_result()
    fig = report.tearsheet(result)

    assert [t.name for t in fig.data] == ["price", "buys", "sells", "equity", "drawdown", "position"]
    by_name = traces(fig)
    assert by_name["price"].type == "candlestick"          # 300 bars: few enough for candles
    assert [by_name[n].yaxis for n in ("price", "buys", "sells", "equity", "drawdown", "position")] == \
        ["y", "y", "y", "y2", "y3", "y4"]
    assert by_name["drawdown"].fill == "tozeroy"
    assert "sma_cross" in fig.layout.title.text and "run-7f3a9c" in fig.layout.title.text
    assert "12.34%" in fig.layout.title.text
    assert fig.layout.height == 900 and fig.layout.hovermode == "x unified"
    assert fig.layout.xaxis.rangeslider.visible is False


def test_markers_sit_at_the_completed_fills_with_size_and_reason_on_hover():
    result = fake_result()
    by_name = traces(report.tearsheet(result))

    for side, name, symbol in (("buy", "buys", "triangle-up"), ("sell", "sells", "triangle-down")):
        want = completed(result, side=side)
        marker = by_name[name]
        assert marker.marker.symbol == symbol
        assert list(pd.to_datetime(marker.x)) == list(want["executed_at"].dt.tz_localize(None))
        np.testing.assert_allclose(marker.y, want["executed_price"])
        sizes = [row[0] for row in marker.customdata]
        reasons = [row[1] for row in marker.customdata]
        assert sizes == list(want["size"])
        assert reasons == [r if isinstance(r, str) else "—" for r in want["reason"]]
        assert "size" in marker.hovertemplate and "customdata[1]" in marker.hovertemplate


def test_symbol_picks_the_chart_and_an_unknown_one_names_the_known_ones():
    result = fake_result()
    by_name = traces(report.tearsheet(result, symbol="MSFT"))
    assert list(pd.to_datetime(by_name["buys"].x)) == [result.prices["MSFT"].index[1].tz_localize(None)]
    assert len(by_name["sells"].x) == 0
    with pytest.raises(ParameterError, match="AAPL, MSFT"):
        report.tearsheet(result, symbol="TSLA")


def test_downsampling_caps_every_line_and_keeps_every_marker_and_extreme():
    result = fake_result(bars=200_000, freq="1min", fills_every=397)
    result.equity.iloc[123_457] *= 1.5                      # a one-bar spike must survive thinning
    fig = report.tearsheet(result, max_points=2_000)
    by_name = traces(fig)

    for name in ("price", "equity", "drawdown", "position"):
        assert 2 < len(by_name[name].x) <= 2_000, name
    assert by_name["price"].type == "scatter"               # too many bars for candles
    assert len(by_name["buys"].x) == len(completed(result, side="buy")) > 200
    assert len(by_name["sells"].x) == len(completed(result, side="sell")) > 200
    equity = by_name["equity"]
    assert max(equity.y) == result.equity.max()
    assert equity.y[-1] == result.equity.iloc[-1]           # the final value is drawn exactly
    assert min(by_name["drawdown"].y) == result.drawdown.min()
    assert pd.Timestamp(equity.x[0]) == result.equity.index[0].tz_localize(None)


def test_big_series_are_drawn_with_webgl():
    by_name = traces(report.tearsheet(fake_result(bars=50_000, freq="1min")))
    assert by_name["equity"].type == "scattergl"            # 20,000 points after thinning
    assert by_name["buys"].type == "scatter"                # a few hundred markers: SVG is fine


def test_metrics_table_has_pretty_names_in_a_fixed_order_and_formatted_values():
    table = report.metrics_table({
        "final_value": 123456.789, "sharpe": 1.456, "total_return": 0.1234, "win_rate": 0.5,
        "max_drawdown_duration_days": 41.6, "trades": 12.0, "profit_factor": math.inf,
        "sortino": float("nan"), "my_custom_metric": 2.5,
    })
    assert table.to_dict()["value"] == {
        "Total return": "12.34%", "Sharpe ratio": "1.46", "Sortino ratio": "n/a",
        "Max drawdown duration": "42 days", "Trades": "12", "Win rate": "50.00%",
        "Profit factor": "∞", "Final value": "123,456.79", "My custom metric": "2.50",
    }
    assert list(table.index) == ["Total return", "Sharpe ratio", "Sortino ratio",
                                 "Max drawdown duration", "Trades", "Win rate", "Profit factor",
                                 "Final value", "My custom metric"]


def test_to_html_writes_one_self_contained_page(tmp_path):
    path = report.to_html(fake_result(), tmp_path / "reports" / "nested" / "run.html")

    page = path.read_text(encoding="utf-8")
    assert path.exists() and path.parent.name == "nested"
    assert re.search(r"<title>[^<]*sma_cross[^<]*run-7f3a9c[^<]*</title>", page)
    assert "plotly.js v" in page and len(page) > 1_000_000     # the library itself, inline
    # Nothing is fetched: no script or stylesheet by URL, no font import.
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link\b", page)
    assert "@import" not in page and "@font-face" not in page
    assert '<table class="dataframe metrics">' in page
    assert "<th>Total return</th>" in page and "<td>12.34%</td>" in page
    assert 'id="tearsheet"' in page


def test_metrics_table_shows_counters_one_row_each():
    table = report.metrics_table({"sharpe": 1.5, "messages": {"routed": 1200, "late": 3}})
    assert table.loc["Messages: routed", "value"] == "1,200"
    assert table.loc["Messages: late", "value"] == "3"


def test_nights_and_weekends_are_cut_out_of_the_time_axis():
    import farmkit as fk

    bars = fk.data.synthetic("AAPL", days=5, seed=2)["AAPL"]          # 390 minutes a day, Tue..Mon
    result = fake_result(bars=len(bars), freq="1min")
    result.equity.index = result.drawdown.index = result.positions.index = bars.index
    result.prices = {"AAPL": bars}
    fig = report.tearsheet(result)
    breaks = fig.layout.xaxis.rangebreaks
    spacing = pd.Timedelta(minutes=1)
    cut = sorted((pd.Timestamp(v), pd.Timedelta(milliseconds=b.dvalue)) for b in breaks for v in b.values)
    gaps = [(a + spacing, b - a - spacing) for a, b in zip(bars.index[:-1].tz_localize(None), bars.index[1:].tz_localize(None))
            if b - a > spacing]
    assert cut == gaps and len(gaps) == 4                               # three nights and a weekend
    assert {t.type for t in fig.data} <= {"scatter", "candlestick"}    # plotly cuts only SVG traces
    assert all(len(t.x) <= report.WEBGL_ABOVE for t in fig.data)


def test_a_market_that_never_closes_keeps_a_continuous_axis():
    fig = report.tearsheet(fake_result(bars=3_000, freq="1min"))
    assert not fig.layout.xaxis.rangebreaks


@pytest.mark.parametrize("deepest, fmt", [(-0.2, ".1~%"), (-0.005, ".2~%"), (-0.0003, ".4~%"), (0.0, ".1~%")])
def test_drawdown_ticks_have_the_decimals_its_depth_needs(deepest, fmt):
    result = fake_result(bars=100)
    result.drawdown = pd.Series(np.linspace(0, deepest, 100), index=result.equity.index)
    assert report.tearsheet(result).layout.yaxis3.tickformat == fmt
