"""How many series /metrics carries besides the ranks' (jobs/budget.py counts those): an upper bound
from the latest snapshot, so that --max-series bounds the whole page. tests/test_bounds.py checks it
against a real render."""

from __future__ import annotations

from ..gpu.model import Snapshot
from ..gpu.nvml import CLOCK_EVENT_REASONS
from ..specs import DTYPES
from .gpu import _GAUGES, MAX_PROCESSES_PER_GPU

PER_DEVICE = 2 + 2 * len(DTYPES)  # info, up; a datasheet and a clock peak per dtype (or one "unknown")
# MIG mode, the plain gauges, energy, the clock event reasons, ECC and row-remapping counters, and
# the GPU's MFU and reporting ranks.
PER_LIVE_DEVICE = 1 + len(_GAUGES) + 1 + len(CLOCK_EVENT_REASONS) + 2 + 2 + 2
PER_PROCESS = 4  # memory, SM and memory utilisation, info
# build, samples, failures, sample duration, last sample, tracked ranks, the series budget and estimate
AGENT_SERIES = 8


def node_series(snapshot: Snapshot | None, labelled: int) -> int:
    """`labelled`: the series of the families whose label values come and go (XID and ECC events, NVML
    errors, report outcomes, evictions), as many as their keys now."""
    total = AGENT_SERIES + labelled
    for gpu in snapshot.gpus if snapshot else ():
        total += PER_DEVICE
        if gpu.up:
            total += PER_LIVE_DEVICE + PER_PROCESS * min(len(gpu.processes or ()), MAX_PROCESSES_PER_GPU)
    return total
