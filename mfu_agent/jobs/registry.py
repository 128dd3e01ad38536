"""Tracks the ranks that report: whose they are, their counters, the GPUs they run on, and their MFU.

MFU of a rank on a GPU is the sum over dtypes of (its FLOP/s in that dtype on the GPU / the GPU's peak
in that dtype). Over several GPUs (a rank on two GPUs, a job, a fleet) MFU is peak-weighted: the sum of
(MFU on the GPU x W) over the sum of W, where W is the GPU's peak at the fastest dtype reported there.
With one dtype this is total achieved FLOP/s over total peak, and a GPU counts once however many ranks
share it.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..gpu.model import GpuReading, Snapshot
from ..gpu.peaks import device_peaks
from ..logs import RepeatedLog
from ..specs import PeakTable
from .budget import NOTHING, Footprint, SeriesLedger, footprint
from .errors import ReportRejected
from .goodput import MAX_PHASES, Goodput, GoodputLedger
from .ownership import DEFAULT_INTERVAL, SILENT_INTERVALS, conflict_message, same_sender, takeover_reason
from .placement import Placement, place
from .rank import COUNTERS, CounterKey, GpuShare, RankState, Rates, ReportData, rates_of, step_rate_of

__all__ = ["COUNTERS", "GpuShare", "JobRegistry", "RankView", "ReportData", "ReportRejected"]

log = logging.getLogger(__name__)

DEFAULT_MAX_SERIES = 100_000
# A rank that still reports but whose work has not moved on for this long may be evicted to make room
# (TrainingJobStalled fires after 5 minutes, so it has fired by then).
STALLED_SECONDS = 600.0
EVICTION_REASONS = ("ttl", "silent", "stalled", "final")
PLACEMENT_CACHE = 4096  # placements kept per snapshot, whatever GPUs, pids and local_ranks reports name

# A report's placement, and its GPUs as GpuShares by the dtypes of its FLOPs.
_Placed = tuple[Placement, dict[tuple[str, ...], tuple[GpuShare, ...]]]


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
    step_rate: float | None  # steps/s over a whole window of steps (rank.step_rate_of), else None
    first_received: float
    last_received: float
    last_progress: float
    restarts: int
    goodput: Goodput | None = None  # a copy of the rank's goodput accounting (jobs/goodput.py)
    # gpu_utilisation's answers: a scrape asks for each (GPU, counter) seven times (per rank and GPU,
    # per rank, per job, per GPU), and a view never changes.
    _figures: dict[tuple[str, str], dict[str, float] | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def has(self, counter: str) -> bool:
        return any(k[0] == counter for k in self.totals)

    def dtypes(self, counter: str) -> list[str]:
        return sorted(d for c, d in self.totals if c == counter)

    def gpu_utilisation(self, gpu: GpuShare, counter: str = "model_flops") -> dict[str, float] | None:
        """{dtype: part of this rank's MFU (or HFU) on `gpu`}; None without rates or a known peak.
        The dict is shared between callers: read it, never change it."""
        key = (gpu.uuid, counter)
        try:
            return self._figures[key]
        except KeyError:
            parts = self._figures[key] = self._gpu_utilisation(gpu, counter)
            return parts

    def _gpu_utilisation(self, gpu: GpuShare, counter: str) -> dict[str, float] | None:
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
        max_series: int = DEFAULT_MAX_SERIES,
        other_series: Callable[[], int] = lambda: 0,
    ) -> None:
        """`max_series` bounds every series on /metrics; `other_series` says how many of them are not
        the ranks' (the GPUs', the events', the agent's own)."""
        self.peaks = peaks or PeakTable()
        self.window = window_seconds
        self.max_ranks = max_ranks
        self.max_series = max_series
        self.other_series = other_series
        self.ttl = rank_ttl_seconds
        self._clock = clock
        self._pid_alive = pid_alive
        self._ranks: dict[tuple[str, int], RankState] = {}
        self._lock = threading.Lock()
        self._unknown_peaks_logged: set[tuple[str, str]] = set()
        self._shares: dict[tuple[str, str, tuple[str, ...]], GpuShare] = {}  # peaks looked up once
        # place()'s answers for one snapshot, by the report's gpus or by its (pid, local_rank), each
        # with the report's GpuShares by dtypes (_place_all).
        self._placed_for: Snapshot | None = None
        self._by_gpus: dict[tuple[int | str, ...], _Placed] = {}
        self._by_pid: dict[tuple[int | None, int | None], _Placed] = {}
        self.ledger = SeriesLedger()  # the ranks' and their jobs' series
        self.removed: Counter[str] = Counter({reason: 0 for reason in EVICTION_REASONS})
        self.changes = 0  # bumped on every change; the state writer saves when it moved
        # Lower bound of every tracked rank's last_received: while now - it <= ttl no rank can be stale,
        # so apply() skips the O(ranks) sweep (docs/performance.md).
        self._oldest_received = math.inf
        # When each rank may first be evicted to make room (silent for SILENT_INTERVALS of its
        # intervals, or stalled for STALLED_SECONDS): a heap of (time, key), each time a lower bound,
        # checked and pushed again when popped; `_evictable_at` holds the live entry of each rank.
        # A report only pushes when its rank's time moves earlier (a shorter interval): O(1).
        self._evictable: list[tuple[float, tuple[str, int]]] = []
        self._evictable_at: dict[tuple[str, int], float] = {}
        self._log = RepeatedLog(log)  # what clients can make happen thousands of times a second
        # Kept apart from the ranks: a rank's accounting outlives its final report (jobs/goodput.py).
        self.goodput = GoodputLedger(rank_ttl_seconds, 2 * max_ranks, self._log)

    @property
    def expired_total(self) -> int:
        return self.removed["ttl"]

    # -- ingest -------------------------------------------------------------------------------
    def apply(self, reports: Sequence[ReportData], snapshot: Snapshot | None) -> int:
        """Applies every report or none: raises ReportRejected before changing anything."""
        now = self._clock()
        batch = len(reports) > 1
        with self._lock:
            placed = self._place_all(reports, snapshot, batch)
            if now - self._oldest_received > self.ttl:
                self._expire(now)
            ranks = self._ranks
            keys = [(r.job_id, r.rank) for r in reports]
            takeovers: dict[tuple[str, int], str] = {}
            first_in_batch: dict[tuple[str, int], ReportData] = {}
            for i, report in enumerate(reports):
                key = keys[i]
                state = ranks.get(key)
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
            shares = []  # each report's GPUs with their peaks at its dtypes, cached with its placement
            for report, (placement, by_dtypes) in zip(reports, placed, strict=True):
                dtypes = _dtypes(report)
                gpus = by_dtypes.get(dtypes)
                if gpus is None:
                    gpus = by_dtypes[dtypes] = tuple(self._share(g, dtypes) for g in placement.gpus)
                shares.append(gpus)
            raws = [r.raw_counters() for r in reports]
            changing = self._admit(reports, shares, raws, now)
            for report, (placement, _), gpus, raw in zip(reports, placed, shares, raws, strict=True):
                reason = takeovers.get((report.job_id, report.rank)) if takeovers else None
                if reason is not None:
                    self._log.log(
                        ("takeover", report.job_id),
                        logging.INFO,
                        "job %s rank %d: a new sender (instance %s, pid %s) takes over: %s",
                        report.job_id,
                        report.rank,
                        report.instance,
                        report.pid,
                        reason,
                        repeat=f"job {report.job_id}: ranks taken over by a new sender",
                    )
                self._apply_one(report, gpus, raw, placement.attributed_by, placement.detail, now, reason)
            for key, (last, fp) in changing.items():
                if last.final:
                    self._remove(key, "final")
                    self._log.log(
                        ("final", key[0]),
                        logging.INFO,
                        "job %s rank %d sent its final report: dropped",
                        *key,
                        repeat=f"job {key[0]}: final reports",
                    )
                else:
                    state = self._ranks[key]
                    self.ledger.change(key[0], state.footprint, fp)
                    state.footprint = fp
                    # Every (GPU, counter) pair of this last report now has a series.
                    state.shape = (
                        state.gpus,
                        frozenset(last.raw_counters()),
                        state.step is not None,
                        self.goodput.phase_names(key) | frozenset(last.phase_seconds or ()),
                    )
            self._compact()
            self.changes += 1
        return len(reports)

    # -- bounds -------------------------------------------------------------------------------
    def _admit(
        self,
        reports: Sequence[ReportData],
        shares: list[tuple[GpuShare, ...]],
        raws: list[dict[CounterKey, float]],
        now: float,
    ) -> dict[tuple[str, int], tuple[ReportData, Footprint]]:
        """{key: (its last report in the batch, its footprint after the batch)} for the ranks whose
        footprint changes (new ranks, new GPUs or counters) or that end (a final report), once
        --max-ranks and --max-series have room for the batch, after evicting ranks that stopped
        reporting if need be; raises 429 where they have not. A report of the shape its rank had
        before costs a comparison: O(1)."""
        ranks = self._ranks
        changed: dict[tuple[str, int], ReportData] = {}  # the changing ranks, and their last report
        for report, gpus, raw in zip(reports, shares, raws, strict=True):
            key = (report.job_id, report.rank)
            state = ranks.get(key)
            shape = state.shape if state is not None else None
            same_shape = (
                shape is not None
                and gpus == shape[0]
                and raw.keys() <= shape[1]
                and (report.step is None or shape[2])
                and (not report.phase_seconds or report.phase_seconds.keys() <= shape[3])
            )
            if not same_shape or report.final:
                changed[key] = report
        if not changed:
            return {}
        items: dict[tuple[str, int], list[tuple[tuple[GpuShare, ...], dict[CounterKey, float], bool]]] = {}
        phases: dict[tuple[str, int], set[str]] = {}
        for report, gpus, raw in zip(reports, shares, raws, strict=True):
            key = (report.job_id, report.rank)
            if key in changed:
                items.setdefault(key, []).append((gpus, raw, report.step is not None))
                phases.setdefault(key, set(self.goodput.phase_names(key))).update(report.phase_seconds or ())
                changed[key] = report
        changing = {
            key: (
                report,
                NOTHING if report.final else _footprint_after(ranks.get(key), items[key], len(phases[key])),
            )
            for key, report in changed.items()
        }
        keep = {(r.job_id, r.rank) for r in reports}
        for attempt in range(3):
            # A final report adds nothing: its rank goes once the report is applied.
            new_ranks = sum(1 for key, (last, _) in changing.items() if key not in ranks and not last.final)
            growth = self.ledger.growth(
                [
                    (key[0], self._footprint_of(key), fp)
                    for key, (last, fp) in changing.items()
                    if key in ranks or not last.final
                ]
            )
            extra_ranks = len(ranks) + new_ranks - self.max_ranks
            used = self.ledger.total + self.other_series() if growth > 0 else 0
            extra_series = used + growth - self.max_series if growth > 0 else 0
            if extra_ranks <= 0 and extra_series <= 0:
                return changing
            if attempt == 2 or not self._evict(now, extra_ranks, extra_series, keep):
                break
        if extra_ranks > 0:
            raise ReportRejected(
                429,
                "rank",
                f"the agent already tracks {len(ranks):,} of at most {self.max_ranks:,} (job_id, rank) "
                f"pairs (--max-ranks) and none has stopped reporting; {new_ranks} new pair(s) refused. A "
                f"rank that stops is evicted once silent for {SILENT_INTERVALS} of its report intervals; "
                f"or raise --max-ranks.",
            )
        raise ReportRejected(
            429,
            "rank",
            f"this report would add {growth:,} series to /metrics, which already carries about {used:,} of "
            f"at most {self.max_series:,} (--max-series), and no rank has stopped reporting; refused. A rank "
            f"that stops is evicted once silent for {SILENT_INTERVALS} of its report intervals; fewer "
            f"GPUs per rank or dtypes per report add fewer series; or raise --max-series.",
        )

    def _footprint_of(self, key: tuple[str, int]) -> Footprint:
        state = self._ranks.get(key)
        return state.footprint if state is not None and state.footprint is not None else NOTHING

    def _evict(self, now: float, ranks: int, series: int, keep: Iterable[tuple[str, int]]) -> bool:
        """Evicts ranks that may be evicted (the longest evictable first) to free `ranks` ranks and
        `series` series, never one of `keep`; evicts none when those would not be enough, so that a
        refused report changes nothing. Returns whether it evicted any."""
        heap, at = self._evictable, self._evictable_at
        kept: list[tuple[float, tuple[str, int]]] = []
        chosen: list[tuple[float, tuple[str, int]]] = []
        keep = set(keep)
        taken: set[tuple[str, int]] = set()
        while (ranks > 0 or series > 0) and heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if at.get(key) != due or key in taken:
                # An entry of a rank that went, or that has an earlier one; or a second entry of a rank
                # already chosen, pushed again at the same time (an earlier entry found too early).
                continue
            if key in keep:  # reported in this very batch
                kept.append((due, key))
                continue
            state = self._ranks[key]
            actual = self._evictable_time(state)
            if actual > now:  # it reported since the entry was pushed
                at[key] = actual
                heapq.heappush(heap, (actual, key))
                continue
            chosen.append((due, key))
            taken.add(key)
            ranks -= 1
            series -= state.footprint.series if state.footprint is not None else 0  # its job's: a bonus
        if ranks > 0 or series > 0:
            kept += chosen
            chosen = []
        for entry in kept:
            heapq.heappush(heap, entry)
        for _, key in chosen:
            state = self._ranks[key]
            silent = now - state.last_received > SILENT_INTERVALS * (state.interval or DEFAULT_INTERVAL)
            self._remove(key, "silent" if silent else "stalled")
            self._log.log(
                ("evicted", silent),
                logging.INFO,
                "job %s rank %d evicted to make room for a new rank: %s",
                *key,
                f"silent for {now - state.last_received:.1f} s"
                if silent
                else f"no progress for {now - (state.last_progress or state.last_received):.0f} s",
                repeat=f"ranks evicted to make room for new ones ({'silent' if silent else 'stalled'})",
            )
        return bool(chosen)

    @staticmethod
    def _evictable_time(state: RankState) -> float:
        silent = state.last_received + SILENT_INTERVALS * (state.interval or DEFAULT_INTERVAL)
        return min(silent, (state.last_progress or state.last_received) + STALLED_SECONDS)

    def _schedule(self, state: RankState) -> None:
        """Keeps the rank's heap entry a lower bound of when it may be evicted."""
        due = self._evictable_time(state)
        current = self._evictable_at.get(state.key)
        if current is None or due < current:
            self._evictable_at[state.key] = due
            heapq.heappush(self._evictable, (due, state.key))

    def _remove(self, key: tuple[str, int], reason: str) -> None:
        state = self._ranks.pop(key)
        if state.footprint is not None:
            self.ledger.change(key[0], state.footprint, None)
        self._evictable_at.pop(key, None)
        if reason == "final":  # a job that closed its reporter may come back from a checkpoint
            self.goodput.closed(key)
        else:
            self.goodput.forget(key)
        self.removed[reason] += 1
        self.changes += 1

    def _compact(self) -> None:
        """Drops the heap entries of ranks that went, once they outnumber the live ones (not while
        _evict walks the heap)."""
        if len(self._evictable) > 2 * len(self._ranks) + 64:
            self._evictable = [(due, k) for k, due in self._evictable_at.items()]
            heapq.heapify(self._evictable)

    def series(self) -> int:
        """The series the ranks and their jobs put on /metrics (an upper bound)."""
        with self._lock:
            return self.ledger.total

    def _place_all(
        self, reports: Sequence[ReportData], snapshot: Snapshot | None, batch: bool
    ) -> list[_Placed]:
        """Each report's placement, from a cache of place()'s answers for this snapshot: place() depends
        only on the snapshot and the report's gpus (or, without them, its pid and local_rank), and a
        batch of ranks names a handful of GPUs. A refusal is never cached."""
        if self._placed_for is not snapshot:
            self._placed_for = snapshot
            self._by_gpus, self._by_pid = {}, {}
        by_gpus, by_pid = self._by_gpus, self._by_pid
        placed = []
        for i, r in enumerate(reports):
            gpus = r.gpus
            cache, key = (by_gpus, gpus) if gpus is not None else (by_pid, (r.pid, r.local_rank))
            entry = cache.get(key)
            if entry is None:
                if len(cache) >= PLACEMENT_CACHE:
                    cache.clear()
                entry = cache[key] = (place(r, snapshot, f"reports[{i}]." if batch else ""), {})
            placed.append(entry)
        return placed

    def _share(self, gpu: GpuReading, dtypes: tuple[str, ...]) -> GpuShare:
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
        raw: dict[CounterKey, float],
        how: str,
        detail: str,
        now: float,
        takeover: str | None,
    ) -> None:
        state = self._ranks.get((report.job_id, report.rank))
        if state is None:
            state = RankState(report.job_id, report.rank, report.dtype, gpus, how, first_received=now)
            self._ranks[state.key] = state
            earlier = True
        else:  # a report only moves when its rank may be evicted later, unless its interval shrinks
            earlier = report.interval != state.interval
        state.dtype = report.dtype
        state.gpus = gpus
        state.attributed_by = how
        state.attribution_detail = detail
        state.local_rank = report.local_rank
        state.world_size = report.world_size
        state.pid = report.pid
        state.instance = report.instance
        state.interval = report.interval
        state.labels = report.labels
        if report.step is not None:
            state.step = report.step
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
            self._log.log(
                ("restart", report.job_id),
                logging.INFO,
                "job %s rank %d restarted",
                report.job_id,
                report.rank,
                repeat=f"job {report.job_id}: rank restarts",
            )
        state.accumulate(raw, restarted)
        state.last_received = now
        if now < self._oldest_received:
            self._oldest_received = now
        state.add_point(
            report.timestamp if report.timestamp is not None else now, now, self.window, report.step
        )
        if earlier:
            self._schedule(state)
        self.goodput.apply(report, now)

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
            self._remove(key, "ttl")
        self._compact()
        self._oldest_received = oldest

    def views(self) -> list[RankView]:
        now = self._clock()
        self._log.flush()
        with self._lock:
            self._expire(now)
            self.goodput.expire(now)
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
            step_rate=step_rate_of(s, now, self.window),
            first_received=s.first_received,
            last_received=s.last_received,
            last_progress=s.last_progress,
            restarts=s.restarts,
            goodput=self.goodput.view(s.key),
        )

    # -- persistence (jobs/state.py writes and reads the file) --------------------------------
    def export_state(self) -> tuple[int, list[RankState]]:
        """A consistent copy of every rank's durable part, and the change count it reflects."""
        with self._lock:
            return self.changes, [_durable_copy(s) for s in self._ranks.values()]

    def export_goodput(self) -> list[dict[str, object]]:
        with self._lock:
            return self.goodput.export()

    def restore_goodput(self, entries: Iterable[tuple[tuple[str, int], Goodput]]) -> int:
        with self._lock:
            restored = self.goodput.restore(entries, self._clock(), self._ranks)
            for key, s in self._ranks.items():  # restored ranks (restore()) now count their phases
                named = len(self.goodput.phase_names(key))
                if named and s.footprint is not None:
                    fp = Footprint(s.footprint.series + min(named, MAX_PHASES), s.footprint.models)
                    self.ledger.change(s.job_id, s.footprint, fp)
                    s.footprint = fp
            return restored

    def restore(self, ranks: Iterable[RankState]) -> int:
        """Adds ranks read from the state file (before any report arrives). Returns how many."""
        now = self._clock()
        restored = 0
        with self._lock:
            for s in ranks:
                if now - s.last_received > self.ttl or s.key in self._ranks:
                    continue
                self._ranks[s.key] = s
                hardware = sum(1 for counter, _ in s.totals if counter == "hardware_flops")
                s.footprint = footprint((), 0, hardware, len(s.gpu_totals))  # on no GPU until it reports
                self.ledger.change(s.job_id, None, s.footprint)
                self._schedule(s)
                self._oldest_received = min(self._oldest_received, s.last_received)
                restored += 1
        return restored


def _dtypes(report: ReportData) -> tuple[str, ...]:
    """The dtypes a report gives FLOPs in, sorted."""
    model, hardware = report.model_flops, report.hardware_flops
    if hardware is not None and hardware.keys() != model.keys():
        return tuple(sorted(model.keys() | hardware.keys()))
    return tuple(model) if len(model) == 1 else tuple(sorted(model))


def _footprint_after(
    state: RankState | None,
    items: list[tuple[tuple[GpuShare, ...], dict[CounterKey, float], bool]],
    phases: int,
) -> Footprint:
    """What the rank will put on /metrics after these (GPUs, counters, step sent) of its reports, with
    `phases` phase names (those its accounting has and those the reports name: an upper bound)."""
    keys: set[CounterKey] = set(state.last_raw) if state is not None else set()
    pairs: set[tuple[str, CounterKey]] = set(state.gpu_totals) if state is not None else set()
    step = state is not None and state.step is not None
    for gpus, raw, has_step in items:
        keys.update(raw)
        pairs.update((g.uuid, k) for g in gpus for k in raw)
        step = step or has_step
    model = sum(1 for counter, _ in keys if counter == "model_flops")
    hardware = sum(1 for counter, _ in keys if counter == "hardware_flops")
    return footprint(items[-1][0], model, hardware, len(pairs), step, ("tokens", "") in keys, phases)


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
