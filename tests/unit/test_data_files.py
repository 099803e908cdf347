"""fk.data.load: good files round-trip exactly; a bad file names the file, the row (line) and the column."""

import gzip

import pandas as pd
import pytest

import farmkit as fk
from farmkit.data.files import load
from farmkit.errors import DataError

HEADER = "timestamp,open,high,low,close,volume\n"
GOOD_ROWS = [
    "2024-01-02T14:30:00Z,100.0,101.0,99.0,100.5,1000\n",
    "2024-01-02T14:31:00Z,100.5,102.0,100.0,101.0,1200\n",
    "2024-01-02T14:32:00Z,101.0,101.5,100.5,101.2,900\n",
]


def write(tmp_path, text, name="AAPL.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def with_row(line_number, row):
    """The good file with line ``line_number`` (header = 1) replaced by ``row``."""
    rows = list(GOOD_ROWS)
    rows[line_number - 2] = row
    return HEADER + "".join(rows)


@pytest.fixture(scope="module")
def bars():
    return fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=2, freq="1min", seed=11)


def assert_points_at(exc_info, path, row, column):
    err = exc_info.value
    assert (err.source, err.row, err.column) == (str(path), row, column)
    text = str(err)
    assert str(path) in text and f"row {row}" in text and repr(column) in text


# --- validation: file, line and column ---------------------------------------------------------------------

@pytest.mark.parametrize("text, row, column, says", [
    (with_row(3, "2024-01-02T14:31:00Z,,102.0,100.0,101.0,1200\n"), 3, "open", "not a finite number"),
    (with_row(4, "2024-01-02T14:32:00Z,101.0,101.5,100.5,NaN,900\n"), 4, "close", "'NaN'"),
    (with_row(2, "2024-01-02T14:30:00Z,100.0,101.0,99.0,100.5,lots\n"), 2, "volume", "'lots'"),
    (with_row(3, "2024-01-02T14:31:00Z,100.5,99.0,100.0,101.0,1200\n"), 3, "high", "high is below low"),
    (with_row(3, "2024-01-02T14:31:00Z,103.0,102.0,100.0,101.0,1200\n"), 3, "open", "open is above high"),
    (with_row(4, "2024-01-02T14:32:00Z,101.0,101.5,100.5,100.0,900\n"), 4, "close", "close is below low"),
    (with_row(2, "2024-01-02T14:30:00Z,100.0,101.0,99.0,100.5,-5\n"), 2, "volume", "volume is negative"),
    (with_row(3, "2024-01-02T14:30:00Z,100.5,102.0,100.0,101.0,1200\n"), 3, "timestamp", "duplicate"),
    (with_row(4, "2024-01-02T14:29:00Z,101.0,101.5,100.5,101.2,900\n"), 4, "timestamp", "out-of-order"),
    (with_row(3, "yesterday,100.5,102.0,100.0,101.0,1200\n"), 3, "timestamp", "timestamp 'yesterday'"),
    (with_row(4, ",101.0,101.5,100.5,101.2,900\n"), 4, "timestamp", "timestamp is empty"),
    ("timestamp,open,high,low,close\n" + "".join(r.rsplit(",", 1)[0] + "\n" for r in GOOD_ROWS),
     1, "volume", "missing column(s) volume"),
    ("when,open,high,low,close,volume\n" + "".join(GOOD_ROWS), 1, "timestamp", "no timestamp column"),
])
def test_bad_csv_names_file_line_and_column(tmp_path, text, row, column, says):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as exc_info:
        load(path)
    assert_points_at(exc_info, path, row, column)
    assert says in str(exc_info.value)


def test_blank_lines_still_count_as_lines(tmp_path):
    text = HEADER + GOOD_ROWS[0] + "\n" + GOOD_ROWS[1] + "2024-01-02T14:32:00Z,101.0,100.0,100.5,101.2,900\n"
    path = write(tmp_path, text)
    with pytest.raises(DataError) as exc_info:
        load(path)
    assert_points_at(exc_info, path, 5, "high")


def test_long_file_reports_the_line_in_the_file_not_in_the_symbol(tmp_path):
    rows = []
    for minute in range(3):
        for symbol in ("AAPL", "MSFT"):
            rows.append(f"{symbol},2024-01-02T14:3{minute}:00Z,100,101,99,100.5,1000\n")
    rows[5] = "MSFT,2024-01-02T14:32:00Z,100,101,99,100.5,-1\n"     # MSFT's 3rd bar, line 7 of the file
    path = write(tmp_path, "Symbol,Timestamp,Open,High,Low,Close,Volume\n" + "".join(rows), "universe.csv")
    with pytest.raises(DataError) as exc_info:
        load(path)
    assert_points_at(exc_info, path, 7, "volume")
    assert "MSFT" in str(exc_info.value)


def test_unsorted_rows_are_checked_per_symbol(tmp_path):
    text = ("symbol,timestamp,open,high,low,close,volume\n"
            "AAPL,2024-01-02T14:30:00Z,100,101,99,100,1\n"
            "MSFT,2024-01-02T14:30:00Z,100,101,99,100,1\n"      # same time, other symbol: fine
            "MSFT,2024-01-02T14:31:00Z,100,101,99,100,1\n"
            "AAPL,2024-01-02T14:30:00Z,100,101,99,100,1\n")     # AAPL again at 14:30: duplicate, line 5
    path = write(tmp_path, text, "long.csv")
    with pytest.raises(DataError) as exc_info:
        load(path)
    assert_points_at(exc_info, path, 5, "timestamp")
    assert "duplicate" in str(exc_info.value)


def test_bad_parquet_row_is_counted_from_zero(tmp_path, bars):
    frame = bars["AAPL"].iloc[:5].copy()
    frame.iloc[3, frame.columns.get_loc("low")] = frame["high"].iloc[3] + 1.0
    path = tmp_path / "AAPL.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError) as exc_info:
        load(path)
    err = exc_info.value
    assert (err.row, err.column) == (3, "high")
    assert str(path) in str(err) and "counted from 0" in str(err) and "high is below low" in str(err)


def test_nan_in_parquet_names_row_and_column(tmp_path, bars):
    frame = bars["MSFT"].iloc[:4].copy()
    frame.iloc[2, frame.columns.get_loc("close")] = float("nan")
    path = tmp_path / "msft.pq"
    frame.to_parquet(path)
    with pytest.raises(DataError) as exc_info:
        load(path)
    assert (exc_info.value.row, exc_info.value.column) == (2, "close")


def test_missing_file_says_so_with_the_path(tmp_path):
    path = tmp_path / "nowhere" / "AAPL.csv"
    with pytest.raises(DataError, match="file not found") as exc_info:
        load(path)
    assert str(path) in str(exc_info.value)


def test_unknown_extension_lists_the_known_ones(tmp_path):
    path = write(tmp_path, HEADER + "".join(GOOD_ROWS), "AAPL.txt")
    with pytest.raises(DataError, match=r"\.csv, \.csv\.gz, \.parquet, \.pq"):
        load(path)


# --- good files --------------------------------------------------------------------------------------------

def test_csv_round_trip_is_exact(tmp_path, bars):
    path = tmp_path / "AAPL.csv"
    bars["AAPL"].to_csv(path)
    loaded = load(path)
    assert loaded.symbols == ["AAPL"]
    pd.testing.assert_frame_equal(loaded["AAPL"], bars["AAPL"])
    assert loaded.fingerprint() == fk.data.Bars({"AAPL": bars["AAPL"]}).fingerprint()


def test_gzipped_csv_and_symbol_argument(tmp_path, bars):
    path = tmp_path / "prices.csv.gz"
    with gzip.open(path, "wt") as f:
        bars["MSFT"].to_csv(f)
    loaded = load(path, symbol="MSFT")
    assert loaded.symbols == ["MSFT"]
    pd.testing.assert_frame_equal(loaded["MSFT"], bars["MSFT"])


def test_parquet_round_trip_is_exact(tmp_path, bars):
    path = tmp_path / "MSFT.parquet"
    bars["MSFT"].to_parquet(path)
    loaded = load(path)
    assert loaded.symbols == ["MSFT"]
    pd.testing.assert_frame_equal(loaded["MSFT"], bars["MSFT"])


def test_long_parquet_with_symbol_column(tmp_path, bars):
    path = tmp_path / "universe.parquet"
    bars.to_frame().to_parquet(path)
    loaded = load(path)
    assert loaded.symbols == ["AAPL", "MSFT"]
    assert loaded.fingerprint() == bars.fingerprint()
    only = load(path, symbol="MSFT")
    assert only.symbols == ["MSFT"] and len(only["MSFT"]) == len(bars["MSFT"]) == 780
    with pytest.raises(DataError, match="'TSLA' is not in the file; it has AAPL, MSFT"):
        load(path, symbol="TSLA")


def test_long_csv_with_interleaved_symbols(tmp_path, bars):
    path = tmp_path / "universe.csv"
    bars.to_frame().sort_values(["timestamp", "symbol"]).to_csv(path, index=False)
    loaded = load(path)
    assert sorted(loaded.symbols) == ["AAPL", "MSFT"]
    for symbol in ("AAPL", "MSFT"):
        pd.testing.assert_frame_equal(loaded[symbol], bars[symbol])


def test_column_names_are_case_insensitive_and_extra_columns_ignored(tmp_path):
    text = ("Date,Open,HIGH,Low,Close,Adj Close,Volume\n"
            "2024-01-02,100,110,95,105,104.5,5000\n"
            "2024-01-03,105,106,101,102,101.5,4000\n")
    loaded = load(write(tmp_path, text, "SPY.csv"), tz="America/New_York")
    frame = loaded["SPY"]
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert frame.index[0] == pd.Timestamp("2024-01-02 05:00", tz="UTC")
    assert frame["close"].tolist() == [105.0, 102.0]


def test_alpaca_style_short_names_and_explicit_timestamp_column(tmp_path):
    text = "when,o,h,l,c,v\n2024-01-02T14:30:00Z,1,2,0.5,1.5,10\n"
    loaded = load(write(tmp_path, text, "X.csv"), timestamp_column="When")
    assert loaded["X"].iloc[0].tolist() == [1.0, 2.0, 0.5, 1.5, 10.0]


# --- time zones --------------------------------------------------------------------------------------------

NAIVE = HEADER + "2024-01-02 09:30:00,100,101,99,100.5,1000\n2024-07-02 09:30:00,100,101,99,100.5,1000\n"


def test_naive_timestamps_without_tz_are_an_error(tmp_path):
    path = write(tmp_path, NAIVE)
    with pytest.raises(DataError) as exc_info:
        load(path)
    err = exc_info.value
    assert err.source == str(path) and err.column == "timestamp"
    assert "no timezone" in str(err) and "tz='America/New_York'" in str(err)


def test_naive_timestamps_with_tz_are_converted_to_utc(tmp_path):
    loaded = load(write(tmp_path, NAIVE), tz="America/New_York")
    assert list(loaded["AAPL"].index) == [pd.Timestamp("2024-01-02 14:30", tz="UTC"),   # EST, UTC-5
                                          pd.Timestamp("2024-07-02 13:30", tz="UTC")]   # EDT, UTC-4
    assert str(loaded["AAPL"].index.tz) == "UTC" and loaded["AAPL"].index.name == "timestamp"


def test_offsets_that_change_across_dst_need_no_tz(tmp_path):
    text = (HEADER + "2024-01-02 09:30:00-05:00,100,101,99,100.5,1000\n"
            "2024-07-02 09:30:00-04:00,100,101,99,100.5,1000\n")
    loaded = load(write(tmp_path, text))
    assert list(loaded["AAPL"].index.hour) == [14, 13]


def test_mixing_naive_and_offset_timestamps_is_an_error(tmp_path):
    path = write(tmp_path, HEADER + GOOD_ROWS[0] + "2024-01-02 14:31:00,100.5,102.0,100.0,101.0,1200\n")
    with pytest.raises(DataError, match="no UTC offset but other rows have one") as exc_info:
        load(path, tz="UTC")
    assert_points_at(exc_info, path, 3, "timestamp")


def test_unknown_tz_is_an_error(tmp_path):
    with pytest.raises(DataError, match="tz='Mars/Olympus'"):
        load(write(tmp_path, NAIVE), tz="Mars/Olympus")
