"""Settings, read once from the environment at the edge into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from farmkit.errors import ConfigError

# FARM_* variable -> (field, default). Defaults resolve here and nowhere else.
_VARIABLES: dict[str, tuple[str, str | None]] = {
    "FARM_HOME": ("home", ".farm"),
    "FARM_STORE": ("store", None),          # default: local://<FARM_HOME>
    "FARM_BUS": ("bus", "memory://"),
    "FARM_REDIS": ("redis", None),          # default: an embedded Redis under FARM_HOME
    "FARM_BROKER": ("broker", "sim://"),
    "FARM_RUN_ID": ("run_id", None),        # set by `farm backtest` so a notebook's run gets a known id
    "FARM_PROGRESS": ("progress", "auto"),  # auto | on | off
}


@dataclass(frozen=True)
class Settings:
    """Where farmkit keeps its data and which backends it talks to.

    >>> Settings.from_env({"FARM_HOME": "/tmp/farm"}).store
    'local:///tmp/farm'
    """

    home: Path
    store: str
    bus: str
    redis: str | None
    broker: str
    run_id: str | None
    progress: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        unknown = sorted(k for k in environ if k.startswith("FARM_") and k not in _VARIABLES)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(_VARIABLES))}")
        values = {name: environ.get(var) or default for var, (name, default) in _VARIABLES.items()}
        home = Path(values["home"]).expanduser().absolute()
        values["home"] = home
        values["store"] = values["store"] or f"local://{home}"
        if values["progress"] not in ("auto", "on", "off"):
            raise ConfigError(f"FARM_PROGRESS must be auto, on or off, got {values['progress']!r}")
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})
