"""`Bars`: OHLCV frames keyed by symbol, UTC inside, validated once at the edge."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from farmkit.errors import DataError

COLUMNS = ("open", "high", "low", "close", "volume")


class Bars(dict):
    """A mapping ``symbol -> DataFrame`` of OHLCV bars.

    Every frame has a UTC ``DatetimeIndex`` named ``timestamp`` (the bar's start), strictly increasing,
    and float64 columns ``open high low close volume``. ``fk.data.*`` return it and ``fk.backtest``
    takes it, as well as a plain DataFrame or a dict of DataFrames (see :func:`to_bars`).

    >>> bars = fk.data.synthetic(["AAPL"], days=2)
    >>> bars["AAPL"].tail(2)
    """

    @property
    def symbols(self) -> list[str]:
        return list(self)

    def fingerprint(self) -> str:
        """A short hash of the exact data: same bars, same fingerprint."""
        h = hashlib.sha256()
        for symbol in sorted(self):
            frame = self[symbol]
            h.update(symbol.encode())
            h.update(frame.index.asi8.tobytes())
            h.update(np.ascontiguousarray(frame[list(COLUMNS)].to_numpy("float64")).tobytes())
        return h.hexdigest()[:16]

    def to_frame(self) -> pd.DataFrame:
        """All symbols in one long frame with a ``symbol`` column."""
        return pd.concat({s: f for s, f in self.items()}, names=["symbol", "timestamp"]).reset_index()

    def __repr__(self) -> str:
        parts = [f"{s}: {len(f):,} bars {f.index[0]:%Y-%m-%d %H:%M} → {f.index[-1]:%Y-%m-%d %H:%M} UTC"
                 if len(f) else f"{s}: empty" for s, f in self.items()]
        return "Bars(" + "; ".join(parts) + ")"


def _row_label(frame: pd.DataFrame, position: int, row_offset: int | None) -> int | str:
    # Files report 1-based line numbers (header is line 1); frames report the index label.
    if row_offset is not None:
        return position + row_offset
    return str(frame.index[position])


def validate_frame(frame: pd.DataFrame, *, source: str | None = None, symbol: str | None = None,
                   row_offset: int | None = None, naive_tz: str | None = None) -> pd.DataFrame:
    """Check one symbol's OHLCV frame and return it in canonical form (UTC index, float64 columns).

    Raises :class:`DataError` naming the source, the row and the column of the first problem:
    missing columns, a timezone-naive index (unless ``naive_tz`` says which zone it is in),
    unsorted or duplicate timestamps, NaN or infinite values, ``high < low`` or an open/close outside
    [low, high], negative volume. ``row_offset`` turns positions into file line numbers.
    """
    where = source or (f"symbol {symbol}" if symbol else None)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame of OHLCV bars, got {type(frame).__name__}", source=where)
    frame = frame.rename(columns={c: c.lower() for c in frame.columns if isinstance(c, str)})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; bars need {', '.join(COLUMNS)}",
                        source=where, column=missing[0])
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError("the index must be a DatetimeIndex of bar start times "
                        "(set it with df.set_index('timestamp'))", source=where)
    index = frame.index
    if index.tz is None:
        if naive_tz is None:
            raise DataError("timestamps have no timezone; localize them (df.tz_localize('UTC')) "
                            "or pass tz='America/New_York' (or the zone they are in)", source=where,
                            column="timestamp")
        index = index.tz_localize(naive_tz)
    index = index.tz_convert("UTC").rename("timestamp")
    if index.unit != "ns":
        index = index.as_unit("ns")
    values = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy("float64") for c in COLUMNS], axis=1)

    stamps = index.asi8
    if len(stamps) > 1:
        steps = np.diff(stamps)
        bad = np.flatnonzero(steps <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            kind = "duplicate" if steps[i - 1] == 0 else "out-of-order"
            raise DataError(f"{kind} timestamp {index[i]} (previous row is {index[i - 1]}); "
                            "bars must be strictly increasing in time", source=where,
                            row=_row_label(frame, i, row_offset), column="timestamp")
    finite = np.isfinite(values)
    if not finite.all():
        i, j = (int(x[0]) for x in np.nonzero(~finite))
        raw = frame[COLUMNS[j]].iloc[i]
        raise DataError(f"value {raw!r} is not a finite number", source=where,
                        row=_row_label(frame, i, row_offset), column=COLUMNS[j])
    o, h, l, c, v = values.T
    checks = (
        (h < l, "high", "high is below low"),
        (o > h, "open", "open is above high"),
        (o < l, "open", "open is below low"),
        (c > h, "close", "close is above high"),
        (c < l, "close", "close is below low"),
        (l <= 0, "low", "prices must be positive"),
        (v < 0, "volume", "volume is negative"),
    )
    for mask, column, message in checks:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise DataError(f"{message} (open={o[i]}, high={h[i]}, low={l[i]}, close={c[i]}, volume={v[i]})",
                            source=where, row=_row_label(frame, i, row_offset), column=column)
    return pd.DataFrame(values, index=index, columns=list(COLUMNS))


def to_bars(data, *, tz: str | None = None) -> Bars:
    """Turn what a quant has into validated :class:`Bars`.

    Accepts ``Bars`` (returned as is), a dict ``{symbol: DataFrame}``, or a single DataFrame
    (symbol taken from ``df.attrs['symbol']``, else ``"data"``). ``tz`` names the zone of naive timestamps.
    """
    if isinstance(data, Bars):
        return data
    if isinstance(data, pd.DataFrame):
        data = {str(data.attrs.get("symbol", "data")): data}
    if not isinstance(data, Mapping) or not data:
        raise DataError("expected market data: fk.data.* output, a DataFrame of OHLCV bars with a "
                        f"DatetimeIndex, or a dict of them keyed by symbol; got {type(data).__name__}")
    return Bars({str(s): validate_frame(f, symbol=str(s), naive_tz=tz) for s, f in data.items()})
