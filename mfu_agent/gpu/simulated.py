"""Simulated GPUs for demos and tests: believable, time-varying readings and scriptable faults."""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from ..specs import PeakTable, known_models, match_model
from .model import (
    GpuEvent,
    GpuIdentity,
    GpuProcess,
    GpuReading,
    MigIdentity,
    NvlinkErrors,
    RemappedRows,
    SmActivity,
)

DEFAULT_SPEC = "8xNVIDIA H100 80GB HBM3"
FAULT_KINDS = ("lost", "busy-idle", "throttle", "xid", "ecc")
STORM_EVENTS = 10_000  # an `xid-storm:GPU` fault: this many XID 79s, then this many distinct codes


@dataclass(frozen=True)
class _Profile:
    architecture: str
    memory_gib: int
    power_limit_watts: float
    idle_watts: float
    sm_clock_max_mhz: int
    gpm: bool


# Name patterns, most specific first. Figures are the boards' nominal limits, good enough to look real.
_PROFILES: list[tuple[re.Pattern[str], _Profile]] = [
    (re.compile(p, re.IGNORECASE), prof)
    for p, prof in [
        (r"\bGB200\b", _Profile("blackwell", 186, 1200, 140, 1965, True)),
        (r"\bB200\b", _Profile("blackwell", 180, 1000, 140, 1965, True)),
        (r"\bB100\b", _Profile("blackwell", 180, 700, 120, 1965, True)),
        (r"\bGH200\b", _Profile("hopper", 96, 900, 100, 1980, True)),
        (r"\bH200 NVL\b", _Profile("hopper", 141, 600, 90, 1785, True)),
        (r"\bH200\b", _Profile("hopper", 141, 700, 90, 1980, True)),
        (r"\bH100 NVL\b", _Profile("hopper", 94, 400, 70, 1785, True)),
        (r"\bH100 PCIe\b", _Profile("hopper", 80, 350, 60, 1755, True)),
        (r"\bH100\b", _Profile("hopper", 80, 700, 70, 1980, True)),
        (r"\bH800 PCIe\b", _Profile("hopper", 80, 350, 60, 1755, True)),
        (r"\bH800\b", _Profile("hopper", 80, 700, 70, 1980, True)),
        (r"\bA100\b.*\bPCI", _Profile("ampere", 80, 300, 40, 1410, False)),
        (r"\bA100\b", _Profile("ampere", 80, 400, 55, 1410, False)),
        (r"\bA800\b.*\bPCI", _Profile("ampere", 80, 300, 40, 1410, False)),
        (r"\bA800\b", _Profile("ampere", 80, 400, 55, 1410, False)),
        (r"\bA30\b", _Profile("ampere", 24, 165, 30, 1440, False)),
        (r"\bA10G\b", _Profile("ampere", 24, 300, 25, 1710, False)),
        (r"\bL40S\b", _Profile("ada", 48, 350, 35, 2520, False)),
        (r"\bL40\b", _Profile("ada", 48, 300, 35, 2490, False)),
        (r"\bL4\b", _Profile("ada", 24, 72, 16, 2040, False)),
        (r"\bRTX 4090\b", _Profile("ada", 24, 450, 25, 2520, False)),
        (r"\bV100\b", _Profile("volta", 32, 300, 40, 1530, False)),
        (r"\bT4\b", _Profile("turing", 16, 70, 10, 1590, False)),
    ]
]
_FALLBACK = _Profile("unknown", 16, 250, 30, 1500, False)
# Boards without NVLink in the simulator (PCIe cards; the NVL boards' bridges count as NVLink).
_NO_NVLINK = re.compile(r"PCI|\bL4\b|\bL40S?\b|\bA10G\b|\bT4\b|\bRTX\b", re.IGNORECASE)
SIM_NVLINK_LINKS = 18  # an H100 SXM's
SIM_NVLINK_BYTES_PER_SECOND = 450e9  # per direction, summed over links (H100 SXM: 900 GB/s both ways)
SIM_PCIE_BYTES_PER_SECOND = 64e9  # per direction (PCIe 5.0 x16)


def profile_for(name: str) -> _Profile:
    profile = next((prof for pattern, prof in _PROFILES if pattern.search(name)), _FALLBACK)
    memory = re.search(r"(\d+)\s*GB", name)
    if memory:
        profile = _Profile(**{**profile.__dict__, "memory_gib": int(memory.group(1))})
    return profile


# MIG profiles the simulator offers, {profile: (SMs, memory GiB)}: the figures `nvidia-smi mig -lgip`
# prints. For the simulator only; the real agent reads a MIG device's SM count from NVML.
_H100_80GB = {
    "1g.10gb": (16, 9.75),
    "1g.20gb": (26, 19.5),
    "2g.20gb": (32, 19.5),
    "3g.40gb": (60, 39.25),
    "4g.40gb": (64, 39.25),
    "7g.80gb": (132, 79.25),
}
_H200_141GB = {
    "1g.18gb": (16, 17.75),
    "1g.35gb": (26, 34.75),
    "2g.35gb": (32, 34.75),
    "3g.71gb": (60, 70.5),
    "4g.71gb": (64, 70.5),
    "7g.141gb": (132, 140.25),
}
_A100_40GB = {
    "1g.5gb": (14, 4.75),
    "1g.10gb": (14, 9.75),
    "2g.10gb": (28, 9.75),
    "3g.20gb": (42, 19.5),
    "4g.20gb": (56, 19.5),
    "7g.40gb": (98, 39.25),
}
_A100_80GB = {
    "1g.10gb": (14, 9.5),
    "1g.20gb": (14, 19.5),
    "2g.20gb": (28, 19.5),
    "3g.40gb": (42, 39.25),
    "4g.40gb": (56, 39.25),
    "7g.80gb": (98, 79.25),
}
_A30_24GB = {"1g.6gb": (14, 5.75), "2g.12gb": (28, 11.75), "4g.24gb": (56, 23.5)}
# (model key as specs.match_model gives it, memory GiB) -> its profiles. H100/H800 PCIe (114 SMs),
# the NVL boards, GH200 and the Blackwells have MIG but no table here: the simulator refuses them.
_MIG_TABLES: dict[tuple[str, int], dict[str, tuple[int, float]]] = {
    ("H100 SXM", 80): _H100_80GB,
    ("H800 SXM", 80): _H100_80GB,
    ("H200 SXM", 141): _H200_141GB,
    **{(model, 40): _A100_40GB for model in ("A100 SXM", "A100 PCIe", "A800 SXM", "A800 PCIe")},
    **{(model, 80): _A100_80GB for model in ("A100 SXM", "A100 PCIe", "A800 SXM", "A800 PCIe")},
    ("A30", 24): _A30_24GB,
}
_MIG_FAMILIES = re.compile(r"(A100|A800|A30|H100|H200|H800|GH200|G?B200)\b")  # over model keys
MIG_COMPUTE_SLICES = 7  # a MIG GPU's compute splits into at most 7 slices
EXAMPLE_MIG_SPEC = "1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb]"


@dataclass(frozen=True)
class GpuSpec:
    """One simulated GPU: its device name and, when it is in MIG mode, its MIG profiles in order."""

    name: str
    mig: tuple[str, ...] = ()


def has_mig(name: str) -> bool:
    model = match_model(name)
    return model is not None and _MIG_FAMILIES.match(model) is not None


def mig_profiles(name: str) -> dict[str, tuple[int, float]] | None:
    """{profile: (SMs, memory GiB)} the simulator offers for this device name; None if none."""
    model = match_model(name)
    return _MIG_TABLES.get((model, profile_for(name).memory_gib)) if model else None


def parse_spec(spec: str, peaks: PeakTable | None = None) -> list[GpuSpec]:
    """'8xNVIDIA H100 80GB HBM3', '2xNVIDIA L4,1xTesla T4' or, MIG mode on each of COUNT GPUs,
    '1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb]' -> one GpuSpec per GPU.

    With `peaks`, a device name that table does not know (built in, or added by an override) is
    refused with the names it knows; without, any name goes (tests of what the agent does with a GPU
    it has no peak for)."""
    gpus: list[GpuSpec] = []
    for part in _split_outside_brackets(spec):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*([^\s\[\]][^\[\]]*?)\s*(?:\[([^\[\]]*)\]\s*)?", part)
        if not match:
            if "[" in part or "]" in part:
                raise ValueError(
                    f"bad --simulate spec {part.strip()!r}: malformed brackets: expected "
                    f"COUNTxDEVICE NAME[mig=PROFILE,...], e.g. {EXAMPLE_MIG_SPEC!r}"
                )
            raise ValueError(
                f"bad --simulate spec {part.strip()!r}: expected COUNTxDEVICE NAME, e.g. {DEFAULT_SPEC!r}"
            )
        count = int(match.group(1))
        if not 1 <= count <= 64:
            raise ValueError(f"bad --simulate spec {part.strip()!r}: COUNT must be 1..64")
        name = match.group(2)
        if peaks is not None and peaks.match_model(name) is None:
            raise ValueError(
                f"bad --simulate spec {part.strip()!r}: unknown GPU model {name!r}: expected a name NVML "
                f"reports, e.g. 'NVIDIA H100 80GB HBM3', for one of {', '.join(known_models())}, "
                "or a device name --peak-flops-file adds"
            )
        mig = _parse_mig(part.strip(), name, match.group(3)) if match.group(3) is not None else ()
        gpus += [GpuSpec(name, mig)] * count
    if len(gpus) > 64:
        raise ValueError("bad --simulate spec: at most 64 GPUs in all")
    return gpus


def _split_outside_brackets(spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return [*parts, spec[start:]]


def _parse_mig(part: str, name: str, inside: str) -> tuple[str, ...]:
    bad = f"bad --simulate spec {part!r}"
    listed = re.fullmatch(r"\s*mig\s*=(.*)", inside)
    if listed is None:
        raise ValueError(f"{bad}: expected [mig=PROFILE,...] after the name, e.g. {EXAMPLE_MIG_SPEC!r}")
    profiles = tuple(p.strip().lower() for p in listed.group(1).split(","))
    if profiles == ("",):
        raise ValueError(f"{bad}: the MIG list is empty: name at least one profile, e.g. 1g.10gb")
    if "" in profiles:
        raise ValueError(f"{bad}: an empty entry in the MIG list (two commas, or one at an end)")
    if not has_mig(name):
        raise ValueError(
            f"{bad}: {name} has no MIG (only the A100, A800, A30, H100, H200, H800, GH200 and B200 "
            "families have it)"
        )
    table = mig_profiles(name)
    if table is None:
        raise ValueError(
            f"{bad}: the simulator has no MIG profiles for {name}; it has them for the H100 and H800 "
            "80GB SXM, H200 141GB SXM, A100 and A800 40GB and 80GB, and A30"
        )
    for profile in profiles:
        if profile not in table:
            raise ValueError(
                f"{bad}: unknown MIG profile {profile!r} for {name}: expected one of {', '.join(table)}"
            )
    compute = sum(int(profile.split("g", 1)[0]) for profile in profiles)
    if compute > MIG_COMPUTE_SLICES:
        raise ValueError(
            f"{bad}: the MIG profiles take {compute} compute slices; a GPU has {MIG_COMPUTE_SLICES}"
        )
    memory, board = sum(table[profile][1] for profile in profiles), profile_for(name).memory_gib
    if memory > board:
        raise ValueError(f"{bad}: the MIG profiles take {memory:g} GiB of memory; {name} has {board} GiB")
    return profiles


@dataclass
class _SimSlice:
    """A MIG device of a simulated GPU, running its own work."""

    identity: GpuIdentity
    memory_total_bytes: int
    phase: float
    level: float  # how hard its work drives it, 0..1
    processes: tuple[GpuProcess, ...] = ()


@dataclass
class _SimGpu:
    identity: GpuIdentity
    profile: _Profile
    phase: float
    energy_joules: float = 0.0
    last_time: float | None = None
    mig_capable: bool = False
    slices: tuple[_SimSlice, ...] = ()  # in MIG mode when there are any
    lost: bool = False
    busy_idle: bool = False
    throttled: bool = False
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    shared: bool = False


@dataclass(frozen=True)
class _Work:
    """What a device's work looks like at one tick."""

    utilization: float
    sm_active: float
    tensor: float
    dram: float
    wave: float
    slow: float
    noise: float

    def traffic(self, nvlink: bool) -> dict[str, float | None]:
        """A whole GPU's interconnect throughput: NVLink busiest while the SMs wait on it (a
        communication-bound phase), near idle in a stalled collective (busy-idle); PCIe a trickle of
        input data."""
        stalled = self.sm_active < 0.2 and self.tensor < 0.05
        link = 0.002 if stalled else _clip(0.12 + 0.55 * (1.0 - self.sm_active) + self.noise)
        pcie = SIM_PCIE_BYTES_PER_SECOND
        return {
            "pcie_rx_bytes_per_second": round(pcie * _clip(0.05 + 0.03 * self.slow), 1),
            "pcie_tx_bytes_per_second": round(pcie * 0.01, 1),
            "nvlink_rx_bytes_per_second": round(SIM_NVLINK_BYTES_PER_SECOND * link, 1) if nvlink else None,
            "nvlink_tx_bytes_per_second": round(SIM_NVLINK_BYTES_PER_SECOND * link * 0.98, 1)
            if nvlink
            else None,
        }

    def activity(self) -> SmActivity:
        return SmActivity(
            sm_active=_clip(self.sm_active),
            sm_occupancy=_clip(self.sm_active * 0.55),
            tensor_active=_clip(self.tensor),
            dram_active=_clip(self.dram),
            fp16_active=_clip(0.04 + self.noise / 4),
            fp32_active=_clip(0.09 + 0.02 * self.wave),
            fp64_active=0.0,
        )


SHARED_PIDS = (4_190_001, 4_190_002)  # the two processes of a `shared:GPU` fault


class SimulatedBackend:
    name = "simulated"
    unavailable_reason = ""  # simulated NVML never goes away

    def __init__(
        self, spec: str = DEFAULT_SPEC, seed: int = 0, clock=time.time, peaks: PeakTable | None = None
    ) -> None:
        """`peaks`: refuse device names this table does not know (parse_spec)."""
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._events: deque[GpuEvent] = deque(maxlen=4 * STORM_EVENTS)  # a storm fits, undrained
        self._event_ready = threading.Condition(self._lock)
        self._closed = False
        self._gpus = [self._make_gpu(i, gpu, seed) for i, gpu in enumerate(parse_spec(spec, peaks))]

    def _make_gpu(self, index: int, spec: GpuSpec, seed: int) -> _SimGpu:
        profile = profile_for(spec.name)
        gpu = _SimGpu(
            identity=GpuIdentity(
                index=index,
                uuid=f"GPU-{seed:08x}-5157-4000-8000-{index:012x}",
                name=spec.name,
                pci_bus_id=f"00000000:{0x18 + index * 0x10 & 0xFF:02X}:00.0",
                architecture=profile.architecture,
            ),
            profile=profile,
            phase=self._rng.uniform(0, 2 * math.pi),
            energy_joules=self._rng.uniform(1e6, 5e7),
            mig_capable=has_mig(spec.name),
        )
        table = mig_profiles(spec.name) or {}
        gpu.slices = tuple(
            _SimSlice(
                identity=GpuIdentity(
                    index=index,
                    # Deterministic like the GPU's: the seed, the GPU's index, the slice's place.
                    uuid=f"MIG-{seed:08x}-5157-4000-9000-{index:06x}{position:06x}",
                    name=spec.name,
                    pci_bus_id=gpu.identity.pci_bus_id,
                    architecture=profile.architecture,
                    mig=MigIdentity(
                        parent_uuid=gpu.identity.uuid,
                        profile=mig_profile,
                        gpu_instance_id=position,
                        compute_instance_id=0,
                        sm_count=table[mig_profile][0],
                    ),
                ),
                memory_total_bytes=int(table[mig_profile][1] * 1024**3),
                phase=self._rng.uniform(0, 2 * math.pi),
                level=1.0 if position == 0 else self._rng.uniform(0.45, 0.95),
            )
            for position, mig_profile in enumerate(spec.mig)
        )
        return gpu

    def devices(self) -> list[GpuIdentity]:
        """Every simulated device as read_all lists them: each GPU, then its MIG devices."""
        return [ident for gpu in self._gpus for ident in (gpu.identity, *(s.identity for s in gpu.slices))]

    # -- faults -------------------------------------------------------------------------------
    def _gpu(self, index: int) -> _SimGpu:
        if not 0 <= index < len(self._gpus):
            raise ValueError(f"no simulated GPU {index}: there are {len(self._gpus)}")
        return self._gpus[index]

    def set_lost(self, index: int, lost: bool = True) -> None:
        """A lost GPU in MIG mode takes its MIG devices down with it."""
        with self._lock:
            self._gpu(index).lost = lost

    def set_busy_idle(self, index: int, on: bool = True) -> None:
        """On a GPU in MIG mode, its MIG devices are the ones busy doing nothing."""
        with self._lock:
            self._gpu(index).busy_idle = on

    def set_throttled(self, index: int, on: bool = True) -> None:
        with self._lock:
            self._gpu(index).throttled = on

    def set_processes(
        self,
        index: int,
        processes: list[tuple[int, int | None]] | list[tuple[int, int | None, float | None, float | None]],
        gpu_instance_id: int | None = None,
    ) -> None:
        """(pid, used memory bytes) or (pid, used memory bytes, SM ratio, memory ratio) per process;
        on a GPU in MIG mode, of its MIG device `gpu_instance_id` (a GPU in MIG mode has none)."""
        with self._lock:
            gpu = self._gpu(index)
            procs = tuple(GpuProcess(*proc) for proc in processes)
            if gpu.slices and gpu_instance_id is None:
                raise ValueError(f"GPU {index} is in MIG mode: name the MIG device (gpu_instance_id)")
            if gpu_instance_id is None:
                gpu.processes = procs
            elif not 0 <= gpu_instance_id < len(gpu.slices):
                raise ValueError(f"GPU {index} has no MIG device {gpu_instance_id}")
            else:
                gpu.slices[gpu_instance_id].processes = procs

    def set_shared(self, index: int, on: bool = True) -> None:
        """Two processes time-share this GPU, each with its own, wandering SM and memory utilisation
        (pids SHARED_PIDS); they replace set_processes' list while on. Whole GPUs only."""
        with self._lock:
            gpu = self._gpu(index)
            if gpu.slices:
                raise ValueError(f"GPU {index} is in MIG mode: only a whole GPU can be time-shared")
            gpu.shared = on

    def inject_xid(self, index: int, xid: int, count: int = 1) -> None:
        with self._lock:
            gpu = self._gpu(index)
            for _ in range(count):
                self._events.append(GpuEvent(index, gpu.identity.uuid, "xid", xid))
            self._event_ready.notify_all()

    def inject_xid_storm(self, index: int, events: int = STORM_EVENTS) -> None:
        """An XID storm: `events` XID 79s (fallen off the bus), then `events` XIDs of distinct codes
        1, 2, ..., `events` (most of them outside NVIDIA's catalogue)."""
        with self._lock:
            uuid = self._gpu(index).identity.uuid
            self._events.extend(GpuEvent(index, uuid, "xid", 79) for _ in range(events))
            self._events.extend(GpuEvent(index, uuid, "xid", code) for code in range(1, events + 1))
            self._event_ready.notify_all()

    def inject_double_bit_ecc(self, index: int) -> None:
        with self._lock:
            gpu = self._gpu(index)
            gpu.ecc_uncorrected += 1
            self._events.append(GpuEvent(index, gpu.identity.uuid, "double_bit_ecc"))
            self._event_ready.notify_all()

    def apply_fault(self, spec: str) -> None:
        """'lost:3', 'busy-idle:2', 'throttle:1', 'ecc:0', 'shared:6', 'xid:4:79' or 'xid-storm:0'
        (as given to --fault)."""
        actions = {
            "lost": self.set_lost,
            "busy-idle": self.set_busy_idle,
            "throttle": self.set_throttled,
            "ecc": self.inject_double_bit_ecc,
            "shared": self.set_shared,
            "xid-storm": self.inject_xid_storm,
        }
        kind, *numbers = spec.strip().split(":")
        arity = 2 if kind == "xid" else 1
        if (
            (kind != "xid" and kind not in actions)
            or len(numbers) != arity
            or not all(n.isdigit() for n in numbers)
        ):
            raise ValueError(
                f"bad --fault {spec!r}: expected lost:GPU, busy-idle:GPU, throttle:GPU, ecc:GPU, "
                "shared:GPU, xid:GPU:CODE or xid-storm:GPU"
            )
        index, *code = map(int, numbers)
        try:
            if kind == "xid":
                self.inject_xid(index, code[0])
            else:
                actions[kind](index)
        except ValueError as exc:
            raise ValueError(f"bad --fault {spec!r}: {exc}") from None

    # -- the GpuBackend protocol --------------------------------------------------------------
    def driver_version(self) -> str:
        return "550.54.15-simulated"

    def read_all(self) -> list[GpuReading]:
        now = self._clock()
        with self._lock:
            return [reading for gpu in self._gpus for reading in self._read(gpu, now)]

    def wait_for_events(self, timeout_seconds: float) -> list[GpuEvent]:
        with self._event_ready:
            if not self._events and not self._closed:
                self._event_ready.wait(timeout_seconds)
            events = list(self._events)
            self._events.clear()
            return events

    def close(self) -> None:
        with self._event_ready:
            self._closed = True
            self._event_ready.notify_all()

    # -- one GPU ------------------------------------------------------------------------------
    def _read(self, gpu: _SimGpu, now: float) -> list[GpuReading]:
        """The GPU's reading, then its MIG devices'. In MIG mode the GPU answers for the board
        (power, energy, temperature, clocks, ECC, rows) and its MIG devices for the work, as the
        driver does: no utilisation anywhere, processes and GPM activity on the MIG devices only."""
        prof = gpu.profile
        source = "gpm" if prof.gpm else "none"
        gpm_status = "ok" if prof.gpm else "not_supported"
        mig_mode = True if gpu.slices else (False if gpu.mig_capable else None)
        if gpu.lost:
            gpu.last_time = None
            return [
                GpuReading(
                    identity=gpu.identity,
                    up=False,
                    mig_mode=mig_mode,
                    sm_activity_source="none" if gpu.slices else source,
                ),
                *(GpuReading(identity=s.identity, up=False, sm_activity_source=source) for s in gpu.slices),
            ]
        if not gpu.slices:
            work = self._work(gpu.phase, now, gpu.busy_idle)
            total = prof.memory_gib * 1024**3
            used = int(total * (0.78 + 0.01 * work.slow)) if not gpu.busy_idle else int(total * 0.35)
            processes = (
                self._shared_processes(work.utilization, work.dram, work.slow, total)
                if gpu.shared
                else gpu.processes
            )
            return [
                GpuReading(
                    identity=gpu.identity,
                    up=True,
                    mig_mode=mig_mode,
                    sm_activity_source=source,
                    gpm_status=gpm_status,
                    utilization_ratio=_clip(round(work.utilization, 2)),
                    memory_utilization_ratio=_clip(round(work.dram * 1.1, 2)),
                    memory_used_bytes=used,
                    memory_total_bytes=total,
                    processes=processes,
                    activity=replace(work.activity(), **work.traffic(self._nvlink(gpu)))
                    if prof.gpm
                    else None,
                    **self._board(gpu, now, work.sm_active),
                    **self._links(gpu),
                )
            ]
        works = [self._work(s.phase, now, gpu.busy_idle, s.level) for s in gpu.slices]
        slices = [
            GpuReading(
                identity=s.identity,
                up=True,
                sm_activity_source=source,
                gpm_status=gpm_status,
                memory_used_bytes=int(
                    s.memory_total_bytes
                    * (0.35 if gpu.busy_idle else 0.45 + 0.4 * s.level + 0.02 * work.slow)
                ),
                memory_total_bytes=s.memory_total_bytes,
                processes=s.processes,
                activity=work.activity() if prof.gpm else None,
            )
            for s, work in zip(gpu.slices, works, strict=True)
        ]
        # The board works as hard as its slices' SMs do; the largest profile has all of MIG's SMs.
        mig_sms = max(sms for sms, _ in (mig_profiles(gpu.identity.name) or {}).values())
        sm_active = sum(
            w.sm_active * (s.identity.mig.sm_count or 0) for s, w in zip(gpu.slices, works, strict=True)
        )
        parent = GpuReading(
            identity=gpu.identity,
            up=True,
            mig_mode=True,
            sm_activity_source="none",
            memory_used_bytes=sum(r.memory_used_bytes or 0 for r in slices),
            memory_total_bytes=prof.memory_gib * 1024**3,
            processes=None,
            **self._board(gpu, now, sm_active / mig_sms),
            **self._links(gpu),
        )
        return [parent, *slices]

    def _work(self, phase: float, now: float, busy_idle: bool, level: float = 1.0) -> _Work:
        wave = math.sin(now / 23.0 + phase)
        slow = math.sin(now / 97.0 + 2 * phase)
        noise = self._rng.uniform(-0.02, 0.02)
        if busy_idle:
            # Kernels always resident (e.g. a spin-waiting NCCL kernel) while almost no SM does work.
            return _Work(0.99, 0.10 + 0.03 * wave, 0.01, 0.04 + noise / 4, wave, slow, noise)
        return _Work(
            utilization=min(1.0, 0.96 + 0.03 * wave + noise / 2),
            sm_active=level * (0.74 + 0.08 * wave + 0.04 * slow) + noise,
            tensor=level * (0.47 + 0.1 * wave + 0.04 * slow) + noise,
            dram=level * (0.36 + 0.08 * slow) + noise,
            wave=wave,
            slow=slow,
            noise=noise,
        )

    @staticmethod
    def _nvlink(gpu: _SimGpu) -> bool:
        return not _NO_NVLINK.search(gpu.identity.name)

    def _links(self, gpu: _SimGpu) -> dict:
        """A whole GPU's NVLink links and error counters (none ever, in the simulator)."""
        if not self._nvlink(gpu):
            return {"nvlink_links": 0}
        return {"nvlink_links": SIM_NVLINK_LINKS, "nvlink_errors": NvlinkErrors(0, 0, 0, 0)}

    def _board(self, gpu: _SimGpu, now: float, sm_active: float) -> dict:
        """Power, energy, temperature, clocks, throttle reasons, ECC and rows, for this SM activity."""
        prof = gpu.profile
        wave = math.sin(now / 23.0 + gpu.phase)
        slow = math.sin(now / 97.0 + 2 * gpu.phase)
        load = 0.25 + 0.7 * sm_active
        clock_ratio = 0.92 + 0.05 * slow
        reasons = {"sw_power_cap"} if load > 0.85 else set()
        temperature = 38 + 32 * load + 2 * slow
        if gpu.throttled:
            reasons |= {"hw_thermal_slowdown", "sw_thermal_slowdown"}
            clock_ratio, temperature = 0.62, 89 + 2 * wave
        power = prof.idle_watts + (prof.power_limit_watts - prof.idle_watts) * load * clock_ratio
        if gpu.last_time is not None:
            gpu.energy_joules += power * max(0.0, now - gpu.last_time)
        gpu.last_time = now
        return {
            "power_watts": round(power, 3),
            "power_limit_watts": prof.power_limit_watts,
            "energy_joules": round(gpu.energy_joules, 3),
            "temperature_celsius": round(temperature),
            "sm_clock_hertz": round(prof.sm_clock_max_mhz * clock_ratio) * 1e6,
            "sm_clock_max_hertz": prof.sm_clock_max_mhz * 1e6,
            "clock_event_reasons": frozenset(reasons),
            "ecc_corrected_total": gpu.ecc_corrected,
            "ecc_uncorrected_total": gpu.ecc_uncorrected,
            "remapped_rows": RemappedRows(0, 0, False, False),
        }

    @staticmethod
    def _shared_processes(
        utilization: float, dram: float, slow: float, total_bytes: int
    ) -> tuple[GpuProcess, ...]:
        """Two time-sliced processes: their SM figures add up to the GPU's utilisation."""
        share = 0.62 + 0.12 * slow  # the first process's share of the GPU's time
        shares = (share, 1.0 - share)
        return tuple(
            GpuProcess(
                pid,
                int(total_bytes * (0.45 if i == 0 else 0.25)),
                _clip(round(utilization * part, 2)),
                _clip(round(dram * 1.1 * part, 2)),
            )
            for i, (pid, part) in enumerate(zip(SHARED_PIDS, shares, strict=True))
        )


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)
