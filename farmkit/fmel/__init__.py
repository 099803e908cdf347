"""FMEL (Full Market Event Logging): one record per bar per run, and the queries that explain it."""

from farmkit.fmel.query import explain, load, record, runs, sql

__all__ = ["explain", "load", "record", "runs", "sql"]
