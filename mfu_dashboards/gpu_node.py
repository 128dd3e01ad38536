"""The MFU / GPU node dashboard (dashboards/mfu-gpu-node.json)."""

from __future__ import annotations

from typing import Any

from . import interconnect
from .board import dashboard, label_values, query_variable
from .common import (
    MFU_STEPS,
    Override,
    Q,
    bargauge_panel,
    column,
    dashed,
    gpu_link,
    job_link,
    row,
    stat_panel,
    state_timeline_panel,
    table_panel,
    timeseries_panel,
    value_mapping,
)

UID = "mfu-gpu-node"


def build() -> dict[str, Any]:
    return dashboard(
        UID,
        "MFU / GPU node",
        "One node's GPUs: NVML utilisation against what the SMs, tensor cores and memory really do, the "
        "MFU of the jobs on them, power, thermals, clocks and throttling, memory and hardware errors.",
        variables=[
            query_variable("instance", "Node", label_values("mfu_gpu_info", "instance")),
            query_variable(
                "gpu",
                "GPU",
                label_values('mfu_gpu_info{instance=~"$instance"}', "gpu"),
                sort=3,
                all_value=".*",
                multi=True,
            ),
        ],
        panels=PANELS,
    )


PANELS = [
    row("Overview"),
    table_panel(
        "GPUs",
        "mfu_gpu_info: model, driver, PCI bus id and where SM activity comes from (gpm = measured with "
        "GPU Performance Monitoring; none = this GPU has no SM activity metrics). A GPU in MIG mode is "
        "followed by its MIG devices (same GPU number, with their MIG profile and GPU/compute instance "
        "ids; their own UUIDs).",
        [Q('mfu_gpu_info{instance=~"$instance", gpu=~"$gpu"}')],
        w=12,
        h=6,
        rename={
            "gpu": "GPU",
            "uuid": "UUID",
            "model": "Model",
            "driver_version": "Driver",
            "pci_bus_id": "PCI bus",
            "architecture": "Architecture",
            "sm_activity_source": "SM activity source",
            "mig_profile": "MIG profile",
            "gpu_instance_id": "GPU instance",
            "compute_instance_id": "Compute instance",
            "parent_uuid": "Parent UUID",
        },
        hide=("Time", "__name__", "job", "Value", "instance"),
        index={
            "gpu": 0,
            "mig_profile": 1,
            "gpu_instance_id": 2,
            "compute_instance_id": 3,
            "uuid": 4,
            "model": 5,
        },
        sort="GPU",
        overrides=[
            gpu_link("${instance}"),
        ],
    ),
    stat_panel(
        "GPUs readable",
        "GPUs NVML can read (mfu_gpu_up) out of those the agent knows. Fewer readable than known: see "
        "GpuDown. Physical GPUs: MIG devices are not counted apart from their GPU.",
        [
            Q('sum(mfu_gpu_up{instance=~"$instance", gpu=~"$gpu", mig_profile=""})', "readable"),
            Q('count(mfu_gpu_info{instance=~"$instance", gpu=~"$gpu", mig_profile=""})', "known"),
        ],
        w=3,
        h=6,
        steps=(("green", None),),
        graph=False,
    ),
    stat_panel(
        "Jobs on this node",
        "Distinct job_ids reporting from this node.",
        [Q('count(count by (job_id) (mfu_job_info{instance=~"$instance"}))', "jobs")],
        w=3,
        h=6,
        graph=False,
    ),
    stat_panel(
        "MFU of the jobs here",
        "Peak-weighted MFU of the selected GPUs that run a job with a known peak: sum of (GPU MFU x GPU "
        "peak) / sum of GPU peaks, from the agent's windowed MFU gauges (mfu_gpu_mfu_ratio; a GPU's peak "
        "is the highest among the dtypes its ranks report, max of mfu_job_peak_flops).",
        [
            Q(
                'sum(mfu_gpu_mfu_ratio{instance=~"$instance", gpu=~"$gpu"} * on (instance, gpu, uuid) max '
                'by (instance, gpu, uuid) (mfu_job_peak_flops{instance=~"$instance", gpu=~"$gpu"})) / '
                'sum(max by (instance, gpu, uuid) (mfu_job_peak_flops{instance=~"$instance", '
                'gpu=~"$gpu"}) and on (instance, gpu, uuid) mfu_gpu_mfu_ratio{instance=~"$instance", '
                'gpu=~"$gpu"})',
                "MFU",
            )
        ],
        w=3,
        h=6,
        unit="percentunit",
        decimals=1,
        steps=MFU_STEPS,
    ),
    stat_panel(
        "Agent",
        "mfu-agent version and NVML backend on this node.",
        [Q('mfu_agent_build_info{instance=~"$instance"}', "{{version}} ({{backend}})")],
        w=3,
        h=6,
        graph=False,
        text_mode="name",
    ),
    row("Utilisation against real activity: $gpu"),
    timeseries_panel(
        "GPU $gpu: utilisation vs SM, tensor and DRAM activity",
        "NVML utilisation only says a kernel was running; SM active is the fraction of SMs busy, tensor "
        "active the fraction of cycles the tensor cores worked, DRAM active the memory bandwidth used "
        "(GPM). A high utilisation over a low SM/tensor activity is a GPU that looks busy but is not. MFU "
        "is the model FLOP/s of the jobs on the GPU over its peak (mfu_gpu_mfu_ratio).",
        [
            Q('mfu_gpu_utilization_ratio{instance=~"$instance", gpu=~"$gpu"}', "utilisation (NVML)"),
            Q('mfu_gpu_sm_active_ratio{instance=~"$instance", gpu=~"$gpu"}', "SM active"),
            Q('mfu_gpu_tensor_active_ratio{instance=~"$instance", gpu=~"$gpu"}', "tensor active"),
            Q('mfu_gpu_dram_active_ratio{instance=~"$instance", gpu=~"$gpu"}', "DRAM active"),
            Q(
                'sum(mfu_gpu_mfu_ratio{instance=~"$instance", gpu=~"$gpu"} * on (instance, gpu, uuid) max '
                'by (instance, gpu, uuid) (mfu_job_peak_flops{instance=~"$instance", gpu=~"$gpu"})) / '
                'sum(max by (instance, gpu, uuid) (mfu_job_peak_flops{instance=~"$instance", '
                'gpu=~"$gpu"}) and on (instance, gpu, uuid) mfu_gpu_mfu_ratio{instance=~"$instance", '
                'gpu=~"$gpu"})',
                "MFU",
            ),
        ],
        w=6,
        h=8,
        unit="percentunit",
        min=0,
        soft_max=1,
        overrides=[
            column("utilisation (NVML)", color={"fixedColor": "red", "mode": "fixed"}, custom__lineWidth=2),
            column("MFU", color={"fixedColor": "green", "mode": "fixed"}, custom__lineWidth=2),
        ],
        repeat="gpu",
        max_per_row=4,
    ),
    row("Activity across the node's GPUs"),
    timeseries_panel(
        "Busy-but-idle gap: utilisation − SM active",
        "How far NVML utilisation overstates SM activity, per GPU. Large for 10 minutes with utilisation "
        ">= 90 % and SM active < 50 %: GpuBusyButIdle.",
        [
            Q(
                'mfu_gpu_utilization_ratio{instance=~"$instance", gpu=~"$gpu"} - '
                'mfu_gpu_sm_active_ratio{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}}",
            )
        ],
        w=8,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    timeseries_panel(
        "SM active per GPU",
        "Fraction of SMs with a warp resident (GPM), per GPU.",
        [
            Q(
                'mfu_gpu_sm_active_ratio{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}}",
            )
        ],
        w=8,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    timeseries_panel(
        "Pipe activity (mean over the selected GPUs)",
        "Tensor, FP16, FP32 and FP64 pipe activity and SM occupancy from GPM, averaged over GPUs.",
        [
            Q('avg(mfu_gpu_tensor_active_ratio{instance=~"$instance", gpu=~"$gpu"})', "tensor"),
            Q('avg(mfu_gpu_fp16_active_ratio{instance=~"$instance", gpu=~"$gpu"})', "fp16"),
            Q('avg(mfu_gpu_fp32_active_ratio{instance=~"$instance", gpu=~"$gpu"})', "fp32"),
            Q('avg(mfu_gpu_fp64_active_ratio{instance=~"$instance", gpu=~"$gpu"})', "fp64"),
            Q('avg(mfu_gpu_sm_occupancy_ratio{instance=~"$instance", gpu=~"$gpu"})', "SM occupancy"),
        ],
        w=8,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    row("Jobs on this node"),
    timeseries_panel(
        "MFU by job and GPU",
        "MFU of each job on each GPU, summed over its ranks and dtypes there (sum of mfu_job_mfu_ratio by "
        "job, node and GPU). The dashed line is the fleet's MFU target (mfu:target_mfu:ratio).",
        [
            Q(
                'sum by (job_id, instance, gpu) (mfu_job_mfu_ratio{instance=~"$instance", gpu=~"$gpu"})',
                "{{job_id}} GPU {{gpu}}",
            ),
            Q("mfu:target_mfu:ratio", "target"),
        ],
        w=12,
        h=8,
        unit="percentunit",
        min=0,
        soft_max=1,
        overrides=[
            dashed(),
        ],
    ),
    table_panel(
        "Ranks on this node",
        "mfu_job_info of the ranks reporting from the selected GPUs.",
        [Q('mfu_job_info{instance=~"$instance", gpu=~"$gpu"}')],
        w=12,
        h=8,
        rename={
            "job_id": "Job",
            "rank": "Rank",
            "local_rank": "Local rank",
            "world_size": "World size",
            "gpu": "GPU",
            "pid": "PID",
            "dtype": "dtype",
            "pod": "Pod",
            "namespace": "Namespace",
            "slurm_job_id": "Slurm job",
            "hostname": "Host",
        },
        hide=("Time", "__name__", "job", "Value", "instance", "uuid"),
        sort="Job",
        overrides=[
            job_link(),
            gpu_link("${instance}"),
        ],
    ),
    table_panel(
        "GPU processes",
        "Processes on the selected GPUs with their GPU memory and owner (pod, container, Slurm job).",
        [
            Q(
                'mfu_gpu_process_memory_bytes{instance=~"$instance", gpu=~"$gpu"} * on (instance, gpu, '
                "uuid, pid) group_left (namespace, pod, container, pod_uid, container_id, slurm_job_id) "
                'mfu_gpu_process_info{instance=~"$instance", gpu=~"$gpu"}'
            )
        ],
        w=12,
        h=6,
        unit="bytes",
        rename={
            "gpu": "GPU",
            "pid": "PID",
            "namespace": "Namespace",
            "pod": "Pod",
            "container": "Container",
            "pod_uid": "Pod UID",
            "container_id": "Container ID",
            "slurm_job_id": "Slurm job",
            "Value": "GPU memory",
        },
        hide=("Time", "__name__", "job", "instance", "uuid"),
        sort="GPU memory",
        sort_desc=True,
    ),
    timeseries_panel(
        "SM utilisation per process (time-sharing)",
        "Each compute process's share of the GPU's time with a kernel on the SMs (NVML process "
        "utilisation samples), with the pod or Slurm job it belongs to: who used a GPU shared by "
        "time-slicing or MPS. Empty where the driver gives no process samples.",
        [
            Q(
                'mfu_gpu_process_sm_utilization_ratio{instance=~"$instance", gpu=~"$gpu"} * on (instance, '
                "gpu, uuid, pid) group_left (namespace, pod, pod_uid, slurm_job_id) "
                'mfu_gpu_process_info{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} pid {{pid}} {{namespace}} {{pod}} "
                "{{pod_uid}}{{slurm_job_id}}",
            )
        ],
        w=12,
        h=6,
        unit="percentunit",
        min=0,
        max=1,
    ),
    row("Power, thermals and clocks"),
    timeseries_panel(
        "Power vs limit",
        "Board power draw and the enforced power limit (dashed).",
        [
            Q('mfu_gpu_power_watts{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}"),
            Q('mfu_gpu_power_limit_watts{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}} limit"),
        ],
        w=8,
        h=8,
        unit="watt",
        min=0,
        overrides=[
            dashed("limit$"),
        ],
    ),
    timeseries_panel(
        "Temperature",
        "GPU core temperature.",
        [Q('mfu_gpu_temperature_celsius{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}")],
        w=8,
        h=8,
        unit="celsius",
    ),
    bargauge_panel(
        "Energy in the time range",
        "Energy each GPU used over the dashboard's time range (increase of mfu_gpu_energy_joules_total), "
        "in kWh.",
        [
            Q(
                'increase(mfu_gpu_energy_joules_total{instance=~"$instance", gpu=~"$gpu"}[$__range]) / 3.6e6',
                "GPU {{gpu}}",
            )
        ],
        w=8,
        h=8,
        unit="kwatth",
        decimals=2,
    ),
    timeseries_panel(
        "SM clock vs max",
        "SM clock against its maximum (dashed). A clock held below max while busy is throttling: see the "
        "clock event reasons.",
        [
            Q('mfu_gpu_sm_clock_hertz{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}"),
            Q('mfu_gpu_sm_clock_max_hertz{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}} max"),
        ],
        w=12,
        h=8,
        unit="hertz",
        overrides=[
            dashed("max$"),
        ],
    ),
    state_timeline_panel(
        "Clock event reasons (throttling)",
        "When each clock event reason was active (gpu_idle left out). sw_power_cap is normal at full "
        "load; hw_slowdown, hw_thermal_slowdown, sw_thermal_slowdown and hw_power_brake_slowdown slow the "
        "GPU down (GpuThermalOrPowerThrottling).",
        [
            Q(
                'max by (gpu, reason) (mfu_gpu_clock_event_active{instance=~"$instance", gpu=~"$gpu", '
                'reason!="gpu_idle"}) > 0',
                "GPU {{gpu}} {{reason}}",
            )
        ],
        w=12,
        h=8,
        steps=(("orange", None),),
        mappings=[value_mapping("1", "active", "orange")],
    ),
    timeseries_panel(
        "Gap to peak per GPU: lost to clocks vs lost in the software",
        "Splits what a GPU misses of its datasheet peak (1 - MFU). Lost to clocks: 1 - clock ceiling, "
        "where the clock ceiling is mfu_gpu_clock_peak_flops / mfu_gpu_peak_flops (the peak at the "
        "current SM clock over the datasheet's, the same for every dtype): throttling, power capping or "
        "clocks set low. Lost in the software: clock ceiling - GPU MFU (mfu_gpu_mfu_ratio): what the jobs "
        "leave unused at the clock the GPU runs at (kernels, input pipeline, communication, stragglers). "
        "Empty where the clock or the peak is unknown; the software part only while a job with a known "
        "peak runs on the GPU.",
        [
            Q(
                "1 - max by (instance, gpu, uuid, mig_profile, gpu_instance_id) "
                '(mfu_gpu_clock_peak_flops{instance=~"$instance", gpu=~"$gpu"} / '
                'mfu_gpu_peak_flops{instance=~"$instance", gpu=~"$gpu"})',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} lost to clocks",
            ),
            Q(
                "max by (instance, gpu, uuid, mig_profile, gpu_instance_id) "
                '(mfu_gpu_clock_peak_flops{instance=~"$instance", gpu=~"$gpu"} / '
                'mfu_gpu_peak_flops{instance=~"$instance", gpu=~"$gpu"}) - on (instance, gpu, uuid) '
                'mfu_gpu_mfu_ratio{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} lost in the software",
            ),
        ],
        w=24,
        h=8,
        unit="percentunit",
        soft_max=1,
        soft_min=0,
        overrides=[
            Override("lost to clocks$", {"custom.lineStyle": {"dash": [10, 10], "fill": "dash"}}, "byRegexp"),
        ],
    ),
    row("Memory"),
    timeseries_panel(
        "Memory used vs total",
        "Framebuffer memory used and the total (dashed).",
        [
            Q(
                'mfu_gpu_memory_used_bytes{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}}",
            ),
            Q(
                'mfu_gpu_memory_total_bytes{instance=~"$instance", gpu=~"$gpu"}',
                "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} total",
            ),
        ],
        w=12,
        h=8,
        unit="bytes",
        min=0,
        overrides=[
            dashed("total$"),
        ],
    ),
    timeseries_panel(
        "Memory controller utilisation",
        "NVML memory utilisation (time the memory controller was busy).",
        [Q('mfu_gpu_memory_utilization_ratio{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}")],
        w=12,
        h=8,
        unit="percentunit",
        min=0,
        max=1,
    ),
    row("Errors"),
    table_panel(
        "XIDs in the time range",
        "XID events per GPU and XID code over the time range (a series that appeared within the range "
        "counts whole). The action an XID calls for (after NVIDIA's XID catalogue) is the GPU's health "
        "state, mfu_gpu_health_action (docs/metrics.md, GPU health).",
        [
            Q(
                '(mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} - '
                'mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} offset $__range) or '
                'mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"}'
            )
        ],
        w=8,
        h=8,
        rename={"gpu": "GPU", "xid": "XID", "Value": "Events"},
        hide=("Time", "__name__", "job", "instance", "uuid"),
        sort="Events",
        sort_desc=True,
        overrides=[
            column("Events", steps=(("transparent", None), ("red", 1)), cell="color-background"),
        ],
    ),
    timeseries_panel(
        "XID events",
        "XID events per GPU and code, per interval.",
        [
            Q(
                'sum by (gpu, xid) (increase(mfu_gpu_xid_errors_total{instance=~"$instance", '
                'gpu=~"$gpu"}[$__rate_interval]) > 0 or (mfu_gpu_xid_errors_total{instance=~"$instance", '
                'gpu=~"$gpu"} unless mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} offset '
                "$__rate_interval))",
                "GPU {{gpu}} XID {{xid}}",
            )
        ],
        w=8,
        h=8,
        min=0,
        bars=True,
    ),
    timeseries_panel(
        "ECC errors",
        "Corrected and uncorrected ECC errors per interval. Uncorrected ones: GpuEccUncorrectable.",
        [
            Q(
                'sum by (gpu, type) (increase(mfu_gpu_ecc_errors_total{instance=~"$instance", '
                'gpu=~"$gpu"}[$__rate_interval]))',
                "GPU {{gpu}} {{type}}",
            ),
            Q(
                'sum by (gpu) (increase(mfu_gpu_double_bit_ecc_events_total{instance=~"$instance", '
                'gpu=~"$gpu"}[$__rate_interval]))',
                "GPU {{gpu}} double-bit events",
            ),
        ],
        w=8,
        h=8,
        min=0,
        bars=True,
    ),
    table_panel(
        "Memory health per GPU",
        "ECC error counters, remapped rows, a pending remap (needs a GPU reset: GpuRowRemapPending) and "
        "remap failure (RMA: GpuRowRemapFailure).",
        [
            Q(
                'sum by (gpu) (mfu_gpu_ecc_errors_total{instance=~"$instance", gpu=~"$gpu", '
                'type="corrected"})'
            ),
            Q(
                'sum by (gpu) (mfu_gpu_ecc_errors_total{instance=~"$instance", gpu=~"$gpu", '
                'type="uncorrected"})'
            ),
            Q('sum by (gpu) (mfu_gpu_double_bit_ecc_events_total{instance=~"$instance", gpu=~"$gpu"})'),
            Q(
                'sum by (gpu) (mfu_gpu_remapped_rows_total{instance=~"$instance", gpu=~"$gpu", '
                'type="corrected"})'
            ),
            Q(
                'sum by (gpu) (mfu_gpu_remapped_rows_total{instance=~"$instance", gpu=~"$gpu", '
                'type="uncorrected"})'
            ),
            Q('max by (gpu) (mfu_gpu_remapped_rows_pending{instance=~"$instance", gpu=~"$gpu"})'),
            Q('max by (gpu) (mfu_gpu_row_remap_failure{instance=~"$instance", gpu=~"$gpu"})'),
        ],
        w=24,
        h=7,
        merge=True,
        rename={
            "gpu": "GPU",
            "Value #A": "ECC corrected",
            "Value #B": "ECC uncorrected",
            "Value #C": "Double-bit events",
            "Value #D": "Rows remapped (corrected)",
            "Value #E": "Rows remapped (uncorrected)",
            "Value #F": "Remap pending",
            "Value #G": "Remap failure",
        },
        hide=("Time", "__name__", "job"),
        overrides=[
            column("ECC uncorrected", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Double-bit events", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Remap pending", steps=(("transparent", None), ("red", 1)), cell="color-background"),
            column("Remap failure", steps=(("transparent", None), ("red", 1)), cell="color-background"),
        ],
    ),
    *interconnect.node_panels(),
    row(
        "Agent",
        collapsed=True,
        panels=[
            timeseries_panel(
                "Sample duration",
                "How long the agent's last NVML sampling tick took.",
                [Q('mfu_agent_sample_duration_seconds{instance=~"$instance"}', "sample")],
                w=6,
                h=7,
                unit="s",
            ),
            timeseries_panel(
                "NVML errors",
                "NVML call errors per second by call and error.",
                [
                    Q(
                        "sum by (call, error) "
                        '(rate(mfu_agent_nvml_errors_total{instance=~"$instance"}[$__rate_interval]))',
                        "{{call}}: {{error}}",
                    )
                ],
                w=6,
                h=7,
                unit="reqps",
            ),
            timeseries_panel(
                "Reports from training jobs",
                "Reports received per second, by outcome (accepted, invalid, unauthorized, too_large, "
                "over_capacity).",
                [
                    Q(
                        "sum by (outcome) "
                        '(rate(mfu_agent_reports_total{instance=~"$instance"}[$__rate_interval]))',
                        "{{outcome}}",
                    )
                ],
                w=6,
                h=7,
                unit="reqps",
            ),
            timeseries_panel(
                "Tracked ranks",
                "Ranks the agent currently tracks.",
                [Q('mfu_agent_tracked_ranks{instance=~"$instance"}', "ranks")],
                w=6,
                h=7,
                min=0,
            ),
        ],
    ),
]
