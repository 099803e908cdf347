"""The cloud store: FMEL, the run registry and the market-data archive tables in one BigQuery dataset.

``bigquery://PROJECT/DATASET`` opens it with the default Google credentials. To use a BigQuery API
emulator instead, name its endpoint in the URL (``?endpoint=http://127.0.0.1:9050``) or in the
environment (``BIGQUERY_EMULATOR_HOST=127.0.0.1:9050``, like ``PUBSUB_EMULATOR_HOST``); the URL wins.
The store then talks to it with anonymous credentials. Other URL options: ``home=PATH``, the local
folder for spilled batches and run artifacts (default ``FARM_HOME``), and ``location=EU``, where a new
dataset is created.

Writes are streaming inserts (``insert_rows_json``) in requests of at most 500 rows and under 10 MB,
with ``row_ids`` = record_id so BigQuery can drop a retried duplicate. Every per-row error is read:
rows BigQuery calls invalid are kept under ``spill/rejected``, the others are retried with backoff and,
if the table still cannot be reached, spilled to local files that are replayed before the next write
(and by ``replay()``/``close()``). ``pending()`` says what is waiting. Best-effort insertId dedup
(and emulators without it) means a retried row can land twice: every read goes through the
``fmel`` query view, which keeps one row per record_id.

Table schemas are the JSON files in ``farmkit/schemas/bigquery/`` (Terraform reads the same files);
``python -m farmkit.fmel.bigquery`` regenerates ``fmel.json`` and ``runs.json`` there from the one
definition in ``farmkit/schemas/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path

import pandas as pd
import pyarrow as pa
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from farmkit.errors import ConfigError
from farmkit.fmel import registry, schema

log = logging.getLogger(__name__)

MAX_ROWS = 500                       # rows per insertAll request (BigQuery's recommended maximum)
MAX_BYTES = 9 * 1024 * 1024          # request payload, under the 10 MB limit with room for the envelope
_PERMANENT = {"invalid", "invalidQuery", "notImplemented", "accessDenied"}
_DEDUPED = ("SELECT * FROM {table} {where} "
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY record_id ORDER BY recorded_at DESC) = 1")


@cache
def table_specs() -> dict[str, dict]:
    """Each table's options (``partition``, ``clustering``, ``description``) and ``fields``, from
    ``farmkit/schemas/bigquery/``."""
    folder = resources.files("farmkit").joinpath("schemas", "bigquery")
    specs = json.loads(folder.joinpath("tables.json").read_text())
    for spec in specs.values():
        spec["fields"] = json.loads(folder.joinpath(spec["schema"]).read_text())
    return specs


def _client(project: str, endpoint: str | None):
    if not endpoint:
        return bigquery.Client(project=project)
    endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


def _transient(exc: Exception) -> bool:
    """Worth another try: server errors, throttling, timeouts, a connection that failed."""
    if isinstance(exc, (gexc.ServerError, gexc.TooManyRequests, gexc.DeadlineExceeded, gexc.NotFound)):
        return True
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


# Each table's insertId: the key its readers deduplicate on (BigQuery's own dedup is best effort).
ROW_ID: dict[str, Callable[[dict], str]] = {
    "fmel": lambda r: r["record_id"],
    "market_data": lambda r: f"{r['symbol']}|{r['timestamp']}|{r['revision']}",
    "news": lambda r: f"{r['id']}|{r['updated_at']}",
}


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
    return str(value)


def rows_of(table: pa.Table) -> list[dict]:
    """FMEL rows as insertAll JSON: timestamps as ISO text, JSON columns as JSON text."""
    table = table.cast(schema.arrow_schema("fmel"))
    stamps = [f["name"] for f in schema.fields("fmel") if f["type"] == "TIMESTAMP"]
    rows = table.to_pylist()
    for row in rows:
        for name in stamps:
            row[name] = _iso(row[name])
    return rows


def batches(rows: list[dict], max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> Iterator[list[dict]]:
    """Split rows into insertAll requests of at most ``max_rows`` rows and ``max_bytes`` of JSON."""
    batch: list[dict] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row, separators=(",", ":"))) + 64   # + insertId and envelope
        if row_size > max_bytes:
            raise ValueError(f"FMEL record {row.get('record_id')} is {row_size:,} bytes of JSON; a streaming "
                             f"insert takes at most {max_bytes:,}")
        if batch and (len(batch) >= max_rows or size + row_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


class BigQueryStore:
    """``bigquery://PROJECT/DATASET``: tables ``fmel``, ``runs``, ``market_data``, ``news``, created
    when missing. Offers what the embedded store offers: ``write_fmel``, ``fmel``, ``sql``, ``runs``,
    ``run_dir``; plus ``pending``, ``replay`` and ``close`` for the spill.

    >>> store = BigQueryStore("my-project", "farm")
    >>> fk.backtest(SmaCross, bars, store=store)
    """

    scheme = "bigquery"
    dialect = "bigquery"

    def __init__(self, project: str, dataset: str, *, home: str | Path = ".farm", endpoint: str | None = None,
                 location: str | None = None, client=None, attempts: int = 4, backoff: float = 0.25,
                 timeout: float = 30.0, retry_every: float = 5.0, sleep: Callable[[float], None] = time.sleep):
        if not re.fullmatch(r"[A-Za-z0-9_]+", dataset or ""):
            raise ConfigError(f"BigQuery dataset {dataset!r}: letters, digits and underscores only "
                              "(bigquery://PROJECT/DATASET)")
        self.project, self.dataset, self.location = project, dataset, location
        self.home = Path(home).expanduser().absolute()
        self.spill_dir = self.home / "spill" / "bigquery" / f"{project}.{dataset}"
        self.client = client or _client(project, endpoint)
        self.attempts, self.backoff, self.timeout, self.retry_every = attempts, backoff, timeout, retry_every
        self.sleep = sleep
        self.stats = {"inserts": 0, "rows": 0, "retries": 0, "spilled": 0, "replayed": 0, "rejected": 0}
        self.last_error: str | None = None
        self._last_failure = 0.0
        self.ensure()
        self.runs = BigQueryRunRegistry(self)

    def __repr__(self) -> str:
        return f"BigQueryStore({self.project!r}, {self.dataset!r})"

    def table(self, name: str) -> str:
        return f"{self.project}.{self.dataset}.{name}"

    def run_dir(self, run_id: str) -> Path:
        """Where a run's local artifacts (executed notebook, tearsheet) live."""
        return self.home / "runs" / run_id

    # -- tables ----------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the dataset and any missing table, with partitioning and clustering."""
        dataset = bigquery.Dataset(f"{self.project}.{self.dataset}")
        if self.location:
            dataset.location = self.location
        self.client.create_dataset(dataset, exists_ok=True, timeout=self.timeout)
        present = {t.table_id for t in self.client.list_tables(dataset, timeout=self.timeout)}
        for name, spec in table_specs().items():
            if name in present:
                continue
            table = bigquery.Table(self.table(name),
                                   schema=[bigquery.SchemaField.from_api_repr(f) for f in spec["fields"]])
            if "partition" in spec:
                table.time_partitioning = bigquery.TimePartitioning(type_=spec["partition"]["type"],
                                                                    field=spec["partition"]["field"])
            table.clustering_fields = spec.get("clustering")
            table.description = spec.get("description")
            self.client.create_table(table, exists_ok=True, timeout=self.timeout)

    # -- writing ---------------------------------------------------------------------------------
    def write_fmel(self, table: pa.Table) -> int:
        """Write one batch of FMEL rows; returns how many reached BigQuery now. What could not be
        written is spilled (see ``pending()``) and written by a later call; never raises for a sink
        failure, so the strategy loop goes on."""
        if table.num_rows == 0:
            return 0
        if self._spilled() and time.monotonic() - self._last_failure >= self.retry_every:
            self.replay()
        return self.write_rows(rows_of(table))

    def write_rows(self, rows: list[dict], *, spill: bool = True, table: str = "fmel") -> int:
        """Insert insertAll JSON rows of ``table`` (``fmel``, ``market_data`` or ``news``) in bounded
        requests, each row's insertId its key; the rest is spilled."""
        written, failed, rejected = 0, [], []
        spill_dir = self._spill_dir(table)
        for batch in batches(rows):
            if failed:      # the table is unreachable: don't hammer it for every request of this write
                failed.extend(batch)
                continue
            ok, retry, bad = self._insert(batch, table)
            written += ok
            failed.extend(retry)
            rejected.extend(bad)
        if rejected:
            self._spill(rejected, spill_dir / "rejected")
            self.stats["rejected"] += len(rejected)
            log.error("BigQuery rejected %d %s row(s) (%s); kept in %s", len(rejected), table, self.last_error,
                      spill_dir / "rejected")
        if failed:
            self._last_failure = time.monotonic()
            if not spill:
                raise FmelSinkError(f"{len(failed)} {table} row(s) not written to {self.table(table)}: "
                                    f"{self.last_error}", failed)
            self._spill(failed, spill_dir)
            self.stats["spilled"] += len(failed)
            log.warning("BigQuery unreachable (%s); %d %s row(s) spilled to %s", self.last_error,
                        len(failed), table, spill_dir)
        return written

    def _spill_dir(self, table: str) -> Path:
        # FMEL spills at the top (as it always has); the archive's tables each in a folder of their own.
        return self.spill_dir if table == "fmel" else self.spill_dir / table

    def _insert(self, batch: list[dict], table: str = "fmel") -> tuple[int, list[dict], list[dict]]:
        """One request, retried with backoff: (rows written, rows to retry later, rows rejected).

        An attempt fails on a transient error or when rows failed that may go again; the next attempt
        sends only those."""
        from tenacity import (RetryError, Retrying, retry_if_exception, retry_if_result, stop_after_attempt,
                              wait_exponential)
        done = {"todo": batch, "rejected": [], "written": 0}

        def attempt() -> list[dict]:
            todo = done["todo"]
            try:
                errors = self.client.insert_rows_json(
                    self.table(table), todo, row_ids=[ROW_ID[table](r) for r in todo],
                    skip_invalid_rows=True, retry=None, timeout=self.timeout)   # our own retry, not 600 s
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if _is_missing(exc):
                    self._ensure_quietly()
                raise
            self.stats["inserts"] += 1
            failed = {e["index"]: e.get("errors") or [] for e in errors}
            permanent = {i for i, errs in failed.items() if any(e.get("reason") in _PERMANENT for e in errs)}
            if failed:
                first = next(iter(failed.items()))
                self.last_error = (f"row {ROW_ID[table](todo[first[0]])}: "
                                   + "; ".join(f"{e.get('reason')} {e.get('location', '')}: {e.get('message')}"
                                               for e in first[1]))
            done["rejected"] += [todo[i] for i in sorted(permanent)]
            done["written"] += len(todo) - len(failed)
            self.stats["rows"] += len(todo) - len(failed)
            done["todo"] = [todo[i] for i in sorted(failed) if i not in permanent]
            return done["todo"]

        def counted(_state) -> None:
            self.stats["retries"] += 1

        retrying = Retrying(stop=stop_after_attempt(self.attempts), wait=wait_exponential(multiplier=self.backoff),
                            retry=retry_if_exception(_transient) | retry_if_result(bool), sleep=self.sleep,
                            before_sleep=counted)
        try:
            retrying(attempt)
        except RetryError:
            pass    # attempts used up: what is left is kept for later
        except Exception:  # noqa: BLE001 - any failure keeps the rows for later
            # Credentials, permissions, a malformed request: retrying now cannot help; the rows are
            # spilled and reported, and written once the cause is fixed.
            log.error("BigQuery refused an FMEL insert: %s", self.last_error)
        return done["written"], done["todo"], done["rejected"]

    def _ensure_quietly(self) -> None:
        try:
            self.ensure()
        except Exception as exc:  # noqa: BLE001 - the insert's own retry reports the failure
            log.debug("creating the BigQuery tables failed: %s", exc)

    def _spill(self, rows: list[dict], folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{len(rows)}-{uuid.uuid4().hex[:8]}.jsonl"
        temporary = folder / f".{name}.tmp"
        temporary.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        os.replace(temporary, folder / name)
        return folder / name

    def _spilled(self, folder: Path | None = None) -> list[Path]:
        folder = folder or self.spill_dir
        return sorted(folder.glob("*.jsonl")) if folder.exists() else []

    def pending(self) -> dict:
        """What is not in BigQuery yet: spilled ``batches`` and ``records`` (replayed later) and
        ``rejected`` records (refused by BigQuery as invalid; kept on disk, see ``last_error``), of
        every table."""
        count = lambda files: sum(int(p.name.split("-")[1]) for p in files)
        spilled = [p for t in ROW_ID for p in self._spilled(self._spill_dir(t))]
        rejected = [p for t in ROW_ID for p in self._spilled(self._spill_dir(t) / "rejected")]
        return {"batches": len(spilled), "records": count(spilled), "rejected": count(rejected),
                "last_error": self.last_error}

    def replay(self) -> int:
        """Write spilled batches, oldest first; stops at the first that still fails. Returns the
        records written."""
        done = 0
        for table in ROW_ID:
            for path in self._spilled(self._spill_dir(table)):
                try:
                    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
                except FileNotFoundError:      # another process sharing this folder replayed it
                    continue
                try:
                    done += self.write_rows(rows, spill=False, table=table)
                except FmelSinkError as exc:
                    if len(exc.rows) < len(rows):
                        self._spill(exc.rows, self._spill_dir(table))
                        path.unlink(missing_ok=True)
                    break
                path.unlink(missing_ok=True)
        self.stats["replayed"] += done
        return done

    def close(self) -> dict:
        """Replay what was spilled; returns ``pending()``."""
        self.replay()
        return self.pending()

    # -- reading ---------------------------------------------------------------------------------
    def fmel_view(self, run_id: str | None = None) -> str:
        """The query that reads ``fmel`` with one row per record_id (optionally one run's)."""
        where = f"WHERE run_id = {_quote(run_id)}" if run_id else ""
        return _DEDUPED.format(table=f"`{self.table('fmel')}`", where=where)

    def query(self, text: str, params=()) -> pd.DataFrame:
        """Run BigQuery SQL with optional positional ``?`` parameters; a DataFrame."""
        config = bigquery.QueryJobConfig(query_parameters=[_parameter(v) for v in params])
        job = self.client.query(text, job_config=config, timeout=self.timeout)
        # Arrow, not to_dataframe(): no db-dtypes needed, and no try at the Storage Read API.
        table = job.result(timeout=max(self.timeout, 120)).to_arrow(create_bqstorage_client=False)
        return table.to_pandas()

    def sql(self, query: str, run_id: str | None = None) -> pd.DataFrame:
        """BigQuery SQL over ``fmel`` (one row per record), ``fmel_raw`` (every row as inserted) and
        ``runs``, as in the embedded store."""
        raw = f"SELECT * FROM `{self.table('fmel')}`" + (f" WHERE run_id = {_quote(run_id)}" if run_id else "")
        views = (f"fmel AS ({self.fmel_view(run_id)}), fmel_raw AS ({raw}), "
                 f"runs AS (SELECT * FROM `{self.table('runs')}`)")
        head = re.match(r"\s*WITH\s+(RECURSIVE\s+)?", query, re.IGNORECASE)
        text = (f"WITH {head.group(1) or ''}{views}, {query[head.end():]}" if head
                else f"WITH {views} {query}")
        return _local_types(self.query(text), "fmel")

    def fmel(self, run_id: str) -> pd.DataFrame:
        """All FMEL records of one run, in bar order."""
        return self.sql("SELECT * FROM fmel ORDER BY bar_number", run_id=run_id)


class FmelSinkError(RuntimeError):
    """Rows that could not be written (they are in ``rows``)."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


def _is_missing(exc: Exception) -> bool:
    return isinstance(exc, gexc.NotFound)


def _quote(value) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parameter(value):
    kind = ("BOOL" if isinstance(value, bool) else "INT64" if isinstance(value, int) else
            "FLOAT64" if isinstance(value, float) else
            "TIMESTAMP" if isinstance(value, (dt.datetime, pd.Timestamp)) else "STRING")
    return bigquery.ScalarQueryParameter(None, kind, value)


def _local_types(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Column types as the embedded store gives them: int64 bar numbers, JSON as text."""
    known = {f["name"]: f["type"] for f in schema.fields(table)}
    for column in frame.columns:
        kind = known.get(column)
        if kind == "INT64" and frame[column].notna().all():
            frame[column] = frame[column].astype("int64")
        elif kind == "JSON":
            frame[column] = frame[column].map(lambda v: v if isinstance(v, str) or v is None or v is pd.NA
                                              else json.dumps(v))
    return frame


class BigQueryRunRegistry:
    """The ``runs`` table, with the interface of the embedded ``RunRegistry``: upserts are MERGE
    statements (DML, not streaming, so a run's row can be updated at once). A table made by an older
    farmkit gets the columns added to the schema since (all NULLABLE).

    Reading marks killed the queued and running runs whose owner is gone (see
    :mod:`farmkit.fmel.registry`): checked on the rows a read returns, rather than by a query of its
    own before each read, which would double every read's latency. So a filter on status sees the
    rows as they were stored: ``frame("WHERE status = 'running'")`` may return rows that read as killed."""

    def __init__(self, store: BigQueryStore):
        self.store = store
        self.types = {f["name"]: f["type"] for f in schema.fields("runs")}
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        name = self.store.table("runs")
        present = {f.name for f in self.store.client.get_table(name, timeout=self.store.timeout).schema}
        for f in schema.fields("runs"):
            if f["name"] not in present:
                # DDL rather than a schema patch: with IF NOT EXISTS, processes doing it at once agree.
                self._dml(f"ALTER TABLE `{name}` ADD COLUMN IF NOT EXISTS {f['name']} {f['type']} "
                          f"OPTIONS(description={_quote(f['description'])})", [])

    def _parameter(self, name: str, value):
        kind = self.types[name]
        if value is pd.NaT or (isinstance(value, float) and math.isnan(value)):   # a frame's missing value
            value = None
        if kind == "TIMESTAMP" and value is not None:
            value = pd.Timestamp(value).tz_localize("UTC") if pd.Timestamp(value).tz is None else pd.Timestamp(value)
            value = value.to_pydatetime(warn=False)
        elif kind == "INT64" and value is not None:
            value = int(value)
        elif kind == "FLOAT64" and value is not None:
            value = float(value)
        return bigquery.ScalarQueryParameter(name, kind, value)

    def _dml(self, text: str, params: list) -> int | None:
        """Run one DML statement; the rows it changed (None where the server does not say)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential
        config = bigquery.QueryJobConfig(query_parameters=params)

        def run() -> int | None:
            job = self.store.client.query(text, job_config=config, timeout=self.store.timeout)
            job.result()
            return job.num_dml_affected_rows

        # Concurrent DML on one table: BigQuery refuses one of them; it may simply go again.
        concurrent = retry_if_exception(lambda e: isinstance(e, gexc.BadRequest) and "concurrent update" in str(e))
        return Retrying(stop=stop_after_attempt(8), wait=wait_exponential(multiplier=0.2), retry=concurrent,
                        sleep=self.store.sleep, reraise=True)(run)

    def upsert(self, run_id: str, **fields) -> None:
        unknown = sorted(set(fields) - set(self.types))
        if unknown:
            raise KeyError(f"unknown run field(s) {', '.join(unknown)}")
        row = {"run_id": run_id, **registry.with_owner(fields)}
        params, select = [], []
        for name, value in row.items():
            if self.types[name] == "JSON":
                value = None if value is None else json.dumps(value, default=str)
                select.append(f"PARSE_JSON(@{name}) AS {name}" if value is not None else f"CAST(NULL AS JSON) AS {name}")
                params.append(bigquery.ScalarQueryParameter(name, "STRING", value))
            else:
                select.append(f"@{name} AS {name}")
                params.append(self._parameter(name, value))
        names = list(row)
        updates = ", ".join(f"{n} = S.{n}" for n in names if n != "run_id")
        text = (f"MERGE `{self.store.table('runs')}` T USING (SELECT {', '.join(select)}) S ON T.run_id = S.run_id "
                + (f"WHEN MATCHED THEN UPDATE SET {updates} " if updates else "")
                + f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) VALUES ({', '.join('S.' + n for n in names)})")
        self._dml(text, params)

    def heartbeat(self, run_id: str, *, now: pd.Timestamp | None = None) -> None:
        """Say that the run's owner lives; readers on other hosts judge it by this. Every
        ``registry.HEARTBEAT_EVERY`` seconds, not more often: each is a DML statement, and BigQuery
        queues concurrent DML on a table."""
        now = pd.Timestamp.now(tz="UTC") if now is None else now
        self._dml(f"UPDATE `{self.store.table('runs')}` SET heartbeat_at = @heartbeat_at WHERE run_id = @run_id",
                  [self._parameter("heartbeat_at", now), self._parameter("run_id", run_id)])

    def mark_killed(self, *, alive=registry.owner_alive) -> list[str]:
        """Mark killed the queued and running runs whose owner is gone; returns their ids."""
        marks = ", ".join(f"'{s}'" for s in registry.ACTIVE)
        frame = self._read(f"WHERE status IN ({marks})")
        return [r["run_id"] for r in registry.gone(frame.to_dict("records"), alive) if self._set_killed(r)]

    def _set_killed(self, row: dict) -> bool:
        """Write a gone owner's run as killed, unless its row changed since it was read."""
        same = " AND ".join(f"{c} IS NOT DISTINCT FROM @{c}" for c in registry.OWNER_COLUMNS)
        changed = self._dml(f"UPDATE `{self.store.table('runs')}` SET status = @killed "
                            f"WHERE run_id = @run_id AND status = @status AND {same}",
                            [bigquery.ScalarQueryParameter("killed", "STRING", registry.KILLED),
                             *(self._parameter(c, row[c]) for c in ("run_id", "status", *registry.OWNER_COLUMNS))])
        if changed != 0:
            log.info("run %s: its process is gone; marked %s", row["run_id"], registry.KILLED)
        return changed != 0

    def get(self, run_id: str) -> dict | None:
        frame = self.frame("WHERE run_id = ?", (run_id,))
        return None if frame.empty else frame.iloc[0].to_dict()

    def frame(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        frame = self._read(where, args)
        for index, row in zip(frame.index, frame.to_dict("records")):
            if row["status"] not in registry.ACTIVE or registry.owner_alive(row) is not False:
                continue
            try:
                written = self._set_killed(row)
            except Exception as exc:  # noqa: BLE001 - a read must not fail for it; the next read tries again
                log.warning("run %s: its process is gone, but marking it killed failed: %s", row["run_id"], exc)
                written = True
            if written:     # else the row changed since it was read (a new owner took the run): left as read
                frame.loc[index, "status"] = registry.KILLED
        return frame

    def _read(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        columns = ", ".join(f"TO_JSON_STRING({n}) AS {n}" if t == "JSON" else n for n, t in self.types.items())
        frame = self.store.query(f"SELECT {columns} FROM `{self.store.table('runs')}` {where} ORDER BY started_at",
                                 args)
        for col in schema.json_columns("runs"):
            frame[col] = frame[col].map(lambda v: json.loads(v) if isinstance(v, str) else None)
        for col, kind in self.types.items():
            if kind == "TIMESTAMP":
                frame[col] = pd.to_datetime(frame[col], utc=True)
        for col, kind in self.types.items():
            if kind == "INT64":
                frame[col] = frame[col].astype("Float64").astype("float64") if frame[col].isna().any() else \
                    frame[col].astype("int64")
        for col, kind in self.types.items():
            if kind == "STRING":
                frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
        return frame


def write_schema_files(folder: Path | None = None) -> list[Path]:
    """Write ``schemas/bigquery/{fmel,runs}.json`` from the one definition in ``schemas/``."""
    folder = folder or Path(str(resources.files("farmkit").joinpath("schemas", "bigquery")))
    written = []
    for table in ("fmel", "runs"):
        path = folder / f"{table}.json"
        path.write_text(render_fields(schema.fields(table)))
        written.append(path)
    return written


def render_fields(fields) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(f) for f in fields) + "\n]\n"


if __name__ == "__main__":
    for path in write_schema_files():
        print(path, file=sys.stderr)
