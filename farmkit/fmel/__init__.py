"""FMEL (Full Market Event Logging): one record per bar per run, and the queries that explain it."""

from farmkit.fmel.query import Comparison, compare, decisions, explain, load, record, runs, sql, why_not

__all__ = ["Comparison", "compare", "decisions", "explain", "load", "record", "runs", "sql", "why_not"]
