"""Stores chosen by URL scheme, through an explicit registry."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlparse

from farmkit.errors import ConfigError
from farmkit.fmel.local import LocalStore
from farmkit.settings import Settings, backend


def _local(url: str) -> LocalStore:
    parsed = urlparse(url)
    return LocalStore((parsed.netloc + parsed.path) or ".farm")


def _bigquery(url: str, environ=None):
    """``bigquery://PROJECT/DATASET[?endpoint=URL&home=PATH&location=LOC]``. Without ``endpoint``,
    ``BIGQUERY_EMULATOR_HOST`` names an emulator; without either, the default Google credentials."""
    environ = os.environ if environ is None else environ
    parsed = urlparse(url)
    project, dataset = parsed.netloc, parsed.path.strip("/")
    if not project or not dataset or "/" in dataset:
        raise ConfigError(f"BigQuery store {url!r}: expected bigquery://PROJECT/DATASET")
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = sorted(set(options) - {"endpoint", "home", "location"})
    if unknown:
        raise ConfigError(f"BigQuery store {url!r}: unknown option(s) {', '.join(unknown)}; "
                          "known: endpoint, home, location")
    try:
        from farmkit.fmel.bigquery import BigQueryStore
    except ImportError as exc:
        raise ConfigError(f"{url} needs the BigQuery client: pip install 'thefarm[cloud]' ({exc})") from exc
    home = options.get("home") or Settings.from_env(environ).home
    return BigQueryStore(project, dataset, home=home, location=options.get("location"),
                         endpoint=options.get("endpoint") or environ.get("BIGQUERY_EMULATOR_HOST"))


REGISTRY = {"local": _local, "bigquery": _bigquery}


def open_store(url: str):
    """Open the store a URL names: ``local://PATH`` (the embedded store) or
    ``bigquery://PROJECT/DATASET`` (see :mod:`farmkit.fmel.bigquery`)."""
    return backend(REGISTRY, url, "store")(url)
