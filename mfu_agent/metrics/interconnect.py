"""Metric families for the GPUs' interconnect: PCIe and NVLink throughput (GPM) and NVLink errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..gpu.model import GpuReading
from ..gpu.nvml import NVLINK_ERROR_FIELDS
from .labels import add_sample, device_labels

DIRECTIONS = ("rx", "tx")
# PCIe and NVLink throughput by direction, NVLink errors by type: the most a live GPU exports.
INTERCONNECT_SERIES_PER_GPU = 2 * len(DIRECTIONS) + len(NVLINK_ERROR_FIELDS)


def interconnect_families(live: Iterable[GpuReading]) -> Iterator[Metric]:
    """`live`: the devices that answered at this tick (MIG devices carry none of these)."""
    pcie = GaugeMetricFamily(
        "mfu_gpu_pcie_bytes_per_second",
        "PCIe throughput of the GPU, rx into it and tx out of it (GPM, averaged between two samples).",
        labels=["gpu", "uuid", "direction"],
    )
    nvlink = GaugeMetricFamily(
        "mfu_gpu_nvlink_bytes_per_second",
        "NVLink throughput of the GPU summed over its links, rx into it and tx out of it (GPM, averaged "
        "between two samples); absent on a GPU without NVLink.",
        labels=["gpu", "uuid", "direction"],
    )
    errors = CounterMetricFamily(
        "mfu_gpu_nvlink_errors",
        "NVLink errors of the GPU summed over its links, since the driver loaded or the counters were "
        "reset (NVML field values, read every few samples): replay, recovery, crc_flit, crc_data.",
        labels=["gpu", "uuid", "type"],
    )
    for g in live:
        labels = device_labels(g.identity)
        a = g.activity
        if a is not None:
            for direction, value in (("rx", a.pcie_rx_bytes_per_second), ("tx", a.pcie_tx_bytes_per_second)):
                if value is not None:
                    add_sample(pcie, {**labels, "direction": direction}, value)
            for direction, value in (
                ("rx", a.nvlink_rx_bytes_per_second),
                ("tx", a.nvlink_tx_bytes_per_second),
            ):
                if value is not None:
                    add_sample(nvlink, {**labels, "direction": direction}, value)
        if g.nvlink_errors is not None:
            for kind in NVLINK_ERROR_FIELDS:
                count = getattr(g.nvlink_errors, kind)
                if count is not None:
                    add_sample(errors, {**labels, "type": kind}, count)
    yield from (pcie, nvlink, errors)
