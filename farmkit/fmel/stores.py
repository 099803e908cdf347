"""Stores chosen by URL scheme, through an explicit registry."""

from __future__ import annotations

from urllib.parse import urlparse

from farmkit.settings import backend
from farmkit.fmel.local import LocalStore


def _local(url: str) -> LocalStore:
    parsed = urlparse(url)
    return LocalStore((parsed.netloc + parsed.path) or ".farm")


REGISTRY = {"local": _local}


def open_store(url: str):
    """Open the store a URL names: ``local://PATH`` (the embedded store)."""
    return backend(REGISTRY, url, "store")(url)
