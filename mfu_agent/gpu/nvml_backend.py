"""Reads every GPU through the NVML gateway into `GpuReading`s, converting to base units."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .model import GpuEvent, GpuIdentity, GpuProcess, GpuReading, MigIdentity, RemappedRows, SmActivity
from .nvml import (
    ABSENT,
    DOUBLE_BIT_ECC_EVENT,
    XID_EVENT,
    GpuDown,
    GpuKey,
    NvmlGateway,
    NvmlUnavailable,
    handle_key,
)

log = logging.getLogger(__name__)

GPM_MIN_GAP_SECONDS = 0.1  # NVML needs GPM samples more than 100 ms apart
# MIG devices are enumerated (slot handles and UUIDs) every this many ticks, and at once when MIG mode
# changes or a MIG device stops answering; between, the known devices are read. Instances created or
# destroyed while the mode stays on are therefore seen within this many ticks.
MIG_RESCAN_TICKS = 5
# A process's utilisation figure is held while NVML has no newer sample for it (NotFound), for at
# most this many ticks after its last new sample; then it is dropped (absent), never shown stale.
PROCESS_UTILIZATION_HOLD_TICKS = 3


@dataclass
class _GpmState:
    """Two sample buffers: each tick one is filled and compared with the other, then they swap roles."""

    samples: list[Any]
    request: Any
    older: int = -1  # index of the buffer holding the previous sample; -1 before the first
    older_at: float = 0.0
    last: SmActivity | None = None


@dataclass
class _Mig:
    """A MIG device of a GPU in MIG mode, in one of its parent's MIG slots."""

    key: str  # the gateway key "<parent index>.<slot>"
    handle: Any
    identity: GpuIdentity
    gpm: _GpmState | None = None


@dataclass
class _Gpu:
    index: int
    handle: Any
    identity: GpuIdentity
    gpm: _GpmState | None = None
    was_down: bool = False
    down_logged: bool = False
    tick: int = 0
    # pid -> (SM ratio, memory ratio, tick of its newest sample) from NVML's process utilisation
    process_utilization: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    mig_mode: bool | None = None  # None until read, and for a GPU without MIG
    migs: dict[int, _Mig] = field(default_factory=dict)  # MIG slot -> device, while in MIG mode
    mig_rescan_in: int = 0  # ticks until the MIG slots are enumerated again (0: this tick)


class NvmlBackend:
    name = "nvml"

    def __init__(self, gateway: NvmlGateway | None = None, clock=time.monotonic) -> None:
        self.gateway = gateway or NvmlGateway()
        self._clock = clock
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[int, _Gpu] = {}
        self._event_set: Any = ABSENT
        self._closed = False
        self._read_lock = threading.Lock()

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Initialises NVML; raises NvmlUnavailable when there is no usable driver."""
        gw = self.gateway
        gw.init()
        count = gw.device_count()
        for index in range(count):
            handle = ABSENT
            try:
                handle = gw.handle(index)
            except GpuDown:
                log.warning("GPU %d is down at start-up", index)
            gpu = _Gpu(index, handle, GpuIdentity(index=index, uuid="", name="unknown"))
            if handle is not ABSENT:
                self._identify(gpu)
                self._by_handle[handle_key(handle)] = gpu
            self._gpus.append(gpu)
        self._start_events()
        log.info("NVML backend: driver %s, %d GPU(s)", gw.driver_version(), count)

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
            if gw.gpm_supported(i, h):
                gpu.gpm = self._gpm_state(gpu)
        except GpuDown:
            log.warning("GPU %d went down while being identified", i)

    def _gpm_state(self, gpu: _Gpu) -> _GpmState | None:
        return self._new_gpm(gpu.index, self._whole_gpu_sampler(gpu))

    def _new_gpm(self, key: GpuKey, take_sample: Callable[[Any], bool]) -> _GpmState | None:
        samples = [self.gateway.gpm_sample_alloc(key) for _ in range(2)]
        if any(s is ABSENT for s in samples):
            for s in samples:
                if s is not ABSENT:
                    self.gateway.gpm_sample_free(key, s)
            return None
        state = _GpmState(samples=samples, request=self.gateway.gpm_request())
        # Take a first sample now, so the first tick ~1 s later already has activity to report.
        if take_sample(samples[0]):
            state.older, state.older_at = 0, self._clock()
        return state

    def _free_gpm(self, key: GpuKey, state: _GpmState | None) -> None:
        for sample in state.samples if state is not None else ():
            self.gateway.gpm_sample_free(key, sample)

    def _whole_gpu_sampler(self, gpu: _Gpu) -> Callable[[Any], bool]:
        return lambda sample: self.gateway.gpm_sample_get(gpu.index, gpu.handle, sample)

    def _mig_sampler(self, gpu: _Gpu, mig_key: str, gpu_instance_id: int) -> Callable[[Any], bool]:
        return lambda sample: self.gateway.gpm_mig_sample_get(mig_key, gpu.handle, gpu_instance_id, sample)

    def _start_events(self) -> None:
        event_set = self.gateway.event_set_create()
        if event_set is ABSENT:
            return
        registered = 0
        for gpu in self._gpus:
            if gpu.handle is ABSENT:
                continue
            try:
                if self.gateway.register_events(
                    gpu.index, gpu.handle, event_set, XID_EVENT | DOUBLE_BIT_ECC_EVENT
                ):
                    registered += 1
            except GpuDown:
                continue
        if registered:
            self._event_set = event_set
        else:
            self.gateway.event_set_free(event_set)

    # -- the GpuBackend protocol --------------------------------------------------------------
    def driver_version(self) -> str:
        return self.gateway.driver_version()

    def read_all(self) -> list[GpuReading]:
        """Every GPU, each followed by its MIG devices when it is in MIG mode."""
        with self._read_lock:
            if self._closed:
                return []
            readings: list[GpuReading] = []
            for gpu in self._gpus:
                readings += self._read(gpu)
            return readings

    def wait_for_events(self, timeout_seconds: float) -> list[GpuEvent]:
        if self._event_set is ABSENT or self._closed:
            time.sleep(timeout_seconds)
            return []
        raw = self.gateway.wait_event(self._event_set, int(timeout_seconds * 1000))
        if raw is None:
            return []
        gpu = self._by_handle.get(raw.handle_key)
        index, uuid = (gpu.index, gpu.identity.uuid) if gpu else (-1, "")
        if raw.event_type & XID_EVENT:
            return [GpuEvent(index, uuid, "xid", raw.data)]
        if raw.event_type & DOUBLE_BIT_ECC_EVENT:
            return [GpuEvent(index, uuid, "double_bit_ecc")]
        return []

    def close(self) -> None:
        """Frees GPM buffers and the event set, then shuts NVML down. Call after the event thread stopped."""
        with self._read_lock:
            if self._closed:
                return
            self._closed = True
            for gpu in self._gpus:
                self._free_gpm(gpu.index, gpu.gpm)
                gpu.gpm = None
                self._drop_migs(gpu)
            if self._event_set is not ABSENT:
                self.gateway.event_set_free(self._event_set)
                self._event_set = ABSENT
            with contextlib.suppress(NvmlUnavailable):
                self.gateway.shutdown()

    # -- one GPU ------------------------------------------------------------------------------
    def _read(self, gpu: _Gpu) -> list[GpuReading]:
        if gpu.handle is ABSENT:
            try:
                gpu.handle = self.gateway.handle(gpu.index)
            except GpuDown:
                return self._down(gpu)
            if gpu.handle is ABSENT:
                return self._down(gpu)
            self._identify(gpu)
            self._by_handle[handle_key(gpu.handle)] = gpu
        try:
            self._follow_mig_mode(gpu, self.gateway.mig_mode(gpu.index, gpu.handle))
            readings = [self._read_up(gpu)]
            if gpu.mig_mode:
                readings += self._read_migs(gpu)
        except GpuDown:
            return self._down(gpu)
        if gpu.was_down:
            log.warning("GPU %d (%s) answers again", gpu.index, gpu.identity.uuid)
            gpu.was_down = gpu.down_logged = False
        return readings

    def _down(self, gpu: _Gpu) -> list[GpuReading]:
        """The GPU down, and with it every MIG device it had (they come back with it)."""
        gpu.was_down = True
        if not gpu.down_logged:
            log.error(
                "GPU %d (%s) is down (lost or unknown error); other GPUs carry on",
                gpu.index,
                gpu.identity.uuid,
            )
            gpu.down_logged = True
        source = "gpm" if gpu.gpm and not gpu.mig_mode else "none"
        readings = [
            GpuReading(identity=gpu.identity, up=False, sm_activity_source=source, mig_mode=gpu.mig_mode)
        ]
        for mig in self._ordered_migs(gpu):
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
        if gpu.mig_mode is not None:
            log.warning("GPU %d (%s): MIG mode %s", gpu.index, gpu.identity.uuid, "on" if mode else "off")
        elif mode:
            log.info("GPU %d (%s) is in MIG mode", gpu.index, gpu.identity.uuid)
        if gpu.mig_mode is not None:
            self.gateway.forget(gpu.index)
            gpu.process_utilization.clear()
            if gpu.gpm is not None:
                gpu.gpm.older, gpu.gpm.last = -1, None
        self._drop_migs(gpu)
        gpu.mig_mode = mode

    def _drop_migs(self, gpu: _Gpu) -> None:
        for mig in gpu.migs.values():
            self._free_gpm(mig.key, mig.gpm)
        gpu.migs = {}
        gpu.mig_rescan_in = 0

    @staticmethod
    def _ordered_migs(gpu: _Gpu) -> list[_Mig]:
        def order(mig: _Mig) -> tuple[int, int]:
            ids = mig.identity.mig
            return (ids.gpu_instance_id, ids.compute_instance_id) if ids else (0, 0)

        return sorted(gpu.migs.values(), key=order)

    def _read_migs(self, gpu: _Gpu) -> list[GpuReading]:
        """Reads each MIG device, after enumerating the MIG slots when due (MIG_RESCAN_TICKS)."""
        if gpu.mig_rescan_in <= 0:
            self._enumerate_migs(gpu)
            gpu.mig_rescan_in = MIG_RESCAN_TICKS
        gpu.mig_rescan_in -= 1
        readings = [self._read_mig(gpu, mig) for mig in self._ordered_migs(gpu)]
        if gpu.mig_rescan_in < MIG_RESCAN_TICKS - 1 and any(
            r.up and r.memory_total_bytes is None for r in readings
        ):
            # A known MIG device stopped answering (destroyed?): enumerate now rather than export it
            # as up with no readings.
            self._enumerate_migs(gpu)
            gpu.mig_rescan_in = MIG_RESCAN_TICKS - 1
            readings = [self._read_mig(gpu, mig) for mig in self._ordered_migs(gpu)]
        return readings

    def _enumerate_migs(self, gpu: _Gpu) -> None:
        """Finds the MIG devices in the GPU's slots (instances are created and destroyed at run time).
        A slot is re-identified when its handle or UUID changed."""
        gw, i, h = self.gateway, gpu.index, gpu.handle
        found: dict[int, _Mig] = {}
        for slot in range(gw.mig_slots(i, h)):
            key = f"{i}.{slot}"
            known = gpu.migs.get(slot)
            handle = gw.mig_handle(i, h, slot)
            if handle is ABSENT:  # the call failed this tick: keep what we knew
                if known is not None:
                    found[slot] = known
                continue
            if handle is None:
                continue
            if (
                known is not None
                and handle_key(known.handle) == handle_key(handle)
                and gw.uuid(key, handle) == known.identity.uuid
            ):
                found[slot] = known
                continue
            if known is not None:
                self._free_gpm(key, known.gpm)
            gw.forget(key)
            mig = self._identify_mig(gpu, key, handle)
            if mig is not None:
                found[slot] = mig
        for slot, gone in gpu.migs.items():
            if slot not in found or found[slot] is not gone:
                if slot not in found:
                    self._free_gpm(gone.key, gone.gpm)
                log.info("GPU %d: MIG device %s is gone", i, gone.identity.uuid)
        gpu.migs = found

    def _identify_mig(self, gpu: _Gpu, key: str, handle: Any) -> _Mig | None:
        gw = self.gateway
        uuid = gw.uuid(key, handle)
        ids = gw.mig_ids(key, handle)
        if not uuid or ids is None:
            return None  # asked again next tick
        name = gw.name(key, handle)
        profile = name.rsplit(" MIG ", 1)[1].strip() if " MIG " in name else ""
        parent = gpu.identity
        identity = GpuIdentity(
            index=gpu.index,
            uuid=uuid,
            name=parent.name,
            pci_bus_id=parent.pci_bus_id,
            architecture=parent.architecture,
            mig=MigIdentity(
                parent_uuid=parent.uuid,
                profile=profile,
                gpu_instance_id=ids.gpu_instance_id,
                compute_instance_id=ids.compute_instance_id,
                sm_count=gw.mig_sm_count(key, handle),
            ),
        )
        mig = _Mig(key, handle, identity)
        if gpu.gpm is not None:  # GPM per GPU instance, through the parent
            mig.gpm = self._new_gpm(key, self._mig_sampler(gpu, key, ids.gpu_instance_id))
        log.info(
            "GPU %d: MIG device %s (%s, GPU instance %d, compute instance %d, %s SMs)",
            gpu.index,
            uuid,
            profile or "unknown profile",
            ids.gpu_instance_id,
            ids.compute_instance_id,
            identity.mig.sm_count if identity.mig else None,
        )
        return mig

    def _read_mig(self, gpu: _Gpu, mig: _Mig) -> GpuReading:
        gw, key, h = self.gateway, mig.key, mig.handle
        source = "gpm" if mig.gpm else "none"
        try:
            memory = gw.memory(key, h)
            processes = gw.compute_processes(key, h)
            activity = None
            if mig.gpm is not None and mig.identity.mig is not None:
                sampler = self._mig_sampler(gpu, key, mig.identity.mig.gpu_instance_id)
                activity = self._activity(mig.gpm, key, sampler)
        except GpuDown:
            return GpuReading(identity=mig.identity, up=False, sm_activity_source=source)
        return GpuReading(
            identity=mig.identity,
            up=True,
            sm_activity_source=source,
            memory_used_bytes=memory[0] if memory else None,
            memory_total_bytes=memory[1] if memory else None,
            processes=tuple(GpuProcess(pid, mem) for pid, mem in processes)
            if processes is not None
            else None,
            activity=activity,
        )

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
        return GpuReading(
            identity=gpu.identity,
            up=True,
            mig_mode=gpu.mig_mode,
            sm_activity_source="gpm" if gpu.gpm and not mig_mode else "none",
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
            activity=self._activity(gpu.gpm, i, self._whole_gpu_sampler(gpu))
            if gpu.gpm and not mig_mode
            else None,
        )

    def _processes(self, gpu: _Gpu, processes: list[tuple[int, int | None]]) -> tuple[GpuProcess, ...]:
        """The compute processes with their own SM and memory utilisation where NVML samples them."""
        gpu.tick += 1
        held = gpu.process_utilization
        for sample in self.gateway.process_utilization(gpu.index, gpu.handle) or ():
            held[sample.pid] = (_ratio(sample.sm_percent), _ratio(sample.memory_percent), gpu.tick)
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

    def _activity(
        self, state: _GpmState, key: GpuKey, take_sample: Callable[[Any], bool]
    ) -> SmActivity | None:
        now = self._clock()
        if state.older >= 0 and now - state.older_at < GPM_MIN_GAP_SECONDS:
            return state.last  # too soon for a new pair: keep the last figures
        newer = 1 - state.older if state.older >= 0 else 0
        if not take_sample(state.samples[newer]):
            state.older, state.last = -1, None
            return None
        if state.older >= 0:
            percent = self.gateway.gpm_metrics(
                key, state.request, state.samples[state.older], state.samples[newer]
            )
            state.last = (
                SmActivity(**{name: _ratio(value) for name, value in percent.items()}) if percent else None
            )
        state.older, state.older_at = newer, now
        return state.last


def _ratio(percent: float) -> float:
    return min(max(percent / 100.0, 0.0), 1.0)
