"""Stores chosen by URL scheme, through an explicit registry."""

from __future__ import annotations

from urllib.parse import urlparse

from farmkit.errors import ConfigError
from farmkit.fmel.local import LocalStore


def _local(url: str) -> LocalStore:
    parsed = urlparse(url)
    return LocalStore((parsed.netloc + parsed.path) or ".farm")


REGISTRY = {"local": _local}


def open_store(url: str):
    """Open the store a URL names: ``local://PATH`` (the embedded store)."""
    scheme = urlparse(url).scheme
    try:
        factory = REGISTRY[scheme]
    except KeyError:
        raise ConfigError(f"unknown store {url!r}; known schemes: "
                          + ", ".join(f"{s}://" for s in sorted(REGISTRY))) from None
    return factory(url)
