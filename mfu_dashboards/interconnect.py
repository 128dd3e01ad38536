"""NVLink, PCIe, GPU health and GPM status (mfu-interconnect.yml, mfu-health.yml), for the GPU node,
Training job and Fleet dashboards."""

from __future__ import annotations

from grafana_foundation_sdk.cog.builder import Builder

from .common import MFU_STEPS, Q, column, job_link
from .panels import row, table_panel, timeseries_panel

NODE_GPUS = 'instance=~"$instance", gpu=~"$gpu"'


def node_panels() -> list[Builder]:
    return [
        row("Interconnect and health"),
        timeseries_panel(
            "NVLink throughput",
            "Bytes per second each GPU sends (tx) and receives (rx) over all its NVLinks, from GPM "
            "(mfu_gpu_nvlink_bytes_per_second); absent on a GPU without NVLink.",
            [Q(f"mfu_gpu_nvlink_bytes_per_second{{{NODE_GPUS}}}", "GPU {{gpu}} {{direction}}")],
            w=8,
            h=8,
            unit="Bps",
            min=0,
        ),
        timeseries_panel(
            "PCIe throughput",
            "Bytes per second over each GPU's PCIe link, into (rx) and out of (tx) the GPU, from GPM "
            "(mfu_gpu_pcie_bytes_per_second).",
            [Q(f"mfu_gpu_pcie_bytes_per_second{{{NODE_GPUS}}}", "GPU {{gpu}} {{direction}}")],
            w=8,
            h=8,
            unit="Bps",
            min=0,
        ),
        timeseries_panel(
            "NVLink errors",
            "NVLink replay and recovery errors per GPU over 15 minutes (mfu:gpu_nvlink_link_errors:"
            "increase15m; rising in every window for 15 minutes: GpuNvlinkErrors), and CRC errors over "
            "the panel's interval.",
            [
                Q(
                    f"mfu:gpu_nvlink_link_errors:increase15m{{{NODE_GPUS}}}",
                    "GPU {{gpu}} replay+recovery (15m)",
                ),
                Q(
                    f"sum by (gpu) (increase(mfu_gpu_nvlink_errors_total{{{NODE_GPUS}, "
                    'type=~"crc_flit|crc_data"}[$__rate_interval]))',
                    "GPU {{gpu}} CRC",
                ),
            ],
            w=8,
            h=8,
            unit="short",
            min=0,
        ),
        table_panel(
            "GPU health",
            "Each GPU's health state from the agent's XID catalogue and GPU state (mfu_gpu_health_action): "
            "the action it needs, why, and its severity (mfu_gpu_health_severity, 0 none .. 5). "
            "docs/metrics.md, GPU health.",
            [
                Q(
                    f"mfu_gpu_health_severity{{{NODE_GPUS}}} * on (instance, gpu, uuid) group_left (action, "
                    f"reason) mfu_gpu_health_action{{{NODE_GPUS}}}"
                )
            ],
            w=12,
            h=7,
            rename={
                "gpu": "GPU",
                "uuid": "UUID",
                "action": "Action",
                "reason": "Reason",
                "Value": "Severity",
            },
            hide=("Time", "__name__", "job", "instance"),
            sort="Severity",
            sort_desc=True,
            overrides=[
                column(
                    "Severity",
                    None,
                    0,
                    steps=(("green", None), ("orange", 1), ("red", 3)),
                    cell="color-background",
                ),
            ],
        ),
        table_panel(
            "GPM status",
            "What GPM (the source of SM, tensor and DRAM activity and of NVLink/PCIe traffic) answered at "
            "the agent's last try, per GPU (mfu_gpu_gpm_status): ok, not_supported, no_permission, "
            "in_use (another GPM user, e.g. DCGM), error.",
            [Q(f"mfu_gpu_gpm_status{{{NODE_GPUS}}} == 1")],
            w=12,
            h=7,
            rename={"gpu": "GPU", "uuid": "UUID", "status": "GPM status"},
            hide=(
                "Time",
                "__name__",
                "job",
                "instance",
                "Value",
                "mig_profile",
                "gpu_instance_id",
                "compute_instance_id",
            ),
            sort="GPU",
        ),
    ]


def job_panels() -> list[Builder]:
    return [
        row("Communication"),
        timeseries_panel(
            "MFU vs NVLink per GPU",
            "The job's MFU (left axis) against the mean NVLink traffic per GPU of its GPUs (right axis, "
            "mfu:job_gpu_nvlink_bytes_per_second:avg, rx + tx). MFU falling while the links stay busy: "
            "communication-bound; both low: the GPUs wait on something else (input, host, stragglers).",
            [
                Q('mfu:job_mfu:ratio{job_id="$job_id"}', "MFU"),
                Q('mfu:job_gpu_nvlink_bytes_per_second:avg{job_id="$job_id"}', "NVLink per GPU"),
            ],
            w=24,
            h=8,
            unit="percentunit",
            min=0,
            overrides=[column("NVLink per GPU", "Bps", custom__axisPlacement="right")],
        ),
    ]


def fleet_panels() -> list[Builder]:
    return [
        table_panel(
            "Communication- vs compute-bound jobs",
            "Each job's MFU beside the mean NVLink traffic per GPU (mfu:job_gpu_nvlink_bytes_per_second:"
            "avg) and its PCIe traffic (mfu:job_pcie_bytes_per_second:sum). Low MFU with busy links: "
            "communication-bound (collectives); low MFU with idle links: compute- or input-bound.",
            [
                Q("mfu:job_mfu:ratio"),
                Q("mfu:job_gpu_nvlink_bytes_per_second:avg"),
                Q("mfu:job_pcie_bytes_per_second:sum"),
            ],
            w=12,
            h=8,
            merge=True,
            rename={
                "job_id": "Job",
                "Value #A": "MFU",
                "Value #B": "NVLink per GPU",
                "Value #C": "PCIe (job)",
            },
            hide=("Time", "__name__", "job"),
            sort="MFU",
            overrides=[
                column("MFU", "percentunit", 1, steps=MFU_STEPS, cell="color-background"),
                column("NVLink per GPU", "Bps", 1),
                column("PCIe (job)", "Bps", 1),
                job_link(),
            ],
        ),
    ]
