import os

import pytest

import farmkit as fk


def need(condition: bool, reason: str) -> None:
    """Skip with the reason on a laptop; fail under CI=true, where the real thing must be there."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture
def farm_home(tmp_path, monkeypatch):
    """A clean FARM_HOME for the test; returns the settings pointing at it."""
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "farm"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.setenv("FARM_PROGRESS", "off")
    monkeypatch.setenv("FARM_FIGURE_IMAGES", "off")
    # The leaderboard has its own tests against a real redis-server; elsewhere it stays out of the way.
    monkeypatch.setenv("FARM_REDIS", "off")
    return fk.Settings.from_env()


@pytest.fixture(scope="session")
def minute_bars():
    return fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=5, freq="1min", seed=7)
