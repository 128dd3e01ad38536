"""Prometheus exposition: one Collector that renders the latest state at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

MetricSource = Callable[[], Iterable[Metric]]


class AgentCollector(Collector):
    """Yields the families of every source in turn; sources read immutable state and never call NVML."""

    def __init__(self, sources: list[MetricSource]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source()


def make_registry(sources: list[MetricSource]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(sources))
    return registry
