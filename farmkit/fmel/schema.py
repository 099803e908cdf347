"""The one definition of the FMEL and run-registry schemas (BigQuery JSON schema files in
`farmkit/schemas/`, which Terraform reads too), and their Arrow form for the embedded store."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import pyarrow as pa

# JSON columns travel as JSON text: BigQuery's insert_rows_json takes them so, DuckDB queries them so.
_ARROW_TYPES = {
    "STRING": pa.string(),
    "JSON": pa.string(),
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}


@cache
def fields(table: str) -> tuple[dict, ...]:
    """The schema of ``fmel`` or ``runs`` as BigQuery field dicts (name, type, mode, description)."""
    text = resources.files("farmkit").joinpath("schemas", f"{table}.json").read_text()
    return tuple(json.loads(text))


def names(table: str) -> list[str]:
    return [f["name"] for f in fields(table)]


def json_columns(table: str) -> list[str]:
    return [f["name"] for f in fields(table) if f["type"] == "JSON"]


@cache
def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(f["name"], _ARROW_TYPES[f["type"]], nullable=f["mode"] != "REQUIRED")
                      for f in fields(table)])
