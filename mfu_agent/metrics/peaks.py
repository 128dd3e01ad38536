"""Per-GPU peak FLOP/s families: what the MFU denominators are built from.

* ``mfu_gpu_peak_flops``: the dense datasheet peak of the GPU's model, per dtype.
* ``mfu_gpu_clock_peak_flops``: that peak scaled to the SM clock the GPU runs at now,
  ``peak x current SM clock / the SM clock the datasheet figure assumes``. Never clamped: a GPU
  boosting above the datasheet's clock reads above the datasheet peak. Absent where either clock
  is unknown (no reading, no reference clock for the model, or an overridden peak).
* ``mfu_gpu_peak_flops_unknown``: 1 for a GPU whose device name has no peak at all; a warning is
  logged once per such name for the life of the process.

A MIG device's peak is its parent's x its SMs / the whole GPU's SMs (gpu/peaks.py), at the parent's
SM clock; unknown (flagged) when an SM count is unknown.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ..gpu.model import GpuReading, Snapshot
from ..gpu.peaks import device_peaks
from ..specs import PeakTable
from .labels import add_sample, device_labels

log = logging.getLogger(__name__)

_GPU_DTYPE = ["gpu", "uuid", "dtype"]

# Device names already warned about. NVML reports a handful of names per node, so this stays small.
_warned_names: set[str] = set()
_warned_lock = threading.Lock()


def gpu_peak_families(snapshot: Snapshot | None, peaks: PeakTable) -> Iterator[Metric]:
    peak = GaugeMetricFamily(
        "mfu_gpu_peak_flops",
        "Dense peak FLOP/s of the GPU model at each dtype it supports.",
        labels=_GPU_DTYPE,
    )
    clock_peak = GaugeMetricFamily(
        "mfu_gpu_clock_peak_flops",
        "Dense peak FLOP/s at the GPU's current SM clock: the datasheet peak x current SM clock / "
        "the SM clock the datasheet figure assumes (above the datasheet peak when boosting past it).",
        labels=_GPU_DTYPE,
    )
    unknown = GaugeMetricFamily(
        "mfu_gpu_peak_flops_unknown",
        "1 for a GPU whose model has no known peak FLOP/s (or a MIG device whose SM counts are unknown): "
        "add it with --peak-flops-file.",
        labels=["gpu", "uuid", "model"],
    )
    for gpu in snapshot.gpus if snapshot else ():
        if not gpu.up:
            continue  # a GPU down exports its identity and up only
        name = gpu.identity.name
        labels = device_labels(gpu.identity)
        by_dtype = device_peaks(gpu.identity, peaks)
        if not by_dtype:
            add_sample(unknown, {**labels, "model": name}, 1)
            _warn_once(name, gpu)
            continue
        # A MIG device runs at its parent's SM clock (NVML gives clocks for the whole GPU only).
        clocked = snapshot.by_index.get(gpu.index, gpu) if gpu.is_mig and snapshot else gpu
        sm_clock = _clock_hz(clocked)
        reference = peaks.reference_clocks_for(name) if sm_clock is not None else {}
        for dtype, value in by_dtype.items():
            add_sample(peak, {**labels, "dtype": dtype}, value)
            ref_clock = reference.get(dtype)
            if sm_clock is not None and ref_clock is not None:
                add_sample(clock_peak, {**labels, "dtype": dtype}, value * sm_clock / ref_clock)
    yield peak
    yield clock_peak
    yield unknown


def _clock_hz(gpu: GpuReading) -> float | None:
    """The current SM clock, or None when there is no usable reading (absent, zero, not finite)."""
    clock = gpu.sm_clock_hertz
    if clock is None or not math.isfinite(clock) or clock <= 0:
        return None
    return clock


def _warn_once(name: str, gpu: GpuReading) -> None:
    key = f"{name} MIG" if gpu.is_mig else name
    with _warned_lock:
        if key in _warned_names:
            return
        _warned_names.add(key)
    if gpu.is_mig:
        log.warning(
            "MIG devices of %r have no known peak FLOP/s: their peak is the GPU's x their SMs / the GPU's "
            'SMs, and %s. Give the GPU\'s SM count with --peak-flops-file, e.g. {%r: {"sm_count": 132}}',
            name,
            "NVML gave no SM count for the MIG device"
            if gpu.identity.mig is None or not gpu.identity.mig.sm_count
            else "the GPU's SM count (or its peak) is not known",
            name,
        )
        return
    log.warning(
        "no peak FLOP/s known for GPU model %r: MFU cannot be computed on it. Add its dense datasheet "
        'figures with --peak-flops-file (see docs/peak-flops.md), e.g. {%r: {"bf16": 312e12}}',
        name,
        name,
    )
