"""Reads all GPUs every interval into an immutable Snapshot; /metrics only ever reads the latest one."""

from __future__ import annotations

import logging
import threading
import time

from .gpu.model import GpuBackend, Snapshot

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, backend: GpuBackend, interval: float = 1.0) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.backend = backend
        self.interval = interval
        self.latest: Snapshot | None = None
        self.ticks_total = 0
        self.failures_total = 0
        self._driver_version = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> Snapshot:
        started = time.perf_counter()
        if not self._driver_version:
            self._driver_version = self.backend.driver_version()
        gpus = tuple(self.backend.read_all())
        snapshot = Snapshot(
            taken_at=time.time(),
            driver_version=self._driver_version,
            gpus=gpus,
            sample_duration_seconds=time.perf_counter() - started,
            backend=self.backend.name,
        )
        self.latest = snapshot  # a single reference swap: readers see the old or the new one, whole
        self.ticks_total += 1
        return snapshot

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mfu-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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
