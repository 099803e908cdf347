"""The BigQuery store against the BigQuery API emulator, through the real google-cloud-bigquery client;
and its table schemas against the one definition in farmkit/schemas/."""

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import farmkit as fk
from farmkit.fmel import schema
from tests.bigquery_emulator import PROJECT, bigquery_emulator, new_dataset  # noqa: F401 - fixture

SCHEMAS = Path(fk.__file__).parent / "schemas"
JSON_COLUMNS = schema.json_columns("fmel")


# -- the schema files (no emulator needed) ---------------------------------------------------------
@pytest.mark.parametrize("table", ["fmel", "runs"])
def test_bigquery_schema_files_are_the_one_definition(table):
    ours = json.loads((SCHEMAS / "bigquery" / f"{table}.json").read_text())
    assert ours == list(schema.fields(table)), \
        f"schemas/bigquery/{table}.json differs from schemas/{table}.json: run python -m farmkit.fmel.bigquery"


def test_archive_tables_match_the_archive_schemas():
    from farmkit.data.archive import BAR_SCHEMA, NEWS_SCHEMA
    arrow_of = {"STRING": pa.string(), "FLOAT64": pa.float64(), "INT64": pa.int64(),
                "TIMESTAMP": pa.timestamp("us", tz="UTC")}
    for name, arrow in (("market_data", BAR_SCHEMA), ("news", NEWS_SCHEMA)):
        fields = json.loads((SCHEMAS / "bigquery" / f"{name}.json").read_text())
        assert [f["name"] for f in fields] == arrow.names
        for f in fields:
            expected = arrow_of[f["type"]]
            assert arrow.field(f["name"]).type == (pa.list_(expected) if f["mode"] == "REPEATED" else expected), f


def test_table_options_name_existing_columns():
    tables = json.loads((SCHEMAS / "bigquery" / "tables.json").read_text())
    assert set(tables) == {"fmel", "runs", "market_data", "news"}
    assert tables["fmel"]["partition"] == {"type": "DAY", "field": "timestamp"}
    assert tables["fmel"]["clustering"] == ["agent_id", "run_id"]
    for name, spec in tables.items():
        columns = {f["name"]: f for f in json.loads((SCHEMAS / "bigquery" / spec["schema"]).read_text())}
        if "partition" in spec:
            assert columns[spec["partition"]["field"]]["type"] == "TIMESTAMP"
        assert all(c in columns and columns[c]["mode"] != "REPEATED" for c in spec.get("clustering", []))


def test_batches_respect_row_and_byte_limits():
    pytest.importorskip("google.cloud.bigquery")
    from farmkit.fmel.bigquery import MAX_ROWS, batches
    rows = [{"record_id": f"r:{i}", "blob": "x" * 1000} for i in range(1234)]
    sizes = [len(b) for b in batches(rows)]
    assert sum(sizes) == 1234 and max(sizes) <= MAX_ROWS and len(sizes) == 3
    by_bytes = list(batches(rows, max_bytes=50_000))
    assert sum(map(len, by_bytes)) == 1234
    assert all(len(json.dumps(b)) < 50_000 for b in by_bytes)
    assert [r["record_id"] for b in by_bytes for r in b] == [r["record_id"] for r in rows]    # order kept
    with pytest.raises(ValueError, match="r:0"):
        list(batches(rows[:1], max_bytes=100))


# -- against the emulator -------------------------------------------------------------------------
def fmel_table(run_id: str, n: int, start: int = 0, agent_id: str = "Agent") -> pa.Table:
    bars = list(range(start, start + n))
    stamps = pd.date_range("2024-01-02 14:30", periods=start + n, freq="1min", tz="UTC")[start:]
    return pa.table({
        "record_id": [f"{run_id}:{b}" for b in bars], "run_id": [run_id] * n, "agent_id": [agent_id] * n,
        "mode": ["backtest"] * n, "timestamp": stamps, "recorded_at": [pd.Timestamp.now(tz="UTC")] * n,
        "bar_number": bars,
        "market_state": [json.dumps({"AAPL": {"close": 100.0 + b}}) for b in bars],
        "strategy_state": [json.dumps({"cash": 1.0, "tracked": {}}) for _ in bars],
        "decisions": [json.dumps([{"action": "hold", "symbol": None, "size": None}]) for _ in bars],
        "actions": ["[]"] * n, "performance": [json.dumps({"equity": 1.0 + b}) for b in bars],
    }).cast(schema.arrow_schema("fmel"))


@pytest.fixture
def store(bigquery_emulator, tmp_path):
    from farmkit.fmel.bigquery import BigQueryStore
    naps: list[float] = []
    store = BigQueryStore(PROJECT, new_dataset(), home=tmp_path, endpoint=bigquery_emulator.endpoint,
                          attempts=3, backoff=0.01, retry_every=0.0, sleep=naps.append)
    store.naps = naps
    return store


def raw_count(store, run_id: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM `{store.table('fmel')}` WHERE run_id = ?", (run_id,)).n[0])


def test_tables_are_created_with_partitioning_and_clustering(store):
    from farmkit.fmel.bigquery import BigQueryStore, table_specs
    client = store.client
    fmel = client.get_table(store.table("fmel"))
    assert fmel.time_partitioning.type_ == "DAY" and fmel.time_partitioning.field == "timestamp"
    assert fmel.clustering_fields == ["agent_id", "run_id"]
    for name, spec in table_specs().items():
        table = client.get_table(store.table(name))
        assert [(f.name, f.field_type, f.mode) for f in table.schema] == \
            [(f["name"], f["type"], f["mode"]) for f in spec["fields"]], name
    assert client.get_table(store.table("market_data")).clustering_fields == ["symbol"]
    BigQueryStore(PROJECT, store.dataset, home=store.home, client=client)    # opening again changes nothing
    assert {t.table_id for t in client.list_tables(f"{PROJECT}.{store.dataset}")} == set(table_specs())


def _without_order_refs(value):
    # backtrader numbers orders per process: two runs in one process differ only there
    if isinstance(value, dict):
        return {k: _without_order_refs(v) for k, v in value.items() if k not in ("order", "orders")}
    return [_without_order_refs(v) for v in value] if isinstance(value, list) else value


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["record_id", "run_id", "recorded_at"]).reset_index(drop=True)
    for column in JSON_COLUMNS:
        frame[column] = frame[column].map(lambda v: _without_order_refs(json.loads(v)) if isinstance(v, str) else None)
    return frame


class Crossing(fk.Strategy):
    params = dict(fast=5, slow=20)

    def __init__(self):
        import backtrader as bt
        self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.track(fast=self.fast, slow=self.slow)

    def next(self):
        if self.fast[0] > self.slow[0] and not self.position:
            self.buy(size=2, reason="fast above slow", confidence=0.5)
        elif self.fast[0] < self.slow[0] and self.position:
            self.close(reason="fast below slow")


def test_a_backtest_reads_back_as_the_embedded_store_has_it(farm_home, bigquery_emulator, tmp_path):
    bars = fk.data.synthetic(["AAPL", "MSFT"], days=2, seed=5)
    url = bigquery_emulator.url() + f"&home={tmp_path / 'bq'}"
    from farmkit.fmel.stores import open_store
    cloud = fk.backtest(Crossing, bars, store=open_store(url))
    local = fk.backtest(Crossing, bars)
    assert len(cloud.orders) == len(local.orders) > 0
    theirs, ours = fk.fmel.load(local.run_id), fk.fmel.load(cloud.run_id, store=cloud.store)
    assert len(ours) == len(theirs) == len(bars["AAPL"])
    pd.testing.assert_frame_equal(_comparable(ours), _comparable(theirs))
    assert (ours.record_id == cloud.run_id + ":" + ours.bar_number.astype(str)).all()
    run = cloud.store.runs.get(cloud.run_id)
    assert run["status"] == "done" and run["bars"] == len(ours) and run["metrics"]["trades"] >= 1
    assert cloud.store.pending()["records"] == 0


def test_a_write_of_more_than_500_rows_takes_several_inserts(store):
    written = store.write_fmel(fmel_table("big", 1234))
    assert written == 1234 and store.stats["inserts"] == 3
    assert len(store.fmel("big")) == 1234 and raw_count(store, "big") == 1234


def test_rejected_rows_are_reported_and_kept_the_rest_written(store):
    from farmkit.fmel.bigquery import rows_of
    rows = rows_of(fmel_table("bad", 5))
    rows[2]["bar_number"] = "not a number"
    assert store.write_rows(rows) == 4
    assert store.pending()["rejected"] == 1 and store.pending()["records"] == 0
    assert "bad:2" in store.last_error and "invalid" in store.last_error
    assert list(store.fmel("bad").bar_number) == [0, 1, 3, 4]
    kept = [json.loads(line) for p in (store.spill_dir / "rejected").glob("*.jsonl") for line in p.open()]
    assert [r["record_id"] for r in kept] == ["bad:2"]


class LostReply:
    """A client whose first insert reaches BigQuery but whose reply is lost: the one network fault a
    loopback emulator cannot be made to produce on cue."""

    def __init__(self, client, failures: int = 1):
        self.client, self.failures = client, failures

    def __getattr__(self, name):
        return getattr(self.client, name)

    def insert_rows_json(self, *args, **kwargs):
        from google.api_core.exceptions import ServiceUnavailable
        errors = self.client.insert_rows_json(*args, **kwargs)
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailable("connection reset before the reply")
        return errors


def test_a_retry_after_a_lost_reply_reads_back_once(store):
    store.client = LostReply(store.client)
    assert store.write_fmel(fmel_table("lost", 300)) == 300
    assert store.stats["retries"] == 1 and store.naps == [0.01]
    records = store.fmel("lost")
    assert list(records.bar_number) == list(range(300))
    assert raw_count(store, "lost") >= 300     # the emulator keeps the duplicate; the view does not show it
    assert int(fk.fmel.sql("SELECT count(*) AS n FROM fmel WHERE run_id = 'lost'", store=store).n[0]) == 300


def test_sink_down_spills_and_a_later_write_replays_every_record_once(store, bigquery_emulator):
    store.write_fmel(fmel_table("down", 100))
    bigquery_emulator.stop()
    try:
        assert store.write_fmel(fmel_table("down", 700, start=100)) == 0
        pending = store.pending()
        assert pending["records"] == 700 and pending["batches"] == 1 and pending["last_error"]
        assert store.stats["retries"] == 2      # the first request tried 3 times, the second not at all
        assert store.replay() == 0 and store.pending()["records"] == 700    # still down: still there
    finally:
        bigquery_emulator.start()
    assert store.write_fmel(fmel_table("down", 50, start=800)) == 50      # after replaying the spill
    assert store.stats["replayed"] == 700
    assert store.pending() == {"batches": 0, "records": 0, "rejected": 0, "last_error": store.last_error}
    records = store.fmel("down")
    assert list(records.bar_number) == list(range(850))


def test_writing_the_same_records_again_reads_back_once(store):
    table = fmel_table("again", 120)
    store.write_fmel(table)
    store.write_fmel(table)
    assert list(store.fmel("again").record_id) == [f"again:{b}" for b in range(120)]


def test_unknown_url_options_and_bad_datasets_are_named(bigquery_emulator):
    from farmkit.errors import ConfigError
    from farmkit.fmel.stores import open_store
    with pytest.raises(ConfigError, match="unknown option.*colour"):
        open_store(bigquery_emulator.url() + "&colour=red")
    with pytest.raises(ConfigError, match="PROJECT/DATASET"):
        open_store("bigquery://only-a-project")
    with pytest.raises(ConfigError, match="underscores"):
        open_store(f"bigquery://{PROJECT}/bad-name?endpoint={bigquery_emulator.endpoint}")


class Refusing(LostReply):
    """A client whose inserts are refused (as with missing permissions), then allowed."""

    def insert_rows_json(self, *args, **kwargs):
        from google.api_core.exceptions import Forbidden
        if self.failures:
            raise Forbidden("caller lacks bigquery.tables.updateData")
        return self.client.insert_rows_json(*args, **kwargs)


def test_a_refused_insert_is_spilled_at_once_and_written_once_allowed(store):
    refusing = store.client = Refusing(store.client)
    assert store.write_fmel(fmel_table("refused", 40)) == 0
    assert store.stats["retries"] == 0 and store.pending()["records"] == 40
    assert "Forbidden" in store.pending()["last_error"]
    refusing.failures = 0
    assert store.close()["records"] == 0
    assert list(store.fmel("refused").bar_number) == list(range(40))


def test_a_paper_run_on_bigquery_writes_what_it_spilled_when_it_ends(store, farm_home):
    from farmkit.bus import open_bus
    from farmkit.live.session import paper
    from tests.integration.test_runner import publish_on_start
    from tests.integration.test_paper import bars_of

    data = fk.data.synthetic("AAPL", days=1, seed=9)["AAPL"]
    real, calls = store.client.insert_rows_json, {"n": 0}

    def away_for_a_while(table, rows, *args, **kwargs):
        # BigQuery is unreachable while the last batch (bars 150..199) is written: it is spilled, and
        # no later write comes to replay it; only the end of the run can.
        if rows[0].get("bar_number") == 150 and calls["n"] < store.attempts:
            calls["n"] += 1
            raise ConnectionError("BigQuery is away")
        return real(table, rows, *args, **kwargs)

    store.client.insert_rows_json = away_for_a_while
    bus = open_bus("memory://")
    res = paper(Crossing, ["AAPL"], bus=bus, store=store, history=fk.Bars(AAPL=data.iloc[:60]), batch_bars=50,
                flush_seconds=1e9, max_bars=200, duration=60,
                on_start=publish_on_start(bus, bars_of(data.iloc[60:200], "AAPL")))
    bus.close()
    assert calls["n"] == store.attempts and store.stats["spilled"] == 50 and store.stats["replayed"] == 50
    assert store.pending()["records"] == 0
    assert list(store.fmel(res.run_id).bar_number) == list(range(200))
