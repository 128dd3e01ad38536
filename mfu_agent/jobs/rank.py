"""One reporting rank: counters per dtype and per GPU that never go down, history, and its MFU.

Reported counters are cumulative since the sender started. The agent keeps its own accumulated totals:
a decrease (or a new sender taking the rank over) means the job restarted, and the new value is counted
as work done since the restart, so exported counters only ever grow and no rate is ever negative.

Each report's increase is split evenly over the GPUs the rank uses at that moment and added to per-GPU
accumulators, so a rank whose GPU set changes never makes a per-GPU series go down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .budget import Footprint

HISTORY_SLOTS = 128  # points kept per rank for the window; closer reports are merged into the newest

FLOP_COUNTERS = ("model_flops", "hardware_flops")
PLAIN_COUNTERS = ("tokens", "samples")
COUNTERS = (*FLOP_COUNTERS, *PLAIN_COUNTERS)

# A counter key: ("model_flops", "bf16"), ("hardware_flops", "fp8"), ("tokens", ""), ("samples", "").
CounterKey = tuple[str, str]


# Not frozen: a frozen dataclass sets each of its 18 fields through object.__setattr__, which made building
# one cost more than validating the report's JSON (bench/ingest.py). Nothing changes a report once built.
@dataclass(slots=True)
class ReportData:
    job_id: str
    rank: int
    model_flops: dict[str, float]  # {dtype: cumulative FLOPs}
    dtype: str = "bf16"  # the rank's precision: dtype label of its non-FLOP series
    hardware_flops: dict[str, float] | None = None
    local_rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    instance: str | None = None
    interval: float | None = None
    gpus: tuple[int | str, ...] | None = None
    tokens_total: float | None = None
    samples_total: float | None = None
    step: int | None = None
    timestamp: float | None = None
    labels: tuple[tuple[str, str], ...] = ()
    final: bool = False  # the sender's last report: the rank is dropped once it is applied
    start_step: int | None = None  # the step the sender resumed from (jobs/goodput.py)
    phase_seconds: dict[str, float] | None = None  # {phase: cumulative seconds the sender marked}

    def raw_counters(self) -> dict[CounterKey, float]:
        raw: dict[CounterKey, float] = {}
        for d, v in self.model_flops.items():
            raw["model_flops", d] = v
        if self.hardware_flops:
            for d, v in self.hardware_flops.items():
                raw["hardware_flops", d] = v
        if self.tokens_total is not None:
            raw[("tokens", "")] = self.tokens_total
        if self.samples_total is not None:
            raw[("samples", "")] = self.samples_total
        return raw


@dataclass(frozen=True, slots=True)
class GpuShare:
    """A GPU a rank computes on, with its dense peak at each dtype the rank reports FLOPs in."""

    index: int
    uuid: str
    model: str
    peaks: tuple[tuple[str, float | None], ...]  # (dtype, peak FLOP/s or None when unknown)

    def peak(self, dtype: str) -> float | None:
        for d, p in self.peaks:
            if d == dtype:
                return p
        return None

    @property
    def weight(self) -> float | None:
        """The peak at the rank's fastest dtype on this GPU: its weight in peak-weighted MFU."""
        known = [p for _, p in self.peaks if p is not None]
        return max(known) if known and len(known) == len(self.peaks) else None


@dataclass(slots=True)
class Point:
    t: float
    values: tuple[float, ...]  # accumulated totals at t, in the order of RankState.totals
    step: int | None = None  # the step the sender reported at t (None: it sent none)


@dataclass
class RankState:
    job_id: str
    rank: int
    dtype: str
    gpus: tuple[GpuShare, ...]
    attributed_by: str
    attribution_detail: str = ""
    local_rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    instance: str | None = None
    interval: float | None = None
    labels: tuple[tuple[str, str], ...] = ()
    step: int | None = None
    # Accumulated, monotonic. Keys are only ever added, so their order is the order of Point.values.
    totals: dict[CounterKey, float] = field(default_factory=dict)
    last_raw: dict[CounterKey, float] = field(default_factory=dict)
    gpu_totals: dict[tuple[str, CounterKey], float] = field(default_factory=dict)  # (uuid, key) -> total
    gpus_seen: dict[str, int] = field(default_factory=dict)  # uuid -> index, for the per-GPU counter series
    first_received: float = 0.0
    last_received: float = 0.0
    last_progress: float = 0.0  # receive time of the last report whose sender time moved forward
    restarts: int = 0
    history: deque[Point] = field(default_factory=lambda: deque(maxlen=HISTORY_SLOTS))
    # What the rank puts on /metrics (jobs/budget.py), and the shape it was last computed for (its GPUs,
    # its counter keys, whether it sent a step, the goodput phases it named): a report of the same shape
    # adds no series.
    footprint: Footprint | None = None  # None: not counted yet
    shape: tuple[tuple[GpuShare, ...], frozenset[CounterKey], bool, frozenset[str]] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.rank

    def accumulate(self, raw: dict[CounterKey, float], restarted: bool) -> None:
        """Adds the increase since the last report to the rank's and its current GPUs' totals."""
        gpus = self.gpus
        gpus_seen = self.gpus_seen
        for g in gpus:
            gpus_seen[g.uuid] = g.index
        # The one GPU of most ranks gets the whole increase: no inner loop, no multiplication.
        only = gpus[0].uuid if len(gpus) == 1 else None
        share = 1.0 / len(gpus) if gpus else 0.0
        last_raw, totals, gpu_totals = self.last_raw, self.totals, self.gpu_totals
        for key, value in raw.items():
            previous = last_raw.get(key)
            if previous is None:
                # A rank's first report brings the job's total so far, and FLOPs in a dtype first sent
                # later were done and counted nowhere else. A token or sample counter first sent later
                # starts here (its past is unknown to the window).
                delta = 0.0 if key[0] in PLAIN_COUNTERS and self.history else value
            elif restarted or value < previous:
                delta = value
            else:
                delta = value - previous
            last_raw[key] = value
            # `d[k] += x` is the cheap form of `d[k] = d.get(k, 0.0) + x` for a key that is there; a new
            # key starts from 0.0 + x, a float as the totals always are.
            try:
                totals[key] += delta
            except KeyError:
                totals[key] = 0.0 + delta
            if only is not None:
                gk = (only, key)
                try:
                    gpu_totals[gk] += delta
                except KeyError:
                    gpu_totals[gk] = 0.0 + delta
            else:
                part = delta * share
                for g in gpus:
                    gk = (g.uuid, key)
                    try:
                        gpu_totals[gk] += part
                    except KeyError:
                        gpu_totals[gk] = 0.0 + part

    def add_point(self, t: float, now: float, window: float, step: int | None = None) -> None:
        values = tuple(self.totals.values())
        history = self.history
        if history and t <= history[-1].t:
            # The same step time again (a stalled job re-posting), or a sender clock that went back:
            # keep the point's time, take the new values.
            last = history[-1]
            last.values, last.step = values, step
            return
        self.last_progress = now
        if len(history) >= 2 and t - history[-2].t < window / (HISTORY_SLOTS - 2):
            last = history[-1]  # too close to the one before: merge (in place; no one else holds it)
            last.t, last.values, last.step = t, values, step
        else:
            history.append(Point(t, values, step))
        while len(history) > 2 and history[1].t <= t - window:
            history.popleft()


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second increases of each counter, and which span of the rank's reports they cover."""

    values: dict[CounterKey, float]
    span_seconds: float
    basis: str  # "window": points inside the window; "last_two_reports": reports sparser than it

    def get(self, key: CounterKey) -> float:
        return self.values.get(key, 0.0)


def _stalled(s: RankState, now: float, window: float) -> bool:
    """Its work has not moved on for longer than the window and twice its latest spacing between
    reports (silent, or stalled and re-posting the same step time): a stale figure would look healthy."""
    history = s.history
    return now - s.last_progress > max(window, 2.0 * (history[-1].t - history[-2].t))


def rates_of(s: RankState, now: float, window: float) -> Rates | None:
    """Rates over the window; when no two points fall inside it, over the newest two points.

    None while the rank has fewer than two points, or when it is stalled (`_stalled`).
    """
    history = s.history
    if len(history) < 2 or _stalled(s, now, window):
        return None
    last, before = history[-1], history[-2]
    first, basis = before, "last_two_reports"
    for p in history:
        if p.t >= last.t - window:
            if p is not last:
                first, basis = p, "window"
            break
    span = last.t - first.t
    if span <= 0:
        return None
    before_values = first.values
    values = {
        k: (v - (before_values[i] if i < len(before_values) else 0.0)) / span
        for i, (k, v) in enumerate(zip(s.totals, last.values, strict=False))
    }
    return Rates(values, span, basis)


def step_rate_of(s: RankState, now: float, window: float) -> float | None:
    """Steps per second over the window, by the sender's step times; over the newest two points when
    they are further apart than the window.

    Only once the rank's steps cover the whole window (a point at or before its start), counted from
    the rank's first report with a step or from the last time its step went back (a restore from a
    checkpoint): ranks are compared with each other on this figure (RankStraggler), so a young rank's
    first steps, or a rate across a restore, must not stand for its pace. None before that, without a
    step in the newest report, and while the rank is stalled (`_stalled`), like the rates.
    """
    history = s.history
    if len(history) < 2 or _stalled(s, now, window):
        return None
    last = history[-1]
    if last.step is None:
        return None
    start = last.t - window
    first: Point | None = None
    later = last
    for i in range(len(history) - 2, -1, -1):
        p = history[i]
        if p.step is None or p.step > later.step:
            return None  # no step sent, or a restore after p: the steps since do not cover the window
        if p.t <= start:
            if first is None or p.t == start:
                first = p  # the newest two points straddle the window, or p is at its very start
            break
        first = later = p
    else:
        return None  # every point is inside the window: the rank is younger than it
    return (last.step - first.step) / (last.t - first.t)
