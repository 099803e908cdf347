"""The runner's readiness and metrics from a paper session's status: stale symbols fail /readyz by name
and show on /metrics; a drifting run shows as drifting. (A real pod on the emulator: test_runner.py.)"""

import threading
import time

import yaml

from farmkit.live import checkpoint
from runner.health import render_metrics
from runner.service import Runner


def status(**fields):
    now = time.time()
    return {"run_id": "paper-1", "state": "live", "updated_at": now, "last_bar_at": now, **fields}


def runner_with(tmp_path, farm_home, written: dict) -> Runner:
    agent = tmp_path / "agents" / "a"
    agent.mkdir(parents=True)
    (agent / "agent.ipynb").write_text("{}")
    (agent / "agent.yaml").write_text(yaml.safe_dump({"name": "a", "notebook": "agent.ipynb",
                                                      "verification": {"run_ids": {"source": "bt-base"}}}))
    runner = Runner(agent, farm_home.replace(state_dir=tmp_path / "state"))
    runner.started = time.time() - 1
    runner.state_dir.mkdir(parents=True)
    checkpoint.write_json(runner.state_dir / checkpoint.STATUS, written)
    runner._thread = threading.Thread(target=lambda: None)
    runner._thread.is_alive = lambda: True     # the kernel "runs": only the status decides here
    return runner


def test_a_stale_symbol_fails_readiness_naming_it_with_its_age(tmp_path, farm_home):
    written = status(stale_after=2.0, stale_symbols={"ETH/USD": 3.5}, stale_decisions=4,
                     symbols={"ETH/USD": {"age": 3.5, "open": True, "stale": True},
                              "BTC/USD": {"age": 0.2, "open": True, "stale": False}}, drift=None)
    report = runner_with(tmp_path, farm_home, written).report()
    assert not report["ready"]
    assert report["reason"].startswith("stale data: ETH/USD no bar for 3.") and "BTC/USD" not in report["reason"]
    assert "stale after 2 s" in report["reason"]
    text = render_metrics(report, {"agent": "a"})
    assert 'farm_runner_stale{agent="a",symbol="ETH/USD"} 1' in text
    assert 'farm_runner_stale{agent="a",symbol="BTC/USD"} 0' in text
    assert 'farm_runner_stale_symbols{agent="a"} 1' in text
    assert 'farm_runner_stale_decisions_total{agent="a"} 4' in text
    assert 'farm_runner_bar_age_seconds{agent="a",symbol="ETH/USD"} 3.5' in text
    assert "farm_runner_drifting" not in text


def test_fresh_symbols_keep_the_runner_ready_and_drift_shows_on_metrics(tmp_path, farm_home):
    written = status(stale_after=2.0, stale_symbols={}, stale_decisions=0,
                     symbols={"AAPL": {"age": 900.0, "open": False, "stale": False}},
                     drift={"drifting": True, "baseline": "bt-base", "alarms": [], "observations": {}})
    report = runner_with(tmp_path, farm_home, written).report()
    assert report["ready"] and report["reason"].startswith("live")
    text = render_metrics(report, {"agent": "a"})
    assert 'farm_runner_stale_symbols{agent="a"} 0' in text and 'farm_runner_drifting{agent="a"} 1' in text


def test_the_kernel_gets_the_agents_verification_run_as_its_drift_baseline(tmp_path, farm_home):
    runner = runner_with(tmp_path, farm_home, status())
    assert runner.kernel_environment()["FARM_DRIFT_BASELINE"] == "bt-base"
    runner.settings = farm_home.replace(drift_baseline="bt-other", stale_after=5.0)
    env = runner.kernel_environment()
    assert env["FARM_DRIFT_BASELINE"] == "bt-other" and env["FARM_STALE_AFTER"] == "5"
