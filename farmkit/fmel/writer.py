"""FMEL batches written from a thread: the strategy never waits on a sink, and a failing sink
loses nothing — batches are spilled to local disk and written again later."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
_STOP = object()
WRITER_NICE = 10   # the writer thread's nice value (background work: it only has to keep up)


class BatchWriter:
    """``put(table)`` returns at once; a thread hands tables to ``sink``. When ``sink`` raises, the
    batch goes to ``spill_dir`` and is retried every ``retry_every`` seconds (and on close). The store's
    writes are idempotent per batch, so a retry cannot duplicate records.

    ``prepare`` turns what is put (e.g. a recorder's raw batch) into the table for ``sink``, on the
    writer's thread; it is also applied to spilled tables read back. What cannot be prepared is spilled
    as it is (objects with ``to_table()`` as that table), with the error logged."""

    def __init__(self, sink: Callable[[pa.Table], object], spill_dir: str | Path, *, retry_every: float = 5.0,
                 prepare: Callable[[object], pa.Table] | None = None):
        self.sink, self.retry_every, self.prepare = sink, retry_every, prepare
        self.spill_dir = Path(spill_dir)
        self.written = self.spilled = self.failures = 0
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fmel-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Batches not yet in the sink: queued plus spilled."""
        return self._queue.qsize() + len(self._spilled())

    def put(self, table: pa.Table) -> None:
        self._queue.put(table)

    def close(self, timeout: float = 60.0) -> int:
        """Write what is queued, retry what was spilled; returns the batches still pending on disk."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._replay()
        left = len(self._spilled())
        if left:
            log.error("%d FMEL batch(es) could not be written and stay in %s (%s); they are written "
                      "the next time a writer starts with this spill folder", left, self.spill_dir, self.last_error)
        return left

    def _run(self) -> None:
        _yield_to_other_threads()
        next_retry = time.monotonic() + self.retry_every
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, next_retry - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                self._write(item)
            if time.monotonic() >= next_retry:
                self._replay()
                next_retry = time.monotonic() + self.retry_every

    def _write(self, item) -> bool:
        table = item
        try:
            if self.prepare is not None:
                table = self.prepare(item)
            self.sink(table)
            self.written += 1
            return True
        except Exception as exc:  # noqa: BLE001 - any sink failure is spilled, never lost
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("FMEL sink failed (%s); spilling the batch to %s", self.last_error, self.spill_dir)
            self._spill(table)
            return False

    def _spill(self, table) -> None:
        if not isinstance(table, pa.Table):
            table = table.to_table()
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = self.spill_dir / f".{name}.tmp"
        pq.write_table(table, temporary)
        temporary.replace(self.spill_dir / name)
        self.spilled += 1

    def _spilled(self) -> list[Path]:
        return sorted(self.spill_dir.glob("*.parquet")) if self.spill_dir.exists() else []

    def _replay(self) -> None:
        for path in self._spilled():
            try:
                table = pq.read_table(path)
                self.sink(self.prepare(table) if self.prepare is not None else table)
            except Exception as exc:  # noqa: BLE001 - stays on disk for the next try
                self.last_error = f"{type(exc).__name__}: {exc}"
                return
            path.unlink()
            self.written += 1


def _yield_to_other_threads() -> None:
    """Lower the calling thread's CPU priority (Linux: nice is per thread), so that when the cores
    are busy the strategy thread runs first and the writer catches up afterwards."""
    if not sys.platform.startswith("linux"):
        return   # elsewhere PRIO_PROCESS with a thread id would lower the whole process
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), WRITER_NICE))
    except OSError as exc:
        log.debug("could not lower the FMEL writer's priority: %s", exc)
