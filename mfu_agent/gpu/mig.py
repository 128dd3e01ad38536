"""MIG devices of a GPU in MIG mode: found in its MIG slots through NVML, identified, and read."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from .gpm import GpmPairs, GpmState, TakeSample, status_of
from .model import GpmStatus, GpuIdentity, GpuProcess, GpuReading, MigIdentity
from .nvml import ABSENT, GpuDown, NvmlGateway, handle_key

log = logging.getLogger(__name__)

# MIG devices are enumerated (slot handles and UUIDs) every this many ticks, and at once when MIG mode
# changes or a MIG device stops answering; between, the known devices are read. Instances created or
# destroyed while the mode stays on are therefore seen within this many ticks.
MIG_RESCAN_TICKS = 5


@dataclass
class MigDevice:
    """A MIG device of a GPU in MIG mode, in one of its parent's MIG slots."""

    key: str  # the gateway key "<parent index>.<slot>"
    handle: Any
    identity: GpuIdentity
    gpm: GpmState | None = None
    gpm_status: GpmStatus = "not_supported"  # what GPM answered, while `gpm` is None


class MigParent(Protocol):
    """What MigReader needs of a whole GPU (nvml_backend's per-GPU state)."""

    index: int
    handle: Any
    identity: GpuIdentity
    gpm: GpmState | None
    gpm_status: GpmStatus  # what GPM answered, while `gpm` is None
    migs: dict[int, MigDevice]  # MIG slot -> device, while in MIG mode
    mig_rescan_in: int  # ticks until the MIG slots are enumerated again (0: this tick)


class MigReader:
    def __init__(self, gateway: NvmlGateway, gpm: GpmPairs) -> None:
        self.gateway = gateway
        self._gpm = gpm

    def drop(self, gpu: MigParent) -> None:
        for mig in gpu.migs.values():
            self._gpm.free(mig.key, mig.gpm)
        gpu.migs = {}
        gpu.mig_rescan_in = 0

    @staticmethod
    def ordered(gpu: MigParent) -> list[MigDevice]:
        def order(mig: MigDevice) -> tuple[int, int]:
            ids = mig.identity.mig
            return (ids.gpu_instance_id, ids.compute_instance_id) if ids else (0, 0)

        return sorted(gpu.migs.values(), key=order)

    def read(self, gpu: MigParent) -> list[GpuReading]:
        """Reads each MIG device, after enumerating the MIG slots when due (MIG_RESCAN_TICKS)."""
        if gpu.mig_rescan_in <= 0:
            self._enumerate(gpu)
            gpu.mig_rescan_in = MIG_RESCAN_TICKS
        gpu.mig_rescan_in -= 1
        readings = [self._read_one(gpu, mig) for mig in self.ordered(gpu)]
        if gpu.mig_rescan_in < MIG_RESCAN_TICKS - 1 and any(
            r.up and r.memory_total_bytes is None for r in readings
        ):
            # A known MIG device stopped answering (destroyed?): enumerate now rather than export it
            # as up with no readings.
            self._enumerate(gpu)
            gpu.mig_rescan_in = MIG_RESCAN_TICKS - 1
            readings = [self._read_one(gpu, mig) for mig in self.ordered(gpu)]
        return readings

    def _enumerate(self, gpu: MigParent) -> None:
        """Finds the MIG devices in the GPU's slots (instances are created and destroyed at run time).
        A slot is re-identified when its handle or UUID changed."""
        gw, i, h = self.gateway, gpu.index, gpu.handle
        found: dict[int, MigDevice] = {}
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
                self._gpm.free(key, known.gpm)
            gw.forget(key)
            mig = self._identify(gpu, key, handle)
            if mig is not None:
                found[slot] = mig
        for slot, gone in gpu.migs.items():
            if slot not in found or found[slot] is not gone:
                if slot not in found:
                    self._gpm.free(gone.key, gone.gpm)
                log.info("GPU %d: MIG device %s is gone", i, gone.identity.uuid)
        gpu.migs = found

    def _identify(self, gpu: MigParent, key: str, handle: Any) -> MigDevice | None:
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
        mig = MigDevice(key, handle, identity)
        if gpu.gpm is not None:  # GPM per GPU instance, through the parent
            # Without PCIe and NVLink throughput: the links are the physical GPU's, not the instance's.
            mig.gpm = self._gpm.new(key, self._sampler(gpu, key, ids.gpu_instance_id), traffic=False)
            mig.gpm_status = status_of(mig.gpm, "error")
        else:
            mig.gpm_status = gpu.gpm_status
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

    def _read_one(self, gpu: MigParent, mig: MigDevice) -> GpuReading:
        gw, key, h = self.gateway, mig.key, mig.handle
        source = "gpm" if mig.gpm else "none"
        try:
            memory = gw.memory(key, h)
            processes = gw.compute_processes(key, h)
            activity = None
            if mig.gpm is not None and mig.identity.mig is not None:
                sampler = self._sampler(gpu, key, mig.identity.mig.gpu_instance_id)
                activity = self._gpm.activity(mig.gpm, key, sampler)
        except GpuDown:
            return GpuReading(identity=mig.identity, up=False, sm_activity_source=source)
        return GpuReading(
            identity=mig.identity,
            up=True,
            sm_activity_source=source,
            gpm_status=status_of(mig.gpm, mig.gpm_status),
            memory_used_bytes=memory[0] if memory else None,
            memory_total_bytes=memory[1] if memory else None,
            processes=tuple(GpuProcess(pid, mem) for pid, mem in processes)
            if processes is not None
            else None,
            activity=activity,
        )

    def _sampler(self, gpu: MigParent, mig_key: str, gpu_instance_id: int) -> TakeSample:
        return lambda sample: self.gateway.gpm_mig_sample_get(mig_key, gpu.handle, gpu_instance_id, sample)
