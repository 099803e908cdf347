import numpy as np
import pandas as pd
import pytest

import farmkit as fk
from farmkit.data.bars import validate_frame


def test_same_seed_same_bars_and_symbols_are_independent_of_each_other():
    a = fk.data.synthetic(["AAPL", "MSFT"], days=3, seed=7)
    b = fk.data.synthetic(["AAPL", "MSFT"], days=3, seed=7)
    assert a.fingerprint() == b.fingerprint()
    assert fk.data.synthetic(["AAPL"], days=3, seed=7)["AAPL"].equals(a["AAPL"])
    assert fk.data.synthetic(["AAPL"], days=3, seed=8).fingerprint() != fk.data.synthetic(["AAPL"], days=3, seed=7).fingerprint()


def test_minute_bars_are_regular_trading_hours_in_utc_with_overnight_gaps():
    bars = fk.data.synthetic("AAPL", start="2024-03-08", days=2)["AAPL"]  # DST starts 2024-03-10
    assert len(bars) == 2 * 390 and str(bars.index.tz) == "UTC"
    ny = bars.index.tz_convert("America/New_York")
    assert ny[0].strftime("%a %H:%M") == "Fri 09:30" and ny[389].strftime("%H:%M") == "15:59"
    assert ny[390].strftime("%a %H:%M") == "Mon 09:30"
    assert bars.index[0].hour == 14 and bars.index[390].hour == 13  # EST then EDT, in UTC
    opens, closes = bars["open"].to_numpy(), bars["close"].to_numpy()
    assert np.allclose(opens[1:390], closes[:389])          # continuous within the day
    assert opens[390] != closes[389]                        # a gap overnight


def test_ohlc_is_always_consistent_and_validates():
    bars = fk.data.synthetic(["A", "B", "C"], days=30, seed=3)
    for frame in bars.values():
        validate_frame(frame)
        assert (frame.high >= frame[["open", "close"]].max(axis=1)).all()
        assert (frame.low <= frame[["open", "close"]].min(axis=1)).all()
        assert (frame.volume >= 0).all()


def test_volatility_clusters_and_volume_is_u_shaped():
    frame = fk.data.synthetic("X", days=250, seed=1)["X"]
    returns = np.log(frame.close).diff().dropna()
    daily_abs = returns.abs().groupby(returns.index.date).mean()
    # Clustering: a calm day tends to follow a calm day (positive autocorrelation of daily |r|).
    assert daily_abs.autocorr(lag=1) > 0.3
    minute_of_day = np.tile(np.arange(390), 250)
    profile = frame.volume.groupby(minute_of_day).mean()
    assert profile.iloc[:15].mean() > 1.5 * profile.iloc[180:210].mean() < profile.iloc[-15:].mean()


def test_daily_bars():
    bars = fk.data.synthetic("SPY", start="2024-01-01", days=10, freq="1D")["SPY"]
    assert len(bars) == 10 and bars.index[0] == pd.Timestamp("2024-01-01 14:30", tz="UTC")
    validate_frame(bars)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="freq must be"):
        fk.data.synthetic("X", freq="5min")
    with pytest.raises(ValueError, match="days must be at least 1"):
        fk.data.synthetic("X", days=0)
