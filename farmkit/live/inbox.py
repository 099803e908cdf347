"""The inbox: a journal of the bars a paper run accepted from the bus and has not yet checkpointed.

Why: on an ordered subscription Pub/Sub hands out the next message of a symbol only once the
previous one is acked, so a bar cannot stay unacked until its FMEL batch is committed (the stream
would stall at one bar per symbol per batch). Instead a bar is appended here *before* its message
is acked; a restart replays the journal's bars newer than the checkpoint, and Pub/Sub redelivers
whatever was never acked. So a bar acked but not yet processed when the process was killed is not
lost. Appends are flushed to the OS, not fsynced: a killed process loses nothing, a lost node
can lose the last bars the kernel had not written back.

>>> inbox = Inbox("/tmp/state/inbox.jsonl")
>>> inbox.append(bar); inbox.compact({"AAPL": last_ns}); inbox.read()
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from farmkit.model import Bar, MalformedMessage, parse_message


class Inbox:
    """Append-only journal of bars (their wire form, one per line), safe to use from several threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._handle = open(self.path, "ab")
        if self._handle.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._handle.write(b"\n")   # end a line torn by a kill, so the next bar starts clean
            self._handle.flush()

    def append(self, bar: Bar) -> None:
        line = bar.to_wire().replace(b"\n", b" ") + b"\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()

    def read(self) -> list[Bar]:
        """The journal's bars in the order they were accepted; a torn last line (a kill mid-write) is skipped."""
        with self._lock:
            self._handle.flush()
            return self._read()

    def compact(self, last: dict[str, int]) -> int:
        """Drop the bars at or before ``last[symbol]`` (UTC ns): they are in a checkpoint now. Returns
        the bars kept."""
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with self._lock:    # no append may land between the read and the rename
            self._handle.flush()
            keep = [b for b in self._read() if b.symbol not in last or b.timestamp.value > last[b.symbol]]
            with open(temporary, "wb") as out:
                out.write(b"".join(b.to_wire().replace(b"\n", b" ") + b"\n" for b in keep))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            self._handle.close()
            self._handle = open(self.path, "ab")
        return len(keep)

    def _read(self) -> list[Bar]:
        bars = []
        for line in self.path.read_bytes().splitlines():
            try:
                record = parse_message(line)
            except MalformedMessage:
                continue
            if isinstance(record, Bar):
                bars.append(record)
        return bars

    def close(self) -> None:
        with self._lock:
            self._handle.close()
