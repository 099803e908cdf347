import pytest

from farmkit.errors import ConfigError
from ingester.settings import IngestSettings

KEYS = {"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": "s"}


def test_defaults_and_lists():
    s = IngestSettings.from_env({**KEYS, "FARM_INGEST_STOCKS": " aapl, msft,AAPL", "FARM_INGEST_CRYPTO": "btc/usd"})
    assert s.stocks == ("AAPL", "MSFT") and s.crypto == ("BTC/USD",)
    assert (s.feed, s.market_topic, s.news_topic, s.channels) == ("iex", "market-data", "news-data",
                                                                  ("bars", "updated_bars"))
    assert s.news == () and s.shard_index == 0 and s.shard_count == 1 and s.farm.bus == "memory://"


def test_news_on_follows_the_stocks_and_star():
    assert IngestSettings.from_env({**KEYS, "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_NEWS": "on"}).news == ("AAPL",)
    assert IngestSettings.from_env({**KEYS, "FARM_INGEST_NEWS": "on"}).news == ("*",)
    assert IngestSettings.from_env({**KEYS, "FARM_INGEST_STOCKS": "*"}).stocks == ("*",)


def test_shard_index_from_the_statefulset_hostname():
    env = {**KEYS, "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_SHARD_COUNT": "3"}
    assert IngestSettings.from_env({**env, "HOSTNAME": "ingester-2"}).shard_index == 2
    assert IngestSettings.from_env({**env, "HOSTNAME": "ingester-2", "FARM_INGEST_SHARD_INDEX": "1"}).shard_index == 1
    with pytest.raises(ConfigError, match="must be below FARM_INGEST_SHARD_COUNT"):
        IngestSettings.from_env({**env, "HOSTNAME": "ingester-5"})


@pytest.mark.parametrize("env, message", [
    ({"FARM_INGEST_STOCKS": "AAPL"}, "APCA_API_KEY_ID and APCA_API_SECRET_KEY not set"),
    ({**KEYS, "FARM_INGEST_STOKCS": "AAPL"}, "unknown setting.*FARM_INGEST_STOKCS"),
    ({**KEYS}, "nothing to ingest"),
    ({**KEYS, "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_FEED": "otc"}, "iex or sip"),
    ({**KEYS, "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_CHANNELS": "trades"}, "bars is required"),
    ({**KEYS, "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_WATCHDOG_SECONDS": "soon"}, "WATCHDOG_SECONDS must be"),
    ({"FARM_INGEST_SOURCE": "replay:/nonexistent.csv"}, "no such file"),
    ({"FARM_INGEST_SOURCE": "kafka"}, "alpaca, synthetic or replay"),
])
def test_errors_say_what_to_set(env, message):
    with pytest.raises(ConfigError, match=message):
        IngestSettings.from_env(env)


def test_crypto_and_demo_need_no_keys():
    assert IngestSettings.from_env({"FARM_INGEST_CRYPTO": "BTC/USD"}).key_id == ""
    assert IngestSettings.from_env({"FARM_INGEST_SOURCE": "synthetic"}).stocks == ("AAPL", "MSFT")
