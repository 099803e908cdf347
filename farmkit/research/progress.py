"""Progress of a running backtest: a bar in the terminal or notebook, or records for ``farm backtest``.

:class:`BacktestProgress` polls the recorder's bar count from a thread, so the bar loop does no
extra work, and draws a tqdm bar (a widget in a notebook, text elsewhere) once the backtest has run
``after`` seconds (mode ``auto``), at once (``on``) or never (``off``). Under ``farm backtest`` a
kernel's output belongs to the executed notebook, so the kernel writes :class:`ProgressRecord`\\ s
to a file in the run's folder instead, and :func:`watch`, in the ``farm`` process, shows them on
its terminal:

    backtest SmaCross: 144,000/390,000 bars, 41,000 bars/s, ETA 6 s
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

__all__ = ["PROGRESS_FILE", "SHOW_AFTER", "BacktestProgress", "ProgressRecord", "describe", "watch"]

PROGRESS_FILE = "progress.json"   # in the folder of the run `farm backtest` registered
SHOW_AFTER = 2.0                  # seconds a backtest runs before mode "auto" shows its progress
_EVERY = 0.25                     # seconds between two looks at the bar count


class ProgressRecord(NamedTuple):
    """How far one backtest has got; ``started`` (wall clock) tells a notebook's backtests apart."""

    label: str
    bars: int
    total: int
    rate: float        # bars per second since the first bar (0: not measured yet)
    elapsed: float     # seconds since the backtest started
    started: float
    done: bool = False

    @property
    def eta(self) -> float | None:
        return (self.total - self.bars) / self.rate if self.rate > 0 else None

    def to_json(self) -> str:
        return json.dumps(self._asdict())

    @classmethod
    def from_json(cls, text: str) -> "ProgressRecord":
        return cls(**json.loads(text))


def describe(record: ProgressRecord) -> str:
    """One line for a record.

    >>> describe(ProgressRecord("SmaCross", 144_000, 390_000, 41_000.0, 3.5, 0.0))
    'backtest SmaCross: 144,000/390,000 bars, 41,000 bars/s, ETA 6 s'
    """
    rate = f"{record.rate:,.0f} bars/s" if record.rate > 0 else "? bars/s"
    if record.done:
        return f"backtest {record.label}: {record.bars:,} bars in {record.elapsed:.1f} s, {rate}"
    eta = "?" if record.eta is None else _seconds(record.eta)
    return f"backtest {record.label}: {record.bars:,}/{record.total:,} bars, {rate}, ETA {eta}"


def _seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _tqdm():
    # tqdm.auto picks the notebook widget in a kernel; without ipywidgets it falls back to text
    # bars, and the warning it prints about that would only clutter the cell.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm
    return tqdm


class BacktestProgress:
    """Progress of one backtest, from ``count()`` (the bars done so far) polled in a thread.

    With ``record_to`` (a file path) it writes :class:`ProgressRecord`\\ s there instead of drawing
    a bar. ``after`` is how long mode ``auto`` waits before it shows anything; ``file`` is where
    the bar goes (tqdm's default: stderr); ``clock`` gives seconds (tests pass their own)."""

    def __init__(self, count: Callable[[], int], total: int, mode: str, label: str, *,
                 after: float = SHOW_AFTER, record_to: str | Path | None = None, file=None,
                 every: float = _EVERY, clock: Callable[[], float] = time.monotonic):
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"progress must be auto, on or off, got {mode!r}")
        self.count, self.total, self.mode, self.label = count, total, mode, label
        self.after = 0.0 if mode == "on" else after
        self.record_to = Path(record_to) if record_to is not None else None
        self.file, self.every, self.clock = file, every, clock
        self.shown = False          # a bar was drawn or a record written
        self._failed = False
        self._bar = None
        self._first = None          # (time, bars) when the first bar was seen: the rate's start
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.mode == "off":
            return self
        self._tqdm = None if self.record_to is not None else _tqdm()
        self._t0, self._started = self.clock(), time.time()
        self._update(done=False)
        self._thread = threading.Thread(target=self._poll, name="farm-backtest-progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.every):
            self._update(done=False)

    def _update(self, done: bool) -> None:
        if self._failed:
            return
        try:
            now, bars = self.clock(), self.count()
            elapsed = now - self._t0
            if not self.shown and (done or elapsed < self.after):
                return
            if self.record_to is not None:
                self._write(self._record(now, bars, elapsed, done))
            else:
                self._draw(bars, done)
            self.shown = True
        except Exception:   # progress is a view: failing to show it must not stop the backtest
            self._failed = True

    def _record(self, now: float, bars: int, elapsed: float, done: bool) -> ProgressRecord:
        if self._first is None and bars > 0:
            self._first = (now, bars)
        if self._first is not None and now > self._first[0] and bars > self._first[1]:
            rate = (bars - self._first[1]) / (now - self._first[0])
        else:   # one look so far: the rate counts the time taken before the first bar too
            rate = bars / elapsed if elapsed > 0 else 0.0
        return ProgressRecord(self.label, bars, self.total, rate, elapsed, self._started, done)

    def _write(self, record: ProgressRecord) -> None:
        # Replaced whole, so that a reader never sees half a record.
        part = self.record_to.with_name(self.record_to.name + ".part")
        part.write_text(record.to_json())
        os.replace(part, self.record_to)

    def _draw(self, bars: int, done: bool) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=self.total, initial=bars, unit="bar", unit_scale=True,
                                   desc=self.label, leave=False, file=self.file)
        self._bar.n = bars
        if done:
            self._bar.close()
        else:
            self._bar.refresh()

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._update(done=True)


class _Watcher(threading.Thread):
    def __init__(self, path: Path, every: float, file):
        super().__init__(name="farm-progress-watch", daemon=True)
        self.path, self.every, self.file = path, every, file
        self.stopped = threading.Event()
        self._bar = self._shown = None
        self._tqdm = _tqdm()

    def run(self):
        while not self.stopped.wait(self.every):
            self.look()

    def look(self) -> None:
        try:
            record = ProgressRecord.from_json(self.path.read_text())
        except (OSError, ValueError, TypeError):   # not written yet
            return
        if record == self._shown:
            return
        if self._shown is not None and record.started != self._shown.started:
            self.close()   # the notebook's next backtest
        if record.done:
            self.close()
            self._tqdm.write(describe(record), file=self.file or sys.stderr)
        else:
            if self._bar is None:
                self._bar = self._tqdm(total=record.total, bar_format="{desc}", leave=False, file=self.file)
            self._bar.set_description_str(describe(record))
        self._shown = record

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def watch(path: str | Path, *, every: float = 0.2, file=None):
    """Show the records a kernel writes to ``path`` (see :class:`BacktestProgress`) as one line on
    ``file`` (default stderr) while the block runs, and each finished backtest's summary after;
    the file is removed when the block ends.

    >>> with watch(run_dir / PROGRESS_FILE):
    ...     papermill.execute_notebook(...)
    """
    watcher = _Watcher(Path(path), every, file)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stopped.set()
        watcher.join()
        watcher.look()   # the last record, written as the kernel's backtest finished
        watcher.close()
        for name in (watcher.path.name, watcher.path.name + ".part"):
            watcher.path.with_name(name).unlink(missing_ok=True)
