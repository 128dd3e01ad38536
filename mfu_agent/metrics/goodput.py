"""Goodput counters per rank (labels job_id, rank): where its wall time went, and the work restores threw
away (jobs/goodput.py; definitions in docs/goodput.md). Exported for every rank the agent tracks."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from ..jobs.goodput import RESTART_CAUSES
from ..jobs.registry import RankView

RANK = ["job_id", "rank"]

_SECONDS = (
    ("wall", "mfu_job_wall_seconds", "Seconds from the rank's first report to its latest (receive times)."),
    (
        "productive",
        "mfu_job_productive_seconds",
        "Seconds between reports in which the step advanced, less the phases the client marked.",
    ),
    (
        "stall",
        "mfu_job_stall_seconds",
        "Seconds between reports of the same sender in which the step did not advance, less marked phases.",
    ),
    (
        "restart_downtime",
        "mfu_job_restart_downtime_seconds",
        "Seconds from a sender's last report to the first report of the sender that replaced it.",
    ),
)
_LOST = (
    (
        "steps",
        "mfu_job_lost_work_steps",
        "Steps redone after restores from a checkpoint behind the highest step.",
    ),
    (
        "flops",
        "mfu_job_lost_work_flops",
        "Model FLOPs of the redone steps (the per-step average of the sender that reached the highest step).",
    ),
    ("tokens", "mfu_job_lost_work_tokens", "Tokens of the redone steps."),
    ("seconds", "mfu_job_lost_work_seconds", "Productive seconds of the redone steps."),
)


def goodput_families(views: list[RankView]) -> Iterator[Metric]:
    ranked = [(v, [v.job_id, str(v.rank)]) for v in views if v.goodput is not None]
    for key, name, help_text in _SECONDS:
        family = CounterMetricFamily(name, help_text, labels=RANK)
        for v, labels in ranked:
            family.add_metric(labels, v.goodput.seconds[key])  # type: ignore[union-attr]
        yield family
    phases = CounterMetricFamily(
        "mfu_job_phase_seconds",
        "Seconds the client marked as a phase: checkpoint, eval, data_wait, up to 4 names of its own, other.",
        labels=[*RANK, "phase"],
    )
    for v, labels in ranked:
        for phase, seconds in v.goodput.phases.items():  # type: ignore[union-attr]
            phases.add_metric([*labels, phase], seconds)
    yield phases
    restarts = CounterMetricFamily(
        "mfu_job_restarts",
        "Restarts of the rank seen by the agent: new_process (a new sender took the rank over) or "
        "counter_reset (the same sender's counters went down).",
        labels=[*RANK, "cause"],
    )
    for v, labels in ranked:
        for cause in RESTART_CAUSES:
            restarts.add_metric([*labels, cause], v.goodput.restarts[cause])  # type: ignore[union-attr]
    yield restarts
    for key, name, help_text in _LOST:
        family = CounterMetricFamily(name, help_text, labels=RANK)
        for v, labels in ranked:
            family.add_metric(labels, v.goodput.lost[key])  # type: ignore[union-attr]
        yield family
