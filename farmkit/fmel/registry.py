"""The run registry of the embedded store: one SQLite file in WAL mode, safe for several processes;
and who owns a run, and whether that process still lives.

A row upserted ``queued`` or ``running`` without an owner gets this process as its owner: ``host``,
``pid`` and ``pid_started`` (the process's start time, so that a reused pid is not taken for it). A
process that is SIGKILLed, killed for memory or lost with its machine never says how its run ended,
so readers check: a queued or running row whose owner is on this host and provably gone (no such
pid, a zombie, or a pid now held by a process that started at another time) reads as ``killed``,
and is written so, for every other reader too. ``finished_at`` stays empty: when the process died is
not known (its last FMEL record is the closest bound). A row from another host (a GKE pod) cannot be
checked by pid; it is left as it is, unless its owner calls ``heartbeat()``: a heartbeat older than
``HEARTBEAT_STALE`` seconds then says it is gone.

>>> registry.owner_alive(store.runs.get(run_id))     # True, False, or None (cannot tell)
>>> store.runs.heartbeat(run_id)                      # every HEARTBEAT_EVERY seconds from a long run
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from farmkit.fmel import schema

log = logging.getLogger(__name__)

_SQL_TYPES = {"STRING": "TEXT", "JSON": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "TIMESTAMP": "TEXT"}

ACTIVE = ("queued", "running")       # the statuses whose owner is checked
KILLED = "killed"
HEARTBEAT_EVERY = 60.0               # seconds between a long run's heartbeats
HEARTBEAT_STALE = 600.0              # seconds without a heartbeat after which its owner counts as gone
# Start times of one process read at two moments may differ: the boot time they are counted from is
# whole seconds, and moves when the wall clock is stepped. A reused pid starts far later than that.
_SAME_START = 2.0
# What a run's owner is judged by; marking it killed only takes if none of it changed meanwhile.
OWNER_COLUMNS = ("host", "pid", "pid_started", "heartbeat_at")


class Owner(NamedTuple):
    """A process as a run's owner: the registry's columns of the same names."""
    host: str
    pid: int
    pid_started: float | None     # seconds since the epoch; None where it cannot be read


def process_identity(pid: int | None = None) -> Owner:
    """This process (or ``pid``) as the owner of a run: host name, pid, and when the process started
    (Linux: from /proc; None elsewhere).

    >>> registry.process_identity()
    Owner(host='laptop', pid=4242, pid_started=1718000000.12)
    """
    pid = os.getpid() if pid is None else int(pid)
    stat = _proc_stat(pid)
    return Owner(socket.gethostname(), pid, stat[1] if stat else None)


def with_owner(fields: dict) -> dict:
    """``fields`` of an upsert, with this process as the owner when they make the run queued or
    running and name no owner themselves; a new owner's run has no heartbeat yet."""
    if fields.get("status") not in ACTIVE or set(fields) & {"host", "pid", "pid_started"}:
        return fields
    return {"heartbeat_at": None, **fields, **process_identity()._asdict()}


def owner_alive(row: dict, *, now: pd.Timestamp | None = None,
                stale_after: float = HEARTBEAT_STALE) -> bool | None:
    """Whether the process that owns a run's row lives: by its pid when it ran on this host, else by
    its heartbeat; None when neither can tell (another host and no heartbeat, or no owner recorded)."""
    host, pid = _given(row.get("host")), _given(row.get("pid"))
    if host is not None and pid is not None and int(pid) > 0 and host == socket.gethostname():
        return _same_process(int(pid), _given(row.get("pid_started")))
    beat = _given(row.get("heartbeat_at"))
    if beat is None:
        return None
    now = _utc(pd.Timestamp.now(tz="UTC") if now is None else now)
    return (now - _utc(beat)).total_seconds() <= stale_after


def gone(rows: Iterable[dict], alive: Callable[[dict], bool | None] = owner_alive) -> list[dict]:
    """The queued and running rows whose owner is provably gone."""
    return [r for r in rows if r.get("status") in ACTIVE and alive(r) is False]


def _given(value):
    """None for a missing value however the frame spells it (None, NaN, NaT)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _same_process(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # another user's process: it exists
        pass
    except OverflowError:         # no pid is that large
        return False
    stat = _proc_stat(pid)
    if stat is None:              # no /proc (or it ended just now): the pid exists, as far as we know
        return True
    state, now_started = stat
    if state in ("Z", "X"):       # killed, not yet waited for by its parent
        return False
    return started is None or now_started is None or abs(now_started - float(started)) <= _SAME_START


def _proc_stat(pid: int) -> tuple[str, float | None] | None:
    """(state, start time in seconds since the epoch) of a Linux process, or None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        boot = next((int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime ")), None)
    except (OSError, ValueError):
        return None
    # After the command name (in parentheses, and it may hold any character): field 3 (state) on;
    # field 22 is the start time in clock ticks after boot.
    rest = text.rpartition(")")[2].split()
    ticks = int(rest[19])
    return rest[0], None if boot is None else round(boot + ticks / os.sysconf("SC_CLK_TCK"), 2)


class RunRegistry:
    """Runs: who ran what on which data, how it went. Rows follow `farmkit/schemas/runs.json`.
    Reading marks killed the queued and running runs whose owner is gone (see the module's docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = ", ".join(f"{f['name']} {_SQL_TYPES[f['type']]}"
                            + (" PRIMARY KEY" if f["name"] == "run_id" else "")
                            for f in schema.fields("runs"))
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

        def create() -> None:
            with closing(self._connect()) as con, con:
                if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    con.execute("PRAGMA journal_mode=WAL")
                con.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
                _add_missing_columns(con)

        # Switching to WAL needs a moment alone with the file: processes opening a new store together may
        # find it locked; the mode sticks, so only the first one has to win.
        locked = retry_if_exception(lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e))
        Retrying(stop=stop_after_attempt(50), wait=wait_incrementing(start=0.05, increment=0.01), retry=locked,
                 reraise=True)(create)

    def _connect(self) -> sqlite3.Connection:
        # Short-lived connections: sweep workers, paper runs and notebooks share the file.
        return sqlite3.connect(self.path, timeout=60)

    @staticmethod
    def _encode(row: dict) -> dict:
        known = set(schema.names("runs"))
        unknown = sorted(set(row) - known)
        if unknown:
            raise KeyError(f"unknown run field(s) {', '.join(unknown)}")
        json_cols = set(schema.json_columns("runs"))
        return {k: (json.dumps(v, default=str) if k in json_cols and v is not None else
                    v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()}

    def upsert(self, run_id: str, **fields) -> None:
        row = self._encode({"run_id": run_id, **with_owner(fields)})
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "run_id")
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET {updates}",
                        row)

    def heartbeat(self, run_id: str, *, now: pd.Timestamp | None = None) -> None:
        """Say that the run's owner lives; readers on other hosts judge it by this."""
        now = _utc(pd.Timestamp.now(tz="UTC") if now is None else now)
        with closing(self._connect()) as con, con:
            con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", (now.isoformat(), run_id))

    def mark_killed(self, *, alive: Callable[[dict], bool | None] = owner_alive) -> list[str]:
        """Mark killed the queued and running runs whose owner is gone; returns their ids. A run
        whose row changed meanwhile (finished, or taken by a new owner) is left to its new state."""
        checked = ", ".join(OWNER_COLUMNS)
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute(
                f"SELECT run_id, status, {checked} FROM runs WHERE status IN ({', '.join('?' * len(ACTIVE))})",
                ACTIVE)]
        dead = gone(rows, alive)
        killed = []
        if dead:
            same = " AND ".join(f"{c} IS ?" for c in OWNER_COLUMNS)
            with closing(self._connect()) as con, con:
                for row in dead:
                    done = con.execute(f"UPDATE runs SET status = ? WHERE run_id = ? AND status = ? AND {same}",
                                       (KILLED, row["run_id"], row["status"], *(row[c] for c in OWNER_COLUMNS)))
                    if done.rowcount:
                        killed.append(row["run_id"])
        for run_id in killed:
            log.info("run %s: its process is gone; marked %s", run_id, KILLED)
        return killed

    def get(self, run_id: str) -> dict | None:
        frame = self.frame("WHERE run_id = ?", (run_id,))
        return None if frame.empty else frame.iloc[0].to_dict()

    def frame(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        # Before the query, so that a filter on status sees the runs as they are.
        self.mark_killed()
        with closing(self._connect()) as con:
            frame = pd.read_sql_query(f"SELECT * FROM runs {where} ORDER BY started_at", con, params=args)
        for col in schema.json_columns("runs"):
            frame[col] = frame[col].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        for col in (f["name"] for f in schema.fields("runs") if f["type"] == "TIMESTAMP"):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        return frame


def _add_missing_columns(con: sqlite3.Connection) -> None:
    """Bring a registry written by an older farmkit up to the schema: columns added to runs.json
    since then are added as empty (NULL) columns, so an old FARM_HOME keeps working."""
    present = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    for f in schema.fields("runs"):
        if f["name"] in present:
            continue
        try:
            con.execute(f"ALTER TABLE runs ADD COLUMN {f['name']} {_SQL_TYPES[f['type']]}")
        except sqlite3.OperationalError as exc:
            # Two processes opening the same old file at once: the other one added it first.
            if "duplicate column" not in str(exc):
                raise
