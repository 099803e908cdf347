"""Settings, read once from the environment at the edge into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

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
    # A static PNG beside each plotly figure a kernel displays, so that a shared notebook (nbconvert's
    # HTML, GitHub, nbviewer) shows its charts: auto (when kaleido finds a Chromium) | on | off.
    "FARM_FIGURE_IMAGES": ("figure_images", "auto"),
    # Paper pods (the runner sets these in the kernel's environment): fk.backtest then paper-trades.
    "FARM_MODE": ("mode", "backtest"),      # backtest | paper
    "FARM_AGENT_ID": ("agent_id", None),    # default: the strategy's class name
    # Who a run belongs to, fixed when it is registered (the runner sets them from the agent's record):
    # the REST API shows a run to its owner only, whatever agent holds that name later.
    "FARM_OWNER": ("owner", None),
    "FARM_AGENT_UID": ("agent_uid", None),
    "FARM_SUBSCRIPTION": ("subscription", None),
    "FARM_STATE_DIR": ("state_dir", None),  # checkpoints and status of a paper run (the pod's volume)
    "FARM_WARMUP_BARS": ("warmup_bars", None),  # history bars per symbol that prime a paper run; default all
    "FARM_WARMUP": ("warmup", "notebook"),  # where they come from: notebook | alpaca | archive (farmkit.live.warmup)
    # Where a paper run fills holes in its bars (farmkit.live.backfill): archive | alpaca | off; by default
    # the warm-up source when that is alpaca or archive, else off (holes are then only recorded in FMEL).
    "FARM_BACKFILL": ("backfill", None),
    "FARM_HEALTH_PORT": ("health_port", "8080"),
    "FARM_LEADERBOARD_EVERY": ("leaderboard_every", "60"),  # seconds between a paper run's board updates
    # Paper runs: a symbol is stale after this many seconds without a bar while its market is open
    # (default: three bar sizes), and the backtest run a paper run's drift alarms compare it with.
    "FARM_STALE_AFTER": ("stale_after", None),
    "FARM_DRIFT_BASELINE": ("drift_baseline", None),   # default (runner): the agent's verification run
    # Paper runs: a bar that starts more than this many seconds after now is malformed, not a real bar.
    "FARM_MAX_FUTURE": ("max_future", "300"),
    # `farm paper --replay`: the paper session publishes a replayed market on its own bus.
    "FARM_REPLAY": ("replay", None),        # synthetic | path to a CSV or Parquet file of bars
    "FARM_REPLAY_SPEED": ("replay_speed", "60"),  # multiple of real time (60: a minute bar per second)
    # `farm paper --bars N`: the paper run stops after exactly N live bars (the warm-up not counted).
    "FARM_PAPER_BARS": ("paper_bars", None),
    # The `farm` command prints the traceback of a failure, not only its one-line error (1 | 0).
    "FARM_DEBUG": ("debug", None),
    # `farm promote`: the runner image an agent is pinned to, ideally by digest (REPO/runner@sha256:...).
    "FARM_RUNNER_IMAGE": ("runner_image", None),
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
    mode: str = "backtest"
    agent_id: str | None = None
    owner: str | None = None
    agent_uid: str | None = None
    subscription: str | None = None
    state_dir: Path | None = None
    warmup_bars: int | None = None
    health_port: int = 8080
    warmup: str = "notebook"
    backfill: str = "off"
    leaderboard_every: float = 60.0
    stale_after: float | None = None
    drift_baseline: str | None = None
    max_future: float = 300.0
    replay: str | None = None
    replay_speed: float = 60.0
    runner_image: str | None = None
    figure_images: str = "auto"
    paper_bars: int | None = None
    debug: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        # FARM_INGEST_* belong to the ingester, FARM_API_* to the REST API: each checks its own
        # (ingester.settings, farmkit.api.settings).
        unknown = sorted(k for k in environ if k.startswith("FARM_") and k not in _VARIABLES
                         and not k.startswith(("FARM_INGEST_", "FARM_API_")))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(_VARIABLES))}")
        values = {name: environ.get(var) or default for var, (name, default) in _VARIABLES.items()}
        home = Path(values["home"]).expanduser().absolute()
        values["home"] = home
        values["store"] = values["store"] or f"local://{home}"
        if values["progress"] not in ("auto", "on", "off"):
            raise ConfigError(f"FARM_PROGRESS must be auto, on or off, got {values['progress']!r}")
        if values["figure_images"] not in ("auto", "on", "off"):
            raise ConfigError(f"FARM_FIGURE_IMAGES must be auto, on or off, got {values['figure_images']!r}")
        if values["warmup"] not in ("notebook", "alpaca", "archive"):
            raise ConfigError(f"FARM_WARMUP must be notebook, alpaca or archive, got {values['warmup']!r}")
        values["backfill"] = values["backfill"] or (values["warmup"] if values["warmup"] != "notebook" else "off")
        if values["backfill"] not in ("archive", "alpaca", "off"):
            raise ConfigError(f"FARM_BACKFILL must be archive, alpaca or off, got {values['backfill']!r}")
        if values["mode"] not in ("backtest", "paper"):
            raise ConfigError(f"FARM_MODE must be backtest or paper, got {values['mode']!r}")
        if values["state_dir"]:
            values["state_dir"] = Path(values["state_dir"]).expanduser().absolute()
        for var, name, least in (("FARM_WARMUP_BARS", "warmup_bars", 0), ("FARM_HEALTH_PORT", "health_port", 0),
                                 ("FARM_PAPER_BARS", "paper_bars", 1)):
            if values[name] is None:
                continue
            try:
                values[name] = int(values[name])
                if values[name] < least:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{var} must be a whole number >= {least}, got {values[name]!r}") from None
        for var, name, what in (("FARM_LEADERBOARD_EVERY", "leaderboard_every", "a number of seconds"),
                                ("FARM_STALE_AFTER", "stale_after", "a number of seconds"),
                                ("FARM_MAX_FUTURE", "max_future", "a number of seconds"),
                                ("FARM_REPLAY_SPEED", "replay_speed", "a number")):
            if values[name] is None:
                continue
            try:
                values[name] = float(values[name])
                if not values[name] > 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{var} must be {what} > 0, got {values[name]!r}") from None
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def backend(registry: Mapping, url: str, kind: str):
    """The factory a URL's scheme names in ``registry`` (an explicit dict: nothing registers itself);
    an unknown scheme is an error that lists the known ones.

    >>> backend({"local": LocalStore}, "local://.farm", "store")
    """
    scheme = urlparse(url).scheme
    if scheme not in registry or not url.startswith(f"{scheme}://"):
        raise ConfigError(f"unknown {kind} {url!r}; known schemes: " + ", ".join(f"{s}://" for s in sorted(registry)))
    return registry[scheme]
