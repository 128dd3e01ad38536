"""The running agent: wires a GPU backend to the sampler, the event thread and the metrics."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from . import __version__
from .attribution import attribute_pid
from .events import EventCounter, EventWatcher
from .gpu.model import GpuBackend
from .jobs.registry import DEFAULT_MAX_SERIES, JobRegistry, pid_alive
from .jobs.state import StateStore
from .metrics import MetricSource, make_registry
from .metrics.agent import agent_families
from .metrics.cardinality import node_series
from .metrics.gpu import gpu_families
from .metrics.jobs import job_families, report_families
from .metrics.peaks import gpu_peak_families
from .metrics.rollups import gpu_rollup_families, job_node_families, rank_rollup_families
from .sampler import Sampler
from .specs import PeakTable

log = logging.getLogger(__name__)


@dataclass
class AgentOptions:
    interval: float = 1.0
    node_name: str = ""
    proc_root: str = "/proc"
    mfu_window_seconds: float = 60.0
    max_ranks: int = 4096
    max_series: int = DEFAULT_MAX_SERIES  # every series on /metrics; a report that would pass it gets 429
    rank_ttl_seconds: float = 600.0
    report_token: str | None = None
    peak_overrides: dict[str, dict[str, float]] = field(default_factory=dict)
    state_dir: str | None = None  # where each rank's totals are kept across restarts; None: not kept


class PodLookup:
    """Caches pid -> (pod_uid, container_id, slurm_job_id) so /proc is read once per process."""

    def __init__(self, proc_root: str) -> None:
        self.proc_root = proc_root
        self._cache: dict[int, tuple[str, str, str]] = {}

    def __call__(self, pid: int) -> tuple[str, str, str]:
        found = self._cache.get(pid)
        if found is None:
            a = attribute_pid(pid, self.proc_root)
            found = (a.pod_uid, a.container_id, a.slurm_job_id)
            if any(found):  # an empty answer may be a race with a starting process: ask again next time
                self._cache[pid] = found
        return found

    def keep_only(self, pids: Iterable[int]) -> None:
        live = set(pids)
        for pid in [p for p in self._cache if p not in live]:
            del self._cache[pid]


class Agent:
    def __init__(
        self,
        backend: GpuBackend,
        options: AgentOptions | None = None,
        extra_sources: list[MetricSource] | None = None,
    ) -> None:
        self.options = options or AgentOptions()
        self.backend = backend
        self.sampler = Sampler(backend, self.options.interval)
        self.events = EventCounter()
        self.watcher = EventWatcher(backend, self.events)
        self.pods = PodLookup(self.options.proc_root)
        self.peaks = PeakTable(self.options.peak_overrides)
        self.jobs = JobRegistry(
            self.peaks,
            self.options.mfu_window_seconds,
            self.options.max_ranks,
            self.options.rank_ttl_seconds,
            pid_alive=lambda pid: pid_alive(pid, self.options.proc_root),
            max_series=self.options.max_series,
            other_series=self.other_series,
        )
        self.state = (
            StateStore(self.options.state_dir, self.jobs, self.options.node_name)
            if self.options.state_dir
            else None
        )
        self.report_token = self.options.report_token
        self._report_outcomes: Counter[str] = Counter()
        self._outcomes_lock = threading.Lock()
        self.sources: list[MetricSource] = [
            self._gpu_metrics,
            self._job_metrics,
            self._agent_metrics,
            *(extra_sources or []),
        ]
        self.registry = make_registry(self.sources)
        self._running = False

    def start(self) -> None:
        if self.state is not None:
            self.state.load()
            self.state.start()
        self.sampler.sample_once()  # ready, and able to attribute reports, before the first request
        self.sampler.start()
        self.watcher.start()
        self._running = True

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self.state is not None:
            self.state.stop()
        self.sampler.stop()
        if self.watcher.stop():
            self.backend.close()
        else:  # a driver call that never returns: leave the buffers to process exit rather than race it
            log.warning("GPU event thread did not stop in time; skipping NVML clean-up")

    @property
    def ready(self) -> bool:
        return self.sampler.latest is not None

    def _gpu_metrics(self) -> Iterable[Metric]:
        snapshot = self.sampler.latest
        if snapshot is not None:
            self.pods.keep_only(p.pid for g in snapshot.gpus for p in (g.processes or ()))
        return gpu_families(snapshot, self.events.snapshot(), self.pods)

    def count_reports(self, outcome: str, count: int) -> None:
        with self._outcomes_lock:
            self._report_outcomes[outcome] += count

    def other_series(self) -> int:
        """Series on /metrics besides the ranks' (metrics/cardinality.py)."""
        gateway = getattr(self.backend, "gateway", None)
        labelled = (
            len(self.events)
            + len(self._report_outcomes)
            + len(self.jobs.removed)
            + (len(gateway.errors_snapshot()) if gateway else 0)
        )
        return node_series(self.sampler.latest, labelled)

    def _job_metrics(self) -> Iterable[Metric]:
        views = self.jobs.views()
        yield from job_families(views, self.pods)
        yield from rank_rollup_families(views)
        yield from job_node_families(views)
        yield from gpu_rollup_families(views, self.sampler.latest)
        yield from gpu_peak_families(self.sampler.latest, self.peaks)
        with self._outcomes_lock:
            outcomes = dict(self._report_outcomes)
        yield from report_families(
            outcomes,
            len(self.jobs),
            evictions=dict(self.jobs.removed),
            series=self.jobs.series() + self.other_series(),
            budget=self.options.max_series,
        )

    def _agent_metrics(self) -> Iterable[Metric]:
        gateway = getattr(self.backend, "gateway", None)
        return agent_families(
            version=__version__,
            backend=self.backend.name,
            node=self.options.node_name,
            snapshot=self.sampler.latest,
            ticks=self.sampler.ticks_total,
            failures=self.sampler.failures_total,
            nvml_errors=gateway.errors_snapshot() if gateway else {},
        )
