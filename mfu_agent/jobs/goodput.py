"""Goodput per rank: where the wall time since a rank's first report went, and the work a restore threw away.

Every report's interval (the agent's receive time of this report minus that of the rank's previous
one) goes to exactly one place, so the parts add up to the rank's wall time (docs/goodput.md):

* a restart (the sender changed, or its counters went down): the whole interval is restart downtime,
  less the phase seconds the new sender reports in it;
* otherwise the phase seconds the sender marked in the interval (``phase_seconds_total`` increases,
  at most the interval), and the rest is productive when the step advanced (or, for a sender that sends
  no step, when its model FLOPs grew), else stalled.

Lost work: a new sender that says where it resumed (``start_step``, the step of the checkpoint it
restored) below the highest step reached since the last restore redoes the steps in between. Their
FLOPs, tokens and productive seconds are those steps times the per-step averages of the sender that
reached the highest step (from its first report with a step to its last).

The entries live apart from the registry's ranks and survive a rank's final report, so a job that
closes its reporter and comes back from a checkpoint keeps its accounting; an entry goes when its rank
is evicted, or once silent for the rank TTL. Per report: a few comparisons and additions (O(1)).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..logs import RepeatedLog

if TYPE_CHECKING:
    from .rank import ReportData

log = logging.getLogger(__name__)

BUILTIN_PHASES = ("checkpoint", "eval", "data_wait")
OTHER_PHASE = "other"
MAX_USER_PHASES = 4  # per rank: further names count as "other"
MAX_PHASES = len(BUILTIN_PHASES) + 1 + MAX_USER_PHASES  # what one report may carry, and one rank export
MAX_PHASE_NAMES_SEEN = 4 * MAX_PHASES  # a sender's names the agent follows (what "other" adds up)
PHASE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
RESTART_CAUSES = ("new_process", "counter_reset")
SECONDS = ("wall", "productive", "stall", "restart_downtime")
LOST = ("steps", "flops", "tokens", "seconds")
# Per rank on /metrics: the seconds, the lost work and the restarts by cause; and one series per phase
# the rank has marked (MAX_PHASES at most), counted as they come (jobs/budget.py).
SERIES_PER_RANK = len(SECONDS) + len(LOST) + len(RESTART_CAUSES)


@dataclass(slots=True)
class Sample:
    """Where a sender was at one report: its step and its own cumulative counters, and the rank's
    productive seconds then."""

    step: int
    flops: float
    tokens: float
    productive: float


@dataclass(slots=True)
class Goodput:
    """One rank's accounting. Counters only ever grow."""

    first_received: float
    last_received: float
    sender: str | None = None
    flops: float = 0.0  # the sender's cumulative model FLOPs (all dtypes) and tokens at its last report
    model: dict[str, float] = field(default_factory=dict)  # its model FLOPs per dtype then
    tokens: float = 0.0
    step: int | None = None
    max_step: int | None = None  # highest step reached since the last restore
    instance_start: Sample | None = None  # the current sender's first report with a step
    per_step: tuple[float, float, float] | None = None  # FLOPs, tokens, productive s per step, last known
    phase_raw: dict[str, float] = field(default_factory=dict)  # the sender's cumulative seconds per name
    phase_names: dict[str, str] = field(default_factory=dict)  # a reported name -> its exported name
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SECONDS, 0.0))
    lost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOST, 0.0))
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_CAUSES, 0))
    # The phases the rank has marked, from the first time each was named: a rank that marks none has
    # no phase series (a flood of plain ranks must not pay for them).
    phases: dict[str, float] = field(default_factory=dict)

    def phase_name(self, name: str) -> str:
        """The exported name of a phase: a built-in name or "other" always; a name of the rank's own
        while it has room for MAX_USER_PHASES of them, else "other"."""
        if name not in self.phases:
            own = sum(1 for p in self.phases if p not in BUILTIN_PHASES and p != OTHER_PHASE)
            if name not in BUILTIN_PHASES and name != OTHER_PHASE and own >= MAX_USER_PHASES:
                name = OTHER_PHASE
            self.phases.setdefault(name, 0.0)
        return name

    def copy(self) -> Goodput:
        return Goodput(
            first_received=self.first_received,
            last_received=self.last_received,
            sender=self.sender,
            flops=self.flops,
            model=self.model,
            tokens=self.tokens,
            step=self.step,
            max_step=self.max_step,
            instance_start=self.instance_start,
            per_step=self.per_step,
            phase_raw=dict(self.phase_raw),
            seconds=dict(self.seconds),
            lost=dict(self.lost),
            restarts=dict(self.restarts),
            phases=dict(self.phases),
        )


class GoodputLedger:
    """Not thread-safe: the registry's lock guards it."""

    def __init__(self, ttl: float, max_entries: int, repeated: RepeatedLog | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: dict[tuple[str, int], Goodput] = {}
        # Entries of ranks the registry dropped on a final report, oldest first: the only ones that
        # expire here or make room (the registry's live ranks go through forget()).
        self._closed: dict[tuple[str, int], None] = {}
        self._log = repeated or RepeatedLog(log)

    def apply(self, report: ReportData, now: float) -> None:
        """Accounts one applied report (on the ingest path: kept to a few dict operations)."""
        key = (report.job_id, report.rank)
        e = self.entries.get(key)
        model = report.model_flops
        flops = sum(model.values())
        tokens = report.tokens_total or 0.0
        sender = report.instance
        if sender is None and report.pid is not None:
            sender = f"pid:{report.pid}"
        if e is None:
            self._first(key, report, now, sender, flops, tokens)
            return
        if self._closed:
            self._closed.pop(key, None)
        interval = now - e.last_received
        if interval < 0.0:
            interval = 0.0
        e.last_received = now
        seconds = e.seconds
        seconds["wall"] += interval
        cause = None
        if sender != e.sender:
            cause = "new_process"
        else:
            last = e.model
            for dtype, value in model.items():
                if value < last.get(dtype, 0.0):  # as the registry sees a restart: a model FLOP counter fell
                    cause = "counter_reset"
                    break
        phases = report.phase_seconds
        if cause is not None:
            e.restarts[cause] += 1
            e.phase_raw = {}  # the new sender's phase counters start from zero
            marked = self._phases(e, phases, interval) if phases else 0.0
            seconds["restart_downtime"] += interval - marked
            self._restored(e, report, key)
            e.sender = sender
            e.max_step = None  # from here: the highest step since this restart
            self._start_instance(e, report, flops, tokens)
        else:
            marked = self._phases(e, phases, interval) if phases and phases != e.phase_raw else 0.0
            step, last_step = report.step, e.step
            advanced = step > last_step if step is not None and last_step is not None else flops > e.flops
            seconds["productive" if advanced else "stall"] += interval - marked
            if e.instance_start is None:
                self._start_instance(e, report, flops, tokens)
        e.flops, e.tokens, e.model = flops, tokens, model  # a report is never changed once built
        step = report.step
        if step is not None:
            e.step = step
            if e.max_step is None or step > e.max_step:
                e.max_step = step

    def _first(
        self,
        key: tuple[str, int],
        report: ReportData,
        now: float,
        sender: str | None,
        flops: float,
        tokens: float,
    ) -> None:
        if len(self.entries) >= self.max_entries and self._closed:
            oldest = next(iter(self._closed))
            del self._closed[oldest]
            del self.entries[oldest]
        e = self.entries[key] = Goodput(first_received=now, last_received=now, sender=sender)
        self._start_instance(e, report, flops, tokens)
        # Phase seconds before the first report fall outside the wall time: only the names count.
        e.phase_raw = dict(report.phase_seconds or {})
        for name in e.phase_raw:
            self._exported(e, name)
        e.flops, e.tokens, e.model = flops, tokens, report.model_flops
        e.step = e.max_step = report.step

    def _phases(self, e: Goodput, reported: dict[str, float], interval: float) -> float:
        """Adds the phase seconds of this interval (scaled down to the interval if they exceed it:
        the sender's clock and the receive times differ by a little); returns their sum."""
        raw = e.phase_raw
        grown: list[tuple[str, float]] = []
        total = 0.0
        for name, value in reported.items():
            previous = raw.get(name)
            if previous is None:
                if len(raw) >= MAX_PHASE_NAMES_SEEN:
                    continue  # a sender inventing names in every report: bounded, their time uncounted
                previous = 0.0
                self._exported(e, name)  # a new name takes its place now, even at 0 seconds
            raw[name] = value
            if value > previous:
                grown.append((name, value - previous))
                total += value - previous
        if total <= 0.0:
            return 0.0
        scale = interval / total if total > interval else 1.0
        phases, names = e.phases, e.phase_names
        for name, delta in grown:
            phases[names.get(name) or self._exported(e, name)] += delta * scale
        return min(total, interval)

    def _exported(self, e: Goodput, name: str) -> str:
        exported = e.phase_names.get(name)
        if exported is not None:
            return exported
        exported = e.phase_names[name] = e.phase_name(name)
        if exported != name:
            self._log.log(
                ("phases", name),
                logging.WARNING,
                "phase %r counted as %r: a rank may mark at most %d phase names of its own",
                name,
                OTHER_PHASE,
                MAX_USER_PHASES,
                repeat="phase names counted as 'other'",
            )
        return exported

    def _restored(self, e: Goodput, report: ReportData, key: tuple[str, int]) -> None:
        """A new sender: counts the work it throws away when it resumed below the highest step."""
        start = e.instance_start
        if start is not None and e.step is not None and e.step > start.step:
            n = e.step - start.step
            e.per_step = (
                (e.flops - start.flops) / n,
                (e.tokens - start.tokens) / n,
                (e.seconds["productive"] - start.productive) / n,
            )
        resumed = report.start_step
        if e.max_step is None or report.step is None:
            return
        if resumed is None:
            if report.step < e.max_step:
                self._log.log(
                    ("no_start_step", key[0]),
                    logging.INFO,
                    "job %s rank %d restarted at step %d, below the highest step %d, without saying where it "
                    "resumed (start_step): no lost work counted",
                    key[0],
                    key[1],
                    report.step,
                    e.max_step,
                    repeat=f"job {key[0]}: restarts without start_step",
                )
            return
        if resumed >= e.max_step:
            return
        lost = e.max_step - resumed
        e.lost["steps"] += lost
        if e.per_step is None:
            self._log.log(
                ("no_per_step", key[0]),
                logging.WARNING,
                "job %s rank %d resumed %d steps back, but no earlier sender reported two different steps: "
                "lost FLOPs, tokens and seconds not counted (mfu_job_lost_work_steps_total is)",
                key[0],
                key[1],
                lost,
                repeat=f"job {key[0]}: lost work without a per-step figure",
            )
            return
        flops, tokens, productive = e.per_step
        e.lost["flops"] += lost * flops
        e.lost["tokens"] += lost * tokens
        e.lost["seconds"] += lost * productive

    def _start_instance(self, e: Goodput, report: ReportData, flops: float, tokens: float) -> None:
        e.step = None
        e.instance_start = (
            Sample(report.step, flops, tokens, e.seconds["productive"]) if report.step is not None else None
        )

    def forget(self, key: tuple[str, int]) -> None:
        """The registry dropped the rank for good (silent past the TTL, or evicted)."""
        self.entries.pop(key, None)
        self._closed.pop(key, None)

    def closed(self, key: tuple[str, int]) -> None:
        """The registry dropped the rank on its final report: kept until the TTL for a next sender."""
        if key in self.entries:
            self._closed.pop(key, None)
            self._closed[key] = None

    def expire(self, now: float) -> None:
        """Drops the closed entries silent past the TTL (oldest first: O(what expires))."""
        while self._closed:
            key = next(iter(self._closed))
            if now - self.entries[key].last_received <= self.ttl:
                break
            del self._closed[key]
            del self.entries[key]

    def phase_names(self, key: tuple[str, int]) -> frozenset[str]:
        """The phases the rank's accounting exports (jobs/budget.py counts them)."""
        e = self.entries.get(key)
        return frozenset(e.phases) if e is not None else frozenset()

    def view(self, key: tuple[str, int]) -> Goodput | None:
        e = self.entries.get(key)
        return e.copy() if e is not None else None

    # -- persistence -------------------------------------------------------------------------
    def export(self) -> list[dict[str, Any]]:
        return [encode(key, e) for key, e in self.entries.items()]

    def restore(
        self, entries: Iterable[tuple[tuple[str, int], Goodput]], now: float, live: Iterable[tuple[str, int]]
    ) -> int:
        """Adds entries read from the state file; those of ranks not among `live` (the ranks restored)
        had closed."""
        live = set(live)
        restored = 0
        for key, e in sorted(entries, key=lambda item: item[1].last_received):
            if now - e.last_received > self.ttl or key in self.entries:
                continue
            self.entries[key] = e
            if key not in live:
                self._closed[key] = None
            restored += 1
        return restored


def encode(key: tuple[str, int], e: Goodput) -> dict[str, Any]:
    start = e.instance_start
    return {
        "job_id": key[0],
        "rank": key[1],
        "first_received": e.first_received,
        "last_received": e.last_received,
        "sender": e.sender,
        "flops": e.flops,
        "model": e.model,
        "tokens": e.tokens,
        "step": e.step,
        "max_step": e.max_step,
        "instance_start": [start.step, start.flops, start.tokens, start.productive] if start else None,
        "per_step": list(e.per_step) if e.per_step is not None else None,
        "phase_raw": e.phase_raw,
        "seconds": e.seconds,
        "lost": e.lost,
        "restarts": e.restarts,
        "phases": e.phases,
    }


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise ValueError(f"{what}: expected a number >= 0, got {value!r}")
    return float(value)


def _step(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what}: expected a step >= 0, got {value!r}")
    return value


def _numbers(value: Any, names: Iterable[str] | None, what: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    out = {str(k): _number(v, f"{what}.{k}") for k, v in value.items()}
    for name in names or ():
        out.setdefault(name, 0.0)
    return out


def decode(item: Any, where: str) -> tuple[tuple[str, int], Goodput]:
    """Raises ValueError naming the field when `item` is not an entry written by encode()."""
    if not isinstance(item, dict) or not isinstance(item.get("job_id"), str):
        raise ValueError(f"{where}: not a goodput entry")
    rank = _step(item.get("rank"), f"{where}.rank")
    if rank is None:
        raise ValueError(f"{where}.rank missing")
    start = item.get("instance_start")
    per_step = item.get("per_step")
    phases = _numbers(item.get("phases") or {}, None, f"{where}.phases")
    if len(phases) > MAX_PHASES:
        raise ValueError(f"{where}.phases: more than {MAX_PHASES} phases")
    e = Goodput(
        first_received=_number(item.get("first_received"), f"{where}.first_received"),
        last_received=_number(item.get("last_received"), f"{where}.last_received"),
        sender=item.get("sender") if isinstance(item.get("sender"), str) else None,
        flops=_number(item.get("flops", 0), f"{where}.flops"),
        model=_numbers(item.get("model") or {}, None, f"{where}.model"),
        tokens=_number(item.get("tokens", 0), f"{where}.tokens"),
        step=_step(item.get("step"), f"{where}.step"),
        max_step=_step(item.get("max_step"), f"{where}.max_step"),
        instance_start=Sample(
            _step(start[0], f"{where}.instance_start") or 0,
            *(_number(v, f"{where}.instance_start") for v in start[1:4]),
        )
        if isinstance(start, list) and len(start) == 4
        else None,
        per_step=tuple(_number(v, f"{where}.per_step") for v in per_step)  # type: ignore[arg-type]
        if isinstance(per_step, list) and len(per_step) == 3
        else None,
        phase_raw=_numbers(item.get("phase_raw") or {}, None, f"{where}.phase_raw"),
        seconds=_numbers(item.get("seconds") or {}, SECONDS, f"{where}.seconds"),
        lost=_numbers(item.get("lost") or {}, LOST, f"{where}.lost"),
        restarts={k: int(v) for k, v in _numbers(item.get("restarts") or {}, RESTART_CAUSES, where).items()},
        phases=phases,
    )
    return (item["job_id"], rank), e
