"""The running agent: wires a GPU backend to the sampler, the event thread and the metrics."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from . import __version__
from .attribution.cache import KubeletDevices
from .attribution.owners import Attributed, Attribution
from .cost.meter import UsageMeter
from .cost.prices import PriceTable
from .events import EventCounter, EventWatcher
from .gpu.model import GpuBackend, GpuReading, Snapshot
from .health.catalogue import load_catalogue
from .health.state import HealthTracker
from .jobs.registry import DEFAULT_MAX_SERIES, JobRegistry, pid_alive
from .jobs.state import StateStore
from .metrics import MetricSource, make_registry
from .metrics.agent import agent_families
from .metrics.cardinality import cost_series, node_series
from .metrics.cost import cost_families, job_energy_families
from .metrics.goodput import goodput_families
from .metrics.gpu import gpu_families
from .metrics.health import health_families
from .metrics.jobs import job_families, report_families
from .metrics.kubelet import kubelet_families
from .metrics.peaks import gpu_peak_families
from .metrics.rollups import gpu_rollup_families, job_node_families, rank_rollup_families
from .sampler import Sampler
from .specs import PeakTable

log = logging.getLogger(__name__)

# A device's readings are exported while its last good reading is at most this old: the larger of
# STALE_INTERVALS sampling intervals and STALE_MIN_SECONDS. Older, it is exported as down (info, up 0
# and the reading's age only), also while the sampler is stuck in an NVML call that does not return.
STALE_INTERVALS = 3
STALE_MIN_SECONDS = 10.0


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
    kubelet_socket: str = ""  # the kubelet's PodResources socket for pod names; "": not asked
    prices: PriceTable | None = None  # dollars per GPU-hour by model; None: no cost series
    mfu_target: float = 0.4  # below it, GPU time counts in mfu_gpu_below_target_cost_dollars_total
    idle_sm_active: float = 0.2  # a GPU with processes and SM active below this is idle


class Agent:
    def __init__(
        self,
        backend: GpuBackend,
        options: AgentOptions | None = None,
        extra_sources: list[MetricSource] | None = None,
        clock=time.time,
    ) -> None:
        self.options = options or AgentOptions()
        self.backend = backend
        self._clock = clock  # Unix time: of the snapshots, and of their age when exported
        self.sampler = Sampler(backend, self.options.interval, clock)
        self.events = EventCounter()
        self.watcher = EventWatcher(backend, self.events)
        self.kubelet = KubeletDevices(self.options.kubelet_socket) if self.options.kubelet_socket else None
        self.attribution = Attribution(self.options.proc_root, self.kubelet)
        self.health = HealthTracker(load_catalogue())
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
        self.stale_after = max(STALE_INTERVALS * self.options.interval, STALE_MIN_SECONDS)
        self.usage = UsageMeter(
            self.jobs.views,
            self.peaks,
            self.options.prices,
            target=self.options.mfu_target,
            idle_below=self.options.idle_sm_active,
            max_gap=self.stale_after,  # a longer gap between samples: the time in it is not counted
        )
        self.sampler.listeners.append(self.usage.tick)
        self.report_token = self.options.report_token
        self._report_outcomes: Counter[str] = Counter()
        self._outcomes_lock = threading.Lock()
        self.sources: list[MetricSource] = [
            self._gpu_metrics,
            self._health_metrics,
            self._job_metrics,
            self._agent_metrics,
            self._cost_metrics,
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
        if self.kubelet is not None:
            self.kubelet.start()
        self._running = True

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self.state is not None:
            self.state.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
        # Bounded waits only: a driver call that never returns keeps its (daemon) thread, and the NVML
        # buffers are left to process exit rather than freed under it.
        sampler_stopped = self.sampler.stop()
        events_stopped = self.watcher.stop()
        if sampler_stopped and events_stopped:
            self.backend.close()
        else:
            stuck = "the sampler" if not sampler_stopped else "the GPU event thread"
            log.warning("%s is stuck in an NVML call; skipping NVML clean-up", stuck)

    def snapshot(self, now: float | None = None) -> Snapshot | None:
        """The latest snapshot as it may be exported at Unix time `now`: once it is older than
        `stale_after`, every device in it is down (readings withheld) and NVML counts as unavailable."""
        snapshot = self.sampler.latest
        if snapshot is None:
            return None
        age = (self._clock() if now is None else now) - snapshot.taken_at
        if age <= self.stale_after:
            return snapshot
        return dataclasses.replace(
            snapshot,
            gpus=tuple(_down(g) for g in snapshot.gpus),
            nvml_up=False,
            unavailable_reason=f"no GPU sample completed for {age:.0f} s (stale after "
            f"{self.stale_after:g} s): the sampler is stuck, probably in an NVML call that does not return",
        )

    def readiness(self) -> str:
        """Why the agent is not ready, in one line; "" when it is (NVML answers and the snapshot is fresh)."""
        snapshot = self.snapshot()
        if snapshot is None:
            return "waiting for the first GPU sample"
        if not snapshot.nvml_up:
            if self.sampler.latest is not None and not self.sampler.latest.nvml_up:
                return f"NVML is unavailable: {snapshot.unavailable_reason}"
            return snapshot.unavailable_reason
        return ""

    @property
    def ready(self) -> bool:
        return not self.readiness()

    def _gpu_metrics(self) -> Iterable[Metric]:
        now = self._clock()
        snapshot = self.snapshot(now)
        return gpu_families(snapshot, self.events.snapshot(), self.attribution.of(snapshot), now=now)

    def attributed(self) -> Attributed:
        """Who each GPU process and device of the latest snapshot belongs to (attribution/owners.py)."""
        return self.attribution.of(self.snapshot())

    def _health_metrics(self) -> Iterable[Metric]:
        now = self._clock()
        return health_families(self.health.update(self.snapshot(now), self.events.snapshot(), now))

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
            + (self.kubelet.series() if self.kubelet else 0)
            + cost_series(self.usage)
        )
        return node_series(self.sampler.latest, labelled)

    def _job_metrics(self) -> Iterable[Metric]:
        views = self.jobs.views()
        snapshot = self.snapshot()
        yield from job_families(views, self.attribution.of(snapshot))
        yield from rank_rollup_families(views)
        yield from goodput_families(views)
        yield from job_node_families(views)
        yield from gpu_rollup_families(views, snapshot)
        yield from gpu_peak_families(snapshot, self.peaks)
        yield from job_energy_families(self.usage, views)  # counted with the jobs' series (jobs/budget.py)
        with self._outcomes_lock:
            outcomes = dict(self._report_outcomes)
        yield from report_families(
            outcomes,
            len(self.jobs),
            evictions=dict(self.jobs.removed),
            series=self.jobs.series() + self.other_series(),
            budget=self.options.max_series,
        )

    def _cost_metrics(self) -> Iterable[Metric]:
        yield from cost_families(self.usage)

    def _agent_metrics(self) -> Iterable[Metric]:
        gateway = getattr(self.backend, "gateway", None)
        current = self.snapshot()
        yield from agent_families(
            version=__version__,
            backend=self.backend.name,
            node=self.options.node_name,
            snapshot=self.sampler.latest,
            nvml_up=current.nvml_up if current is not None else None,
            ticks=self.sampler.ticks_total,
            failures=self.sampler.failures_total,
            nvml_errors=gateway.errors_snapshot() if gateway else {},
        )
        if self.kubelet is not None:
            yield from kubelet_families(self.kubelet)


def _down(gpu: GpuReading) -> GpuReading:
    """The device as exported when its reading is too old: identity and up=False, nothing else."""
    return GpuReading(
        identity=gpu.identity, up=False, mig_mode=gpu.mig_mode, sm_activity_source=gpu.sm_activity_source
    )
