"""How many series /metrics carries besides the ranks' (jobs/budget.py counts those): an upper bound
from the latest snapshot, so that --max-series bounds the whole page. tests/test_bounds.py checks it
against a real render."""

from __future__ import annotations

from ..cost.meter import UsageMeter
from ..gpu.model import Snapshot
from ..gpu.nvml import CLOCK_EVENT_REASONS
from ..specs import DTYPES
from .gpu import _GAUGES, MAX_PROCESSES_PER_GPU
from .health import HEALTH_SERIES_PER_GPU
from .interconnect import INTERCONNECT_SERIES_PER_GPU

PER_DEVICE = 3  # info, up, reading age: also for a device down or gone
# MIG mode, a datasheet and a clock peak per dtype (or one "unknown"), the plain gauges, energy, the
# clock event reasons, ECC and row-remapping counters, the GPU's MFU and reporting ranks, and its PCIe
# and NVLink throughput and NVLink error counters.
PER_LIVE_DEVICE = (
    1
    + 2 * len(DTYPES)
    + len(_GAUGES)
    + 1
    + len(CLOCK_EVENT_REASONS)
    + 2
    + 2
    + 2
    + INTERCONNECT_SERIES_PER_GPU
)
PER_PROCESS = 4  # memory, SM and memory utilisation, info
# build, samples, failures, NVML up, sample duration, last sample, tracked ranks, the series budget
# and estimate
AGENT_SERIES = 9


def node_series(snapshot: Snapshot | None, labelled: int) -> int:
    """`labelled`: the series of the families whose label values come and go (XID and ECC events, NVML
    errors, report outcomes, evictions), as many as their keys now."""
    total = AGENT_SERIES + labelled
    if snapshot is None:
        return total
    total += (PER_DEVICE + HEALTH_SERIES_PER_GPU) * len(snapshot.vanished)
    for gpu in snapshot.gpus:
        total += PER_DEVICE + (0 if gpu.is_mig else HEALTH_SERIES_PER_GPU)
        if gpu.up:
            total += PER_LIVE_DEVICE + PER_PROCESS * min(len(gpu.processes or ()), MAX_PROCESSES_PER_GPU)
    return total


def cost_series(meter: UsageMeter) -> int:
    """The series of cost_families now: the target, each device's idle seconds and (with prices) its
    cost counters or its price_unknown flag (the jobs' energy is counted with the jobs: jobs/budget.py)."""
    total = 1
    for d in meter.devices():
        total += d.idle_seconds is not None
        if meter.prices is not None:
            total += 1 if d.price_per_hour is None else (d.identity.mig is None) + 2 * d.runs_work
    return total
