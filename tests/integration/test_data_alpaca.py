"""fk.data.alpaca through the real alpaca-py client against a local Alpaca-protocol server on loopback."""

import json
import math
import sys
import urllib.error
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

import farmkit as fk
from farmkit.data.alpaca_history import alpaca
from farmkit.errors import AlpacaAPIError
from farmkit.errors import DataError, FarmError, MissingCredentials
from tests.alpaca_server import AlpacaServer

PAGE_SIZE = 250
STOCK_BARS_PATH = "/v2/stocks/bars"
CRYPTO_BARS_PATH = "/v1beta3/crypto/us/bars"


@pytest.fixture(scope="module")
def stock_bars():
    return fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=2, freq="1min", seed=3)


@pytest.fixture(scope="module")
def btc_bars():
    frame = fk.data.synthetic("BTC", start="2024-01-02", days=1, freq="1min", seed=5, price=42_000.0)["BTC"]
    return frame.assign(volume=frame["volume"] / 1000.0)     # crypto volume is fractional


@pytest.fixture(scope="module")
def server(stock_bars, btc_bars):
    with AlpacaServer(stock_bars=stock_bars, crypto_bars={"BTC/USD": btc_bars}, page_size=PAGE_SIZE) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean_log(server):
    server.reset()


def test_stock_bars_across_pages_are_complete_and_exact(server, stock_bars):
    got = alpaca(["AAPL", "MSFT"], start="2024-01-02", end="2024-01-04", url_override=server.url,
                 environ=server.environ)

    assert isinstance(got, fk.data.Bars) and got.symbols == ["AAPL", "MSFT"]
    for symbol in ("AAPL", "MSFT"):
        assert len(got[symbol]) == 780
        pd.testing.assert_frame_equal(got[symbol], stock_bars[symbol])
        assert str(got[symbol].index.dtype) == "datetime64[ns, UTC]" and got[symbol].index.name == "timestamp"
        assert (got[symbol].dtypes == "float64").all()
    assert got.fingerprint() == stock_bars.fingerprint()

    pages = server.requests_to(STOCK_BARS_PATH)
    assert len(pages) == math.ceil(2 * 780 / PAGE_SIZE) == 7
    assert "page_token" not in pages[0].query
    assert all("page_token" in p.query for p in pages[1:])
    first = pages[0].query
    assert (first["symbols"], first["timeframe"], first["feed"], first["adjustment"]) == \
        ("AAPL,MSFT", "1Min", "iex", "raw")
    assert (first["start"], first["end"]) == ("2024-01-02T00:00:00+00:00", "2024-01-04T00:00:00+00:00")
    assert pages[0].headers["apca-api-key-id"] == server.key_id


def test_naive_start_is_utc_and_aware_end_is_converted(server, stock_bars):
    new_york = ZoneInfo("America/New_York")
    got = alpaca("MSFT", start="2024-01-02 14:30", end=datetime(2024, 1, 2, 10, 29, tzinfo=new_york),
                 timeframe="5Min", url_override=server.url, environ=server.environ)

    frame = got["MSFT"]
    assert len(frame) == 60
    assert frame.index[0] == pd.Timestamp("2024-01-02 14:30", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2024-01-02 15:29", tz="UTC")
    pd.testing.assert_frame_equal(frame, stock_bars["MSFT"].iloc[:60])
    query = server.requests_to(STOCK_BARS_PATH)[0].query
    assert (query["start"], query["end"], query["timeframe"]) == \
        ("2024-01-02T14:30:00+00:00", "2024-01-02T15:29:00+00:00", "5Min")


@pytest.mark.parametrize("timeframe, sent", [("1Min", "1Min"), ("15min", "15Min"), ("1Hour", "1Hour"),
                                             ("1h", "1Hour"), ("1Day", "1Day"), ("1D", "1Day")])
def test_timeframe_strings_map_to_alpaca_timeframes(server, timeframe, sent):
    alpaca("AAPL", start="2024-01-02", end="2024-01-03", timeframe=timeframe, url_override=server.url,
           environ=server.environ)
    assert server.requests_to(STOCK_BARS_PATH)[0].query["timeframe"] == sent


@pytest.mark.parametrize("timeframe", ["fortnight", "90Min", "1Lightyear"])
def test_bad_timeframe_is_refused_before_any_request(server, timeframe):
    with pytest.raises(ValueError, match="timeframe"):
        alpaca("AAPL", start="2024-01-02", timeframe=timeframe, url_override=server.url, environ=server.environ)
    assert server.requests == []


def test_crypto_needs_no_keys(server, btc_bars):
    got = alpaca("BTC/USD", start="2024-01-02", end="2024-01-03", environ={}, url_override=server.url)

    assert got.symbols == ["BTC/USD"]
    pd.testing.assert_frame_equal(got["BTC/USD"], btc_bars)
    pages = server.requests_to(CRYPTO_BARS_PATH)
    assert len(pages) == math.ceil(390 / PAGE_SIZE) == 2
    assert all("apca-api-key-id" not in p.headers for p in pages)
    assert pages[0].query["symbols"] == "BTC/USD"


def test_stocks_and_crypto_in_one_call(server, stock_bars, btc_bars):
    got = alpaca(["AAPL", "BTC/USD"], start="2024-01-02", end="2024-01-03", url_override=server.url,
                 environ=server.environ)
    assert got.symbols == ["AAPL", "BTC/USD"]
    assert len(got["AAPL"]) == 390 and len(got["BTC/USD"]) == 390
    # With keys present they go to the crypto endpoint too (higher rate limit).
    assert server.requests_to(CRYPTO_BARS_PATH)[0].headers["apca-api-key-id"] == server.key_id


def test_missing_keys_name_both_variables_and_where_to_get_them(server):
    with pytest.raises(MissingCredentials) as exc_info:
        alpaca("AAPL", start="2024-01-02", environ={}, url_override=server.url)
    text = str(exc_info.value)
    for needed in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "alpaca.markets", "paper", "fk.data.synthetic("):
        assert needed in text
    assert server.requests == []


def test_missing_secret_alone_is_named(server):
    with pytest.raises(MissingCredentials, match="APCA_API_SECRET_KEY is not set"):
        alpaca("AAPL", start="2024-01-02", environ={"APCA_API_KEY_ID": "abc"}, url_override=server.url)


def test_bad_keys_give_a_clear_error_with_status_and_message(server):
    environ = {**server.environ, "APCA_API_SECRET_KEY": "wrong"}
    with pytest.raises(AlpacaAPIError) as exc_info:
        alpaca("AAPL", start="2024-01-02", environ=environ, url_override=server.url)
    err = exc_info.value
    assert isinstance(err, FarmError)
    assert err.status == 403 and err.api_message == "forbidden: invalid API key or secret"
    assert "HTTP 403" in str(err) and "forbidden: invalid API key or secret" in str(err)
    assert "APCA_API_KEY_ID" in str(err)
    assert err.__cause__ is None and err.__suppress_context__     # no alpaca-py traceback chained on


def test_server_answers_401_without_key_headers(server):
    with pytest.raises(urllib.error.HTTPError) as exc_info:
        urllib.request.urlopen(f"{server.url}{STOCK_BARS_PATH}?symbols=AAPL&timeframe=1Min", timeout=5)
    assert exc_info.value.code == 401
    assert json.loads(exc_info.value.read()) == {"code": 40110000, "message": "request is not authorized"}


def test_no_bars_is_an_error_naming_the_symbol(server):
    with pytest.raises(DataError, match="no bars for NOPE from 2024-01-02 00:00 UTC to 2024-01-03 00:00 UTC"):
        alpaca(["AAPL", "NOPE"], start="2024-01-02", end="2024-01-03", url_override=server.url,
               environ=server.environ)


def test_unreachable_server_is_a_clear_error():
    with AlpacaServer() as stopped:
        url = stopped.url
    with pytest.raises(AlpacaAPIError, match=f"could not reach Alpaca at {url}"):
        alpaca("BTC/USD", start="2024-01-02", environ={}, url_override=url)


def test_without_alpaca_py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "alpaca.data.historical", None)    # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'thefarm\[alpaca\]'"):
        alpaca("BTC/USD", start="2024-01-02", environ={})


def test_symbols_are_upper_cased_and_deduplicated(server, stock_bars):
    got = alpaca(["msft", "MSFT "], start="2024-01-02", end="2024-01-03", url_override=server.url,
                 environ=server.environ)
    assert got.symbols == ["MSFT"]
    assert server.requests_to(STOCK_BARS_PATH)[0].query["symbols"] == "MSFT"
    pd.testing.assert_frame_equal(got["MSFT"], stock_bars["MSFT"].iloc[:390])
