"""Tracks the ranks that report: whose they are, their counters, the GPUs they run on, and their MFU.

MFU of a rank on a GPU is the sum over dtypes of (its FLOP/s in that dtype on the GPU / the GPU's peak
in that dtype). Over several GPUs (a rank on two GPUs, a job, a fleet) MFU is peak-weighted: the sum of
(MFU on the GPU x W) over the sum of W, where W is the GPU's peak at the fastest dtype reported there.
With one dtype this is total achieved FLOP/s over total peak, and a GPU counts once however many ranks
share it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..gpu.model import GpuReading, Snapshot
from ..gpu.peaks import device_peaks
from ..specs import PeakTable
from .errors import ReportRejected
from .ownership import conflict_message, same_sender, takeover_reason
from .placement import place
from .rank import COUNTERS, CounterKey, GpuShare, RankState, Rates, ReportData, rates_of

__all__ = ["COUNTERS", "GpuShare", "JobRegistry", "RankView", "ReportData", "ReportRejected"]

log = logging.getLogger(__name__)


def pid_alive(pid: int, proc_root: str = "/proc") -> bool:
    return os.path.exists(os.path.join(proc_root, str(pid)))


@dataclass(frozen=True, slots=True)
class RankView:
    """What the metrics and /v1/jobs show of one rank; computed under the registry lock, then read freely."""

    job_id: str
    rank: int
    dtype: str
    gpus: tuple[GpuShare, ...]
    gpus_seen: dict[str, int]  # uuid -> index of every GPU the rank has counters on
    attributed_by: str
    attribution_detail: str
    local_rank: int | None
    world_size: int | None
    pid: int | None
    instance: str | None
    labels: tuple[tuple[str, str], ...]
    step: int | None
    totals: dict[CounterKey, float]
    gpu_totals: dict[tuple[str, CounterKey], float]
    rates: Rates | None  # None until two points, and while stalled
    first_received: float
    last_received: float
    last_progress: float
    restarts: int

    def has(self, counter: str) -> bool:
        return any(k[0] == counter for k in self.totals)

    def dtypes(self, counter: str) -> list[str]:
        return sorted(d for c, d in self.totals if c == counter)

    def gpu_utilisation(self, gpu: GpuShare, counter: str = "model_flops") -> dict[str, float] | None:
        """{dtype: part of this rank's MFU (or HFU) on `gpu`}; None without rates or a known peak."""
        if self.rates is None or not self.has(counter) or not self.gpus:
            return None
        parts: dict[str, float] = {}
        for dtype in self.dtypes(counter):
            peak = gpu.peak(dtype)
            if not peak:
                return None
            parts[dtype] = self.rates.get((counter, dtype)) / len(self.gpus) / peak
        return parts

    def utilisation(self, counter: str = "model_flops") -> float | None:
        """Peak-weighted MFU (or HFU) of the rank over its GPUs."""
        weighted = total_weight = 0.0
        for gpu in self.gpus:
            parts, weight = self.gpu_utilisation(gpu, counter), gpu.weight
            if parts is None or not weight:
                return None
            weighted += sum(parts.values()) * weight
            total_weight += weight
        return weighted / total_weight if total_weight else None

    def rate(self, counter: str) -> float | None:
        if self.rates is None or not self.has(counter):
            return None
        return sum(v for k, v in self.rates.values.items() if k[0] == counter)

    @property
    def peak_flops(self) -> float | None:
        """Sum of the weights (peak at the fastest reported dtype) of the rank's GPUs."""
        weights = [g.weight for g in self.gpus]
        return sum(weights) if weights and None not in weights else None  # type: ignore[arg-type]


class JobRegistry:
    def __init__(
        self,
        peaks: PeakTable | None = None,
        window_seconds: float = 60.0,
        max_ranks: int = 4096,
        rank_ttl_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
        pid_alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.peaks = peaks or PeakTable()
        self.window = window_seconds
        self.max_ranks = max_ranks
        self.ttl = rank_ttl_seconds
        self._clock = clock
        self._pid_alive = pid_alive
        self._ranks: dict[tuple[str, int], RankState] = {}
        self._lock = threading.Lock()
        self._unknown_peaks_logged: set[tuple[str, str]] = set()
        self._shares: dict[tuple[str, str, tuple[str, ...]], GpuShare] = {}  # peaks looked up once
        self.expired_total = 0
        self.changes = 0  # bumped on every change; the state writer saves when it moved
        # Lower bound of every tracked rank's last_received: while now - it <= ttl no rank can be stale,
        # so apply() skips the O(ranks) sweep (docs/performance.md).
        self._oldest_received = math.inf

    # -- ingest -------------------------------------------------------------------------------
    def apply(self, reports: Sequence[ReportData], snapshot: Snapshot | None) -> int:
        """Applies every report or none: raises ReportRejected before changing anything."""
        now = self._clock()
        batch = len(reports) > 1
        placed = [place(r, snapshot, f"reports[{i}]." if batch else "") for i, r in enumerate(reports)]
        with self._lock:
            if now - self._oldest_received > self.ttl:
                self._expire(now)
            takeovers: dict[tuple[str, int], str] = {}
            first_in_batch: dict[tuple[str, int], ReportData] = {}
            for i, report in enumerate(reports):
                key = (report.job_id, report.rank)
                state = self._ranks.get(key)
                earlier = first_in_batch.setdefault(key, report)
                if earlier is not report and not same_sender(earlier, report):
                    where = f"reports[{i}]." if batch else ""
                    raise ReportRejected(
                        409,
                        f"{where}rank",
                        f"{where}rank: job {report.job_id!r} rank {report.rank} appears twice in this batch "
                        "from two different senders (instance or pid)",
                    )
                if state is None or same_sender(state, report):
                    continue
                reason = takeover_reason(state, report, now, self._pid_alive)
                if reason is None:
                    where = f"reports[{i}]." if batch else ""
                    raise ReportRejected(409, f"{where}rank", conflict_message(state, report, now, where))
                takeovers[state.key] = reason
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
            for report, placement in zip(reports, placed, strict=True):
                reason = takeovers.get((report.job_id, report.rank))
                if reason is not None:
                    log.info(
                        "job %s rank %d: a new sender (instance %s, pid %s) takes over: %s",
                        report.job_id,
                        report.rank,
                        report.instance,
                        report.pid,
                        reason,
                    )
                shares = tuple(self._share(g, report) for g in placement.gpus)
                self._apply_one(report, shares, placement.attributed_by, placement.detail, now, reason)
            self.changes += 1
        return len(reports)

    def _share(self, gpu: GpuReading, report: ReportData) -> GpuShare:
        model, hardware = report.model_flops, report.hardware_flops
        if hardware is None or hardware.keys() == model.keys():
            dtypes = tuple(model) if len(model) == 1 else tuple(sorted(model))
        else:
            dtypes = tuple(sorted(model.keys() | hardware.keys()))
        key = (gpu.uuid, gpu.identity.name, dtypes)
        share = self._shares.get(key)
        if share is None:
            if len(self._shares) >= 4096:  # bounded whatever GPUs and dtypes reports name
                self._shares.clear()
            peaks = device_peaks(gpu.identity, self.peaks)
            share = self._shares[key] = GpuShare(
                gpu.index, gpu.uuid, gpu.identity.name, tuple((d, self._peak(gpu, peaks, d)) for d in dtypes)
            )
        elif share.index != gpu.index:  # the same GPU at another index (GPUs came or went)
            share = self._shares[key] = GpuShare(gpu.index, share.uuid, share.model, share.peaks)
        return share

    def _peak(self, gpu: GpuReading, peaks: dict[str, float], dtype: str) -> float | None:
        peak = peaks.get(dtype)
        name = gpu.identity.name + (" MIG" if gpu.is_mig else "")
        if peak is None and (name, dtype) not in self._unknown_peaks_logged:
            self._unknown_peaks_logged.add((name, dtype))
            log.warning(
                "no dense peak FLOP/s known for %r at %s: MFU is not computed for it; add it with "
                "--peak-flops-file%s",
                name,
                dtype,
                ' (for MIG devices, the GPU\'s "sm_count" too)' if gpu.is_mig else "",
            )
        return peak

    def _apply_one(
        self,
        report: ReportData,
        gpus: tuple[GpuShare, ...],
        how: str,
        detail: str,
        now: float,
        takeover: str | None,
    ) -> None:
        state = self._ranks.get((report.job_id, report.rank))
        if state is None:
            state = RankState(report.job_id, report.rank, report.dtype, gpus, how, first_received=now)
            self._ranks[state.key] = state
        state.dtype, state.gpus, state.attributed_by, state.attribution_detail = (
            report.dtype,
            gpus,
            how,
            detail,
        )
        state.local_rank, state.world_size, state.pid = report.local_rank, report.world_size, report.pid
        state.instance, state.interval = report.instance, report.interval
        state.labels = report.labels
        if report.step is not None:
            state.step = report.step
        raw = report.raw_counters()
        # A restart shows as a model FLOP counter going down, or as a new sender taking the rank over
        # (its counters start from its own zero); all counters restart together.
        restarted = takeover is not None
        if not restarted:
            last_raw = state.last_raw
            for dtype, value in report.model_flops.items():
                previous = last_raw.get(("model_flops", dtype))
                if previous is not None and value < previous:
                    restarted = True
                    break
        if restarted and state.last_raw:
            state.restarts += 1
            log.info("job %s rank %d restarted", report.job_id, report.rank)
        state.accumulate(raw, restarted)
        state.last_received = now
        if now < self._oldest_received:
            self._oldest_received = now
        state.add_point(report.timestamp if report.timestamp is not None else now, now, self.window)

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
        if stale:
            self.changes += 1
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
        return RankView(
            job_id=s.job_id,
            rank=s.rank,
            dtype=s.dtype,
            gpus=s.gpus,
            gpus_seen=dict(s.gpus_seen),
            attributed_by=s.attributed_by,
            attribution_detail=s.attribution_detail,
            local_rank=s.local_rank,
            world_size=s.world_size,
            pid=s.pid,
            instance=s.instance,
            labels=s.labels,
            step=s.step,
            totals=dict(s.totals),
            gpu_totals=dict(s.gpu_totals),
            rates=rates_of(s, now, self.window),
            first_received=s.first_received,
            last_received=s.last_received,
            last_progress=s.last_progress,
            restarts=s.restarts,
        )

    # -- persistence (jobs/state.py writes and reads the file) --------------------------------
    def export_state(self) -> tuple[int, list[RankState]]:
        """A consistent copy of every rank's durable part, and the change count it reflects."""
        with self._lock:
            return self.changes, [_durable_copy(s) for s in self._ranks.values()]

    def restore(self, ranks: Iterable[RankState]) -> int:
        """Adds ranks read from the state file (before any report arrives). Returns how many."""
        now = self._clock()
        restored = 0
        with self._lock:
            for s in ranks:
                if now - s.last_received > self.ttl or s.key in self._ranks:
                    continue
                self._ranks[s.key] = s
                self._oldest_received = min(self._oldest_received, s.last_received)
                restored += 1
        return restored


def _durable_copy(s: RankState) -> RankState:
    return RankState(
        job_id=s.job_id,
        rank=s.rank,
        dtype=s.dtype,
        gpus=(),
        attributed_by=s.attributed_by,
        pid=s.pid,
        instance=s.instance,
        interval=s.interval,
        step=s.step,
        totals=dict(s.totals),
        last_raw=dict(s.last_raw),
        gpu_totals=dict(s.gpu_totals),
        gpus_seen=dict(s.gpus_seen),
        first_received=s.first_received,
        last_received=s.last_received,
        last_progress=s.last_progress,
        restarts=s.restarts,
    )
