"""The MFU / GPU node dashboard (dashboards/mfu-gpu-node.json)."""

from __future__ import annotations

from typing import Any

from . import gpu_hardware, interconnect
from .board import dashboard, label_values, query_variable
from .common import MFU_STEPS, Q, column, dashed, gpu_link, job_link
from .panels import row, stat_panel, table_panel, timeseries_panel

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
    *gpu_hardware.node_panels(),
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
