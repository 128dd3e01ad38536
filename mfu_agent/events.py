"""Counts every XID and double-bit ECC event NVML delivers, on a thread of its own.

Every event is counted, but the series stay bounded: an XID code in NVIDIA's catalogue keeps its own
`xid` label value, any other code (a driver newer than the catalogue below, or a corrupt event) is
counted under `xid="other"`. The log gets the first event of each kind at once, then a summary per
minute (mfu_agent/logs.py), so an XID storm cannot flood it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from .gpu.model import GpuBackend, GpuEvent
from .logs import RepeatedLog

log = logging.getLogger(__name__)

WAIT_SECONDS = 0.5  # how long one wait may block: bounds how long shutdown waits for this thread

# NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors, "Catalog"; October 2025): codes 1 to 172,
# none missing. A code outside it is counted as xid="other" and named in the log.
XID_CATALOGUE = range(1, 173)
OTHER_XID = "other"

EventKey = tuple[int, str, str, int | str | None]  # (gpu, uuid, kind, xid code or "other" or None)


def xid_label(code: int | None) -> int | str:
    """The code itself where it is in the catalogue, else "other"."""
    return code if code in XID_CATALOGUE else OTHER_XID


class EventCounter:
    """Monotonic counts per (gpu, uuid, kind, xid). Nothing is ever reset while the agent runs."""

    def __init__(self) -> None:
        self._counts: Counter[EventKey] = Counter()
        self._lock = threading.Lock()

    def add(self, event: GpuEvent) -> None:
        xid = xid_label(event.xid) if event.kind == "xid" else None
        with self._lock:
            self._counts[(event.gpu_index, event.uuid, event.kind, xid)] += 1

    def snapshot(self) -> dict[EventKey, int]:
        with self._lock:
            return dict(self._counts)

    def __len__(self) -> int:
        """Distinct keys: the series the events put on /metrics."""
        with self._lock:
            return len(self._counts)


class EventWatcher:
    def __init__(self, backend: GpuBackend, counter: EventCounter) -> None:
        self.backend = backend
        self.counter = counter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RepeatedLog(log)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mfu-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2 * WAIT_SECONDS) -> bool:
        """Asks the thread to stop; True if it did within the timeout."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                events = self.backend.wait_for_events(WAIT_SECONDS)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("waiting for GPU events failed (%s); backing off", exc)
                self._stop.wait(min(30.0, WAIT_SECONDS * 2**failures))
                continue
            for event in events:
                self.counter.add(event)
                self._log_event(event)
            self._log.flush()

    def _log_event(self, event: GpuEvent) -> None:
        where = f"GPU {event.gpu_index} ({event.uuid})"
        if event.kind != "xid":
            self._log.log((event.gpu_index, event.kind), logging.ERROR, "double-bit ECC error on %s", where)
        elif event.xid in XID_CATALOGUE:
            self._log.log((event.gpu_index, event.xid), logging.WARNING, "XID %d on %s", event.xid, where)
        else:
            self._log.log(
                (event.gpu_index, OTHER_XID),
                logging.WARNING,
                'XID %s on %s (not in NVIDIA\'s XID catalogue: counted as xid="other")',
                event.xid,
                where,
                repeat=f"XIDs outside NVIDIA's catalogue on {where}",
            )
