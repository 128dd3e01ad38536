"""How many series the reporting ranks put on /metrics, kept as a running total.

The registry asks, before it applies a report, what the report would add; a report that would take
the agent past --max-series is refused (after ranks that stopped reporting are evicted), so the
budget holds whatever clients send. The figures are upper bounds of what metrics/jobs.py and
metrics/rollups.py export: the MFU and HFU gauges and the rates, which need two reports and a known
peak, are counted from the first report, so that no later report of the same shape can add series;
tests/test_bounds.py checks them against a real render, so a family added there without its count
here fails.

Per rank, on each GPU it uses now: `mfu_job_info`, `_last_report_timestamp_seconds` and
`_first_report_timestamp_seconds` (PER_RANK_GPU), `mfu_job_step` once it sent a step,
`_tokens_per_second` once it sent tokens, one `mfu_job_peak_flops` or `_peak_flops_unknown` per dtype
it reports, one `mfu_job_mfu_ratio` per dtype of its model FLOPs and one `mfu_job_hfu_ratio` per dtype
of its hardware FLOPs; one counter series per (GPU it has counters on, counter and dtype); and
PER_RANK rollups (with the goodput counters, jobs/goodput.py: a fixed set, and one series per phase
the rank has marked or is marking in the report, MAX_PHASES at most), plus `mfu_job_rank_hfu_ratio`
once it sent hardware FLOPs and `mfu_job_rank_steps_per_second` once it sent a step. Per job on the
node:
PER_JOB, plus PER_JOB_MODEL per GPU model its ranks use here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .goodput import MAX_PHASES
from .goodput import SERIES_PER_RANK as GOODPUT_PER_RANK

if TYPE_CHECKING:
    from .rank import GpuShare

PER_RANK_GPU = 3
# mfu_job_rank_mfu_ratio, _last_progress_timestamp_seconds, _last_report_timestamp_seconds; goodput
PER_RANK = 3 + GOODPUT_PER_RANK
PER_JOB = 4  # mfu_job_node_{model_flops,tokens}_per_second, _first_report_timestamp_seconds, _energy_joules
PER_JOB_MODEL = 4  # mfu_job_node_{peak_flops,mfu_ratio,hfu_ratio,gpus}


@dataclass(frozen=True, slots=True)
class Footprint:
    """What one rank puts on /metrics: its own series, and the GPU models its job gets series for."""

    series: int
    models: frozenset[str]


NOTHING = Footprint(0, frozenset())


def footprint(
    gpus: tuple[GpuShare, ...],
    model_dtypes: int,
    hardware_dtypes: int,
    gpu_counters: int,
    step: bool = False,
    tokens: bool = False,
    phases: int = 0,
) -> Footprint:
    """`gpu_counters`: the (GPU, counter, dtype) triples the rank has counters for; `step`, `tokens`:
    whether it has sent a step, tokens; `phases`: the goodput phases it exports (at most)."""
    per_gpu = PER_RANK_GPU + model_dtypes + hardware_dtypes + step + tokens
    series = (
        sum(per_gpu + len(g.peaks) for g in gpus)
        + gpu_counters
        + PER_RANK
        + (hardware_dtypes > 0)
        + step
        + min(phases, MAX_PHASES)
    )
    return Footprint(series, frozenset(g.model for g in gpus))


def job_series(models: int) -> int:
    return PER_JOB + PER_JOB_MODEL * models


class SeriesLedger:
    """The running total of the ranks' and jobs' series. Not thread-safe: the registry's lock guards it."""

    def __init__(self) -> None:
        self.total = 0
        self._jobs: dict[str, tuple[int, Counter[str]]] = {}  # job -> (ranks, ranks per GPU model)

    def growth(self, changes: list[tuple[str, Footprint, Footprint]]) -> int:
        """Series these (job, before, after) changes would add (negative: free); nothing is changed."""
        added = 0
        new_models: dict[str, set[str]] = {}
        for job, before, after in changes:
            added += after.series - before.series
            entry = self._jobs.get(job)
            known = entry[1] if entry is not None else ()
            seen = new_models.get(job)
            if seen is None:
                seen = new_models[job] = set()
                if entry is None:
                    added += PER_JOB
            for model in after.models:
                if model not in known and model not in seen:
                    seen.add(model)
                    added += PER_JOB_MODEL
        return added

    def change(self, job: str, before: Footprint | None, after: Footprint | None) -> None:
        """A rank of `job` came (before None), changed, or went (after None)."""
        ranks, models = self._jobs.get(job) or (0, Counter())
        if ranks:
            self.total -= job_series(len(models))
        if before is not None:
            ranks -= 1
            self.total -= before.series
            models.subtract(before.models)
        if after is not None:
            ranks += 1
            self.total += after.series
            models.update(after.models)
        models = +models  # drop models no rank uses any more
        if ranks:
            self._jobs[job] = (ranks, models)
            self.total += job_series(len(models))
        else:
            self._jobs.pop(job, None)
