"""Goodput and stragglers: where a job's time went (mfu-goodput.yml) and which ranks hold it back
(mfu-stragglers.yml), for the Training job and Fleet dashboards."""

from __future__ import annotations

from grafana_foundation_sdk.cog.builder import Builder

from .common import Q, column, dashed, gpu_link, node_link
from .panels import bargauge_panel, row, stat_panel, table_panel, timeseries_panel

JOB = 'job_id="$job_id"'
STRAGGLERS = f'ALERTS{{alertname="RankStraggler", {JOB}}}'


def on_straggler_gpus(expr: str) -> str:
    """`expr` (a per-GPU series) on the GPUs of the job's straggling ranks (RankStraggler, pending or
    firing), labelled (instance, gpu, rank): a GPU shared by two ranks is one row per rank."""
    return (
        f"max by (instance, gpu, rank) ({STRAGGLERS})"
        f" * on (instance, gpu) group_left () max by (instance, gpu) ({expr})"
    )


def job_goodput_panels() -> list[Builder]:
    return [
        row("Goodput: where the time went"),
        stat_panel(
            "Effective training time",
            "Productive time less the work redone after restores from a checkpoint, over the wall time of "
            "the job's ranks since their first report (mfu:job_effective_training_time:ratio, summed over "
            "ranks).",
            [Q(f"mfu:job_effective_training_time:ratio{{{JOB}}}", "effective")],
            w=4,
            h=8,
            unit="percentunit",
            decimals=1,
            instant=True,
        ),
        stat_panel(
            "Restarts",
            "Restarts of the job's ranks the agents saw, by cause: new_process (another process took a "
            "rank over) and counter_reset (a rank's counters went down) (mfu:job_restarts:sum).",
            [Q(f"sum by (cause) (mfu:job_restarts:sum{{{JOB}}})", "{{cause}}")],
            w=4,
            h=8,
            decimals=0,
            steps=(("green", None), ("orange", 1)),
            graph=False,
            text_mode="value_and_name",
            instant=True,
        ),
        stat_panel(
            "Lost work",
            "Productive seconds of the steps redone after restores from a checkpoint behind the highest "
            "step reached, summed over ranks (mfu:job_lost_work_seconds:sum).",
            [Q(f"mfu:job_lost_work_seconds:sum{{{JOB}}}", "lost")],
            w=4,
            h=8,
            unit="s",
            steps=(("green", None), ("orange", 1)),
            graph=False,
            instant=True,
        ),
        bargauge_panel(
            "Where the time went",
            "Seconds of the job's ranks since their first report, summed over ranks: productive (the step "
            "advanced), stalled (it did not, outside marked phases), restart downtime (from a rank's last "
            "report to its replacement's first), the phases the client marked (checkpoint, eval, "
            "data_wait, ...), and the productive seconds redone after restores (lost work, part of "
            "productive).",
            [
                Q(f"mfu:job_productive_seconds:sum{{{JOB}}}", "productive"),
                Q(f"mfu:job_stall_seconds:sum{{{JOB}}}", "stalled"),
                Q(f"mfu:job_restart_downtime_seconds:sum{{{JOB}}}", "restart downtime"),
                Q(f"mfu:job_phase_seconds:sum{{{JOB}}}", "phase {{phase}}"),
                Q(f"mfu:job_lost_work_seconds:sum{{{JOB}}}", "lost work (redone)"),
            ],
            w=12,
            h=8,
            unit="s",
        ),
        timeseries_panel(
            "Productive time (5 min)",
            "The share of the ranks' wall time in which the step advanced, over 5 minutes "
            "(mfu:job_productive_time:ratio_rate5m): dips are stalls, phases and restarts.",
            [Q(f"mfu:job_productive_time:ratio_rate5m{{{JOB}}}", "productive")],
            w=24,
            h=6,
            unit="percentunit",
            min=0,
            max=1,
        ),
    ]


def job_straggler_panels() -> list[Builder]:
    """For the "Ranks and stragglers" row."""
    return [
        timeseries_panel(
            "Step rate per rank",
            "Steps per second of each rank over the agent's window (mfu_job_rank_steps_per_second); dashed: "
            "the job's median over its ranks (mfu:job_steps_per_second:median, from 3 ranks up).",
            [
                Q(f"mfu_job_rank_steps_per_second{{{JOB}}}", "rank {{rank}}"),
                Q(f"mfu:job_steps_per_second:median{{{JOB}}}", "median"),
            ],
            w=12,
            h=8,
            unit="short",
            min=0,
            overrides=[dashed("^median$")],
        ),
        timeseries_panel(
            "Pace vs job median",
            "Each rank's step rate over the job's median (mfu:job_rank_steps_per_second:ratio_to_median); "
            "dashed: the straggler threshold (mfu:straggler_threshold:ratio). Below it for 5 minutes: "
            "RankStraggler.",
            [
                Q(f"mfu:job_rank_steps_per_second:ratio_to_median{{{JOB}}}", "rank {{rank}}"),
                Q("mfu:straggler_threshold:ratio", "threshold"),
            ],
            w=12,
            h=8,
            unit="percentunit",
            overrides=[dashed("^threshold$")],
        ),
        table_panel(
            "Stragglers",
            "Ranks of the job with a RankStraggler alert (pending or firing), beside their GPU: SM clock "
            "against its maximum, active clock-event (throttle) reasons, temperature and health severity "
            "(0 none .. 5; the GPU node dashboard says which action). Click the node or GPU for more.",
            [
                Q(f"max by (instance, gpu, rank) ({STRAGGLERS})"),
                Q(on_straggler_gpus("mfu_gpu_sm_clock_hertz / mfu_gpu_sm_clock_max_hertz")),
                Q(
                    on_straggler_gpus(
                        'sum by (instance, gpu) (mfu_gpu_clock_event_active{reason!="gpu_idle"})'
                    )
                ),
                Q(on_straggler_gpus("mfu_gpu_temperature_celsius")),
                Q(on_straggler_gpus("mfu_gpu_health_severity")),
            ],
            w=24,
            h=6,
            merge=True,
            rename={
                "rank": "Rank",
                "instance": "Node",
                "gpu": "GPU",
                "Value #B": "SM clock / max",
                "Value #C": "Throttle reasons",
                "Value #D": "Temperature",
                "Value #E": "Health severity",
            },
            hide=("Time", "Value #A"),
            sort="SM clock / max",
            overrides=[
                column("SM clock / max", "percentunit", 0),
                column("Temperature", "celsius", 0),
                column(
                    "Throttle reasons", None, 0, steps=(("green", None), ("orange", 1)), cell="color-text"
                ),
                column(
                    "Health severity",
                    None,
                    0,
                    steps=(("green", None), ("orange", 1), ("red", 3)),
                    cell="color-text",
                ),
                node_link(),
                gpu_link(),
            ],
        ),
    ]


def fleet_goodput_panels() -> list[Builder]:
    return [
        bargauge_panel(
            "Jobs by effective training time",
            "Each job's effective training time: productive time less redone work, over its ranks' wall "
            "time (mfu:job_effective_training_time:ratio), lowest first.",
            [Q("sort(mfu:job_effective_training_time:ratio)", "{{job_id}}")],
            w=12,
            h=8,
            unit="percentunit",
            decimals=1,
            max=1,
        ),
    ]
