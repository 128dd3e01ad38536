"""Metric families for GPU time, its cost and the jobs' energy (cost/meter.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..cost.meter import UsageMeter
from ..jobs.registry import RankView
from .labels import add_sample, device_labels

DEVICE = ["gpu", "uuid"]


def cost_families(meter: UsageMeter) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "mfu_agent_mfu_target_ratio",
        "The MFU target (--mfu-target) below which GPU time counts in mfu_gpu_below_target_cost_dollars; "
        "the recording rule mfu:target_mfu:ratio reads it.",
        value=meter.target,
    )
    idle = CounterMetricFamily(
        "mfu_gpu_idle_allocated_seconds",
        "Seconds the device had compute processes while its GPM SM active ratio was below --idle-sm-active; "
        "absent on devices without SM activity (no GPM).",
        labels=DEVICE,
    )
    devices = meter.devices()
    for d in devices:
        if d.idle_seconds is not None:
            add_sample(idle, device_labels(d.identity), d.idle_seconds)
    yield idle
    if meter.prices is None:
        return  # no price file: no cost series
    cost = CounterMetricFamily(
        "mfu_gpu_cost_dollars",
        "US dollars the whole GPU cost while the agent read it (its price per hour in --gpu-price-file).",
        labels=DEVICE,
    )
    idle_cost = CounterMetricFamily(
        "mfu_gpu_idle_cost_dollars",
        "US dollars of the device's price (a MIG device: its share) during mfu_gpu_idle_allocated_seconds.",
        labels=DEVICE,
    )
    below = CounterMetricFamily(
        "mfu_gpu_below_target_cost_dollars",
        "US dollars spent below the MFU target: price x time x max(0, target - MFU) / target while the "
        "device has an MFU and is not idle.",
        labels=DEVICE,
    )
    unknown = GaugeMetricFamily(
        "mfu_gpu_price_unknown",
        "1 for a device with no price: its model is not in --gpu-price-file and there is no default, or "
        "a MIG device whose share of its GPU is unknown. It has no cost series.",
        labels=[*DEVICE, "model"],
    )
    for d in devices:
        labels = device_labels(d.identity)
        if d.price_per_hour is None:
            add_sample(unknown, {**labels, "model": d.identity.name}, 1)
            continue
        if d.identity.mig is None:
            add_sample(cost, labels, d.cost_dollars)
        if d.runs_work:
            add_sample(idle_cost, labels, d.idle_cost_dollars)
            add_sample(below, labels, d.below_target_cost_dollars)
    yield from (cost, idle_cost, below, unknown)


def job_energy_families(meter: UsageMeter, views: list[RankView]) -> Iterator[Metric]:
    energy = CounterMetricFamily(
        "mfu_job_node_energy_joules",
        "Energy of the job's GPUs on this node while its ranks ran there: each GPU's energy split equally "
        "among the ranks on it. Absent for a job with a rank on a MIG device or a GPU without an energy "
        "counter.",
        labels=["job_id"],
    )
    for job_id, joules in sorted(meter.job_joules({v.job_id for v in views}).items()):
        energy.add_metric([job_id], joules)
    yield energy
