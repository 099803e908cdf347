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
    ("FARM_WARMUP", "yesterday", "FARM_WARMUP must be notebook or alpaca"),
])
def test_bad_values_say_what_is_expected(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})
