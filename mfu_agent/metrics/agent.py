"""The agent's own metrics: build, sampling health, NVML failures."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ..gpu.model import Snapshot


def agent_families(
    *,
    version: str,
    backend: str,
    node: str,
    snapshot: Snapshot | None,
    nvml_up: bool | None,
    ticks: int,
    failures: int,
    nvml_errors: dict[tuple[str, str], int],
) -> Iterator[Metric]:
    yield InfoMetricFamily(
        "mfu_agent_build",
        "mfu-agent version, GPU backend and node name.",
        value={"version": version, "backend": backend, "node": node},
    )
    yield CounterMetricFamily("mfu_agent_samples", "Sampling ticks completed.", value=ticks)
    yield CounterMetricFamily(
        "mfu_agent_sample_failures", "Sampling ticks that failed as a whole.", value=failures
    )
    if nvml_up is not None:
        yield GaugeMetricFamily(
            "mfu_agent_nvml_up",
            "1 while NVML answers; 0 while it cannot be used (driver unloaded, version mismatch, every GPU "
            "lost) or no sample completed recently (a hung NVML call): then every GPU is exported down.",
            value=1 if nvml_up else 0,
        )
    if snapshot is not None:
        yield GaugeMetricFamily(
            "mfu_agent_sample_duration_seconds",
            "Time the last tick took to read every GPU.",
            value=snapshot.sample_duration_seconds,
        )
        yield GaugeMetricFamily(
            "mfu_agent_last_sample_timestamp_seconds",
            "Unix time of the last completed tick.",
            value=snapshot.taken_at,
        )
    errors = CounterMetricFamily(
        "mfu_agent_nvml_errors", "NVML calls that failed, by call and error.", labels=["call", "error"]
    )
    for (call, error), count in sorted(nvml_errors.items()):
        errors.add_metric([call, error], count)
    yield errors
