"""Reads all GPUs every interval into an immutable Snapshot; /metrics only ever reads the latest one.

Each snapshot carries, per device, when it was last read well (`read_at`), so that what is exported can
say how old a reading is, and withhold it once too old, even while a tick is stuck in an NVML call."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .gpu.model import GpuBackend, Snapshot

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, backend: GpuBackend, interval: float = 1.0, clock=time.time) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.backend = backend
        self.interval = interval
        self._clock = clock  # Unix time of the snapshots
        self.latest: Snapshot | None = None
        self.ticks_total = 0
        self.failures_total = 0
        # Called with each new snapshot, in the sampler's thread (e.g. the usage meter's integration).
        self.listeners: list[Callable[[Snapshot], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> Snapshot:
        started = time.perf_counter()
        readings = self.backend.read_all()
        taken_at = self._clock()
        before = self.latest.read_at if self.latest is not None else {}
        read_at = {}
        for gpu in readings:
            if gpu.uuid and (gpu.up or gpu.uuid in before):
                read_at[gpu.uuid] = taken_at if gpu.up else before[gpu.uuid]
        reason = self.backend.unavailable_reason
        snapshot = Snapshot(
            taken_at=taken_at,
            # asked each tick: a driver reloaded under the agent may be another version
            driver_version=self.backend.driver_version(),
            gpus=tuple(g for g in readings if not g.gone),
            sample_duration_seconds=time.perf_counter() - started,
            backend=self.backend.name,
            nvml_up=not reason,
            unavailable_reason=reason,
            vanished=tuple(g for g in readings if g.gone),
            read_at=read_at,
        )
        self.latest = snapshot  # a single reference swap: readers see the old or the new one, whole
        self.ticks_total += 1
        for listener in self.listeners:
            try:
                listener(snapshot)
            except Exception:  # one listener's bug must not stop the sampling nor the others
                log.exception("a snapshot listener failed")
        return snapshot

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mfu-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Asks the thread to stop; True if it did within the timeout (a tick stuck in an NVML call
        that does not return keeps it: it is a daemon thread, left to process exit)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        # If a first sample was taken before start(), the next one is due an interval later.
        next_tick = time.monotonic() + (self.interval if self.latest is not None else 0.0)
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            try:
                self.sample_once()
            except Exception:  # the agent must outlive any failure of one tick
                self.failures_total += 1
                log.exception("sampling failed; trying again next tick")
            next_tick += self.interval
            now = time.monotonic()
            if next_tick < now:  # a slow tick: skip the missed ones rather than bunch up
                next_tick = now + self.interval
