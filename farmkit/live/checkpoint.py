"""Checkpoints of a paper run: what a restarted pod needs to carry on where the last committed FMEL
batch ended, kept as small JSON files in the state directory (the StatefulSet's volume).

Files are replaced atomically (written to a temporary name, synced, renamed), so a process killed at
any moment leaves either the old checkpoint or the new one, never half of one.

>>> save(Checkpoint(run_id="paper-1", agent_id="sma", bars_written=120), "/tmp/state")
>>> load("/tmp/state").bars_written
120
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from farmkit.errors import FarmError

CHECKPOINT = "checkpoint.json"
STATUS = "status.json"
STOP = "stop"          # its presence asks a running paper session to stop cleanly
VERSION = 1


class CheckpointError(FarmError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    """State after the last committed FMEL batch of a paper run.

    ``last`` is the timestamp (UTC ns) of the last processed bar per symbol; ``positions`` maps a
    symbol to ``[size, price]``; ``tail`` holds the last bars per symbol as ``[ts_ns, o, h, l, c, v]``
    rows, so a restart primes its indicators on the same bars the strategy had seen.
    """

    run_id: str
    agent_id: str
    bars_written: int                       # the bar_number the next FMEL record gets
    last: dict[str, int] = field(default_factory=dict)
    cash: float | None = None
    value: float | None = None
    start_value: float | None = None
    peak: float | None = None
    positions: dict[str, list[float]] = field(default_factory=dict)
    open_orders: list[dict] = field(default_factory=list)
    orders_placed: int = 0                  # orders the run had created up to this checkpoint
    tail: dict[str, list[list[float]]] = field(default_factory=dict)
    saved_at: float = 0.0
    version: int = VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "checkpoint") -> "Checkpoint":
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(n for n in ("run_id", "agent_id", "bars_written") if n not in data)
        if missing:
            raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}")
        if data.get("version", VERSION) != VERSION:
            raise CheckpointError(f"{source}: version {data['version']} is not {VERSION}; "
                                  "it was written by another farmkit release")
        if not isinstance(data["bars_written"], int) or data["bars_written"] < 0:
            raise CheckpointError(f"{source}: bars_written must be an int >= 0, got {data['bars_written']!r}")
        return cls(**data)


def write_json(path: str | Path, value) -> Path:
    """Write ``value`` as JSON to ``path`` atomically: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(value, handle, allow_nan=True, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())   # the rename must not reach the disk before the data
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return path


def read_json(path: str | Path):
    """The JSON in ``path``, or None when there is no such file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:     # some filesystems do not sync directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def save(checkpoint: Checkpoint, state_dir: str | Path) -> Path:
    """Persist ``checkpoint`` in ``state_dir`` (replacing the previous one)."""
    data = checkpoint.to_dict()
    data["saved_at"] = time.time()
    return write_json(Path(state_dir) / CHECKPOINT, data)


def load(state_dir: str | Path | None) -> Checkpoint | None:
    """The checkpoint in ``state_dir``, or None when there is none (a first start)."""
    if state_dir is None:
        return None
    path = Path(state_dir) / CHECKPOINT
    data = read_json(path)
    return None if data is None else Checkpoint.from_dict(data, str(path))


def stop_requested(state_dir: str | Path | None) -> bool:
    return state_dir is not None and (Path(state_dir) / STOP).exists()


def request_stop(state_dir: str | Path) -> None:
    """Ask the paper session running with this state directory to stop cleanly."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    (Path(state_dir) / STOP).touch()


def clear_stop(state_dir: str | Path) -> None:
    (Path(state_dir) / STOP).unlink(missing_ok=True)
