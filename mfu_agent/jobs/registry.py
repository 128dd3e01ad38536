"""Tracks the ranks that report: cumulative counters, GPU attribution and MFU over a sliding window.

Reported counters are cumulative since the job started. A decrease means the job restarted: the new
value is counted as work done since the restart, so the exported counters only ever grow and no rate
is ever negative.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..gpu.model import GpuReading, Snapshot
from ..specs import PeakTable

log = logging.getLogger(__name__)

COUNTERS = ("model_flops", "hardware_flops", "tokens", "samples")
HISTORY_SLOTS = 128  # samples kept per rank for the window; closer reports are merged into the newest


class ReportRejected(Exception):
    """A report that cannot be applied; `field` names the offending input."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ReportData:
    job_id: str
    rank: int
    model_flops_total: float
    dtype: str = "bf16"
    local_rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    gpus: tuple[int | str, ...] | None = None
    hardware_flops_total: float | None = None
    tokens_total: float | None = None
    samples_total: float | None = None
    step: int | None = None
    timestamp: float | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GpuShare:
    index: int
    uuid: str
    model: str
    peak_flops: float | None


@dataclass
class _Point:
    t: float
    values: tuple[float, float, float, float]  # accumulated COUNTERS at t


@dataclass
class RankState:
    job_id: str
    rank: int
    dtype: str
    gpus: tuple[GpuShare, ...]
    attributed_by: str
    local_rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    step: int | None = None
    has: set[str] = field(default_factory=set)  # which optional counters this rank has ever sent
    totals: list[float] = field(default_factory=lambda: [0.0] * len(COUNTERS))  # accumulated, monotonic
    last_raw: list[float | None] = field(default_factory=lambda: [None] * len(COUNTERS))
    last_received: float = 0.0
    last_progress: float = 0.0  # receive time of the last report whose sender time moved forward
    restarts: int = 0
    history: deque[_Point] = field(default_factory=lambda: deque(maxlen=HISTORY_SLOTS))

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.rank


@dataclass(frozen=True, slots=True)
class RankView:
    """What the metrics and /v1/jobs show of one rank; computed under the registry lock, then read freely."""

    job_id: str
    rank: int
    dtype: str
    gpus: tuple[GpuShare, ...]
    attributed_by: str
    local_rank: int | None
    world_size: int | None
    pid: int | None
    labels: tuple[tuple[str, str], ...]
    step: int | None
    has: frozenset[str]
    totals: tuple[float, float, float, float]
    rates: tuple[float, float, float, float] | None  # per second over the window; None until 2 points
    last_received: float
    restarts: int

    @property
    def peak_flops(self) -> float | None:
        peaks = [g.peak_flops for g in self.gpus]
        return sum(peaks) if peaks and None not in peaks else None  # type: ignore[arg-type]

    def utilisation(self, counter: str) -> float | None:
        peak = self.peak_flops
        if self.rates is None or not peak or counter not in self.has:
            return None
        return self.rates[COUNTERS.index(counter)] / peak


class JobRegistry:
    def __init__(
        self,
        peaks: PeakTable | None = None,
        window_seconds: float = 60.0,
        max_ranks: int = 4096,
        rank_ttl_seconds: float = 600.0,
        clock=time.time,
    ) -> None:
        self.peaks = peaks or PeakTable()
        self.window = window_seconds
        self.max_ranks = max_ranks
        self.ttl = rank_ttl_seconds
        self._clock = clock
        self._ranks: dict[tuple[str, int], RankState] = {}
        self._lock = threading.Lock()
        self._unknown_peaks_logged: set[tuple[str, str]] = set()
        self.expired_total = 0
        # Lower bound of every tracked rank's last_received: while now - it <= ttl no rank can be stale,
        # so apply() skips the O(ranks) sweep (docs/performance.md).
        self._oldest_received = math.inf

    # -- ingest -------------------------------------------------------------------------------
    def apply(self, reports: Sequence[ReportData], snapshot: Snapshot | None) -> int:
        """Applies every report or none: raises ReportRejected before changing anything."""
        now = self._clock()
        shares = [self._attribute(i, r, snapshot, len(reports) > 1) for i, r in enumerate(reports)]
        with self._lock:
            if now - self._oldest_received > self.ttl:
                self._expire(now)
            # Not `set - self._ranks.keys()`: that walks every tracked rank, this only the batch.
            new_keys = {key for key in ((r.job_id, r.rank) for r in reports) if key not in self._ranks}
            if len(self._ranks) + len(new_keys) > self.max_ranks:
                raise ReportRejected(
                    429,
                    "rank",
                    f"the agent already tracks {len(self._ranks)} of at most {self.max_ranks} (job_id, rank) "
                    f"pairs; {len(new_keys)} new pair(s) refused. Raise --max-ranks or wait for idle ranks "
                    f"to expire (--rank-ttl).",
                )
            for report, (gpus, how) in zip(reports, shares, strict=True):
                self._apply_one(report, gpus, how, now)
        return len(reports)

    def _attribute(
        self, i: int, report: ReportData, snapshot: Snapshot | None, batch: bool
    ) -> tuple[tuple[GpuShare, ...], str]:
        where = f"reports[{i}]." if batch else ""
        all_gpus = snapshot.gpus if snapshot else ()
        chosen: list[GpuReading]
        if report.gpus is not None:
            chosen, how = [], "gpus"
            for wanted in report.gpus:
                if snapshot is None:
                    found = None
                elif isinstance(wanted, int):
                    found = snapshot.by_index.get(wanted)
                else:
                    found = snapshot.by_uuid.get(wanted)
                if found is None:
                    have = ", ".join(str(g.index) for g in all_gpus) or "none"
                    raise ReportRejected(
                        422,
                        f"{where}gpus",
                        f"{where}gpus: GPU {wanted!r} does not exist on this node (GPUs: {have})",
                    )
                if found not in chosen:
                    chosen.append(found)
        else:
            chosen, how = (snapshot.gpu_for_pid(report.pid) if snapshot and report.pid else []), "pid"
            if not chosen and report.local_rank is not None:
                how = "local_rank"
                if report.local_rank >= len(all_gpus):
                    raise ReportRejected(
                        422,
                        f"{where}local_rank",
                        f"{where}local_rank: {report.local_rank} has no GPU of that index on this node "
                        f"({len(all_gpus)} GPU(s)); send gpus explicitly",
                    )
                chosen = [all_gpus[report.local_rank]]
            if not chosen:
                raise ReportRejected(
                    422,
                    f"{where}gpus",
                    f"{where}gpus: cannot tell which GPU this rank uses: pid {report.pid} holds no GPU in "
                    f"NVML's process list and no local_rank was given; send gpus or local_rank",
                )
        return tuple(self._share(g, report.dtype) for g in chosen), how

    def _share(self, gpu: GpuReading, dtype: str) -> GpuShare:
        peak = self.peaks.peak_flops(gpu.identity.name, dtype)
        if peak is None and (gpu.identity.name, dtype) not in self._unknown_peaks_logged:
            self._unknown_peaks_logged.add((gpu.identity.name, dtype))
            log.warning(
                "no dense peak FLOP/s known for %r at %s: MFU is not computed for it; add it with "
                "--peak-flops-file",
                gpu.identity.name,
                dtype,
            )
        return GpuShare(gpu.index, gpu.uuid, gpu.identity.name, peak)

    def _apply_one(self, report: ReportData, gpus: tuple[GpuShare, ...], how: str, now: float) -> None:
        state = self._ranks.get((report.job_id, report.rank))
        if state is None:
            state = RankState(report.job_id, report.rank, report.dtype, gpus, how)
            self._ranks[state.key] = state
        state.dtype, state.gpus, state.attributed_by = report.dtype, gpus, how
        state.local_rank, state.world_size, state.pid = report.local_rank, report.world_size, report.pid
        state.labels = report.labels
        if report.step is not None:
            state.step = report.step
        raw = (
            report.model_flops_total,
            report.hardware_flops_total,
            report.tokens_total,
            report.samples_total,
        )
        # A restart shows as the primary counter going down; all counters restart together.
        restarted = state.last_raw[0] is not None and raw[0] < state.last_raw[0]
        if restarted:
            state.restarts += 1
            log.info("job %s rank %d restarted (model_flops_total went down)", report.job_id, report.rank)
        for i, value in enumerate(raw):
            if value is None:
                continue
            state.has.add(COUNTERS[i])
            previous = state.last_raw[i]
            if previous is None:
                # The first report brings the job's total so far; a counter first sent later starts here.
                delta = 0.0 if state.history else value
            elif restarted or value < previous:
                delta = value
            else:
                delta = value - previous
            state.totals[i] += delta
            state.last_raw[i] = value
        state.last_received = now
        if now < self._oldest_received:
            self._oldest_received = now
        t = report.timestamp if report.timestamp is not None else now
        point = _Point(t, tuple(state.totals))  # type: ignore[arg-type]
        history = state.history
        if history and t <= history[-1].t:
            # The same step time again (a stalled job re-posting), or a sender clock that went back:
            # keep the point's time, take the new values.
            history[-1] = _Point(history[-1].t, point.values)
            return
        state.last_progress = now
        if len(history) >= 2 and t - history[-2].t < self.window / (HISTORY_SLOTS - 2):
            history[-1] = point  # too close to the one before: merge
        else:
            history.append(point)
        while len(history) > 2 and history[1].t <= t - self.window:
            history.popleft()

    # -- reading ------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        stale = []
        oldest = math.inf
        for key, s in self._ranks.items():
            if now - s.last_received > self.ttl:
                stale.append(key)
            elif s.last_received < oldest:
                oldest = s.last_received
        for key in stale:
            del self._ranks[key]
        self.expired_total += len(stale)
        self._oldest_received = oldest

    def views(self) -> list[RankView]:
        now = self._clock()
        with self._lock:
            self._expire(now)
            return [self._view(s, now) for s in sorted(self._ranks.values(), key=lambda s: s.key)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._ranks)

    def _view(self, s: RankState, now: float) -> RankView:
        rates = None
        # No MFU for a rank whose work has not moved on for a whole window (silent, or stalled and
        # re-posting the same step time): a stale figure would look healthy.
        if len(s.history) >= 2 and now - s.last_progress <= self.window:
            first, last = s.history[0], s.history[-1]
            if last.t - first.t > self.window:  # the oldest point is older than the window: cut at its edge
                first = next((p for p in s.history if p.t >= last.t - self.window), first)
            span = last.t - first.t
            if span > 0:
                rates = tuple((b - a) / span for a, b in zip(first.values, last.values, strict=True))
        return RankView(
            job_id=s.job_id,
            rank=s.rank,
            dtype=s.dtype,
            gpus=s.gpus,
            attributed_by=s.attributed_by,
            local_rank=s.local_rank,
            world_size=s.world_size,
            pid=s.pid,
            labels=s.labels,
            step=s.step,
            has=frozenset(s.has),
            totals=tuple(s.totals),
            rates=rates,  # type: ignore[arg-type]
            last_received=s.last_received,
            restarts=s.restarts,
        )
