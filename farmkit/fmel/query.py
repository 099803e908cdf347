"""Reading FMEL back: a run's records, and one bar explained for a person."""

from __future__ import annotations

import json

import pandas as pd

from farmkit.settings import Settings


def _store(store=None):
    if store is not None:
        return store
    from farmkit.fmel.stores import open_store
    return open_store(Settings.from_env().store)


def load(run_id: str, *, store=None) -> pd.DataFrame:
    """All FMEL records of a run as a DataFrame, one row per bar.

    >>> fk.fmel.load(res.run_id).head()
    """
    return _store(store).fmel(run_id)


def runs(*, store=None) -> pd.DataFrame:
    """The run registry: one row per backtest, trial or paper session."""
    return _store(store).runs.frame()


def sql(query: str, *, store=None) -> pd.DataFrame:
    """Any SQL over the views ``fmel`` and ``runs``.

    >>> fk.fmel.sql("SELECT run_id, count(*) FROM fmel GROUP BY run_id")
    """
    return _store(store).sql(query)


def record(run_id: str, bar: int | None = None, timestamp=None, *, store=None) -> dict:
    """One FMEL record with its JSON fields decoded."""
    store = _store(store)
    if bar is None and timestamp is None:
        raise ValueError("explain needs bar= (bar number) or timestamp=")
    if bar is not None:
        frame = store.sql(f"SELECT * FROM fmel WHERE bar_number = {int(bar)}", run_id=run_id)
    else:
        ts = pd.Timestamp(timestamp)
        ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
        frame = store.sql(f"SELECT * FROM fmel WHERE timestamp <= TIMESTAMPTZ '{ts.isoformat()}' "
                          "ORDER BY timestamp DESC LIMIT 1", run_id=run_id)
    if frame.empty:
        count = store.sql("SELECT count(*) AS n FROM fmel", run_id=run_id)["n"].iloc[0]
        what = f"bar {bar}" if bar is not None else f"a bar at or before {timestamp}"
        raise KeyError(f"run {run_id} has no {what}; it has {count} bars (0..{count - 1})" if count
                       else f"no FMEL records for run {run_id!r}; fk.runs() lists the runs")
    row = frame.iloc[0].to_dict()
    for key in ("market_state", "strategy_state", "decisions", "actions", "performance"):
        row[key] = json.loads(row[key]) if isinstance(row[key], str) else row[key]
    return row


def explain(run_id: str, bar: int | None = None, timestamp=None, *, store=None) -> pd.DataFrame:
    """One bar as a table: what the market was, what the strategy knew, what it decided and why,
    what happened, how the account stood.

    >>> fk.fmel.explain(res.run_id, bar=1234)
    """
    rec = record(run_id, bar, timestamp, store=store)
    rows: list[tuple[str, str, object]] = []
    for symbol, ohlcv in (rec["market_state"] or {}).items():
        if isinstance(ohlcv, dict):
            rows.append(("market", symbol, ", ".join(f"{k}={_fmt(v)}" for k, v in ohlcv.items())))
        else:
            rows.append(("market", symbol, ohlcv))
    state = rec["strategy_state"] or {}
    for name, value in (state.get("tracked") or {}).items():
        rows.append(("strategy", name, _fmt(value)))
    for symbol, size in (state.get("positions") or {}).items():
        rows.append(("strategy", f"position {symbol}", _fmt(size)))
    rows.append(("strategy", "cash", _fmt(state.get("cash"))))
    for d in rec["decisions"] or []:
        text = d["action"] + (f" {d['symbol']}" if d.get("symbol") else "") + (
            f" size={_fmt(d['size'])}" if d.get("size") is not None else "")
        detail = [f"because {d['reason']}" if d.get("reason") else "no reason given"]
        if d.get("confidence") is not None:
            detail.append(f"confidence={_fmt(d['confidence'])}")
        if d.get("signals"):
            detail.append("signals: " + ", ".join(f"{k}={_fmt(v)}" for k, v in d["signals"].items()))
        rows.append(("decision", text, "; ".join(detail)))
    for a in rec["actions"] or []:
        price = a.get("fill_price") if a.get("fill_price") is not None else a.get("price")
        rows.append(("action", f"order {a['order']} {a['event']}",
                     f"{a['side']} {a['type']} {a['symbol']} size={_fmt(a.get('filled_size') or a.get('size'))}"
                     + (f" price={_fmt(price)}" if price is not None else "")
                     + (f" commission={_fmt(a['commission'])}" if a.get("commission") else "")))
    for key, value in (rec["performance"] or {}).items():
        rows.append(("performance", key, _fmt(value)))
    table = pd.DataFrame(rows, columns=["section", "field", "value"])
    table.attrs.update(run_id=run_id, bar_number=int(rec["bar_number"]), timestamp=rec["timestamp"])
    return table.set_index(["section", "field"])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.2f}"
    return "null" if value is None else str(value)
