"""Bars from CSV and Parquet files, checked row by row so that a bad file names its line and column."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from farmkit.data import window as data_window
from farmkit.data.bars import COLUMNS, Bars, validate_frame
from farmkit.errors import DataError

TIMESTAMP_NAMES = ("timestamp", "time", "datetime", "date", "t")
# Short OHLCV names, as in Alpaca's own bar JSON; used only when the full name is absent.
_SHORT_NAMES = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
_FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load(path: str | os.PathLike, *, symbol: str | None = None, tz: str | None = None,
         timestamp_column: str | None = None) -> Bars:
    """Load OHLCV bars from a ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq`` file.

    One symbol per file (named by ``symbol``, else the file name), or a long file with a ``symbol``
    column (then ``symbol=`` picks one of them). Column names are case-insensitive; the timestamp
    column is found by name (timestamp, time, datetime, date, t) unless ``timestamp_column`` says.
    Timestamps without a UTC offset need ``tz=`` to say which zone they are in.

    >>> bars = fk.data.load("data/AAPL.csv", tz="America/New_York")
    >>> bars = fk.data.load("data/universe.parquet")        # long file with a symbol column
    """
    path = Path(path).expanduser()
    suffix = next((s for s in sorted(_FORMATS, key=len, reverse=True) if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise DataError(f"cannot tell the format of {path.name!r}; use one of {', '.join(_FORMATS)}",
                        source=str(path))
    if not path.is_file():
        raise DataError(f"file not found (current directory is {Path.cwd()})", source=str(path))
    if _FORMATS[suffix] == "csv":
        frame, source = _read_csv(path), str(path)
        # Line numbers: the header is line 1; blank lines were dropped, so carry each row's own line.
        lines = frame.pop("__line__").to_numpy()
        header_row = 1
    else:
        frame, source = _read_parquet(path), f"{path} (Parquet, rows counted from 0)"
        lines, header_row = np.arange(len(frame)), None
    frame = _canonical_columns(frame, source, header_row)
    stamp_col = _timestamp_column(frame, timestamp_column, source, header_row)
    stamps = _parse_timestamps(frame[stamp_col], tz, lines, source, stamp_col)

    if "symbol" in frame.columns:
        groups = _symbol_groups(frame["symbol"], lines, source)
        if symbol is not None:
            if symbol not in groups:
                raise DataError(f"symbol {symbol!r} is not in the file; it has {', '.join(groups)}",
                                source=source, column="symbol")
            groups = {symbol: groups[symbol]}
    else:
        groups = {symbol or path.name[: -len(suffix)]: np.arange(len(frame))}

    bars = Bars()
    for name, positions in groups.items():
        part = frame.iloc[positions]
        part = pd.DataFrame({c: part[c].to_numpy() for c in COLUMNS}, index=stamps[positions])
        bars[name] = _validate(part, source, lines[positions], name if len(groups) > 1 else None)
    return data_window.clip(bars)


def _read_csv(path: Path) -> pd.DataFrame:
    # Everything as text: the raw value goes into the error message, and nothing is guessed.
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                            skip_blank_lines=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty; it needs a header line and rows of bars", source=str(path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"cannot read as CSV: {exc}", source=str(path)) from None
    frame["__line__"] = np.arange(len(frame)) + 2
    blank = (frame.drop(columns="__line__") == "").all(axis=1)
    return frame[~blank.to_numpy()].reset_index(drop=True)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"cannot read as Parquet: {exc}", source=str(path)) from None
    # A frame saved with df.to_parquet() keeps its DatetimeIndex as the index, not as a column.
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    return frame


def _canonical_columns(frame: pd.DataFrame, source: str, header_row: int | None) -> pd.DataFrame:
    names = [str(c).strip().lower() for c in frame.columns]
    seen = set()
    for name in names:
        if name in seen:
            raise DataError("two columns have this name (column names are case-insensitive)",
                            source=source, row=header_row, column=name)
        seen.add(name)
    names = [_SHORT_NAMES[n] if n in _SHORT_NAMES and _SHORT_NAMES[n] not in seen else n for n in names]
    frame = frame.set_axis(names, axis=1)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; bars need {', '.join(COLUMNS)} "
                        f"(the file has {', '.join(names)})", source=source, row=header_row, column=missing[0])
    return frame


def _timestamp_column(frame: pd.DataFrame, given: str | None, source: str, header_row: int | None) -> str:
    if given is not None:
        if given.strip().lower() not in frame.columns:
            raise DataError(f"timestamp_column={given!r} is not in the file (it has {', '.join(frame.columns)})",
                            source=source, row=header_row, column=given)
        return given.strip().lower()
    found = next((n for n in TIMESTAMP_NAMES if n in frame.columns), None)
    if found is None:
        raise DataError(f"no timestamp column: looked for {', '.join(TIMESTAMP_NAMES)} among "
                        f"{', '.join(frame.columns)}; name it with timestamp_column=...",
                        source=source, row=header_row, column="timestamp")
    return found


def _parse_timestamps(raw: pd.Series, tz: str | None, lines: np.ndarray, source: str,
                      column: str) -> pd.DatetimeIndex:
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(raw.dtype):
        stamps = pd.DatetimeIndex(raw)
        if stamps.isna().any():
            i = int(np.flatnonzero(stamps.isna())[0])
            raise DataError("timestamp is missing", source=source, row=int(lines[i]), column=column)
    else:
        text = raw.astype(str).str.strip()
        empty = (text == "") | raw.isna().to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError("timestamp is empty", source=source, row=int(lines[i]), column=column)
        try:
            stamps = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce", format="ISO8601"))
        except ValueError:
            # Offsets differ between rows (e.g. -05:00 and -04:00 across DST), or some rows have none.
            stamps = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True))
            naive = ~text.str.contains(r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$").to_numpy()
            if naive.any():
                i = int(np.flatnonzero(naive)[0])
                raise DataError(f"timestamp {text.iloc[i]!r} has no UTC offset but other rows have one; "
                                "use one convention for the whole file", source=source,
                                row=int(lines[i]), column=column)
        bad = stamps.isna()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"cannot parse timestamp {text.iloc[i]!r}; expected ISO 8601 such as "
                            "'2024-01-02 09:30:00-05:00' or '2024-01-02T14:30:00Z'",
                            source=source, row=int(lines[i]), column=column)
    if stamps.tz is None:
        if tz is None:
            raise DataError("timestamps have no timezone; pass tz='America/New_York' (or the zone they were "
                            "recorded in, tz='UTC' if they are UTC)", source=source, column=column)
        try:
            stamps = stamps.tz_localize(tz)
        except Exception as exc:  # unknown zone name, or a wall time that DST skips or repeats
            raise DataError(f"cannot place the timestamps in tz={tz!r}: {exc}", source=source,
                            column=column) from None
    return stamps.tz_convert("UTC")


def _symbol_groups(symbols: pd.Series, lines: np.ndarray, source: str) -> dict[str, np.ndarray]:
    text = symbols.astype(str).str.strip()
    empty = (text == "") | symbols.isna().to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError("symbol is empty", source=source, row=int(lines[i]), column="symbol")
    # Positions in file order, symbols in order of first appearance.
    return {str(s): np.asarray(p) for s, p in text.groupby(text, sort=False).indices.items()}


def _validate(part: pd.DataFrame, source: str, lines: np.ndarray, symbol: str | None) -> pd.DataFrame:
    # validate_frame counts rows within this symbol's subset; report the row in the file instead.
    try:
        return validate_frame(part, row_offset=0)
    except DataError as exc:
        prefix = str(DataError("", row=exc.row, column=exc.column))
        message = str(exc)[len(prefix):] if str(exc).startswith(prefix) else str(exc)
        if symbol is not None:
            message = f"{message} [symbol {symbol}]"
        row = int(lines[exc.row]) if exc.row is not None else None
        raise DataError(message, source=source, row=row, column=exc.column) from None
