"""Each rank's accumulated totals on disk, so exported counters never go down across agent restarts.

Each rank's goodput accounting (jobs/goodput.py) is kept in the same file ("goodput"), for the same
reason; a file without it (an older agent's) restores the ranks with none.

One JSON file in --state-dir, replaced atomically (written to a temporary file in the same directory,
fsynced, renamed over the old one). A file that cannot be read, is corrupt, or is not ours is set aside
under a new name with one warning, never a crash; the agent then starts empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import goodput
from .rank import RankState
from .registry import JobRegistry

log = logging.getLogger(__name__)

FORMAT = "mfu-agent-state"
VERSION = 1
FILE_NAME = "ranks.json"


def _key(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"


def _unkey(text: str) -> tuple[str, str]:
    counter, _, dtype = text.partition(":")
    return counter, dtype


def encode(
    ranks: list[RankState], node: str, goodput_entries: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "goodput": goodput_entries or [],
        "format": FORMAT,
        "version": VERSION,
        "node": node,
        "saved_at": time.time(),
        "ranks": [
            {
                "job_id": s.job_id,
                "rank": s.rank,
                "dtype": s.dtype,
                "attributed_by": s.attributed_by,
                "pid": s.pid,
                "instance": s.instance,
                "interval": s.interval,
                "step": s.step,
                "totals": {_key(k): v for k, v in s.totals.items()},
                "last_raw": {_key(k): v for k, v in s.last_raw.items()},
                "gpu_totals": [[uuid, _key(k), v] for (uuid, k), v in s.gpu_totals.items()],
                "gpus_seen": [[uuid, index] for uuid, index in s.gpus_seen.items()],
                "first_received": s.first_received,
                "last_received": s.last_received,
                "last_progress": s.last_progress,
                "restarts": s.restarts,
            }
            for s in ranks
        ],
    }


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise ValueError(f"{what}: expected a number >= 0, got {value!r}")
    return float(value)


def _optional_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    return value


def decode(data: Any, node: str) -> list[RankState]:
    """Raises ValueError with the reason when the document is not a state file of this node."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not an mfu-agent state file")
    if data.get("version") != VERSION:
        raise ValueError(f"state file version {data.get('version')!r}, this agent reads {VERSION}")
    if node and data.get("node") not in (node, "", None):
        raise ValueError(f"state file of node {data.get('node')!r}, this is {node!r}")
    ranks = []
    for i, r in enumerate(data.get("ranks") or []):
        where = f"ranks[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("job_id"), str):
            raise ValueError(f"{where}: not a rank")
        rank = _optional_int(r.get("rank"), f"{where}.rank")
        if rank is None:
            raise ValueError(f"{where}.rank missing")
        s = RankState(
            job_id=r["job_id"],
            rank=rank,
            dtype=str(r.get("dtype") or "bf16"),
            gpus=(),
            attributed_by=str(r.get("attributed_by") or ""),
            pid=_optional_int(r.get("pid"), f"{where}.pid"),
            instance=r.get("instance") if isinstance(r.get("instance"), str) else None,
            interval=_number(r["interval"], f"{where}.interval") if r.get("interval") is not None else None,
            step=_optional_int(r.get("step"), f"{where}.step"),
            first_received=_number(r.get("first_received", 0), f"{where}.first_received"),
            last_received=_number(r.get("last_received", 0), f"{where}.last_received"),
            last_progress=_number(r.get("last_progress", 0), f"{where}.last_progress"),
            restarts=int(_number(r.get("restarts", 0), f"{where}.restarts")),
        )
        s.totals = {_unkey(k): _number(v, f"{where}.totals") for k, v in (r.get("totals") or {}).items()}
        s.last_raw = {
            _unkey(k): _number(v, f"{where}.last_raw") for k, v in (r.get("last_raw") or {}).items()
        }
        for uuid, key, value in r.get("gpu_totals") or []:
            s.gpu_totals[(str(uuid), _unkey(key))] = _number(value, f"{where}.gpu_totals")
        for uuid, index in r.get("gpus_seen") or []:
            s.gpus_seen[str(uuid)] = int(index)
        ranks.append(s)
    return ranks


def decode_goodput(data: Any) -> list[tuple[tuple[str, int], goodput.Goodput]]:
    """The goodput entries of a document decode() accepted; raises ValueError naming a bad field."""
    entries = data.get("goodput") or []
    if not isinstance(entries, list):
        raise ValueError("goodput: expected a list")
    return [goodput.decode(item, f"goodput[{i}]") for i, item in enumerate(entries)]


def _write_atomically(path: Path, text: str) -> None:
    """Leaves either the old file or the whole new one, whatever happens (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable, where the file system allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class StateStore:
    """Reads the state file once at start and writes it at most every `every` seconds when the
    registry changed, and once more at stop."""

    def __init__(
        self, directory: str | os.PathLike[str], registry: JobRegistry, node: str, every: float = 2.0
    ):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.registry = registry
        self.node = node
        self.every = every
        self._saved_changes = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._failure_logged = False

    def load(self) -> int:
        """Restores ranks from the file; returns how many. Never raises for a bad file."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"cannot read it: {exc}")
            return 0
        try:
            data = json.loads(text)
            ranks = decode(data, self.node)
            entries = decode_goodput(data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._set_aside(str(exc))
            return 0
        restored = self.registry.restore(ranks)
        self.registry.restore_goodput(entries)
        log.info("restored %d rank(s) from %s", restored, self.path)
        return restored

    def _set_aside(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside}"
        except OSError as exc:
            where = f"could not be moved aside ({exc})"
        log.warning(
            "state file %s is unusable (%s); %s; starting with no saved ranks", self.path, reason, where
        )

    def save(self) -> bool:
        with self._write_lock:
            changes, ranks = self.registry.export_state()
            if changes == self._saved_changes:
                return True
            entries = self.registry.export_goodput()
            document = json.dumps(encode(ranks, self.node, entries), separators=(",", ":"))
            try:
                _write_atomically(self.path, document)
            except OSError as exc:
                if not self._failure_logged:
                    self._failure_logged = True
                    log.warning("cannot write state file %s: %s (logged once until it works)", self.path, exc)
                return False
            if self._failure_logged:
                log.info("state file %s is written again", self.path)
                self._failure_logged = False
            self._saved_changes = changes
            return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mfu-agent-state", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.save()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.save()
