import farmkit as fk


def test_public_api_is_curated():
    assert sorted(fk.__all__) == [
        "BacktestResult", "Bars", "DataError", "FarmError", "LookaheadReport", "ParameterError", "Parity", "Settings",
        "Strategy", "StrategyError", "SweepResult", "WalkForward", "backtest", "check_lookahead", "data", "fmel", "leaderboard",
        "paper", "parity", "report", "runs", "sweep",
    ]
    assert fk.report.tearsheet and "farmkit.report" in __import__("sys").modules   # loaded on first use
    assert sorted(fk.data.__all__) == ["Bars", "alpaca", "load", "synthetic", "to_bars"]


def test_settings_reject_unknown_farm_variables():
    import pytest
    with pytest.raises(fk.FarmError, match="FARM_HOMR.*known: .*FARM_BROKER"):
        fk.Settings.from_env({"FARM_HOMR": "/tmp/x"})
    settings = fk.Settings.from_env({"FARM_HOME": "/tmp/farm-x"})
    assert settings.store == "local:///tmp/farm-x" and settings.bus == "memory://"


def test_unknown_store_scheme_lists_the_known_ones():
    import pytest
    from farmkit.fmel.stores import open_store
    with pytest.raises(fk.FarmError, match="known schemes: bigquery://, local://"):
        open_store("mongo://x")
