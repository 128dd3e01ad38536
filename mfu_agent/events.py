"""Counts every XID and double-bit ECC event NVML delivers, on a thread of its own."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from .gpu.model import GpuBackend, GpuEvent

log = logging.getLogger(__name__)

WAIT_SECONDS = 0.5  # how long one wait may block: bounds how long shutdown waits for this thread


class EventCounter:
    """Monotonic counts per (gpu, uuid, kind, xid). Nothing is ever reset while the agent runs."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[int, str, str, int | None]] = Counter()
        self._lock = threading.Lock()

    def add(self, event: GpuEvent) -> None:
        with self._lock:
            self._counts[(event.gpu_index, event.uuid, event.kind, event.xid)] += 1

    def snapshot(self) -> dict[tuple[int, str, str, int | None], int]:
        with self._lock:
            return dict(self._counts)


class EventWatcher:
    def __init__(self, backend: GpuBackend, counter: EventCounter) -> None:
        self.backend = backend
        self.counter = counter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
                if event.kind == "xid":
                    log.warning("XID %s on GPU %d (%s)", event.xid, event.gpu_index, event.uuid)
                else:
                    log.error("double-bit ECC error on GPU %d (%s)", event.gpu_index, event.uuid)
