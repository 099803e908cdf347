"""promote(): notebook → agents/NAME/{agent.ipynb, agent.yaml}, verified decision by decision."""

import hashlib
import importlib.metadata
import platform
import re
from pathlib import Path

import nbformat
import pytest
import yaml

import farmkit as fk
from farmkit.ops.promote import Agent, PromoteError, load_manifest, promote
from farmkit.research import notebooks

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"

TINY_STRATEGY = """\
import os
import farmkit as fk

class Tiny(fk.Strategy):
    def next(self):
        if len(self) == 5:
            self.buy(size=1, reason=REASON)

bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=days, freq="1min", seed=1)
res = fk.backtest(Tiny, bars)
"""


def _notebook(tmp_path, *cells, params="days = 1", name="nb.ipynb"):
    """A small notebook: an optional parameters cell, then the given code cells."""
    nb = nbformat.v4.new_notebook()
    if params is not None:
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "research" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# The tests below pass allow_overfit=True unless they are about the overfitting gate: their tiny
# notebooks trade a day or so of random bars, which the gate rightly calls luck.


def test_promoting_the_sma_notebook_writes_a_verified_agent(farm_home, tmp_path):
    agents = tmp_path / "agents"
    agent = promote(SMA, "sma-cross", agents_dir=agents, allow_overfit=True)

    assert isinstance(agent, Agent) and agent.name == "sma-cross" and agent.path == agents / "sma-cross"
    assert sorted(p.name for p in agent.path.iterdir()) == ["agent.ipynb", "agent.yaml", "requirements.lock"]
    text = (agent.path / "agent.yaml").read_text()
    assert "# warmup_bars: bars before the verified backtest's first next()" in text
    manifest = yaml.safe_load(text)
    assert manifest == agent.manifest == load_manifest(agent.path)

    assert manifest["name"] == "sma-cross" and manifest["strategy"] == "SmaCross"
    params = {p["name"]: (p["type"], p["default"]) for p in manifest["parameters"]}
    assert params == {"symbols": ("list[str]", ["AAPL", "MSFT"]), "start": ("str", "2024-01-02"),
                      "days": ("int", 60), "fast": ("int", 60), "slow": ("int", 240), "size": ("int", 100),
                      "cash": ("float", 100_000.0), "commission": ("float", 0.0005), "seed": ("int", 7)}
    assert [p["name"] for p in manifest["parameters"]][:3] == ["symbols", "start", "days"]  # cell order
    assert manifest["symbols"] == ["AAPL", "MSFT"] and manifest["bar_size"] == "1min"
    # SMA(240) is ready on bar 240; the crossover compares it with the bar before, so next() starts on 241.
    assert manifest["warmup_bars"] == 240
    assert manifest["notebook"] == "agent.ipynb"
    assert manifest["notebook_sha256"] == hashlib.sha256((agent.path / "agent.ipynb").read_bytes()).hexdigest()
    assert manifest["farmkit_version"] == fk.__version__
    assert manifest["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}

    verification = manifest["verification"]
    assert len(verification["decisions_sha256"]) == 64
    assert verification["bars"] == 60 * 390
    runs = fk.runs().set_index("run_id")
    source_id, agent_id = verification["run_ids"]["source"], verification["run_ids"]["agent"]
    assert runs.loc[source_id, "status"] == runs.loc[agent_id, "status"] == "done"
    assert runs.loc[agent_id, "notebook"] == str(agents / "sma-cross" / "agent.ipynb")

    original = nbformat.read(SMA, as_version=4)
    promoted = nbformat.read(agent.path / "agent.ipynb", as_version=4)
    assert [c.source for c in promoted.cells] == [c.source for c in original.cells]  # code unchanged
    code = [c for c in promoted.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "slow = 240" in tagged[0].source
    assert "papermill" not in promoted.metadata


def test_a_taken_name_is_refused_unless_forced(farm_home, tmp_path):
    path = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "'five bars in'"))
    agents = tmp_path / "agents"
    first = promote(path, "tiny", agents_dir=agents, allow_overfit=True)
    assert first.manifest["strategy"] == "Tiny" and first.manifest["warmup_bars"] == 0
    assert first.manifest["symbols"] == [] and first.manifest["verification"]["bars"] == 390

    with pytest.raises(PromoteError, match=r"agent 'tiny' already exists at .*agents/tiny; choose another "
                                           r"name, or pass force=True"):
        promote(path, "tiny", agents_dir=agents, allow_overfit=True)

    again = promote(path, "tiny", agents_dir=agents, allow_overfit=True, force=True)
    assert again.manifest["verification"]["run_ids"] != first.manifest["verification"]["run_ids"]
    assert load_manifest(agents / "tiny") == again.manifest
    assert sorted(p.name for p in agents.iterdir()) == ["tiny"]  # the old copy set aside is gone


@pytest.mark.parametrize("name, suggestion", [("My_Agent", "my-agent"), ("-sma", "sma"), ("sma-", "sma"),
                                              ("a" * 64, "a" * 63), ("", "my-agent")])
def test_an_invalid_name_is_refused_with_a_suggestion(farm_home, tmp_path, name, suggestion):
    with pytest.raises(PromoteError) as info:
        promote(SMA, name, agents_dir=tmp_path / "agents", allow_overfit=True)
    message = str(info.value)
    assert f"agent name {name!r} is not valid: use lowercase letters, digits and dashes" in message
    assert f"e.g. {suggestion!r}" in message
    assert not (tmp_path / "agents").exists()


def test_a_notebook_without_parameters_cell_says_how_to_tag_one(farm_home, tmp_path):
    path = _notebook(tmp_path, "x = 1", params=None)
    with pytest.raises(PromoteError, match=r"cannot promote .*nb.ipynb: .* has no cell tagged 'parameters'.*"
                                           r"add the tag 'parameters'"):
        promote(path, "nb", agents_dir=tmp_path / "agents", allow_overfit=True)
    assert not (tmp_path / "agents").exists()


def test_a_failing_notebook_names_the_cell(farm_home, tmp_path):
    path = _notebook(tmp_path, "y = days + 1", "raise ValueError(f'no data for y={y}')")
    with pytest.raises(PromoteError) as info:
        promote(path, "broken", agents_dir=tmp_path / "agents", allow_overfit=True)
    message = str(info.value)
    assert message.startswith("cannot promote: it fails when run with its default parameters; fix the failing cell")
    assert "raised ValueError: no data for y=2" in message and "--- cell source ---" in message
    assert not (tmp_path / "agents" / "broken").exists()
    assert fk.runs().iloc[-1].status == "failed"


def test_a_notebook_without_a_strategy_is_refused(farm_home, tmp_path):
    path = _notebook(tmp_path, "class Helper:\n    pass\n\nclass Other(dict):\n    pass", "%time z = 1")
    with pytest.raises(PromoteError, match=r"nb.ipynb: it defines no Strategy subclass; an agent needs one, "
                                           r"e.g. `class MyStrategy\(fk.Strategy\):`"):
        promote(path, "nostrat", agents_dir=tmp_path / "agents", allow_overfit=True)
    assert not (tmp_path / "agents" / "nostrat").exists()


def test_a_strategy_that_is_never_backtested_is_refused(farm_home, tmp_path):
    path = _notebook(tmp_path, "import backtrader as bt\n\nclass Idle(bt.Strategy):\n    pass")
    with pytest.raises(PromoteError, match=r"recorded no FMEL decisions; call fk.backtest\(Idle, \.\.\.\)"):
        promote(path, "idle", agents_dir=tmp_path / "agents", allow_overfit=True)


def test_a_copy_that_decides_differently_is_removed_and_the_bar_named(farm_home, tmp_path):
    # The reason names the working directory, which papermill sets to the notebook's folder: the
    # promoted copy runs elsewhere, so from bar 5 on its decisions differ from the source's.
    path = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "os.path.basename(os.getcwd())"))
    agents = tmp_path / "agents"
    with pytest.raises(PromoteError, match=r"the promoted copy decided differently from bar 4 on"):
        promote(path, "drifty", agents_dir=agents, allow_overfit=True)
    assert not (agents / "drifty").exists()


def test_a_failed_forced_promotion_keeps_the_previous_agent(farm_home, tmp_path):
    agents = tmp_path / "agents"
    good = promote(_notebook(tmp_path, TINY_STRATEGY.replace("REASON", "'steady'"), name="good.ipynb"),
                   "tiny", agents_dir=agents, allow_overfit=True)
    drifty = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "os.path.basename(os.getcwd())"),
                       name="drifty.ipynb")
    with pytest.raises(PromoteError, match="decided differently"):
        promote(drifty, "tiny", agents_dir=agents, allow_overfit=True, force=True)
    assert load_manifest(agents / "tiny") == good.manifest
    assert sorted(p.name for p in agents.iterdir()) == ["tiny"]


WARMUP_STRATEGY = """\
import backtrader as bt
import farmkit as fk

class Dip(fk.Strategy):
    params = (("n", 50),)

    def __init__(self):
        self.mean = bt.ind.SMA(self.data.close, period=self.p.n)

    def next(self):
        if not self.position and self.data.close[0] < self.mean[0]:
            self.buy(size=1, reason="below its mean")

bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=days, freq="1min", seed=3)
res = fk.backtest(Dip, bars, params={"n": n})
"""


def test_the_manifest_records_the_warmup_the_strategy_used_and_what_reproduces_it(farm_home, tmp_path, monkeypatch):
    # `n` names no period, window or lookback: a guess from parameter names found no warm-up at all.
    digest = "sha256:" + "ab" * 32
    monkeypatch.setenv("FARM_RUNNER_IMAGE", f"europe-docker.pkg.dev/p/farm/runner@{digest}")
    path = _notebook(tmp_path, WARMUP_STRATEGY, params="days = 1\nn = 50")
    agent = promote(path, "dip", agents_dir=tmp_path / "agents", allow_overfit=True)
    manifest = agent.manifest
    assert manifest["warmup_bars"] == 49   # SMA(50): next() first runs on bar 50

    source = fk.runs().set_index("run_id").loc[manifest["verification"]["run_ids"]["source"]]
    reproduce = manifest["reproduce"]
    assert reproduce["data_fingerprint"] == source.data_fingerprint and len(source.data_fingerprint) == 16
    assert reproduce["warmup_bars"] == 49

    env = manifest["environment"]
    assert env["python"] == platform.python_version()
    lock = agent.path / env["lock"]
    assert env["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    pinned = dict(line.split("==", 1) for line in lock.read_text().splitlines() if "==" in line)
    for package in ("backtrader", "pandas", "numpy", "papermill"):
        assert pinned[package] == importlib.metadata.version(package) == env["packages"][package]
    assert manifest["image"] == {"runner": f"europe-docker.pkg.dev/p/farm/runner@{digest}", "digest": digest}


def test_promote_check_reverifies_an_agent_against_its_manifest(farm_home, tmp_path):
    from farmkit.ops.promote import check

    path = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "'five bars in'"))
    agent = promote(path, "tiny", agents_dir=tmp_path / "agents", allow_overfit=True)
    report = check(agent.path)
    assert report.ok, str(report)
    assert {item.name for item in report.items} >= {"notebook", "decisions", "data", "warm-up", "lock", "packages"}
    assert "tiny: reproduces its manifest" in str(report)

    # Another environment: the lock says pandas 0.0.1 (and the manifest agrees with the lock).
    manifest_path, lock = agent.path / "agent.yaml", agent.path / "requirements.lock"
    text = re.sub(r"^pandas==.*$", "pandas==0.0.1", lock.read_text(), flags=re.M)
    lock.write_text(text)
    manifest = load_manifest(agent.path)
    manifest["environment"]["lock_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    manifest["reproduce"]["data_fingerprint"] = "0" * 16
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    report = check(agent.path)
    assert not report.ok
    failed = {item.name: item for item in report.items if not item.ok}
    assert set(failed) == {"data", "packages"}
    assert f"pandas: 0.0.1 in the lock, {importlib.metadata.version('pandas')} installed" in failed["packages"].detail
    assert "0000000000000000" in failed["data"].detail
    assert "does not reproduce its manifest" in str(report)


def test_farm_promote_check_exits_1_and_names_what_changed(farm_home, tmp_path):
    from farmkit.cli import main

    path = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "'five bars in'"))
    agent = promote(path, "tiny", agents_dir=tmp_path / "agents", allow_overfit=True)
    assert main(["promote", "--check", str(agent.path)]) == 0
    nb = nbformat.read(agent.path / "agent.ipynb", as_version=4)
    nb.cells[-1].source = nb.cells[-1].source.replace("len(self) == 5", "len(self) == 6")
    nbformat.write(nb, agent.path / "agent.ipynb")
    assert main(["promote", "--check", str(agent.path)]) == 1


PEEKING_STRATEGY = """\
import farmkit as fk

class Peek(fk.Strategy):
    # Reads tomorrow's close (close[1]): a leak, and so a result far beyond luck, which is all this
    # test needs from it.
    def next(self):
        if len(self.data) + 1 >= self.data.buflen():
            return
        up = (self.data.close[1] > self.data.close[0]) == (side > 0)   # side -1: the worst of bets
        if up and not self.position:
            self.buy(size=10, reason="up next")
        elif self.position and not up:
            self.close(reason="down next")

bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=days, freq="1D", seed=4)
res = fk.backtest(Peek, bars)
"""


def test_a_result_that_may_be_luck_is_refused_with_the_reason(farm_home, tmp_path):
    path = _notebook(tmp_path, TINY_STRATEGY.replace("REASON", "'five bars in'"))
    agents = tmp_path / "agents"
    with pytest.raises(PromoteError, match=r"cannot promote .*nb.ipynb: refused: its deflated Sharpe ratio is "
                                           r"undefined .*farm promote --allow-overfit"):
        promote(path, "tiny", agents_dir=agents)
    assert not (agents / "tiny").exists()
    agent = promote(path, "tiny", agents_dir=agents, allow_overfit=True)
    gate = agent.manifest["overfitting"]
    assert (gate["passed"], gate["overridden"], gate["dsr"]) == (False, True, None)


def test_a_result_beyond_luck_passes_the_gate_with_its_pbo(farm_home, tmp_path):
    path = _notebook(tmp_path, PEEKING_STRATEGY, params="days = 1000\nside = 1")
    notebooks.run(path, {"side": -1}, progress=False)     # a second trial of the family, same data
    agent = promote(path, "peek", agents_dir=tmp_path / "agents")
    gate = agent.manifest["overfitting"]
    assert gate["passed"] and not gate["overridden"] and gate["dsr"] > 0.95
    assert gate["pbo_trials"] >= 2 and gate["pbo"] is not None and gate["pbo"] <= 0.5
    assert gate["reason"].startswith("DSR ")
