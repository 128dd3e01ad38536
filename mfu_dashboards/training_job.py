"""The MFU / Training job dashboard (dashboards/mfu-training-job.json)."""

from __future__ import annotations

from typing import Any

from . import interconnect
from .board import dashboard, label_values, query_variable
from .common import MFU_STEPS, Q, column, dashed, gpu_link, node_link, value_mapping
from .goodput import job_goodput_panels, job_straggler_panels
from .panels import (
    heatmap_panel,
    row,
    stat_panel,
    state_timeline_panel,
    status_history_panel,
    table_panel,
    timeseries_panel,
)

UID = "mfu-training-job"


def build() -> dict[str, Any]:
    return dashboard(
        UID,
        "MFU / Training job",
        "One training job across all its nodes and ranks: MFU and HFU against the peak denominator, "
        "stragglers per rank, throughput, placement, and the hardware activity of its GPUs.",
        variables=[
            query_variable("job_id", "Job", label_values("mfu_job_info", "job_id")),
        ],
        panels=PANELS,
    )


PANELS = [
    row("Job"),
    stat_panel(
        "MFU",
        "Peak-weighted MFU of the job: sum over its GPUs of (its MFU on the GPU x the GPU's peak at the "
        "job's precision) / sum of those peaks, from the agent's windowed MFU gauges (mfu:job_mfu:ratio). "
        "Never clamped: above 100 % the FLOPs or the peak are wrong (MfuImplausible).",
        [Q('mfu:job_mfu:ratio{job_id="$job_id"}', "MFU")],
        w=3,
        h=4,
        unit="percentunit",
        decimals=1,
        steps=MFU_STEPS,
    ),
    stat_panel(
        "HFU",
        "The same as MFU from hardware FLOPs (with recomputation) (mfu:job_hfu:ratio).",
        [Q('mfu:job_hfu:ratio{job_id="$job_id"}', "HFU")],
        w=3,
        h=4,
        unit="percentunit",
        decimals=1,
        steps=MFU_STEPS,
    ),
    stat_panel(
        "Model FLOP/s",
        "Achieved model FLOP/s of the whole job (mfu:job_model_flops_per_second:sum: the agents' windowed "
        "rates, summed).",
        [Q('mfu:job_model_flops_per_second:sum{job_id="$job_id"}', "achieved")],
        w=3,
        h=4,
        unit="flops",
    ),
    stat_panel(
        "Peak FLOP/s (denominator)",
        "Sum over the job's GPUs of the dense peak FLOP/s at the job's precision (the highest peak among "
        "the dtypes it reports on the GPU; a GPU shared by two ranks counts once): the MFU denominator "
        "(mfu:job_peak_flops:sum).",
        [Q('mfu:job_peak_flops:sum{job_id="$job_id"}', "peak")],
        w=3,
        h=4,
        unit="flops",
        graph=False,
    ),
    stat_panel(
        "Tokens/s",
        "Tokens per second, whole job (mfu:job_tokens_per_second:sum).",
        [Q('mfu:job_tokens_per_second:sum{job_id="$job_id"}', "tokens/s")],
        w=3,
        h=4,
        unit="short",
    ),
    stat_panel(
        "Step",
        "Highest training step any rank reported.",
        [Q('max(mfu_job_step{job_id="$job_id"})', "step")],
        w=3,
        h=4,
        unit="short",
        decimals=0,
    ),
    stat_panel(
        "GPUs",
        "Distinct GPUs the job runs on (mfu:job_gpus:count).",
        [Q('mfu:job_gpus:count{job_id="$job_id"}', "GPUs")],
        w=3,
        h=4,
        graph=False,
    ),
    stat_panel(
        "Nodes",
        "Distinct nodes the job runs on (mfu:job_nodes:count).",
        [Q('mfu:job_nodes:count{job_id="$job_id"}', "nodes")],
        w=3,
        h=4,
        graph=False,
        overrides=[
            node_link(),
        ],
    ),
    *job_goodput_panels(),
    row("Utilisation"),
    timeseries_panel(
        "MFU and HFU",
        "Job MFU and HFU over time (mfu:job_mfu:ratio, mfu:job_hfu:ratio: peak-weighted over the job's "
        "GPUs, from the agent's windowed gauges); the dashed line is the fleet's MFU target.",
        [
            Q('mfu:job_mfu:ratio{job_id="$job_id"}', "MFU"),
            Q('mfu:job_hfu:ratio{job_id="$job_id"}', "HFU"),
            Q("mfu:target_mfu:ratio", "target"),
        ],
        w=12,
        h=9,
        unit="percentunit",
        min=0,
        soft_max=1,
        overrides=[
            dashed(),
        ],
    ),
    timeseries_panel(
        "Achieved FLOP/s vs peak (the MFU denominator)",
        "Model and hardware FLOP/s the job achieves (all dtypes together) against the peak FLOP/s of its "
        "GPUs at its precision (dashed, mfu:job_peak_flops:sum). With one dtype, MFU is the first over "
        "the last.",
        [
            Q('sum(rate(mfu_job_model_flops_total{job_id="$job_id"}[$__rate_interval]))', "model FLOP/s"),
            Q(
                'sum(rate(mfu_job_hardware_flops_total{job_id="$job_id"}[$__rate_interval]))',
                "hardware FLOP/s",
            ),
            Q('mfu:job_peak_flops:sum{job_id="$job_id"}', "peak FLOP/s"),
        ],
        w=12,
        h=9,
        unit="flops",
        min=0,
        overrides=[
            dashed("^peak"),
        ],
    ),
    row("Ranks and stragglers"),
    table_panel(
        "Per-rank MFU",
        "MFU, throughput, step, GPUs and time since the last report of every rank (MFU from the agent's "
        "windowed gauges, tokens/s over 5 min), lowest MFU first: a rank well below the others is a "
        "straggler that holds the whole job back.",
        [
            Q('max by (job_id, rank, instance) (mfu_job_rank_mfu_ratio{job_id="$job_id"})'),
            Q('sum by (job_id, rank, instance) (rate(mfu_job_tokens_total{job_id="$job_id"}[5m]))'),
            Q('max by (job_id, rank, instance) (mfu_job_step{job_id="$job_id"})'),
            Q('count by (job_id, rank, instance) (mfu_job_info{job_id="$job_id"})'),
            Q(
                "time() - max by (job_id, rank, instance) "
                '(mfu_job_last_report_timestamp_seconds{job_id="$job_id"})'
            ),
        ],
        w=10,
        h=14,
        merge=True,
        rename={
            "rank": "Rank",
            "instance": "Node",
            "Value #A": "MFU",
            "Value #B": "Tokens/s",
            "Value #C": "Step",
            "Value #D": "GPUs",
            "Value #E": "Last report",
        },
        hide=("Time", "__name__", "job", "job_id"),
        sort="MFU",
        overrides=[
            column("MFU", "percentunit", 1, steps=MFU_STEPS, cell="color-background"),
            column("Tokens/s", "short", 0),
            column("Step", "none", 0),
            column("Last report", "s", 0),
            node_link(),
        ],
    ),
    status_history_panel(
        "MFU per rank",
        "Each row is a rank, coloured by its MFU (mfu_job_rank_mfu_ratio, over its GPUs): a rank that "
        "stays red while the others are green is a straggler.",
        [Q('max by (job_id, rank, instance) (mfu_job_rank_mfu_ratio{job_id="$job_id"})', "rank {{rank}}")],
        w=14,
        h=14,
        unit="percentunit",
        min=0,
        max=1,
        steps=MFU_STEPS,
    ),
    heatmap_panel(
        "Rank MFU distribution over time",
        "How the ranks' MFU is spread at each time (colour = number of ranks in the MFU bucket). A "
        "healthy job is one narrow band; cells below the band are stragglers (find them in the table or "
        "in MFU per rank).",
        [Q('max by (job_id, rank, instance) (mfu_job_rank_mfu_ratio{job_id="$job_id"})', "{{rank}}")],
        w=12,
        h=9,
        unit="percentunit",
        bucket="0.05",
    ),
    timeseries_panel(
        "MFU per node",
        "Job MFU on each node (mfu:job_node_mfu:ratio).",
        [Q('mfu:job_node_mfu:ratio{job_id="$job_id"}', "{{instance}}")],
        w=12,
        h=9,
        unit="percentunit",
        min=0,
        soft_max=1,
        legend_table=True,
    ),
    *job_straggler_panels(),
    row("Throughput and progress"),
    timeseries_panel(
        "Tokens/s and samples/s",
        "Tokens and samples per second over all ranks.",
        [
            Q('sum(rate(mfu_job_tokens_total{job_id="$job_id"}[$__rate_interval]))', "tokens/s"),
            Q('sum(rate(mfu_job_samples_total{job_id="$job_id"}[$__rate_interval]))', "samples/s"),
        ],
        w=8,
        h=8,
        unit="short",
        min=0,
        overrides=[
            column("samples/s", custom__axisPlacement="right"),
        ],
    ),
    timeseries_panel(
        "Steps per second",
        "Training steps per second (the fastest rank); flat at zero: the job is stalled "
        "(TrainingJobStalled).",
        [Q('max(deriv(mfu_job_step{job_id="$job_id"}[$__rate_interval]))', "steps/s")],
        w=8,
        h=8,
        unit="short",
        min=0,
    ),
    timeseries_panel(
        "Step lag between ranks",
        "Highest minus lowest step reported by the ranks. Synchronous training keeps this near 0; a "
        "growing lag is a rank that fell behind or hung.",
        [Q('max(mfu_job_step{job_id="$job_id"}) - min(mfu_job_step{job_id="$job_id"})', "max - min step")],
        w=8,
        h=8,
        unit="short",
        min=0,
    ),
    row("Placement"),
    table_panel(
        "Ranks, nodes and GPUs",
        "Where every rank runs (mfu_job_info): host, GPU, process, pod or Slurm job.",
        [Q('mfu_job_info{job_id="$job_id"}')],
        w=16,
        h=9,
        rename={
            "rank": "Rank",
            "local_rank": "Local rank",
            "world_size": "World size",
            "hostname": "Host",
            "instance": "Node",
            "gpu": "GPU",
            "uuid": "UUID",
            "pid": "PID",
            "dtype": "dtype",
            "pod": "Pod",
            "namespace": "Namespace",
            "slurm_job_id": "Slurm job",
        },
        hide=("Time", "__name__", "job", "Value", "job_id"),
        sort="Rank",
        overrides=[
            node_link(),
            gpu_link(),
        ],
    ),
    table_panel(
        "Nodes",
        "GPUs used and job MFU per node.",
        [
            Q(
                "count by (job_id, instance) (count by (job_id, instance, gpu) "
                '(mfu_job_info{job_id="$job_id"}))'
            ),
            Q('mfu:job_node_mfu:ratio{job_id="$job_id"}'),
        ],
        w=8,
        h=9,
        merge=True,
        rename={"instance": "Node", "Value #A": "GPUs", "Value #B": "MFU"},
        hide=("Time", "__name__", "job", "job_id"),
        sort="MFU",
        overrides=[
            column("MFU", "percentunit", 1, steps=MFU_STEPS, cell="color-background"),
        ],
    ),
    row("Hardware activity of the job's GPUs"),
    timeseries_panel(
        "Activity (mean over the job's GPUs)",
        "NVML utilisation against SM, tensor and DRAM activity, averaged over the GPUs the job runs on, "
        "and the worst GPU's SM activity. Utilisation far above SM/tensor activity: the GPUs wait (input "
        "pipeline, communication, small kernels).",
        [
            Q(
                'avg(mfu_gpu_utilization_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"})',
                "utilisation (NVML)",
            ),
            Q(
                'avg(mfu_gpu_sm_active_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"})',
                "SM active",
            ),
            Q(
                'avg(mfu_gpu_tensor_active_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"})',
                "tensor active",
            ),
            Q(
                'avg(mfu_gpu_dram_active_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"})',
                "DRAM active",
            ),
            Q(
                'min(mfu_gpu_sm_active_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"})',
                "SM active, worst GPU",
            ),
        ],
        w=12,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    timeseries_panel(
        "SM active per GPU",
        "SM activity of each of the job's GPUs; an outlier is a GPU (or node) to look at.",
        [
            Q(
                'mfu_gpu_sm_active_ratio and on (instance, uuid) mfu_job_info{job_id="$job_id"}',
                "{{instance}} GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}}",
            )
        ],
        w=12,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
        legend_table=True,
    ),
    timeseries_panel(
        "SM clock / max (lowest GPU)",
        "Lowest SM clock as a fraction of its max among the job's GPUs: one throttled GPU slows every rank.",
        [
            Q(
                "min((mfu_gpu_sm_clock_hertz / mfu_gpu_sm_clock_max_hertz) and on (instance, gpu) "
                'mfu_job_info{job_id="$job_id"})',
                "lowest",
            ),
            Q(
                "avg((mfu_gpu_sm_clock_hertz / mfu_gpu_sm_clock_max_hertz) and on (instance, gpu) "
                'mfu_job_info{job_id="$job_id"})',
                "mean",
            ),
        ],
        w=8,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    timeseries_panel(
        "Power and temperature (max over the job's GPUs)",
        "Highest power draw and temperature among the job's GPUs.",
        [
            Q('max(mfu_gpu_power_watts and on (instance, gpu) mfu_job_info{job_id="$job_id"})', "max power"),
            Q(
                'max(mfu_gpu_temperature_celsius and on (instance, gpu) mfu_job_info{job_id="$job_id"})',
                "max temperature",
            ),
        ],
        w=8,
        h=8,
        overrides=[
            column("max power", "watt"),
            column("max temperature", "celsius"),
            column("max temperature", custom__axisPlacement="right"),
        ],
    ),
    table_panel(
        "Hardware events on the job's GPUs (time range)",
        "XID events on each of the job's GPUs over the time range (throttling: the panel below).",
        [
            Q(
                "sum by (instance, gpu, xid) ((mfu_gpu_xid_errors_total - mfu_gpu_xid_errors_total offset "
                "$__range) or mfu_gpu_xid_errors_total) and on (instance, gpu) "
                'mfu_job_info{job_id="$job_id"}'
            )
        ],
        w=8,
        h=8,
        rename={"instance": "Node", "gpu": "GPU", "xid": "XID", "Value": "Events"},
        hide=("Time", "__name__", "job"),
        sort="Events",
        sort_desc=True,
        overrides=[
            column("Events", steps=(("transparent", None), ("red", 1)), cell="color-background"),
        ],
    ),
    state_timeline_panel(
        "Throttling on the job's GPUs",
        "When a hardware slowdown reason was active on one of the job's GPUs.",
        [
            Q(
                "max by (instance, gpu, reason) "
                '(mfu_gpu_clock_event_active{reason=~"hw_slowdown|hw_thermal_slowdown|'
                'sw_thermal_slowdown|hw_power_brake_slowdown"} '
                'and on (instance, gpu) mfu_job_info{job_id="$job_id"}) > 0',
                "{{instance}} GPU {{gpu}} {{reason}}",
            )
        ],
        w=24,
        h=6,
        steps=(("red", None),),
        mappings=[value_mapping("1", "throttled", "red")],
    ),
    *interconnect.job_panels(),
]
