"""The dense peak FLOP/s of one device: its model's peaks, or a MIG slice's share of them."""

from __future__ import annotations

from ..specs import PeakTable
from .model import GpuIdentity


def device_peaks(identity: GpuIdentity, table: PeakTable) -> dict[str, float]:
    """{dtype: FLOP/s}. A MIG device gets the whole GPU's peak x its SMs / the GPU's SMs, and
    nothing (unknown) when either SM count is unknown: a slice never gets the whole GPU's peak."""
    peaks = table.peaks_for(identity.name)
    if identity.mig is None:
        return peaks
    fraction = table.mig_fraction(identity.name, identity.mig.sm_count)
    return {dtype: value * fraction for dtype, value in peaks.items()} if fraction is not None else {}


def device_peak(identity: GpuIdentity, table: PeakTable, dtype: str) -> float | None:
    return device_peaks(identity, table).get(dtype)
