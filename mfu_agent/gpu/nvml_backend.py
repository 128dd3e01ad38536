"""Reads every GPU through the NVML gateway into `GpuReading`s, converting to base units.

Faults of NVML as a whole are followed while the agent runs, without a restart:

- NVML unusable (driver unloaded, uninitialised, library/driver version mismatch, or every GPU lost):
  every GPU known is read as down (`up=False`), `unavailable_reason` says why, one line is logged, and
  NVML is shut down and initialised again at most every RETRY_FIRST_SECONDS, doubling to
  RETRY_MAX_SECONDS, re-enumerating the GPUs, until it answers; one line is logged when it does.
- GPUs that appear, vanish or move to another index: nvmlDeviceGetCount is compared with the GPUs known
  every RESCAN_EVERY_TICKS reads, and the device list (handle and UUID per index) after a read in
  which a per-device call answered InvalidArgument or NotFound (a stale handle). A new GPU is identified
  and read; one gone is exported as down (`up=False`) for VANISHED_HOLD_SECONDS, then dropped.

Shutdown never waits unbounded on a read: `close` tries the read lock for a bounded time and, when a
read is stuck in an NVML call that does not return, skips the NVML clean-up with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .gpm import GpmPairs, GpmState, ratio, status_of
from .mig import MigDevice, MigReader
from .model import GpmStatus, GpuEvent, GpuIdentity, GpuProcess, GpuReading, NvlinkErrors, RemappedRows
from .nvml import (
    ABSENT,
    DOUBLE_BIT_ECC_EVENT,
    XID_EVENT,
    GpuDown,
    NvlinkCounts,
    NvmlGateway,
    NvmlUnavailable,
    handle_key,
)

log = logging.getLogger(__name__)

# A process's utilisation figure is held while NVML has no newer sample for it (NotFound), for at
# most this many ticks after its last new sample; then it is dropped (absent), never shown stale.
PROCESS_UTILIZATION_HOLD_TICKS = 3
RETRY_FIRST_SECONDS = 1.0  # the first re-initialisation after NVML became unusable; then doubling ...
RETRY_MAX_SECONDS = 30.0  # ... up to this
RESCAN_EVERY_TICKS = 5  # nvmlDeviceGetCount is compared with the GPUs known every this many reads
# A GPU's NVLink links and error counters (one nvmlDeviceGetFieldValues call, which makes the driver
# query every link) are read at its first read and then every this many reads, held in between.
NVLINK_READ_EVERY_TICKS = 10
VANISHED_HOLD_SECONDS = 600.0  # a GPU gone from the device list is exported as down this long
CLOSE_TIMEOUT_SECONDS = 1.0  # how long close() waits for a read in progress before skipping clean-up
EVENT_LOCK_TIMEOUT_SECONDS = 2.0  # how long re-enumeration waits for the event thread's wait to end
ALL_LOST = "every GPU is lost"  # why NVML counts as unavailable when no GPU answers


@dataclass
class _Gpu:
    index: int
    handle: Any
    identity: GpuIdentity
    gpm: GpmState | None = None
    gpm_status: GpmStatus = "not_supported"  # what GPM answered, while `gpm` is None
    was_down: bool = False
    down_logged: bool = False
    down_error: str = ""  # why the last read found it down ("gpu_is_lost", "unknown"); "" while up
    tick: int = 0
    # pid -> (SM ratio, memory ratio, tick of its newest sample) from NVML's process utilisation
    process_utilization: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    mig_mode: bool | None = None  # None until read, and for a GPU without MIG
    migs: dict[int, MigDevice] = field(default_factory=dict)  # MIG slot -> device, while in MIG mode
    mig_rescan_in: int = 0  # ticks until the MIG slots are enumerated again (0: this tick)
    nvlink: NvlinkCounts | None = None  # the last NVLink links and error counters read; None if unknown
    nvlink_read_in: int = 0  # reads until they are read again (0: this read)


@dataclass
class _Vanished:
    """A GPU gone from NVML's device list: its readings (down), and since when (monotonic)."""

    readings: list[GpuReading]
    since: float


class NvmlBackend:
    name = "nvml"

    def __init__(self, gateway: NvmlGateway | None = None, clock=time.monotonic) -> None:
        self.gateway = gateway or NvmlGateway()
        self._clock = clock
        self._gpm = GpmPairs(self.gateway, clock)
        self._mig = MigReader(self.gateway, self._gpm)
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[int, _Gpu] = {}  # replaced whole, never mutated: the event thread reads it
        self._event_set: Any = ABSENT
        self._closed = False
        self._read_lock = threading.Lock()
        # Held by the event thread while it waits on the event set, so that the set is not freed under it.
        self._event_lock = threading.Lock()
        self._driver = ""
        # Why NVML cannot be used now ("" while it can): every GPU is read as down meanwhile.
        self.unavailable_reason = ""
        self._down_readings_while_unavailable: list[GpuReading] = []
        self._unavailable_since = 0.0
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST_SECONDS
        self._reads = 0
        self._vanished: dict[str, _Vanished] = {}  # UUID -> a GPU gone from the device list

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Initialises NVML; raises NvmlUnavailable when there is no usable driver."""
        self.gateway.init()
        self._gpus = self._enumerate()
        self._by_handle = self._handles_of(self._gpus)
        self._driver = self.gateway.driver_version()
        self._register_events(self._gpus)
        log.info("NVML backend: driver %s, %d GPU(s)", self._driver, len(self._gpus))

    def _enumerate(self) -> list[_Gpu]:
        """Every GPU NVML lists, identified; a GPU down has an unknown identity until it answers."""
        gpus = []
        for index in range(self.gateway.device_count() or 0):
            handle = self._handle_or_absent(index)
            if handle is ABSENT:
                log.warning("GPU %d is down", index)
            gpus.append(self._new_gpu(index, handle))
        return gpus

    def _handle_or_absent(self, index: int) -> Any:
        try:
            return self.gateway.handle(index)
        except GpuDown:
            return ABSENT

    def _new_gpu(self, index: int, handle: Any) -> _Gpu:
        gpu = _Gpu(index, handle, GpuIdentity(index=index, uuid="", name="unknown"))
        if handle is not ABSENT:
            self._identify(gpu)
        return gpu

    @staticmethod
    def _handles_of(gpus: list[_Gpu]) -> dict[int, _Gpu]:
        return {handle_key(g.handle): g for g in gpus if g.handle is not ABSENT}

    def _identify(self, gpu: _Gpu) -> None:
        gw, i, h = self.gateway, gpu.index, gpu.handle
        try:
            gpu.identity = GpuIdentity(
                index=i,
                uuid=gw.uuid(i, h),
                name=gw.name(i, h),
                pci_bus_id=gw.pci_bus_id(i, h),
                architecture=gw.architecture(i, h),
            )
            gpu.gpm_status = gw.gpm_support(i, h)
            if gpu.gpm_status != "not_supported":
                # A refusal of the query itself is followed like one of the samples: retried slowly.
                gpu.gpm = self._gpm_state(gpu)
                gpu.gpm_status = status_of(gpu.gpm, "error")
        except GpuDown:
            log.warning("GPU %d went down while being identified", i)

    def _gpm_state(self, gpu: _Gpu) -> GpmState | None:
        return self._gpm.new(gpu.index, self._whole_gpu_sampler(gpu))

    def _whole_gpu_sampler(self, gpu: _Gpu) -> Callable[[Any], bool]:
        return lambda sample: self.gateway.gpm_sample_get(gpu.index, gpu.handle, sample)

    def _register_events(self, gpus: list[_Gpu]) -> None:
        """Registers the GPUs for XID and double-bit ECC events, in the event set (created if none)."""
        event_set = self._event_set
        created = event_set is ABSENT
        if created:
            event_set = self.gateway.event_set_create()
            if event_set is ABSENT:
                return
        registered = 0
        for gpu in gpus:
            if gpu.handle is ABSENT:
                continue
            try:
                if self.gateway.register_events(
                    gpu.index, gpu.handle, event_set, XID_EVENT | DOUBLE_BIT_ECC_EVENT
                ):
                    registered += 1
            except GpuDown:
                continue
        if not created:
            return
        if registered:
            self._event_set = event_set
        else:
            self.gateway.event_set_free(event_set)

    def _drop_event_set(self, free: bool) -> None:
        """Forgets the event set, freeing it through NVML when `free` and the event thread is not in a
        wait on it (a wait that does not end leaves it to process exit)."""
        if self._event_set is ABSENT:
            return
        locked = self._event_lock.acquire(timeout=EVENT_LOCK_TIMEOUT_SECONDS)
        try:
            event_set, self._event_set = self._event_set, ABSENT
            if free and locked and event_set is not ABSENT:
                self.gateway.event_set_free(event_set)
        finally:
            if locked:
                self._event_lock.release()

    # -- the GpuBackend protocol --------------------------------------------------------------
    def driver_version(self) -> str:
        """The driver version NVML gave at the last (re-)initialisation; no NVML call."""
        return self._driver

    def read_all(self) -> list[GpuReading]:
        """Every GPU, each followed by its MIG devices when it is in MIG mode, then the GPUs gone from the
        device list in the last VANISHED_HOLD_SECONDS (down). While NVML cannot be used, every GPU known
        is read as down."""
        with self._read_lock:
            if self._closed:
                return []
            try:
                if self.unavailable_reason and not self._reinitialise():
                    return self._unavailable_readings()
                readings = self._read_present()
                if self._gpus and all(gpu.down_error == "gpu_is_lost" for gpu in self._gpus):
                    self._became_unavailable(ALL_LOST)
                    return self._unavailable_readings()
            except NvmlUnavailable as exc:
                self._became_unavailable(str(exc))
                return self._unavailable_readings()
            if self.unavailable_reason:
                self._recovered()
            return readings + self._vanished_readings()

    def wait_for_events(self, timeout_seconds: float) -> list[GpuEvent]:
        raw: Any = ABSENT
        with self._event_lock:
            event_set = self._event_set
            if event_set is not ABSENT and not self._closed:
                # NVML unusable: the sampler notices and logs it; this thread waits for a new event set.
                with contextlib.suppress(NvmlUnavailable):
                    raw = self.gateway.wait_event(event_set, int(timeout_seconds * 1000))
        if raw is ABSENT:
            time.sleep(timeout_seconds)
            return []
        if raw is None:
            return []
        gpu = self._by_handle.get(raw.handle_key)
        index, uuid = (gpu.index, gpu.identity.uuid) if gpu else (-1, "")
        if raw.event_type & XID_EVENT:
            return [GpuEvent(index, uuid, "xid", raw.data)]
        if raw.event_type & DOUBLE_BIT_ECC_EVENT:
            return [GpuEvent(index, uuid, "double_bit_ecc")]
        return []

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Frees GPM buffers and the event set, then shuts NVML down. Call after the event thread stopped.
        Waits at most `timeout` for a read in progress: one stuck in an NVML call that does not return
        leaves the clean-up to process exit (one warning)."""
        if not self._read_lock.acquire(timeout=timeout):
            self._closed = True  # a read that ever finishes returns nothing more
            log.warning("a GPU read is stuck in an NVML call that does not return; skipping NVML clean-up")
            return
        try:
            if self._closed:
                return
            self._closed = True
            usable = not self.unavailable_reason
            if usable:
                self._release_gpus(self._gpus)
            self._drop_event_set(free=usable)
            with contextlib.suppress(NvmlUnavailable):
                self.gateway.shutdown()
        finally:
            self._read_lock.release()

    # -- NVML as a whole ----------------------------------------------------------------------
    def _became_unavailable(self, reason: str) -> None:
        """Every GPU down until NVML answers again; the next re-initialisation after a backoff."""
        if not self.unavailable_reason:
            log.error(
                "NVML is unavailable (%s): every GPU is exported as down until it answers again; "
                "re-initialising NVML after %g s, then doubling the wait up to every %g s",
                reason,
                RETRY_FIRST_SECONDS,
                RETRY_MAX_SECONDS,
            )
            self._unavailable_since = self._clock()
            self._down_readings_while_unavailable = [r for g in self._gpus for r in self._down_readings(g)]
            self._retry_delay = RETRY_FIRST_SECONDS
        # GPM buffers and the event set go with NVML (also those of a re-initialisation that found every
        # GPU still lost): freed while NVML still answers, else only forgotten.
        usable = reason == ALL_LOST
        with contextlib.suppress(NvmlUnavailable):
            self._release_gpus(self._gpus, free=usable)
        self._drop_event_set(free=usable)
        self._by_handle = {}
        self.unavailable_reason = reason
        self._retry_at = self._clock() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    def _reinitialise(self) -> bool:
        """Shuts NVML down and initialises it again, once the backoff has passed; True when it answers
        (the GPUs are then enumerated afresh)."""
        if self._clock() < self._retry_at:
            return False
        gw = self.gateway
        with contextlib.suppress(NvmlUnavailable):
            gw.shutdown()
        gw.reset()
        try:
            gw.init()
            gpus = self._enumerate()
            driver = gw.driver_version()
        except NvmlUnavailable as exc:
            self._became_unavailable(str(exc))
            return False
        # A GPU that is down has no identity from NVML: it keeps the one it had at that index.
        before = {r.index: r.identity for r in self._down_readings_while_unavailable if not r.is_mig}
        for gpu in gpus:
            if not gpu.identity.uuid and gpu.index in before:
                gpu.identity = before[gpu.index]
        self._gpus, self._driver, self._reads = gpus, driver, 0
        self._by_handle = self._handles_of(gpus)
        self._register_events(gpus)
        return True

    def _recovered(self) -> None:
        present = {g.identity.uuid for g in self._gpus if g.identity.uuid}
        self._vanish_missing(self._down_readings_while_unavailable, present)
        self._down_readings_while_unavailable = []
        log.warning(
            "NVML answers again after %.0f s unavailable: driver %s, %d GPU(s)",
            self._clock() - self._unavailable_since,
            self._driver,
            len(self._gpus),
        )
        self.unavailable_reason = ""
        self._retry_delay = RETRY_FIRST_SECONDS

    def _unavailable_readings(self) -> list[GpuReading]:
        return self._down_readings_while_unavailable + self._vanished_readings()

    def _release_gpus(self, gpus: list[_Gpu], free: bool = True) -> None:
        """Frees (or, without `free`, forgets) the GPM buffers and MIG devices of these GPUs."""
        for gpu in gpus:
            if free:
                self._gpm.free(gpu.index, gpu.gpm)
                self._mig.drop(gpu)
            gpu.gpm, gpu.migs = None, {}

    # -- GPUs that appear, vanish or move -----------------------------------------------------
    def _read_present(self) -> list[GpuReading]:
        self._reads += 1
        if self._reads % RESCAN_EVERY_TICKS == 0:
            count = self.gateway.device_count()
            if count is not None and count != len(self._gpus):
                self._rescan()
        self.gateway.take_handle_errors()
        read = [(gpu, self._read(gpu)) for gpu in self._gpus]
        if self.gateway.take_handle_errors() and self._rescan():
            # Readings of GPUs that stayed as they were stand; new ones (and those moved) are read now.
            before = read
            read = [
                (gpu, next((r for g, r in before if g is gpu), None) or self._read(gpu)) for gpu in self._gpus
            ]
        return [r for _, readings in read for r in readings]

    def _rescan(self) -> bool:
        """Compares NVML's device list (handle and UUID at each index) with the GPUs known. A GPU new at
        an index (or moved there) is identified afresh; one no longer listed is exported as down for
        VANISHED_HOLD_SECONDS. True if anything changed."""
        gw = self.gateway
        count = gw.device_count()
        if count is None:
            return False
        listed: list[tuple[int, Any, str]] = []
        for index in range(count):
            handle, uuid = self._handle_or_absent(index), ""
            if handle is not ABSENT:
                with contextlib.suppress(GpuDown):
                    uuid = gw.uuid(index, handle)
            listed.append((index, handle, uuid))
        known = {gpu.index: gpu for gpu in self._gpus}
        gpus: list[_Gpu] = []
        for index, handle, uuid in listed:
            gpu = known.get(index)
            if gpu is not None and self._same(gpu, handle, uuid):
                gpus.append(gpu)
                continue
            gw.forget_device(index)
            gpu = self._new_gpu(index, handle)
            where = [g.index for g in self._gpus if uuid and g.identity.uuid == uuid]
            if where:
                log.warning("GPU %s moved from index %d to %d", uuid, where[0], index)
            else:
                log.warning("GPU %d (%s) appeared", index, gpu.identity.uuid or "identity unknown")
            gpus.append(gpu)
        if len(gpus) == len(self._gpus) and all(a is b for a, b in zip(gpus, self._gpus, strict=True)):
            return False
        dropped = [gpu for gpu in self._gpus if not any(gpu is g for g in gpus)]
        present = {g.identity.uuid for g in gpus if g.identity.uuid}
        self._vanish_missing([r for g in dropped for r in self._down_readings(g)], present)
        self._release_gpus(dropped)
        self._gpus = gpus
        self._by_handle = self._handles_of(gpus)
        self._register_events([g for g in gpus if not any(g is d for d in known.values())])
        return True

    @staticmethod
    def _same(gpu: _Gpu, handle: Any, uuid: str) -> bool:
        """Whether the GPU listed at gpu.index (handle, UUID) is still `gpu`. A GPU down now, or down
        when it was enumerated, cannot tell: it counts as the same (its read finds out)."""
        if handle is ABSENT or gpu.handle is ABSENT:
            return True
        return handle_key(handle) == handle_key(gpu.handle) and uuid in ("", gpu.identity.uuid)

    def _vanish_missing(self, readings: list[GpuReading], present: set[str]) -> None:
        """Holds (down) the whole GPUs among `readings` whose UUID is not `present`, with their MIG
        devices; forgets vanished GPUs that are present again."""
        now = self._clock()
        for uuid in present & self._vanished.keys():
            log.warning("GPU %s is back in NVML's device list", uuid)
            del self._vanished[uuid]
        for reading in readings:
            uuid = reading.uuid
            if reading.is_mig or not uuid or uuid in present or uuid in self._vanished:
                continue
            held = [reading, *(r for r in readings if r.identity.mig and r.identity.mig.parent_uuid == uuid)]
            held = [replace(r, up=False, gone=True) for r in held]
            self._vanished[uuid] = _Vanished(held, now)
            log.error(
                "GPU %d (%s) is gone from NVML's device list: exported as down for %g s",
                reading.index,
                uuid,
                VANISHED_HOLD_SECONDS,
            )

    def _vanished_readings(self) -> list[GpuReading]:
        now = self._clock()
        for uuid, gone in list(self._vanished.items()):
            if now - gone.since >= VANISHED_HOLD_SECONDS:
                log.info("GPU %s gone for %g s: no longer exported", uuid, VANISHED_HOLD_SECONDS)
                del self._vanished[uuid]
        return [r for gone in self._vanished.values() for r in gone.readings]

    # -- one GPU ------------------------------------------------------------------------------
    def _read(self, gpu: _Gpu) -> list[GpuReading]:
        if gpu.handle is ABSENT:
            try:
                gpu.handle = self.gateway.handle(gpu.index)
            except GpuDown as exc:
                return self._down(gpu, exc.error)
            if gpu.handle is ABSENT:
                return self._down(gpu, "")
            self._identify(gpu)
            self._by_handle = {**self._by_handle, handle_key(gpu.handle): gpu}
        try:
            self._follow_mig_mode(gpu, self.gateway.mig_mode(gpu.index, gpu.handle))
            readings = [self._read_up(gpu)]
            if gpu.mig_mode:
                readings += self._mig.read(gpu)
        except GpuDown as exc:
            return self._down(gpu, exc.error)
        if gpu.was_down:
            log.warning("GPU %d (%s) answers again", gpu.index, gpu.identity.uuid)
            gpu.was_down = gpu.down_logged = False
        gpu.down_error = ""
        return readings

    def _down(self, gpu: _Gpu, error: str) -> list[GpuReading]:
        """The GPU down, and with it every MIG device it had (they come back with it)."""
        gpu.was_down = True
        gpu.down_error = error
        if not gpu.down_logged and not self.unavailable_reason:
            log.error(
                "GPU %d (%s) is down (lost or unknown error); other GPUs carry on",
                gpu.index,
                gpu.identity.uuid,
            )
            gpu.down_logged = True
        return self._down_readings(gpu)

    def _down_readings(self, gpu: _Gpu) -> list[GpuReading]:
        source = "gpm" if gpu.gpm and not gpu.mig_mode else "none"
        readings = [
            GpuReading(identity=gpu.identity, up=False, sm_activity_source=source, mig_mode=gpu.mig_mode)
        ]
        for mig in self._mig.ordered(gpu):
            readings.append(
                GpuReading(identity=mig.identity, up=False, sm_activity_source="gpm" if mig.gpm else "none")
            )
        return readings

    # -- MIG ----------------------------------------------------------------------------------
    def _follow_mig_mode(self, gpu: _Gpu, mode: bool | None) -> None:
        """A GPU entering or leaving MIG mode is read afresh: its MIG devices come or go, NVML is asked
        again what it answers (utilisation is NotSupported in MIG mode only), GPM restarts."""
        if mode == gpu.mig_mode:
            return
        if mode is None and gpu.mig_mode is not None:
            return  # the call failed this tick (a GPU without MIG answers NotSupported from the start)
        if gpu.mig_mode is not None:
            log.warning("GPU %d (%s): MIG mode %s", gpu.index, gpu.identity.uuid, "on" if mode else "off")
        elif mode:
            log.info("GPU %d (%s) is in MIG mode", gpu.index, gpu.identity.uuid)
        if gpu.mig_mode is not None:
            self.gateway.forget(gpu.index)
            gpu.process_utilization.clear()
            if gpu.gpm is not None:
                gpu.gpm.older, gpu.gpm.last, gpu.gpm.retry_at = -1, None, 0.0
        self._mig.drop(gpu)
        gpu.mig_mode = mode

    # -- a whole GPU --------------------------------------------------------------------------
    def _read_up(self, gpu: _Gpu) -> GpuReading:
        """In MIG mode the GPU's work is read on its MIG devices: NVML has no utilisation for the
        GPU then, and its processes and GPM activity are the MIG devices'."""
        gw, i, h = self.gateway, gpu.index, gpu.handle
        mig_mode = bool(gpu.mig_mode)
        utilization = gw.utilization(i, h) if not mig_mode else None
        memory = gw.memory(i, h)
        power = gw.power_mw(i, h)
        power_limit = gw.power_limit_mw(i, h)
        energy = gw.energy_mj(i, h)
        sm_clock = gw.sm_clock_mhz(i, h)
        sm_clock_max = gw.sm_clock_max_mhz(i, h)
        ecc = gw.ecc_errors(i, h)
        rows = gw.remapped_rows(i, h)
        processes = gw.compute_processes(i, h) if not mig_mode else None
        temperature = gw.temperature_c(i, h)
        nvlink = self._nvlink(gpu)
        activity = (
            self._gpm.activity(gpu.gpm, i, self._whole_gpu_sampler(gpu)) if gpu.gpm and not mig_mode else None
        )
        if activity is not None and not (nvlink and nvlink.links):
            # No NVLink throughput for a GPU NVML does not say has NVLink links (GPM may answer 0).
            activity = replace(activity, nvlink_rx_bytes_per_second=None, nvlink_tx_bytes_per_second=None)
        return GpuReading(
            identity=gpu.identity,
            up=True,
            mig_mode=gpu.mig_mode,
            sm_activity_source="gpm" if gpu.gpm and not mig_mode else "none",
            gpm_status=status_of(gpu.gpm, gpu.gpm_status) if not mig_mode else None,
            utilization_ratio=utilization[0] / 100 if utilization else None,
            memory_utilization_ratio=utilization[1] / 100 if utilization else None,
            memory_used_bytes=memory[0] if memory else None,
            memory_total_bytes=memory[1] if memory else None,
            power_watts=power / 1000 if power is not None else None,
            power_limit_watts=power_limit / 1000 if power_limit is not None else None,
            energy_joules=energy / 1000 if energy is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            sm_clock_hertz=sm_clock * 1e6 if sm_clock is not None else None,
            sm_clock_max_hertz=sm_clock_max * 1e6 if sm_clock_max is not None else None,
            clock_event_reasons=gw.clock_event_reasons(i, h),
            ecc_corrected_total=ecc[0] if ecc else None,
            ecc_uncorrected_total=ecc[1] if ecc else None,
            remapped_rows=RemappedRows(rows[0], rows[1], bool(rows[2]), bool(rows[3])) if rows else None,
            processes=self._processes(gpu, processes) if processes is not None else None,
            activity=activity,
            nvlink_links=nvlink.links if nvlink else None,
            nvlink_errors=NvlinkErrors(**nvlink.errors) if nvlink and nvlink.links else None,
        )

    def _nvlink(self, gpu: _Gpu) -> NvlinkCounts | None:
        """The GPU's NVLink links and error counters, read every NVLINK_READ_EVERY_TICKS reads (a failed
        read is tried again at the next)."""
        if gpu.nvlink_read_in <= 0:
            gpu.nvlink = self.gateway.nvlink_counts(gpu.index, gpu.handle)
            gpu.nvlink_read_in = NVLINK_READ_EVERY_TICKS if gpu.nvlink is not None else 1
        gpu.nvlink_read_in -= 1
        return gpu.nvlink

    def _processes(self, gpu: _Gpu, processes: list[tuple[int, int | None]]) -> tuple[GpuProcess, ...]:
        """The compute processes with their own SM and memory utilisation where NVML samples them."""
        gpu.tick += 1
        held = gpu.process_utilization
        for sample in self.gateway.process_utilization(gpu.index, gpu.handle) or ():
            held[sample.pid] = (ratio(sample.sm_percent), ratio(sample.memory_percent), gpu.tick)
        running = {pid for pid, _ in processes}
        for pid, (_, _, seen) in list(held.items()):
            # Dropped when the process exited, or when it had no new sample for too long: its
            # figure is then unknown, not its last one.
            if pid not in running or gpu.tick - seen >= PROCESS_UTILIZATION_HOLD_TICKS:
                del held[pid]
        result = []
        for pid, mem in processes:
            sm_ratio, mem_ratio, _ = held.get(pid, (None, None, 0))
            result.append(GpuProcess(pid, mem, sm_ratio, mem_ratio))
        return tuple(result)
