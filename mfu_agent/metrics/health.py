"""Metric families for the GPUs' health (mfu_agent/health): the recommended action and its severity."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ..health.state import GpuHealth
from .labels import add_sample, device_labels

HEALTH_SERIES_PER_GPU = 2  # action, severity


def health_families(healths: list[GpuHealth]) -> Iterator[Metric]:
    action = GaugeMetricFamily(
        "mfu_gpu_health_action",
        "The GPU's most severe health cause (reason) and the action it calls for; the value is always 1.",
        labels=["gpu", "uuid", "action", "reason"],
    )
    severity = GaugeMetricFamily(
        "mfu_gpu_health_severity",
        "Severity of mfu_gpu_health_action: 0 none, 1 unknown, 2 restart_application, 3 reset_gpu, "
        "4 reboot_node, 5 inspect_hardware.",
        labels=["gpu", "uuid"],
    )
    for health in healths:
        labels = device_labels(health.gpu.identity)
        add_sample(action, {**labels, "action": health.action, "reason": health.reason}, 1)
        add_sample(severity, labels, health.severity)
    yield action
    yield severity
