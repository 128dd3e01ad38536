"""Immutable records of what the GPU readers saw. Units are base units: bytes, watts, joules, hertz."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

SmActivitySource = Literal["gpm", "none"]

# What GPM answers for a device: "ok"; "not_supported" (no GPM on this GPU or driver: stays so);
# "no_permission" (profiling is restricted to administrators); "in_use" (another tool holds the
# performance counters); "error" (any other failure, retried next tick).
GpmStatus = Literal["ok", "not_supported", "no_permission", "in_use", "error"]
GPM_STATUSES: tuple[GpmStatus, ...] = ("ok", "not_supported", "no_permission", "in_use", "error")


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process on a GPU. The utilisation ratios (0..1) are this process's share of the SMs'
    and the memory interface's time (NVML process utilisation samples); None where unknown."""

    pid: int
    used_memory_bytes: int | None
    sm_utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class SmActivity:
    """GPM metrics: activity as ratios 0..1 and, for a whole GPU, its interconnect throughput in bytes
    per second (rx: into the GPU, tx: out of it; NVLink summed over its links). A field is None when
    that metric could not be read or does not apply (throughput on a MIG device, NVLink on a GPU
    without it)."""

    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    fp16_active: float | None = None
    fp32_active: float | None = None
    fp64_active: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    pcie_tx_bytes_per_second: float | None = None
    nvlink_rx_bytes_per_second: float | None = None
    nvlink_tx_bytes_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class NvlinkErrors:
    """A GPU's NVLink error counters summed over its links, since the driver loaded (or the counters
    were reset); None for a counter the driver does not give."""

    replay: int | None = None
    recovery: int | None = None
    crc_flit: int | None = None
    crc_data: int | None = None


@dataclass(frozen=True, slots=True)
class RemappedRows:
    corrected: int
    uncorrected: int
    pending: bool
    failure: bool


@dataclass(frozen=True, slots=True)
class MigIdentity:
    """Where a MIG device sits in its parent GPU. Its GpuIdentity has the parent's index and model
    name and its own MIG UUID."""

    parent_uuid: str
    profile: str  # "1g.10gb", "1c.3g.40gb": what follows "MIG " in NVML's device name; "" if unknown
    gpu_instance_id: int
    compute_instance_id: int
    sm_count: int | None  # the slice's SMs (nvmlDeviceGetAttributes); None when NVML did not say


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """A device that runs work: a whole GPU, or a MIG device (then `mig` is set, `index` is the
    parent's index and `name` the parent's model name, so peaks are looked up by model)."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    architecture: str = "unknown"
    mig: MigIdentity | None = None


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one tick. Any reading the GPU does not support is None (exported as absent)."""

    identity: GpuIdentity
    up: bool = True
    # True for a GPU gone from NVML's device list, held (down) for a while so that its up series reads 0
    # before it disappears; the sampler keeps such GPUs apart (Snapshot.vanished).
    gone: bool = False
    # For a whole GPU: True while it is in MIG mode (its work runs on its MIG devices, which follow it
    # in Snapshot.gpus), False when not, None when NVML cannot say (no MIG on this GPU).
    mig_mode: bool | None = None
    sm_activity_source: SmActivitySource = "none"
    # What GPM answered at the last try (why the SM activity series are absent); None where not asked
    # (a GPU in MIG mode: its MIG devices are).
    gpm_status: GpmStatus | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    sm_clock_max_hertz: float | None = None
    clock_event_reasons: frozenset[str] | None = None
    ecc_corrected_total: int | None = None
    ecc_uncorrected_total: int | None = None
    remapped_rows: RemappedRows | None = None
    processes: tuple[GpuProcess, ...] | None = None
    activity: SmActivity | None = None
    # A whole GPU's NVLink links (0: none) and error counters, read every few ticks; None where unknown.
    nvlink_links: int | None = None
    nvlink_errors: NvlinkErrors | None = None

    @property
    def index(self) -> int:
        return self.identity.index

    @property
    def uuid(self) -> str:
        return self.identity.uuid

    @property
    def is_mig(self) -> bool:
        return self.identity.mig is not None


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """A hardware event from NVML's event set: an XID error or a double-bit ECC error."""

    gpu_index: int
    uuid: str
    kind: Literal["xid", "double_bit_ecc"]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the sampler read in one tick. Never mutated; replaced whole each tick."""

    taken_at: float
    driver_version: str
    gpus: tuple[GpuReading, ...]
    sample_duration_seconds: float
    backend: str = "nvml"
    # Whether the backend could use NVML at this tick; when not, every GPU is down and the reason says why.
    nvml_up: bool = True
    unavailable_reason: str = ""
    # GPUs gone from NVML's device list, down, exported (info and up) for a while; not placed on.
    vanished: tuple[GpuReading, ...] = ()
    # UUID -> Unix time of the device's last good reading (up), for the reading age and staleness.
    read_at: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    # Lookups for report attribution, built once per tick (the first GPU wins where two share a key).
    # by_index holds whole GPUs only: a MIG device carries its parent's index.
    by_index: dict[int, GpuReading] = field(init=False, compare=False, repr=False)
    by_uuid: dict[str, GpuReading] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_index: dict[int, GpuReading] = {}
        by_uuid: dict[str, GpuReading] = {}
        for gpu in self.gpus:
            if not gpu.is_mig:
                by_index.setdefault(gpu.index, gpu)
            by_uuid.setdefault(gpu.uuid, gpu)
        object.__setattr__(self, "by_index", by_index)  # a frozen dataclass: set once, here
        object.__setattr__(self, "by_uuid", by_uuid)

    def gpu_for_pid(self, pid: int) -> list[GpuReading]:
        return [g for g in self.gpus if g.processes and any(p.pid == pid for p in g.processes)]


class GpuBackend(Protocol):
    """What the sampler and the event thread need from a source of GPU readings."""

    name: str
    # Why the backend cannot read GPUs now ("" while it can): every GPU is read as down meanwhile.
    unavailable_reason: str

    def driver_version(self) -> str: ...

    def read_all(self) -> list[GpuReading]: ...

    def wait_for_events(self, timeout_seconds: float) -> list[GpuEvent]: ...

    def close(self) -> None: ...
