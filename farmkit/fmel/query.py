"""Reading FMEL back: a run's records, and one bar explained for a person.

Every function works on the embedded store (DuckDB SQL) and on the BigQuery store (GoogleSQL): the
few queries that differ between the two are written once per dialect here, chosen by the store's
``dialect`` (the embedded store has none and speaks DuckDB). Both stores' ``sql()`` offer the views
``fmel`` (one row per record_id), ``fmel_raw`` (as written, retried duplicates included) and ``runs``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from farmkit.fmel import schema
from farmkit.settings import Settings


def default_store(store=None):
    """The given store, or the one FARM_STORE names."""
    if store is not None:
        return store
    from farmkit.fmel.stores import open_store
    return open_store(Settings.from_env().store)


def load(run_id: str, *, store=None) -> pd.DataFrame:
    """All FMEL records of a run as a DataFrame, one row per bar.

    >>> fk.fmel.load(res.run_id).head()
    """
    return default_store(store).fmel(run_id)


def runs(*, store=None) -> pd.DataFrame:
    """The run registry: one row per backtest, trial or paper session."""
    return default_store(store).runs.frame()


def sql(query: str, *, store=None) -> pd.DataFrame:
    """Any SQL over the views ``fmel`` and ``runs``.

    >>> fk.fmel.sql("SELECT run_id, count(*) FROM fmel GROUP BY run_id")
    """
    return default_store(store).sql(query)


def record(run_id: str, bar: int | None = None, timestamp=None, *, store=None) -> dict:
    """One FMEL record with its JSON fields decoded."""
    store = default_store(store)
    if bar is None and timestamp is None:
        raise ValueError("explain needs bar= (bar number) or timestamp=")
    if bar is None:
        found = store.sql(f"SELECT bar_number FROM fmel_raw WHERE timestamp <= {_timestamp(store, timestamp)} "
                          "ORDER BY timestamp DESC LIMIT 1", run_id=run_id)
        bar = None if found.empty else int(found.bar_number.iloc[0])
    frame = _bar(store, run_id, bar) if bar is not None else pd.DataFrame()
    if frame.empty:
        count = store.sql("SELECT count(*) AS n FROM fmel", run_id=run_id)["n"].iloc[0]
        what = f"bar {bar}" if bar is not None else f"a bar at or before {timestamp}"
        raise KeyError(f"run {run_id} has no {what}; it has {count} bars (0..{count - 1})" if count
                       else f"no FMEL records for run {run_id!r}; fk.runs() lists the runs")
    return decoded(frame.iloc[0].to_dict())


JSON_FIELDS = tuple(schema.json_columns("fmel"))   # the JSON columns, as the one schema declares them


def decoded(row: dict) -> dict:
    """An FMEL row (a dict) with its JSON fields decoded."""
    for key in JSON_FIELDS:
        row[key] = json.loads(row[key]) if isinstance(row[key], str) else row[key]
    return row


def _bar(store, run_id: str, bar: int) -> pd.DataFrame:
    if hasattr(store, "bar"):       # the embedded store reads the one file holding the bar
        return store.bar(run_id, bar)
    # Filter, then keep one row per record_id: a record_id fixes its bar, so this equals filtering the
    # deduplicated ``fmel`` and reads one bar instead of numbering every record of the run.
    return store.sql(f"SELECT * FROM fmel_raw WHERE bar_number = {int(bar)} "
                     "QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY recorded_at DESC) = 1", run_id=run_id)


def explain(run_id: str, bar: int | None = None, timestamp=None, *, store=None) -> pd.DataFrame:
    """One bar as a table: what the market was, what the strategy knew, what it decided and why,
    what happened, how the account stood.

    >>> fk.fmel.explain(res.run_id, bar=1234)
    """
    return explain_record(record(run_id, bar, timestamp, store=store))


def explain_record(rec: dict) -> pd.DataFrame:
    """:func:`explain`'s table for a record already at hand (a :func:`decoded` FMEL row)."""
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
    table.attrs.update(run_id=rec["run_id"], bar_number=int(rec["bar_number"]), timestamp=rec["timestamp"])
    return table.set_index(["section", "field"])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.2f}"
    return "null" if value is None else str(value)


def _bigquery(store) -> bool:
    return getattr(store, "dialect", "duckdb") == "bigquery"


def _quote(value, store=None) -> str:
    if _bigquery(store):
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + str(value).replace("'", "''") + "'"


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _timestamp(store, value) -> str:
    """A UTC timestamp literal in the store's SQL."""
    if _bigquery(store):
        return f"TIMESTAMP '{_utc(value).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
    return f"TIMESTAMPTZ {_quote(_utc(value).isoformat())}"


_DECISIONS_SQL = {
    # one row per decision: (where on the records, where on the decision d, field of d, number field of d)
    "duckdb": (
        """WITH decided AS (SELECT run_id, agent_id, bar_number, timestamp,
                                   unnest(from_json(decisions, '["json"]')) AS d
                            FROM fmel WHERE {where})
           SELECT run_id, agent_id, bar_number, timestamp, d->>'action' AS action, d->>'symbol' AS symbol,
                  TRY_CAST(d->>'size' AS DOUBLE) AS size, d->>'reason' AS reason,
                  TRY_CAST(d->>'confidence' AS DOUBLE) AS confidence, d->'signals' AS signals
           FROM decided {outer}
           ORDER BY run_id, bar_number""",
        "d->>'{}'"),
    "bigquery": (
        """WITH decided AS (SELECT run_id, agent_id, bar_number, timestamp, d, i AS position
                            FROM fmel, UNNEST(JSON_QUERY_ARRAY(decisions)) AS d WITH OFFSET AS i
                            WHERE {where})
           SELECT run_id, agent_id, bar_number, timestamp, JSON_VALUE(d, '$.action') AS action,
                  JSON_VALUE(d, '$.symbol') AS symbol, SAFE_CAST(JSON_VALUE(d, '$.size') AS FLOAT64) AS size,
                  JSON_VALUE(d, '$.reason') AS reason,
                  SAFE_CAST(JSON_VALUE(d, '$.confidence') AS FLOAT64) AS confidence,
                  TO_JSON_STRING(JSON_QUERY(d, '$.signals')) AS signals, position AS _position
           FROM decided {outer}
           ORDER BY run_id, bar_number, position""",
        "JSON_VALUE(d, '$.{}')"),
}


def decisions(run_id: str | None = None, *, agent_id: str | None = None, start=None, end=None,
              symbol: str | None = None, action: str | None = None, include_holds: bool = False,
              store=None) -> pd.DataFrame:
    """Decisions as rows (one per decision, holds left out unless asked for), filtered by run or
    agent, time range, symbol and action.

    >>> fk.fmel.decisions(res.run_id, action="buy").head()
    """
    if run_id is None and agent_id is None:
        raise ValueError("decisions needs run_id or agent_id= (fk.runs() lists them)")
    store = default_store(store)
    template, field = _DECISIONS_SQL["bigquery" if _bigquery(store) else "duckdb"]
    where = [f"run_id = {_quote(run_id, store)}"] if run_id else []
    if agent_id:
        where.append(f"agent_id = {_quote(agent_id, store)}")
    if start is not None:
        where.append(f"timestamp >= {_timestamp(store, start)}")
    if end is not None:
        where.append(f"timestamp <= {_timestamp(store, end)}")
    outer = []
    if symbol:
        outer.append(f"{field.format('symbol')} = {_quote(symbol, store)}")
    if action:
        outer.append(f"{field.format('action')} = {_quote(action, store)}")
    elif not include_holds:
        outer.append(f"{field.format('action')} <> 'hold'")
    query = template.format(where=" AND ".join(where), outer=("WHERE " + " AND ".join(outer)) if outer else "")
    frame = store.sql(query, run_id=run_id).drop(columns="_position", errors="ignore")
    frame["signals"] = frame["signals"].map(lambda v: json.loads(v) if isinstance(v, str) else None)
    return frame


_DISTANCE = {">": lambda v, t: t - v, ">=": lambda v, t: t - v, "<": lambda v, t: v - t, "<=": lambda v, t: v - t}


REFUSED = ("margin", "rejected", "cancelled", "expired")   # how the broker turns an order down
WHY_NOT_COLUMNS = ["kind", "condition", "value", "op", "threshold", "met", "distance", "detail"]


def why_not(run_id: str, timestamp=None, *, bar: int | None = None, store=None, recent: int = 3,
            horizon: int = 50) -> pd.DataFrame:
    """Why the strategy did not trade at a bar, or why its trade did not happen. One row per reason:

    - ``condition``: each condition recorded with ``self.condition``: its value, the threshold,
      whether it held and how far the value was from meeting it;
    - ``broker``: an order decided here that the broker turned down (margin, rejected, cancelled,
      expired) within ``horizon`` bars, or a decision that placed no order (a sizer gave size 0);
    - without conditions, ``tracked`` (each value the strategy tracked at the bar) and ``recent``
      (its last ``recent`` trading decisions before the bar), so there is always something to read.

    >>> fk.fmel.why_not(res.run_id, "2024-01-03 15:42")
    """
    store = default_store(store)
    rec = record(run_id, bar, timestamp, store=store)
    number = int(rec["bar_number"])
    tracked = dict((rec["strategy_state"] or {}).get("tracked") or {})
    conditions = tracked.pop("conditions", None) or {}
    decided = rec["decisions"] or []
    taken = [d for d in decided if d.get("action") not in ("hold", "error", None)]
    rows = []
    for name, c in conditions.items():
        value = c.get("value")
        distance = None if value is None else max(0.0, _DISTANCE[c["op"]](value, c["threshold"]))
        rows.append(("condition", name, value, c["op"], c["threshold"], c["met"], distance, None))
    refused = _refusals(store, run_id, number, taken, rec["actions"] or [], horizon)
    rows += [("broker", what, None, None, None, False, None, detail) for what, detail in refused]
    if not conditions:
        rows += [("tracked", name, value, None, None, None, None, None) for name, value in tracked.items()]
        rows += [("recent", f"bar {b}", None, None, None, None, None, text)
                 for b, text in _recent(store, run_id, number, recent)]
    table = pd.DataFrame(rows, columns=WHY_NOT_COLUMNS)
    table.attrs.update(run_id=run_id, bar_number=number, timestamp=rec["timestamp"],
                       decisions=[d.get("action") for d in decided], traded=bool(taken) and not refused,
                       refused=[detail for _, detail in refused])
    if not conditions:
        table.attrs["hint"] = ("no conditions recorded at this bar: record them in next() with "
                               "self.condition(name, value, op, threshold) to see how far each was from holding")
    return table


def _refusals(store, run_id: str, bar: int, taken: list[dict], actions: list[dict], horizon: int) -> list[tuple]:
    found = []
    refs = {ref: d for d in taken for ref in d.get("orders") or []}
    for d in taken:
        if not d.get("orders") and d.get("action") != "cancel":
            found.append((f"{d.get('action')} {d.get('symbol')}",
                          "no order was placed: the size came out as 0 (the sizer, or a target already met)"))
    if not refs:
        return found
    later = [(bar, actions)]
    if horizon:
        frame = store.sql(f"SELECT bar_number, actions FROM fmel WHERE bar_number > {bar} "
                          f"AND bar_number <= {bar + int(horizon)} ORDER BY bar_number", run_id=run_id)
        later += [(int(b), json.loads(a) if isinstance(a, str) else (a or [])) for b, a in
                  zip(frame.bar_number, frame.actions)]
    for at, events in later:
        for event in events:
            ref = event.get("order")
            if ref in refs and event.get("event") in REFUSED:
                d = refs.pop(ref)
                reason = {"margin": "not enough cash or margin for it", "rejected": "the broker rejected it",
                          "cancelled": "it was cancelled", "expired": "it expired unfilled"}[event["event"]]
                found.append((f"{d.get('action')} {d.get('symbol')}",
                              f"order {ref} ({event.get('side')} {event.get('size')}) {event['event']} at bar {at}: "
                              f"{reason}"))
    return found


def _recent(store, run_id: str, bar: int, n: int) -> list[tuple[int, str]]:
    if n <= 0:
        return []
    # Holds are most bars: read the last few thousand and keep the trading ones (JSON is read here,
    # not in SQL, so the same query runs on DuckDB and BigQuery).
    frame = store.sql(f"SELECT bar_number, decisions FROM fmel WHERE bar_number < {bar} "
                      f"AND bar_number >= {bar - 5000} ORDER BY bar_number DESC", run_id=run_id)
    out = []
    for b, text in zip(frame.bar_number, frame.decisions):
        kept = [d for d in (json.loads(text) if isinstance(text, str) else text or []) if d.get("action") != "hold"]
        if kept:
            out.append((int(b), "; ".join(f"{d.get('action')} {d.get('symbol')} size={d.get('size')}"
                                          + (f" because {d['reason']}" if d.get("reason") else "") for d in kept)))
        if len(out) == n:
            break
    return out[::-1]


@dataclass(frozen=True)
class Comparison:
    """Two runs bar by bar (aligned on bar time): decisions, orders, fills (size, price, commission)
    and positions. ``differences`` has one row per bar where they differ, naming the first field that
    does (``field``, with ``a`` and ``b`` its values); ``side_by_side`` shows both records of the
    first such bar."""

    run_a: str
    run_b: str
    bars: int
    differences: pd.DataFrame
    side_by_side: pd.DataFrame | None

    @property
    def identical(self) -> bool:
        return self.differences.empty

    def __str__(self) -> str:
        if self.identical:
            return (f"runs {self.run_a} and {self.run_b} took identical decisions, orders, fills and positions "
                    f"on all {self.bars} bars")
        first = self.differences.iloc[0]
        return (f"runs {self.run_a} and {self.run_b} first differ at {first.timestamp} (bar {first.bar_a} of "
                f"{self.run_a}) in {first.field}: {first.a} against {first.b}; "
                f"{len(self.differences)} bar(s) differ in all")

    def _repr_html_(self) -> str:
        return f"<p>{self}</p>" + ("" if self.side_by_side is None else self.side_by_side.to_html())


FIELDS = ("decisions", "orders", "fills", "positions")   # compared in this order; the first that differs is named


def _decided(text: str) -> list[tuple]:
    return [(d.get("action"), d.get("symbol"), d.get("size")) for d in json.loads(text)]


def _facts(row) -> dict[str, object]:
    actions = json.loads(row.actions or "[]")
    state = json.loads(row.strategy_state or "{}")
    return {
        "decisions": _decided(row.decisions),
        "orders": [(a.get("symbol"), a.get("side"), a.get("type"), a.get("size"), a.get("price"))
                   for a in actions if a.get("event") == "submitted"],
        "fills": [(a.get("symbol"), a.get("side"), a.get("filled_size"), a.get("fill_price"), a.get("commission"))
                  for a in actions if a.get("filled_size")],
        "positions": {k: v for k, v in (state.get("positions") or {}).items() if v},
    }


def compare(run_a: str, run_b: str, *, store=None) -> Comparison:
    """Compare two runs on the bars they share, by bar time: decisions (action, symbol, size), orders
    submitted (symbol, side, type, size, price), fills (symbol, side, size, price, commission) and
    positions. Order ids are not compared: they count every order of a process.

    >>> fk.fmel.compare(run_a, run_b).side_by_side
    """
    store = default_store(store)
    a, b = store.fmel(run_a), store.fmel(run_b)
    if a.empty or b.empty:
        raise KeyError(f"no FMEL records for run {run_a if a.empty else run_b!r}; fk.runs() lists the runs")
    other = {row.timestamp: row for row in b.itertuples(index=False)}
    rows = []
    for row in a.itertuples(index=False):
        mine = _facts(row)
        if row.timestamp not in other:
            rows.append((row.timestamp, row.bar_number, None, "bar", "present", "(no bar)",
                         mine["decisions"], "(no bar)"))
            continue
        match = other[row.timestamp]
        theirs = _facts(match)
        for name in FIELDS:
            if mine[name] != theirs[name]:
                rows.append((row.timestamp, row.bar_number, int(match.bar_number), name, mine[name], theirs[name],
                             mine["decisions"], theirs["decisions"]))
                break
    differences = pd.DataFrame(rows, columns=["timestamp", "bar_a", "bar_b", "field", "a", "b", "decisions_a",
                                              "decisions_b"])
    side = None
    if rows:
        first = differences.iloc[0]
        side = pd.concat({run_a: explain(run_a, bar=int(first.bar_a), store=store)["value"],
                          run_b: explain(run_b, timestamp=first.timestamp, store=store)["value"]}, axis=1)
    return Comparison(run_a, run_b, len(a), differences, side)
