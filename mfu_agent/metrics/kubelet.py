"""The kubelet PodResources source's own health (attribution/cache.py); absent while it is off."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..attribution.cache import KubeletDevices


def kubelet_families(kubelet: KubeletDevices) -> Iterator[Metric]:
    up, errors, last_success = kubelet.health()
    if up is None:  # no socket: not on Kubernetes, or not mounted
        return
    yield GaugeMetricFamily(
        "mfu_agent_kubelet_up",
        "1 when the last kubelet PodResources List answered, 0 when it failed (names are kept for a while, "
        "then dropped); absent without the kubelet socket.",
        value=1 if up else 0,
    )
    yield GaugeMetricFamily(
        "mfu_agent_kubelet_last_success_timestamp_seconds",
        "Unix time of the last kubelet PodResources List that answered; 0 before the first.",
        value=last_success or 0.0,
    )
    failures = CounterMetricFamily(
        "mfu_agent_kubelet_errors",
        "kubelet PodResources List calls that failed, by gRPC status code (unavailable, "
        "deadline_exceeded, ...), no_socket (the socket went away), permission_denied (the agent may not "
        "connect: it must run as root) or bad_response.",
        labels=["error"],
    )
    for kind, count in sorted(errors.items()):
        failures.add_metric([kind], count)
    yield failures
