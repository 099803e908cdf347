"""What the runner hands the agent's kernel: whose runs it makes."""

from pathlib import Path

import farmkit as fk
from farmkit.ops.agents import LocalAgentStore
from runner.service import Runner

AGENT = Path(__file__).resolve().parents[2] / "agents" / "sma-crossover"


def test_a_stored_agents_runs_are_registered_with_its_owner_and_id(tmp_path, farm_home):
    record = LocalAgentStore(tmp_path / "agents").put("sma-crossover", AGENT, owner="uid-7")
    env = Runner(tmp_path / "agents" / "sma-crossover", farm_home).kernel_environment()
    assert (env["FARM_OWNER"], env["FARM_AGENT_UID"]) == ("uid-7", record.uid)
    assert fk.Settings.from_env(env).owner == "uid-7"      # the kernel's settings accept them


def test_an_agent_outside_a_store_names_nobody(farm_home):
    env = Runner(AGENT, farm_home).kernel_environment()
    assert "FARM_OWNER" not in env and "FARM_AGENT_UID" not in env


def test_a_folder_without_a_manifest_says_how_to_make_one(tmp_path, farm_home):
    import pytest
    from farmkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"farm promote NOTEBOOK --name NAME"):
        Runner(tmp_path, farm_home)
