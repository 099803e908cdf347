"""The run registry of the embedded store: one SQLite file in WAL mode, safe for several processes."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pandas as pd

from farmkit.fmel import schema

_SQL_TYPES = {"STRING": "TEXT", "JSON": "TEXT", "INT64": "INTEGER", "FLOAT64": "REAL", "TIMESTAMP": "TEXT"}


class RunRegistry:
    """Runs: who ran what on which data, how it went. Rows follow `farmkit/schemas/runs.json`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = ", ".join(f"{f['name']} {_SQL_TYPES[f['type']]}"
                            + (" PRIMARY KEY" if f["name"] == "run_id" else "")
                            for f in schema.fields("runs"))
        for attempt in range(50):
            try:
                with closing(self._connect()) as con, con:
                    # Switching to WAL needs a moment alone with the file: processes opening a new store
                    # together may find it locked; the mode sticks, so only the first one has to win.
                    if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        con.execute("PRAGMA journal_mode=WAL")
                    con.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
                    _add_missing_columns(con)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05 + 0.01 * attempt)

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
        row = self._encode({"run_id": run_id, **fields})
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "run_id")
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET {updates}",
                        row)

    def get(self, run_id: str) -> dict | None:
        frame = self.frame("WHERE run_id = ?", (run_id,))
        return None if frame.empty else frame.iloc[0].to_dict()

    def frame(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        with closing(self._connect()) as con:
            frame = pd.read_sql_query(f"SELECT * FROM runs {where} ORDER BY started_at", con, params=args)
        for col in schema.json_columns("runs"):
            frame[col] = frame[col].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        for col in ("started_at", "finished_at"):
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
