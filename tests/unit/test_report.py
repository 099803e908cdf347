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


def test_the_figure_charts_every_symbol_equity_drawdown_exposure_trades_and_months():
    result = fake_result()
    fig = report.tearsheet(result)

    assert [t.name for t in fig.data] == ["AAPL", "AAPL buys", "AAPL sells", "MSFT", "MSFT buys", "MSFT sells",
                                          "equity", "buy and hold", "drawdown", "exposure", "trades",
                                          "monthly returns"]
    by_name = traces(fig)
    assert by_name["AAPL"].type == "candlestick"          # 300 bars: few enough for candles
    assert [by_name[n].yaxis for n in ("AAPL", "AAPL buys", "MSFT", "equity", "buy and hold", "drawdown",
                                       "exposure", "trades", "monthly returns")] == \
        ["y", "y", "y", "y2", "y2", "y3", "y4", "y5", "y6"]
    assert by_name["drawdown"].fill == "tozeroy" and by_name["monthly returns"].type == "heatmap"
    assert "sma_cross" in fig.layout.title.text and "run-7f3a9c" in fig.layout.title.text
    assert "12.34%" in fig.layout.title.text and "beta" in fig.layout.title.text
    assert fig.layout.hovermode == "x unified"
    assert fig.layout.xaxis.rangeslider.visible is False
    # the five time panels move together; the heatmap's months are an axis of their own
    assert [fig.layout[f"xaxis{i}"].matches for i in range(2, 6)] == ["x"] * 4 and fig.layout.xaxis6.matches is None


def test_a_selector_shows_one_symbol_at_a_time():
    fig = report.tearsheet(fake_result())
    shown = {t.name for t in fig.data if t.visible is not False}
    assert {"AAPL", "AAPL buys", "AAPL sells", "equity"} <= shown and not {"MSFT", "MSFT buys"} & shown
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["AAPL", "MSFT"]
    msft = menu.buttons[1].args[0]["visible"]
    assert {t.name for t, v in zip(fig.data, msft) if v} == shown - {"AAPL", "AAPL buys", "AAPL sells"} | \
        {"MSFT", "MSFT buys", "MSFT sells"}
    assert menu.buttons[1].args[1] == {"annotations[0].text": "MSFT"}
    one = fake_result()
    one.prices = {"AAPL": one.prices["AAPL"]}
    assert not report.tearsheet(one).layout.updatemenus          # one symbol: nothing to pick


def test_markers_sit_at_the_completed_fills_with_size_and_reason_on_hover():
    result = fake_result()
    by_name = traces(report.tearsheet(result))

    for side, name, symbol in (("buy", "AAPL buys", "triangle-up"), ("sell", "AAPL sells", "triangle-down")):
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


def test_symbol_picks_the_chart_shown_first_and_an_unknown_one_names_the_known_ones():
    result = fake_result()
    fig = report.tearsheet(result, symbol="MSFT")
    by_name = traces(fig)
    assert by_name["MSFT"].visible and by_name["AAPL"].visible is False
    assert list(pd.to_datetime(by_name["MSFT buys"].x)) == [result.prices["MSFT"].index[1].tz_localize(None)]
    assert len(by_name["MSFT sells"].x) == 0
    with pytest.raises(ParameterError, match="AAPL, MSFT"):
        report.tearsheet(result, symbol="TSLA")


def test_downsampling_caps_every_line_and_keeps_every_extreme():
    result = fake_result(bars=200_000, freq="1min", fills_every=397)
    result.equity.iloc[123_457] *= 1.5                      # a one-bar spike must survive thinning
    fig = report.tearsheet(result, max_points=2_000, max_fills=10**6)
    by_name = traces(fig)

    for name in ("AAPL", "equity", "drawdown", "buy and hold"):
        assert 2 < len(by_name[name].x) <= 2_000, name
    assert by_name["AAPL"].type == "scatter"                # too many bars for candles
    assert len(by_name["AAPL buys"].x) == len(completed(result, side="buy")) > 200
    assert len(by_name["AAPL sells"].x) == len(completed(result, side="sell")) > 200
    equity = by_name["equity"]
    assert max(equity.y) == result.equity.max()
    assert equity.y[-1] == result.equity.iloc[-1]           # the final value is drawn exactly
    assert min(by_name["drawdown"].y) == result.drawdown.min()
    assert pd.Timestamp(equity.x[0]) == result.equity.index[0].tz_localize(None)


def test_many_fills_share_markers_that_still_say_how_many_and_why():
    result = fake_result(bars=200_000, freq="1min", fills_every=97)
    buys = completed(result, side="buy")
    marker = traces(report.tearsheet(result, max_fills=100))["AAPL buys"]
    assert len(buys) > 1_000 and 0 < len(marker.x) <= 50
    counts = [int(row[2]) for row in marker.customdata]
    assert sum(counts) == len(buys)                                         # every fill is in one marker
    assert sum(float(row[0]) for row in marker.customdata) == pytest.approx(buys["size"].sum())
    assert all("× sma cross" in row[1] for row in marker.customdata)         # the reasons, counted
    assert "fills from here on" in marker.hovertemplate
    assert min(marker.y) >= buys["executed_price"].min() and max(marker.y) <= buys["executed_price"].max()


def test_exposure_on_a_year_of_minute_bars_is_each_days_mean_and_peak():
    result = fake_result(bars=390 * 250, freq="1min", fills_every=50)
    days = result.equity.index.normalize().nunique()
    by_name = traces(report.tearsheet(result))
    mean, peak = by_name["exposure (day's mean)"], by_name["exposure (day's peak)"]
    assert len(mean.x) == len(peak.x) == days
    closes = result.prices["AAPL"]["close"]
    exposure = (result.positions["AAPL"].abs() * closes) / result.equity
    want = exposure.groupby(exposure.index.normalize()).mean()
    np.testing.assert_allclose(mean.y, want.to_numpy())
    assert max(peak.y) == pytest.approx(exposure.max())


def test_the_trade_panel_draws_each_trade_from_entry_to_exit_coloured_by_result():
    result = fake_result()
    index = result.equity.index
    result.trades = pd.DataFrame({"symbol": ["AAPL", "MSFT", "AAPL"], "opened_at": index[[10, 20, 40]],
                                  "closed_at": index[[15, 30, 60]], "size": [100.0, 10.0, -50.0],
                                  "entry_price": [100.0, 50.0, 101.0], "exit_price": [102.0, 49.0, 100.0],
                                  "pnl": [200.0, -10.0, 50.0], "pnl_net": [199.0, -11.0, 49.0]})
    fig = report.tearsheet(result)
    won = [t for t in fig.data if t.name == "winning trades"]
    lost = [t for t in fig.data if t.name == "losing trades"]
    segments, exits = (won[0], won[1]) if won[0].mode == "lines" else (won[1], won[0])
    assert list(exits.y) == [199.0, 49.0] and exits.marker.color == report._BUY
    assert [pd.Timestamp(x) for x in segments.x[:2]] == [index[10].tz_localize(None), index[15].tz_localize(None)]
    assert segments.x[2] is None and list(segments.y[:2]) == [199.0, 199.0]
    assert [t.marker.color for t in lost if t.mode == "markers"] == [report._SELL]
    assert [row[0] for row in next(t for t in lost if t.mode == "markers").customdata] == ["MSFT"]


def test_monthly_returns_compound_to_the_total_return():
    index = pd.date_range("2023-11-15", "2024-02-20", freq="1D", tz="UTC")
    equity = pd.Series(np.linspace(100.0, 130.0, len(index)), index=index)
    table = report.monthly_returns(equity)
    assert list(table.index) == [2023, 2024] and list(table.columns)[-1] == "Year"
    months = table.drop(columns="Year").stack().dropna()
    assert len(months) == 4                                   # Nov, Dec, Jan, Feb
    assert (1 + months).prod() - 1 == pytest.approx(130.0 / 100.0 - 1)
    assert table.loc[2023, "Nov"] == pytest.approx(equity.loc["2023-11"].iloc[-1] / 100.0 - 1)
    assert math.isnan(table.loc[2024, "Mar"])
    heat = traces(report.tearsheet(fake_result(bars=300)))["monthly returns"]
    assert heat.zmid == 0 and "%" in heat.text[0][0]


def test_the_benchmark_is_buy_and_hold_a_symbol_a_series_or_none():
    from farmkit import metrics
    result = fake_result()
    bench = traces(report.tearsheet(result))["buy and hold"]
    want = metrics.buy_and_hold(result.prices, result.equity.index, result.equity.iloc[0])
    np.testing.assert_allclose(bench.y, want.to_numpy())
    assert "MSFT held" in traces(report.tearsheet(result, benchmark="MSFT"))
    spy = pd.Series(np.linspace(400, 440, len(result.equity)), index=result.equity.index, name="SPY")
    line = traces(report.tearsheet(result, benchmark=spy))["SPY"]
    assert line.y[0] == pytest.approx(result.equity.iloc[0]) and line.y[-1] == pytest.approx(result.equity.iloc[0] * 1.1)
    assert "buy and hold" not in traces(report.tearsheet(result, benchmark=False))
    with pytest.raises(ParameterError, match="not a symbol of run"):
        report.tearsheet(result, benchmark="TSLA")


def test_tracked_indicators_on_the_price_scale_are_drawn_on_their_symbol():
    result = fake_result()
    close = result.prices["AAPL"]["close"]
    result.indicators = pd.DataFrame({"AAPL_fast": close.rolling(5).mean(), "MSFT_fast": close.rolling(5).mean() * 0.5,
                                      "AAPL_rsi": pd.Series(30.0, close.index)})
    result.indicator_symbols = {}
    fig = report.tearsheet(result)
    drawn = {t.name: t for t in fig.data if t.yaxis == "y" and t.type == "scatter" and "buys" not in t.name
             and "sells" not in t.name}
    assert set(drawn) == {"AAPL_fast", "MSFT_fast"}           # an RSI is not on a price's scale
    assert drawn["AAPL_fast"].visible and drawn["MSFT_fast"].visible is False


def test_big_series_are_drawn_with_webgl():
    by_name = traces(report.tearsheet(fake_result(bars=50_000, freq="1min")))
    assert by_name["equity"].type == "scattergl"            # 20,000 points after thinning
    assert by_name["AAPL buys"].type == "scatter"           # a few hundred markers: SVG is fine


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


def test_a_runs_tearsheet_shares_one_plotly_bundle_in_the_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    pages = [report.to_html(fake_result(), runs / run / "tearsheet.html", plotlyjs=runs) for run in ("a", "b")]
    (bundle,) = runs.glob("plotly-*.min.js")
    assert bundle.stat().st_size > 1_000_000
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert page.stat().st_size < 1_000_000 and f'src="../{bundle.name}"' in text
        assert "plotly.js v" not in text and "self-contained" in text   # what to do if copied away


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
    assert {t.type for t in fig.data} <= {"scatter", "candlestick", "heatmap"}   # plotly cuts only SVG traces
    assert all(len(t.x) <= report.WEBGL_ABOVE for t in fig.data)


def test_a_market_that_never_closes_keeps_a_continuous_axis():
    fig = report.tearsheet(fake_result(bars=3_000, freq="1min"))
    assert not fig.layout.xaxis.rangebreaks


@pytest.mark.parametrize("deepest, fmt", [(-0.2, ".1~%"), (-0.005, ".2~%"), (-0.0003, ".4~%"), (0.0, ".1~%")])
def test_drawdown_ticks_have_the_decimals_its_depth_needs(deepest, fmt):
    result = fake_result(bars=100)
    result.drawdown = pd.Series(np.linspace(0, deepest, 100), index=result.equity.index)
    assert report.tearsheet(result).layout.yaxis3.tickformat == fmt


def test_fk_report_is_there_on_first_use_and_cuts_what_the_tearsheet_cuts():
    import farmkit as fk

    bars = fk.data.synthetic("AAPL", days=5, seed=2)["AAPL"]
    result = fake_result(bars=len(bars), freq="1min")
    result.equity.index = result.drawdown.index = result.positions.index = bars.index
    result.prices = {"AAPL": bars}
    assert fk.report.rangebreaks(bars.index) == [b.to_plotly_json() for b in report.tearsheet(result).layout.xaxis.rangebreaks]
    with pytest.raises(AttributeError, match="no attribute 'reprot'"):
        fk.reprot
