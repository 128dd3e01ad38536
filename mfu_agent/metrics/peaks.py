"""Per-GPU peak FLOP/s families: what the MFU denominators are built from."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ..gpu.model import Snapshot


def gpu_peak_families(
    snapshot: Snapshot | None, peaks_for: Callable[[str], dict[str, float]]
) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "mfu_gpu_peak_flops",
        "Dense peak FLOP/s of the GPU model at each dtype it supports.",
        labels=["gpu", "uuid", "dtype"],
    )
    for gpu in snapshot.gpus if snapshot else ():
        for dtype, value in peaks_for(gpu.identity.name).items():
            family.add_metric([str(gpu.index), gpu.uuid, dtype], value)
    yield family
