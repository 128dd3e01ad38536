"""The MFU / Fleet dashboard (dashboards/mfu-fleet.json)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.cog.builder import Builder

from . import interconnect
from .board import dashboard
from .common import MFU_STEPS, Q, column, dashed, gpu_link, job_link, node_link
from .goodput import fleet_goodput_panels
from .panels import (
    bargauge_panel,
    heatmap_panel,
    histogram_panel,
    row,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "mfu-fleet"


def build() -> dict[str, Any]:
    return dashboard(
        UID,
        "MFU / Fleet",
        "All GPUs and jobs: MFU by job, how MFU is spread over GPUs, GPUs that look busy but are idle, "
        "GPU-hours spent below the MFU target, and hardware errors by node.",
        variables=[],
        panels=PANELS,
    )


WEEK_IDLE = "sum_over_time(mfu:fleet_idle_cost_dollars:rate5m[7d:5m]) * 300"
WEEK_BELOW = "sum_over_time(mfu:fleet_below_target_cost_dollars:rate5m[7d:5m]) * 300"
COST_SOURCE = (
    " From the agents' cost counters (--gpu-price-file: US dollars per GPU-hour by model; no price, no "
    "cost) through the rules in mfu-cost.yml; each 5-minute rate times 300 s, summed over the range."
)


def cost_panels() -> list[Builder]:
    """What low MFU and idle GPUs cost: this week, over the range, per hour and by node (mfu-cost.yml)."""
    dollars = {"unit": "currencyUSD", "decimals": 0}
    return [
        stat_panel(
            "What low MFU and idle GPUs cost this week",
            "Dollars of GPU time in the last 7 days spent idle while allocated (processes on the GPU, SM "
            "active below --idle-sm-active) plus spent below the MFU target (price x (target - MFU) / "
            "target while a GPU has an MFU)." + COST_SOURCE,
            [Q(f"{WEEK_IDLE} + {WEEK_BELOW}", "idle + below target")],
            w=6,
            graph=False,
            **dollars,
        ),
        stat_panel(
            "Idle GPUs cost this week",
            "Dollars of GPU time in the last 7 days on GPUs idle while allocated." + COST_SOURCE,
            [Q(WEEK_IDLE, "idle")],
            w=6,
            graph=False,
            **dollars,
        ),
        stat_panel(
            "Below the MFU target this week",
            "Dollars of GPU time in the last 7 days spent below the MFU target." + COST_SOURCE,
            [Q(WEEK_BELOW, "below target")],
            w=6,
            graph=False,
            **dollars,
        ),
        stat_panel(
            "All GPU time this week",
            "Dollars of all GPU time in the last 7 days, used or not, for comparison." + COST_SOURCE,
            [Q("sum_over_time(mfu:fleet_cost_dollars:rate5m[7d:5m]) * 300", "all")],
            w=6,
            graph=False,
            **dollars,
        ),
        timeseries_panel(
            "Dollars per hour",
            "What the fleet's GPUs cost per hour: all of them, idle while allocated, and below the MFU "
            "target (mfu:fleet_*_dollars:rate5m x 3600).",
            [
                Q("mfu:fleet_cost_dollars:rate5m * 3600", "all GPUs"),
                Q("mfu:fleet_idle_cost_dollars:rate5m * 3600", "idle while allocated"),
                Q("mfu:fleet_below_target_cost_dollars:rate5m * 3600", "below target"),
            ],
            w=12,
            unit="currencyUSD",
            min=0,
        ),
        bargauge_panel(
            "Idle and below-target dollars by node (range)",
            "The 20 nodes whose GPUs cost most idle or below the MFU target over the dashboard's range."
            + COST_SOURCE,
            [
                Q(
                    "topk(20, sum_over_time(mfu:node_idle_cost_dollars:rate5m[$__range:5m]) * 300"
                    " + sum_over_time(mfu:node_below_target_cost_dollars:rate5m[$__range:5m]) * 300)",
                    "{{instance}}",
                )
            ],
            w=12,
            unit="currencyUSD",
            decimals=0,
        ),
    ]


PANELS = [
    row("Fleet"),
    stat_panel(
        "Fleet MFU",
        "Peak-weighted MFU of all GPUs running a job with a known peak: total achieved over total peak, "
        "sum of (GPU MFU x GPU peak) / sum of GPU peaks (mfu:fleet_mfu:ratio). A B200 at 30 % and an A100 "
        "at 50 % make 32 %, not 40 %.",
        [Q("mfu:fleet_mfu:ratio", "MFU")],
        w=3,
        h=4,
        unit="percentunit",
        decimals=1,
        steps=MFU_STEPS,
    ),
    stat_panel(
        "MFU target",
        "The target the fleet is measured against (mfu:target_mfu:ratio in "
        "deploy/prometheus/rules/mfu-recording.yml).",
        [Q("mfu:target_mfu:ratio", "target")],
        w=3,
        h=4,
        unit="percentunit",
        graph=False,
    ),
    stat_panel(
        "GPUs",
        "GPUs seen by the agents.",
        [Q("mfu:fleet_gpus:count", "GPUs")],
        w=3,
        h=4,
    ),
    stat_panel(
        "GPUs running jobs",
        "GPUs with at least one reporting rank.",
        [Q("mfu:fleet_job_gpus:count", "GPUs")],
        w=3,
        h=4,
    ),
    stat_panel(
        "GPUs without a job",
        "GPUs no reporting rank runs on (idle, or running a job that does not report).",
        [Q("mfu:fleet_idle_gpus:count", "GPUs")],
        w=3,
        h=4,
        steps=(("green", None), ("orange", 1)),
    ),
    stat_panel(
        "Busy-but-idle GPUs",
        "GPUs at >= 90 % NVML utilisation with < 50 % SM active right now.",
        [Q("mfu:fleet_gpus_busy_but_idle:count", "GPUs")],
        w=3,
        h=4,
        steps=(("green", None), ("orange", 1)),
    ),
    stat_panel(
        "GPU-hours below target",
        "GPU-hours spent by GPUs running a job below the MFU target over the dashboard's time range: "
        "sum_over_time(mfu:fleet_gpus_below_target:count[$__range:$__interval]) * $__interval_ms / "
        "3600000 (one sample per interval, each worth the interval per GPU).",
        [
            Q(
                "sum_over_time(mfu:fleet_gpus_below_target:count[$__range:$__interval]) * $__interval_ms "
                "/ 3600000",
                "GPU-hours",
            )
        ],
        w=3,
        h=4,
        unit="short",
        decimals=1,
        steps=(("green", None), ("orange", 1)),
        graph=False,
        instant=True,
    ),
    stat_panel(
        "Jobs",
        "Jobs reporting.",
        [Q("count(mfu:job_gpus:count)", "jobs")],
        w=3,
        h=4,
    ),
    row("MFU by job"),
    timeseries_panel(
        "MFU by job",
        "MFU of every job (mfu:job_mfu:ratio); dashed: the target.",
        [Q("mfu:job_mfu:ratio", "{{job_id}}"), Q("mfu:target_mfu:ratio", "target")],
        w=14,
        h=10,
        unit="percentunit",
        min=0,
        soft_max=1,
        legend_table=True,
        overrides=[
            dashed(),
        ],
    ),
    table_panel(
        "Jobs",
        "Every reporting job, lowest MFU first, with the GPU-hours it spent below target over the time "
        "range. Click a job for its Training job dashboard.",
        [
            Q("mfu:job_mfu:ratio"),
            Q("mfu:job_hfu:ratio"),
            Q("mfu:job_gpus:count"),
            Q("mfu:job_nodes:count"),
            Q("mfu:job_tokens_per_second:sum"),
            Q(
                "sum_over_time(mfu:job_gpus_below_target:count[$__range:$__interval]) * $__interval_ms / "
                "3600000"
            ),
        ],
        w=10,
        h=10,
        merge=True,
        rename={
            "job_id": "Job",
            "Value #A": "MFU",
            "Value #B": "HFU",
            "Value #C": "GPUs",
            "Value #D": "Nodes",
            "Value #E": "Tokens/s",
            "Value #F": "GPU-hours below target",
        },
        hide=("Time", "__name__", "job"),
        sort="MFU",
        overrides=[
            column("MFU", "percentunit", 1, steps=MFU_STEPS, cell="color-background"),
            column("HFU", "percentunit", 1, steps=MFU_STEPS, cell="color-background"),
            column("Tokens/s", "short", 0),
            column("GPU-hours below target", "short", 1),
            job_link(),
        ],
    ),
    timeseries_panel(
        "Fleet MFU and activity",
        "Fleet MFU against mean NVML utilisation, SM and tensor activity over all GPUs.",
        [
            Q("mfu:fleet_mfu:ratio", "fleet MFU"),
            Q("mfu:fleet_gpu_utilization:avg", "utilisation (NVML)"),
            Q("mfu:fleet_sm_active:avg", "SM active"),
            Q("mfu:fleet_tensor_active:avg", "tensor active"),
            Q("mfu:target_mfu:ratio", "target"),
        ],
        w=14,
        h=8,
        unit="percentunit",
        min=0,
        soft_max=1,
        overrides=[
            dashed(),
        ],
    ),
    timeseries_panel(
        "MFU by GPU model",
        "Peak-weighted MFU of the GPUs of each model (mfu_gpu_info's model label) that run a job with a "
        "known peak: sum of (GPU MFU x GPU peak) / sum of GPU peaks per model "
        "(mfu:fleet_model_mfu:ratio); dashed: the target.",
        [Q("mfu:fleet_model_mfu:ratio", "{{model}}"), Q("mfu:target_mfu:ratio", "target")],
        w=10,
        h=8,
        unit="percentunit",
        min=0,
        soft_max=1,
        overrides=[
            dashed(),
        ],
    ),
    row("Goodput, communication and cost"),
    *fleet_goodput_panels(),
    *interconnect.fleet_panels(),
    *cost_panels(),
    row("MFU across GPUs"),
    histogram_panel(
        "MFU across GPUs (now)",
        "Number of GPUs per MFU bucket of 5 %, over GPUs running a job with a known peak "
        "(mfu_gpu_mfu_ratio, from the agents: the sum over every rank and dtype on the GPU).",
        [Q("mfu_gpu_mfu_ratio", "{{instance}} GPU {{gpu}}")],
        w=8,
        h=9,
        unit="percentunit",
        min=0,
        max=1,
        bucket_size=0.05,
    ),
    heatmap_panel(
        "MFU across GPUs over time",
        "Distribution of per-GPU MFU over time (colour = number of GPUs).",
        [Q("mfu_gpu_mfu_ratio", "{{instance}} GPU {{gpu}}")],
        w=16,
        h=9,
        unit="percentunit",
        bucket="0.05",
    ),
    row("Waste: below target and busy-but-idle"),
    timeseries_panel(
        "GPUs below target MFU, by node",
        "GPUs running a job under the MFU target, stacked by node (mfu:node_gpus_below_target:count). The "
        "area is the GPU-hours below target.",
        [Q("mfu:node_gpus_below_target:count > 0", "{{instance}}")],
        w=12,
        h=8,
        min=0,
        stacked=True,
    ),
    bargauge_panel(
        "GPU-hours below target by job (time range)",
        "GPU-hours each job spent below the MFU target over the time range.",
        [
            Q(
                "sort_desc(sum_over_time(mfu:job_gpus_below_target:count[$__range:$__interval]) * "
                "$__interval_ms / 3600000 > 0)",
                "{{job_id}}",
            )
        ],
        w=6,
        h=8,
        unit="short",
        decimals=1,
    ),
    bargauge_panel(
        "GPU-hours below target by node (time range)",
        "GPU-hours each node's GPUs spent below the MFU target over the time range.",
        [
            Q(
                "sort_desc(sum_over_time(mfu:node_gpus_below_target:count[$__range:$__interval]) * "
                "$__interval_ms / 3600000 > 0)",
                "{{instance}}",
            )
        ],
        w=6,
        h=8,
        unit="short",
        decimals=1,
    ),
    timeseries_panel(
        "Busy-but-idle GPUs, by node",
        "GPUs at >= 90 % utilisation with < 50 % SM active, stacked by node "
        "(mfu:node_gpus_busy_but_idle:count).",
        [Q("mfu:node_gpus_busy_but_idle:count > 0", "{{instance}}")],
        w=12,
        h=8,
        min=0,
        stacked=True,
    ),
    table_panel(
        "Busy-but-idle GPUs now",
        "Which GPUs look busy but are idle, with their utilisation and SM activity.",
        [
            Q("mfu_gpu_utilization_ratio and on (instance, gpu, uuid) (mfu:gpu_busy_but_idle:bool == 1)"),
            Q("mfu_gpu_sm_active_ratio and on (instance, gpu, uuid) (mfu:gpu_busy_but_idle:bool == 1)"),
        ],
        w=12,
        h=8,
        merge=True,
        rename={
            "instance": "Node",
            "gpu": "GPU",
            "uuid": "UUID",
            "Value #A": "Utilisation",
            "Value #B": "SM active",
        },
        hide=("Time", "__name__", "job"),
        overrides=[
            column("Utilisation", "percentunit"),
            column("SM active", "percentunit"),
            node_link(),
            gpu_link(),
        ],
    ),
    timeseries_panel(
        "SM active by node",
        "Mean SM activity of each node's GPUs (mfu:node_sm_active:avg).",
        [Q("mfu:node_sm_active:avg", "{{instance}}")],
        w=24,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
        legend_table=True,
    ),
    row("Hardware errors by node"),
    table_panel(
        "Hardware errors by node (time range)",
        "Per node over the time range: GPUs to repair (GPUs whose health action, from the agent's XID "
        "catalogue and GPU state, was reset_gpu, reboot_node or inspect_hardware: mfu_gpu_health_severity "
        "of 3 or more), all XIDs, uncorrectable ECC errors, GPUs with a failed or pending row remap, GPUs "
        "throttled by hardware slowdown, and now: GPUs unreadable, GPUs missing against the last 6 h, "
        "agent scrape up.",
        [
            Q("sum by (instance) (max_over_time(mfu_gpu_health_severity[$__range]) >= bool 3)"),
            Q(
                "sum by (instance) ((mfu_gpu_xid_errors_total - mfu_gpu_xid_errors_total offset $__range) "
                "or mfu_gpu_xid_errors_total)"
            ),
            Q('sum by (instance) (increase(mfu_gpu_ecc_errors_total{type="uncorrected"}[$__range]))'),
            Q("sum by (instance) (max_over_time(mfu_gpu_row_remap_failure[$__range]))"),
            Q("sum by (instance) (mfu_gpu_remapped_rows_pending)"),
            Q(
                "sum by (instance) (max by (instance, gpu) "
                '(max_over_time(mfu_gpu_clock_event_active{reason=~"hw_slowdown|hw_thermal_slowdown|sw_thermal_slowdown|hw_power_brake_slowdown"}[$__range])))'
            ),
            Q("sum by (instance) (1 - mfu_gpu_up)"),
            Q("mfu:node_gpus:max_over_time6h - mfu:node_gpus:count"),
            Q('max by (instance) (up{job=~".*mfu.*"})'),
        ],
        w=24,
        h=9,
        merge=True,
        rename={
            "instance": "Node",
            "Value #A": "GPUs to repair",
            "Value #B": "All XIDs",
            "Value #C": "Uncorrectable ECC",
            "Value #D": "Remap failed",
            "Value #E": "Remap pending",
            "Value #F": "Throttled GPUs",
            "Value #G": "GPUs down",
            "Value #H": "GPUs missing",
            "Value #I": "Agent up",
        },
        hide=("Time", "__name__", "job"),
        sort="GPUs to repair",
        sort_desc=True,
        overrides=[
            column("GPUs to repair", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Uncorrectable ECC", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Remap failed", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Remap pending", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Throttled GPUs", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("GPUs down", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("GPUs missing", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("All XIDs", None, 0),
            column(
                "Agent up",
                cell="color-text",
                mappings=[
                    {
                        "options": {
                            "0": {"color": "red", "index": 0, "text": "down"},
                            "1": {"color": "green", "index": 1, "text": "up"},
                        },
                        "type": "value",
                    }
                ],
            ),
            node_link(),
        ],
    ),
    timeseries_panel(
        "XID events by node",
        "XID events per interval by node and XID code.",
        [
            Q(
                "sum by (instance, xid) (increase(mfu_gpu_xid_errors_total[$__rate_interval]) > 0 or "
                "(mfu_gpu_xid_errors_total unless mfu_gpu_xid_errors_total offset $__rate_interval))",
                "{{instance}} XID {{xid}}",
            )
        ],
        w=12,
        h=8,
        min=0,
        bars=True,
    ),
    table_panel(
        "Firing alerts",
        "mfu-agent alerts firing now (Prometheus ALERTS series).",
        [Q('ALERTS{alertstate="firing", alertname=~"Mfu.*|Gpu.*|TrainingJob.*"}')],
        w=12,
        h=8,
        rename={
            "alertname": "Alert",
            "severity": "Severity",
            "instance": "Node",
            "job_id": "Job",
            "gpu": "GPU",
            "xid": "XID",
            "reason": "Reason",
        },
        hide=("Time", "__name__", "job", "Value", "alertstate", "uuid", "rank", "model", "dtype", "type"),
        overrides=[
            node_link(),
            job_link(),
        ],
    ),
    table_panel(
        "GPU processes of jobs not reporting MFU",
        "GPUs holding compute processes while no job reports MFU for them: the pods or Slurm jobs to "
        "instrument (or that hold GPUs for nothing). From NVML's process list joined with "
        "/proc/<pid>/cgroup.",
        [
            Q(
                "count by (instance, gpu, uuid, namespace, pod, container, pod_uid, container_id, "
                "slurm_job_id) (mfu_gpu_process_info) unless on (instance, uuid) mfu_job_info"
            )
        ],
        w=24,
        h=8,
        rename={
            "instance": "Node",
            "gpu": "GPU",
            "uuid": "UUID",
            "namespace": "Namespace",
            "pod": "Pod",
            "container": "Container",
            "pod_uid": "Pod UID",
            "container_id": "Container ID",
            "slurm_job_id": "Slurm job",
        },
        hide=("Time", "Value"),
    ),
]
