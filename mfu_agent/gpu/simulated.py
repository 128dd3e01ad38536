"""Simulated GPUs for demos and tests: believable, time-varying readings and scriptable faults."""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .model import GpuEvent, GpuIdentity, GpuProcess, GpuReading, RemappedRows, SmActivity

DEFAULT_SPEC = "8xNVIDIA H100 80GB HBM3"
FAULT_KINDS = ("lost", "busy-idle", "throttle", "xid", "ecc")


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
        (r"\bA100\b.*\bPCI", _Profile("ampere", 80, 300, 40, 1410, False)),
        (r"\bA100\b", _Profile("ampere", 80, 400, 55, 1410, False)),
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


def profile_for(name: str) -> _Profile:
    profile = next((prof for pattern, prof in _PROFILES if pattern.search(name)), _FALLBACK)
    memory = re.search(r"(\d+)\s*GB", name)
    if memory:
        profile = _Profile(**{**profile.__dict__, "memory_gib": int(memory.group(1))})
    return profile


def parse_spec(spec: str) -> list[str]:
    """'8xNVIDIA H100 80GB HBM3' or '2xNVIDIA L4,1xTesla T4' -> one device name per GPU."""
    names: list[str] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\S.*?)\s*", part)
        if not match:
            raise ValueError(
                f"bad --simulate spec {part.strip()!r}: expected COUNTxDEVICE NAME, e.g. {DEFAULT_SPEC!r}"
            )
        count = int(match.group(1))
        if not 1 <= count <= 64:
            raise ValueError(f"bad --simulate spec {part.strip()!r}: COUNT must be 1..64")
        names += [match.group(2)] * count
    if len(names) > 64:
        raise ValueError("bad --simulate spec: at most 64 GPUs in all")
    return names


@dataclass
class _SimGpu:
    identity: GpuIdentity
    profile: _Profile
    phase: float
    energy_joules: float = 0.0
    last_time: float | None = None
    lost: bool = False
    busy_idle: bool = False
    throttled: bool = False
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    shared: bool = False


SHARED_PIDS = (4_190_001, 4_190_002)  # the two processes of a `shared:GPU` fault


class SimulatedBackend:
    name = "simulated"

    def __init__(self, spec: str = DEFAULT_SPEC, seed: int = 0, clock=time.time) -> None:
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._events: deque[GpuEvent] = deque(maxlen=10_000)
        self._event_ready = threading.Condition(self._lock)
        self._closed = False
        self._gpus = [
            _SimGpu(
                identity=GpuIdentity(
                    index=i,
                    uuid=f"GPU-{seed:08x}-5157-4000-8000-{i:012x}",
                    name=name,
                    pci_bus_id=f"00000000:{0x18 + i * 0x10 & 0xFF:02X}:00.0",
                    architecture=profile_for(name).architecture,
                ),
                profile=profile_for(name),
                phase=self._rng.uniform(0, 2 * math.pi),
                energy_joules=self._rng.uniform(1e6, 5e7),
            )
            for i, name in enumerate(parse_spec(spec))
        ]

    # -- faults -------------------------------------------------------------------------------
    def _gpu(self, index: int) -> _SimGpu:
        if not 0 <= index < len(self._gpus):
            raise ValueError(f"no simulated GPU {index}: there are {len(self._gpus)}")
        return self._gpus[index]

    def set_lost(self, index: int, lost: bool = True) -> None:
        with self._lock:
            self._gpu(index).lost = lost

    def set_busy_idle(self, index: int, on: bool = True) -> None:
        with self._lock:
            self._gpu(index).busy_idle = on

    def set_throttled(self, index: int, on: bool = True) -> None:
        with self._lock:
            self._gpu(index).throttled = on

    def set_processes(
        self,
        index: int,
        processes: list[tuple[int, int | None]] | list[tuple[int, int | None, float | None, float | None]],
    ) -> None:
        """(pid, used memory bytes) or (pid, used memory bytes, SM ratio, memory ratio) per process."""
        with self._lock:
            self._gpu(index).processes = tuple(GpuProcess(*proc) for proc in processes)

    def set_shared(self, index: int, on: bool = True) -> None:
        """Two processes time-share this GPU, each with its own, wandering SM and memory utilisation
        (pids SHARED_PIDS); they replace set_processes' list while on."""
        with self._lock:
            self._gpu(index).shared = on

    def inject_xid(self, index: int, xid: int, count: int = 1) -> None:
        with self._lock:
            gpu = self._gpu(index)
            for _ in range(count):
                self._events.append(GpuEvent(index, gpu.identity.uuid, "xid", xid))
            self._event_ready.notify_all()

    def inject_double_bit_ecc(self, index: int) -> None:
        with self._lock:
            gpu = self._gpu(index)
            gpu.ecc_uncorrected += 1
            self._events.append(GpuEvent(index, gpu.identity.uuid, "double_bit_ecc"))
            self._event_ready.notify_all()

    def apply_fault(self, spec: str) -> None:
        """'lost:3', 'busy-idle:2', 'throttle:1', 'ecc:0', 'shared:6' or 'xid:4:79' (as given to --fault)."""
        actions = {
            "lost": self.set_lost,
            "busy-idle": self.set_busy_idle,
            "throttle": self.set_throttled,
            "ecc": self.inject_double_bit_ecc,
            "shared": self.set_shared,
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
                "shared:GPU or xid:GPU:CODE"
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
            return [self._read(gpu, now) for gpu in self._gpus]

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
    def _read(self, gpu: _SimGpu, now: float) -> GpuReading:
        prof = gpu.profile
        if gpu.lost:
            gpu.last_time = None
            return GpuReading(
                identity=gpu.identity, up=False, sm_activity_source="gpm" if prof.gpm else "none"
            )
        wave = math.sin(now / 23.0 + gpu.phase)
        slow = math.sin(now / 97.0 + 2 * gpu.phase)
        noise = self._rng.uniform(-0.02, 0.02)
        if gpu.busy_idle:
            # Kernels always resident (e.g. a spin-waiting NCCL kernel) while almost no SM does work.
            utilization, sm_active, tensor, dram = 0.99, 0.10 + 0.03 * wave, 0.01, 0.04 + noise / 4
        else:
            utilization = min(1.0, 0.96 + 0.03 * wave + noise / 2)
            sm_active = 0.74 + 0.08 * wave + 0.04 * slow + noise
            tensor = 0.47 + 0.1 * wave + 0.04 * slow + noise
            dram = 0.36 + 0.08 * slow + noise
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
        total = prof.memory_gib * 1024**3
        used = int(total * (0.78 + 0.01 * slow)) if not gpu.busy_idle else int(total * 0.35)
        activity = (
            SmActivity(
                sm_active=_clip(sm_active),
                sm_occupancy=_clip(sm_active * 0.55),
                tensor_active=_clip(tensor),
                dram_active=_clip(dram),
                fp16_active=_clip(0.04 + noise / 4),
                fp32_active=_clip(0.09 + 0.02 * wave),
                fp64_active=0.0,
            )
            if prof.gpm
            else None
        )
        return GpuReading(
            identity=gpu.identity,
            up=True,
            sm_activity_source="gpm" if prof.gpm else "none",
            utilization_ratio=_clip(round(utilization, 2)),
            memory_utilization_ratio=_clip(round(dram * 1.1, 2)),
            memory_used_bytes=used,
            memory_total_bytes=total,
            power_watts=round(power, 3),
            power_limit_watts=prof.power_limit_watts,
            energy_joules=round(gpu.energy_joules, 3),
            temperature_celsius=round(temperature),
            sm_clock_hertz=round(prof.sm_clock_max_mhz * clock_ratio) * 1e6,
            sm_clock_max_hertz=prof.sm_clock_max_mhz * 1e6,
            clock_event_reasons=frozenset(reasons),
            ecc_corrected_total=gpu.ecc_corrected,
            ecc_uncorrected_total=gpu.ecc_uncorrected,
            remapped_rows=RemappedRows(0, 0, False, False),
            processes=self._shared_processes(utilization, dram, slow, total) if gpu.shared else gpu.processes,
            activity=activity,
        )

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
