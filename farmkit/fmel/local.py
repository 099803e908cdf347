"""The embedded store: FMEL as immutable Parquet files per run and batch, queried with DuckDB,
and the run registry in SQLite. Several processes can write and read at once: DuckDB would lock a
database file exclusively, so nothing here keeps one open."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from farmkit.fmel import schema
from farmkit.fmel.registry import RunRegistry

ROW_GROUP_BARS = 8192


class LocalStore:
    """``local://PATH``: FMEL under ``PATH/fmel/run_id=ID/part-NNNNNNNNNN.parquet``, runs in
    ``PATH/registry.sqlite``."""

    scheme = "local"

    def __init__(self, home: str | Path):
        self.home = Path(home).expanduser().absolute()
        self.fmel_dir = self.home / "fmel"
        self.fmel_dir.mkdir(parents=True, exist_ok=True)
        self.runs = RunRegistry(self.home / "registry.sqlite")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.home)!r})"

    def run_dir(self, run_id: str) -> Path:
        """Where a run's artifacts (executed notebook, tearsheet) live."""
        return self.home / "runs" / run_id

    # -- writing ---------------------------------------------------------------------------------
    def write_fmel(self, table: pa.Table) -> Path | None:
        """Write one batch of FMEL rows of one run. The file is named by its first bar, so writing
        the same batch again replaces it instead of duplicating it."""
        if table.num_rows == 0:
            return None
        table = table.cast(schema.arrow_schema("fmel"))
        run_id = table.column("run_id")[0].as_py()
        first_bar = table.column("bar_number")[0].as_py()
        folder = self.fmel_dir / f"run_id={run_id}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{first_bar:010d}.parquet"
        temporary = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
        # Row groups of 8,192 bars: reading one bar (explain) decodes one group, not the whole run.
        pq.write_table(table, temporary, compression="zstd", row_group_size=ROW_GROUP_BARS)
        os.replace(temporary, final)  # readers see the whole file or none of it
        return final

    # -- reading ---------------------------------------------------------------------------------
    def _files(self, run_id: str | None = None) -> list[str]:
        pattern = f"run_id={run_id}/part-*.parquet" if run_id else "run_id=*/part-*.parquet"
        return sorted(str(p) for p in self.fmel_dir.glob(pattern))

    def connect(self, run_id: str | None = None, *, runs: bool = True) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with views ``fmel`` (deduplicated on record_id) and, unless ``runs`` is
        False, ``runs`` (the whole registry, read for the occasion)."""
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        files = self._files(run_id)
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW fmel_raw AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
        else:
            con.register("fmel_empty", schema.arrow_schema("fmel").empty_table())
            con.execute("CREATE VIEW fmel_raw AS SELECT * FROM fmel_empty")
        con.execute("CREATE VIEW fmel AS SELECT * FROM fmel_raw "
                    "QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY recorded_at DESC) = 1")
        if runs:
            con.register("runs_frame", self.runs.frame().astype({c: "string" for c in schema.json_columns("runs")}))
            con.execute("CREATE VIEW runs AS SELECT * FROM runs_frame")
        return con

    def bar(self, run_id: str, bar: int) -> pd.DataFrame:
        """The record of one bar of a run (empty if there is none), read from the one file that holds
        it: files are named by their first bar, and their footers say their last."""
        rows = []
        for path in reversed(self._files(run_id)):
            first = int(path.rsplit("part-", 1)[1].split(".")[0])
            if first > bar:
                continue
            stats = _bar_range(path)
            if stats is not None and not stats[0] <= bar <= stats[1]:
                if stats[1] < bar:
                    break      # files before this one end earlier still
                continue
            table = pq.read_table(path, filters=[("bar_number", "=", int(bar))])
            if table.num_rows:
                rows.append(table)
        if not rows:
            return schema.arrow_schema("fmel").empty_table().to_pandas()
        frame = pa.concat_tables(rows, promote_options="default").to_pandas()
        # A record written twice (a batch spilled and replayed under another name) counts once: the latest.
        return frame.sort_values("recorded_at", ascending=False).drop_duplicates("record_id").reset_index(drop=True)

    def fmel(self, run_id: str) -> pd.DataFrame:
        """All FMEL records of one run, in bar order."""
        with self.connect(run_id, runs=False) as con:
            return con.execute("SELECT * FROM fmel ORDER BY bar_number").df()

    def sql(self, query: str, run_id: str | None = None) -> pd.DataFrame:
        # The registry is read only for a query that may name it.
        with self.connect(run_id, runs=re.search(r"\bruns\b", query, re.IGNORECASE) is not None) as con:
            return con.execute(query).df()


def _bar_range(path: str) -> tuple[int, int] | None:
    """(min, max) bar_number of a Parquet file from its footer statistics; None if it has none."""
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.names.index("bar_number")
    low = high = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return None if low is None else (int(low), int(high))
