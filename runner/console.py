"""`farm paper`: an agent paper-trading in the foreground, its decisions streaming to the terminal.

The agent runs as the pod runs it (its notebook through papermill in paper mode, see
:class:`runner.service.Runner`); this module adds the terminal: it follows the session's status file
and the FMEL store, prints each decision as it is committed, and stops the session cleanly on
Ctrl-C or SIGTERM, after ``duration`` seconds or ``bars`` live bars (the session itself stops after
exactly that many, the warm-up not counted).

With a replay (``--replay synthetic`` or a file) the session publishes the market itself, on its
own in-process bus: no keys, no Pub/Sub, and a fresh state directory each time.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

import pandas as pd

from farmkit.fmel.stores import open_store
from farmkit.settings import Settings
from runner.service import Runner


@dataclass
class Follow:
    """What the terminal has shown so far."""

    run_id: str | None = None
    last_bar: int = -1
    decisions: int = 0
    bars: int = 0


def paper_settings(settings: Settings, agent_name: str, *, replay: str | None, speed: float | None) -> Settings:
    """The settings a foreground paper run uses: with a replay, the in-process bus and a state
    directory of its own, emptied first (a replay never resumes a real run's checkpoint)."""
    if not replay:
        return settings
    state_dir = settings.home / "agents" / agent_name / "replay-state"
    shutil.rmtree(state_dir, ignore_errors=True)
    return settings.replace(replay=replay, replay_speed=float(speed or settings.replay_speed),
                            bus="memory://", state_dir=state_dir, subscription=None)


def run(agent_dir, settings: Settings, *, replay: str | None = None, speed: float | None = None,
        duration: float | None = None, bars: int | None = None, stop: threading.Event | None = None,
        out: TextIO = sys.stdout, poll: float = 0.5) -> int:
    """Run the agent in paper mode until its notebook ends, ``stop`` is set, ``duration`` seconds
    pass or ``bars`` live bars were processed; returns the exit code (0 after a clean run)."""
    probe = Runner(agent_dir, settings)         # checks the folder first: a clear error if it is no agent
    name = probe.name
    if replay and replay != "synthetic":
        from farmkit.live.replay import load_replay
        load_replay(replay, probe.manifest.get("symbols") or [])   # a bad file fails here, not in the kernel
    settings = paper_settings(settings, name, replay=replay, speed=speed)
    if bars is not None:
        settings = settings.replace(paper_bars=bars)    # counted in the kernel, on the strategy's thread
    runner = Runner(agent_dir, settings)
    stop = stop or threading.Event()
    source = (f"a {replay} replay at {settings.replay_speed:g}x real time" if replay
              else f"live bars from {settings.bus}")
    print(f"paper-trading {runner.name} on {source}; broker {settings.broker}; Ctrl-C stops it cleanly",
          file=out, flush=True)
    deadline = time.monotonic() + duration if duration else None
    follow = Follow()
    store = open_store(settings.store)       # the decisions are followed in the store the kernel writes
    previous = _on_sigterm(stop.set)         # `kill`, systemd and Kubernetes stop it as Ctrl-C does
    runner.start()
    code = None
    try:
        while runner.kernel_running:
            if stop.wait(poll):
                break
            _show(runner, store, follow, out)
            if deadline is not None and time.monotonic() >= deadline:
                break
        else:
            code = 1 if runner.error else 0
    except KeyboardInterrupt:
        pass
    if code is None:
        print("stopping: flushing FMEL and saving the checkpoint...", file=out, flush=True)
        code = runner.shutdown()
    _show(runner, store, follow, out)
    _summary(runner, store, follow, out, code)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return code


def _on_sigterm(handler):
    """Call ``handler`` on SIGTERM (from the main thread only, where Python allows signal handlers);
    returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: handler())


def _show(runner: Runner, store, follow: Follow, out: TextIO) -> None:
    status = runner.status()
    if status.get("updated_at", 0) < runner.started:
        return      # the status file of an earlier process
    follow.run_id = follow.run_id or status.get("run_id")
    follow.bars = int(status.get("bars_processed") or 0)
    if not follow.run_id:
        return
    from farmkit.fmel import decisions

    try:
        frame = decisions(follow.run_id, store=store)
    except Exception:   # noqa: BLE001 - nothing committed yet, or a batch being written: try again
        return
    frame = frame[frame["bar_number"] > follow.last_bar]
    for row in frame.itertuples():
        print(_line(row), file=out, flush=True)
        follow.decisions += 1
    if len(frame):
        follow.last_bar = int(frame["bar_number"].max())


def _line(row) -> str:
    stamp = pd.Timestamp(row.timestamp).tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M")
    size = "" if pd.isna(row.size) else f"{row.size:g}"
    confidence = "" if pd.isna(row.confidence) else f" (confidence {row.confidence:g})"
    return (f"{stamp} ET  bar {row.bar_number:>6}  {str(row.action).upper():<5} {row.symbol or '':<6} "
            f"{size:>6}  {row.reason or ''}{confidence}")


def _summary(runner: Runner, store, follow: Follow, out: TextIO, code: int) -> None:
    status = runner.status()
    if not follow.run_id:
        print(f"the session did not start: {runner.error or 'no status written'}", file=out)
        return
    live = (f" ({status['live_bars_processed']} live after {status['warmup_bars']} of warm-up)"
            if "live_bars_processed" in status else "")
    print(f"\nrun {follow.run_id}: {status.get('bars_processed', follow.bars)} bars{live}, {follow.decisions} decisions, "
          f"{status.get('orders', 0)} orders, FMEL committed to bar {status.get('fmel_committed', 0)}", file=out)
    run = store.runs.get(follow.run_id) or {}
    metrics = run.get("metrics") or {}
    if metrics:
        shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("total_return", "sharpe", "max_drawdown", "trades")
                          if isinstance(metrics.get(k), (int, float)))
        print(f"metrics: {shown}", file=out)
    print(f"explore it: farm explain {follow.run_id} --bar N   ·   farm leaderboard --board paper", file=out)
    if code:
        print(f"the session did not end cleanly ({runner.error or status.get('state')}); "
              f"the executed notebook is {runner.state_dir / 'executed.ipynb'}", file=out)
