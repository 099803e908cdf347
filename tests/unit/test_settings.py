"""Settings read from the environment: the paper-run options added for replays and warm-up."""

import pytest

from farmkit.errors import ConfigError
from farmkit.settings import Settings


def test_replay_and_warm_up_defaults():
    settings = Settings.from_env({})
    assert settings.replay is None and settings.replay_speed == 60.0 and settings.warmup == "notebook"


@pytest.mark.parametrize("variable, value, message", [
    ("FARM_REPLAY_SPEED", "0", "FARM_REPLAY_SPEED must be a number > 0"),
    ("FARM_REPLAY_SPEED", "fast", "FARM_REPLAY_SPEED must be a number > 0"),
    ("FARM_LEADERBOARD_EVERY", "-1", "FARM_LEADERBOARD_EVERY must be a number of seconds > 0"),
    ("FARM_WARMUP", "yesterday", "FARM_WARMUP must be notebook, alpaca or archive"),
])
def test_bad_values_say_what_is_expected(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


def test_the_ingesters_settings_are_left_to_the_ingester():
    assert Settings.from_env({"FARM_INGEST_STOCKS": "AAPL"}).bus == "memory://"
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env({"FARM_INGESTS": "AAPL"})


def test_farm_has_the_ingester_commands(capsys):
    from farmkit.cli import main
    assert main(["ingest", "--help"]) == 0
    assert "--source" in capsys.readouterr().out
