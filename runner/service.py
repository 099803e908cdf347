"""The paper-trading pod: run an agent's notebook through papermill in paper mode, report health.

The notebook runs unchanged: the kernel's environment says ``FARM_MODE=paper``, so its
``fk.backtest`` call paper-trades on the bus (see ``farmkit.research.backtest.backtest``). The kernel is another
process; it reports through ``STATE_DIR/status.json`` and is asked to stop with ``STATE_DIR/stop``.

    runner = Runner("agents/sma-cross", Settings.from_env())
    code = runner.run(stop_event)       # until the notebook ends or stop_event is set; 0 on a clean stop
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from farmkit.live import checkpoint
from farmkit.errors import ConfigError
from farmkit.ops.promote import load_manifest
from farmkit.settings import Settings
from runner.health import HealthServer

log = logging.getLogger("runner")
STATUS_STALE_SECONDS = 15.0     # the session writes its status every second; older means it is stuck


class Runner:
    """One agent's paper run. ``max_bar_age`` is how long without a bar the runner stays ready;
    ``grace`` how long a stop may take before the kernel is interrupted (keep it under the pod's
    terminationGracePeriodSeconds)."""

    def __init__(self, agent_dir: str | Path, settings: Settings, *, grace: float = 20.0,
                 max_bar_age: float = 300.0, kernel_name: str = "python3"):
        self.agent_dir = Path(agent_dir).absolute()
        if not (self.agent_dir / "agent.yaml").exists():
            raise ConfigError(f"{self.agent_dir} has no agent.yaml; promote a notebook first "
                              "(farm promote NOTEBOOK --name NAME) and pass its folder, e.g. agents/NAME")
        self.manifest = load_manifest(self.agent_dir)
        self.notebook = self.agent_dir / self.manifest.get("notebook", "agent.ipynb")
        if not self.notebook.exists():
            raise ConfigError(f"{self.agent_dir}/agent.yaml names notebook {self.notebook.name}, which is not there")
        self.settings, self.grace, self.max_bar_age, self.kernel_name = settings, grace, max_bar_age, kernel_name
        self.name = self.manifest["name"]
        self.agent_id = settings.agent_id or self.name
        self.state_dir = settings.state_dir or settings.home / "agents" / self.name / "state"
        self.subscription = settings.subscription or f"agent-{self.name}"
        self.started = time.time()
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- what the kernel gets ----------------------------------------------------------------------
    def parameters(self) -> dict:
        """The notebook's parameters: the manifest's defaults (its symbols among them)."""
        return {p["name"]: p["default"] for p in self.manifest.get("parameters", [])}

    def kernel_environment(self) -> dict[str, str]:
        baseline = self.settings.drift_baseline or ((self.manifest.get("verification") or {}).get("run_ids")
                                                    or {}).get("source")
        env = {"FARM_MODE": "paper", "FARM_AGENT_ID": self.agent_id, "FARM_SUBSCRIPTION": self.subscription,
               "FARM_STATE_DIR": str(self.state_dir), "FARM_HOME": str(self.settings.home),
               "FARM_STORE": self.settings.store, "FARM_BUS": self.settings.bus, "FARM_BROKER": self.settings.broker,
               "FARM_PROGRESS": "off", "FARM_WARMUP": self.settings.warmup,
               "FARM_FIGURE_IMAGES": "off"}   # a paper run's notebook is not shared: no Chromium in the pod
        warmup = self.settings.warmup_bars if self.settings.warmup_bars is not None else self.manifest.get("warmup_bars")
        if warmup:
            env["FARM_WARMUP_BARS"] = str(int(warmup))
        # Whose runs these are: the agent store wrote its owner and immutable id into agent.yaml.
        for var, key in (("FARM_OWNER", "owner"), ("FARM_AGENT_UID", "agent_uid")):
            if self.manifest.get(key):
                env[var] = str(self.manifest[key])
        if baseline:    # the drift alarms' baseline: the backtest the agent was promoted on
            env["FARM_DRIFT_BASELINE"] = str(baseline)
        if self.settings.stale_after is not None:
            env["FARM_STALE_AFTER"] = f"{self.settings.stale_after:g}"
        env["FARM_MAX_FUTURE"] = f"{self.settings.max_future:g}"
        if self.settings.replay:
            env["FARM_REPLAY"] = str(Path(self.settings.replay).absolute()) if self.settings.replay != "synthetic" \
                else "synthetic"
            env["FARM_REPLAY_SPEED"] = f"{self.settings.replay_speed:g}"
        if self.settings.paper_bars is not None:     # `farm paper --bars N`: the session stops itself
            env["FARM_PAPER_BARS"] = str(self.settings.paper_bars)
        return env

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clear_stop(self.state_dir)
        # Papermill's kernel inherits this process's environment; FARM_RUN_ID belongs to `farm backtest`.
        for name in ("FARM_RUN_ID", "FARM_REPLAY", "FARM_REPLAY_SPEED", "FARM_WARMUP_BARS", "FARM_DRIFT_BASELINE",
                     "FARM_OWNER", "FARM_AGENT_UID", "FARM_PAPER_BARS"):
            os.environ.pop(name, None)
        os.environ.update(self.kernel_environment())
        self._thread = threading.Thread(target=self._execute, name="papermill", daemon=True)
        self._thread.start()

    def _execute(self) -> None:
        import papermill

        from farmkit.research.notebooks import kernel_manager_class

        try:
            papermill.execute_notebook(str(self.notebook), str(self.state_dir / "executed.ipynb"),
                                       parameters=self.parameters(), kernel_name=self.kernel_name,
                                       language="python", cwd=str(self.agent_dir), progress_bar=False,
                                       log_output=False, kernel_manager_class=kernel_manager_class())
        except BaseException as exc:   # noqa: BLE001 - reported by run() and in /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            if not self._stopping:
                log.error("the agent notebook failed: %s", self.error)

    @property
    def kernel_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, stop: threading.Event) -> int:
        """Run until the notebook ends or ``stop`` is set; returns the process exit code."""
        self.start()
        while self.kernel_running and not stop.wait(0.2):
            pass
        if not self.kernel_running:   # the notebook ended by itself: fine if it did not fail
            return 1 if self.error else 0
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop the paper session cleanly: ask it through the stop file (FMEL is flushed, the checkpoint
        saved, the notebook finishes); if it does not end in time, interrupt the kernel."""
        self._stopping = True
        log.info("stopping %s", self.name)
        checkpoint.request_stop(self.state_dir)
        self._thread.join(self.grace)
        if self._thread.is_alive():
            log.warning("the kernel did not stop within %.0f s; interrupting it", self.grace)
            self._interrupt_kernel()
            self._thread.join(max(5.0, self.grace / 2))
        status = self.status()
        clean = not self._thread.is_alive() and status.get("state") == "stopped"
        if not clean:
            log.error("the paper session did not stop cleanly (%s); the next start resumes from the last "
                      "checkpoint", self.error or status.get("state"))
        return 0 if clean else 1

    def _interrupt_kernel(self) -> None:
        # The kernel is a child process of this one (started by papermill): SIGINT raises
        # KeyboardInterrupt in it, which paper() turns into a flush and a checkpoint.
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                if "ipykernel" in " ".join(child.cmdline()):
                    child.send_signal(signal.SIGINT)
            except psutil.Error:
                pass

    # -- reporting ---------------------------------------------------------------------------------
    def status(self) -> dict:
        try:
            return checkpoint.read_json(self.state_dir / checkpoint.STATUS) or {}
        except checkpoint.CheckpointError:
            return {}

    def report(self) -> dict:
        """Readiness with its reason, and the numbers /metrics shows."""
        status, now = self.status(), time.time()
        if status.get("run_id") and status.get("updated_at", 0) < self.started:
            status = {}     # left by the previous process
        last = status.get("last_bar_at") or self.started
        age = max(0.0, now - last)
        running = self.kernel_running
        if not running:
            ready, reason = False, f"kernel not running ({self.error or 'finished'})"
        elif not status:
            ready, reason = False, "kernel starting"
        elif now - status.get("updated_at", 0) > STATUS_STALE_SECONDS:
            ready, reason = False, f"no status from the paper session for {now - status['updated_at']:.0f} s"
        elif status.get("state") == "warming":
            ready, reason = True, "warming up"
        elif status.get("state") == "live" and status.get("stale_symbols"):
            ready, reason = False, _stale_reason(status, now)
        elif status.get("state") == "live" and age <= self.max_bar_age:
            ready, reason = True, f"live, last bar {age:.1f} s ago"
        else:
            ready, reason = False, f"{status.get('state')}, last bar {age:.0f} s ago"
        return {"ready": ready, "reason": reason, "kernel_running": running, "status": status,
                "last_bar_age_seconds": age if status else None, "bar_ages": _bar_ages(status, now)}


def _bar_ages(status: dict, now: float) -> dict[str, float]:
    # The session wrote each symbol's age at updated_at: carried on to now.
    since = max(0.0, now - status.get("updated_at", now))
    return {s: float(v["age"]) + since for s, v in (status.get("symbols") or {}).items()}


def _stale_reason(status: dict, now: float) -> str:
    ages = _bar_ages(status, now)
    stale = ", ".join(f"{s} no bar for {ages.get(s, a):.1f} s" for s, a in sorted(status["stale_symbols"].items()))
    return f"stale data: {stale} (stale after {status.get('stale_after', 0):g} s, market open)"


def main(argv: list[str] | None = None, environ=None) -> int:
    """``python -m runner AGENT_DIR``: settings from the environment, health on FARM_HEALTH_PORT,
    the agent notebook in paper mode until SIGTERM; exit 0 after a clean stop."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner", description=main.__doc__)
    parser.add_argument("agent_dir", help="the agent folder, e.g. agents/sma-cross (agent.ipynb + agent.yaml)")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="seconds a stop may take before the kernel is interrupted (default 20)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env(environ)
    runner = Runner(args.agent_dir, settings, grace=args.grace)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    health = HealthServer(runner.report, {"agent": runner.name}, port=settings.health_port).start()
    log.info("runner for %s: health on :%d, state in %s, subscription %s", runner.name, health.port,
             runner.state_dir, runner.subscription)
    try:
        return runner.run(stop)
    finally:
        health.close()
