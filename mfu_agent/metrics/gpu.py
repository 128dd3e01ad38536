"""Metric families for the GPUs, from one Snapshot and the event counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..attribution.owners import Attributed
from ..events import EventKey
from ..gpu.model import GPM_STATUSES, GpuReading, Snapshot
from ..gpu.nvml import CLOCK_EVENT_REASONS
from .interconnect import interconnect_families
from .labels import add_sample, device_labels

GPU_LABELS = ["gpu", "uuid"]
OWNER_LABELS = ["pod_uid", "container_id", "slurm_job_id", "namespace", "pod", "container"]
_NOBODY = dict.fromkeys(OWNER_LABELS, "")
MAX_PROCESSES_PER_GPU = 64  # bounds mfu_gpu_process_* cardinality; the largest users of memory are kept

# (metric name, help, value getter): gauges with only the gpu and uuid labels, absent when None.
_GAUGES: list[tuple[str, str, Callable[[GpuReading], float | None]]] = [
    (
        "mfu_gpu_utilization_ratio",
        "Fraction of the sample period in which a kernel ran (NVML utilization.gpu).",
        lambda g: g.utilization_ratio,
    ),
    (
        "mfu_gpu_memory_utilization_ratio",
        "Fraction of the sample period in which device memory was read or written.",
        lambda g: g.memory_utilization_ratio,
    ),
    (
        "mfu_gpu_sm_active_ratio",
        "Fraction of cycles SMs had at least one warp resident (GPM SM utilisation).",
        lambda g: g.activity.sm_active if g.activity else None,
    ),
    (
        "mfu_gpu_sm_occupancy_ratio",
        "Resident warps as a fraction of the SMs' maximum (GPM SM occupancy).",
        lambda g: g.activity.sm_occupancy if g.activity else None,
    ),
    (
        "mfu_gpu_tensor_active_ratio",
        "Fraction of cycles any tensor pipe was active (GPM).",
        lambda g: g.activity.tensor_active if g.activity else None,
    ),
    (
        "mfu_gpu_dram_active_ratio",
        "DRAM bandwidth used as a fraction of the maximum (GPM).",
        lambda g: g.activity.dram_active if g.activity else None,
    ),
    (
        "mfu_gpu_fp16_active_ratio",
        "Fraction of cycles the non-tensor FP16 pipe was active (GPM).",
        lambda g: g.activity.fp16_active if g.activity else None,
    ),
    (
        "mfu_gpu_fp32_active_ratio",
        "Fraction of cycles the FP32 pipe was active (GPM).",
        lambda g: g.activity.fp32_active if g.activity else None,
    ),
    (
        "mfu_gpu_fp64_active_ratio",
        "Fraction of cycles the non-tensor FP64 pipe was active (GPM).",
        lambda g: g.activity.fp64_active if g.activity else None,
    ),
    (
        "mfu_gpu_memory_used_bytes",
        "Device memory in use (NVML memory info v2).",
        lambda g: g.memory_used_bytes,
    ),
    ("mfu_gpu_memory_total_bytes", "Device memory in all.", lambda g: g.memory_total_bytes),
    ("mfu_gpu_power_watts", "Power draw.", lambda g: g.power_watts),
    ("mfu_gpu_power_limit_watts", "Enforced power limit.", lambda g: g.power_limit_watts),
    ("mfu_gpu_temperature_celsius", "GPU die temperature.", lambda g: g.temperature_celsius),
    ("mfu_gpu_sm_clock_hertz", "Current SM clock.", lambda g: g.sm_clock_hertz),
    ("mfu_gpu_sm_clock_max_hertz", "Maximum SM clock.", lambda g: g.sm_clock_max_hertz),
    (
        "mfu_gpu_remapped_rows_pending",
        "1 while a row remapping waits for a GPU reset.",
        lambda g: float(g.remapped_rows.pending) if g.remapped_rows else None,
    ),
    (
        "mfu_gpu_row_remap_failure",
        "1 when a row remapping failed: the GPU needs service.",
        lambda g: float(g.remapped_rows.failure) if g.remapped_rows else None,
    ),
]


def _event_order(item: tuple[EventKey, int]) -> tuple[int, str, int]:
    index, _, kind, code = item[0]
    return index, kind, code if isinstance(code, int) else 1 << 31  # "other" after every code


def gpu_families(
    snapshot: Snapshot | None,
    events: dict[EventKey, int],
    owners: Attributed | None = None,
    now: float | None = None,
) -> Iterator[Metric]:
    """`owners`: who each process belongs to (attribution/owners.py); `now` (Unix time) gives the
    reading ages, without it they are left out."""
    gpus = snapshot.gpus if snapshot else ()
    listed = (*gpus, *snapshot.vanished) if snapshot else ()  # with the GPUs gone, exported down
    info = GaugeMetricFamily(
        "mfu_gpu_info",
        "GPU identity (MIG devices: also parent_uuid and the MIG labels); the value is always 1.",
        labels=[*GPU_LABELS, "model", "driver_version", "pci_bus_id", "architecture", "sm_activity_source"],
    )
    up = GaugeMetricFamily(
        "mfu_gpu_up", "1 when the GPU answered at the last sample, 0 when it is lost.", labels=GPU_LABELS
    )
    mig_mode = GaugeMetricFamily(
        "mfu_gpu_mig_mode",
        "1 while the GPU is in MIG mode (its work is on its MIG devices), 0 when not; absent without MIG.",
        labels=GPU_LABELS,
    )
    age = GaugeMetricFamily(
        "mfu_gpu_reading_age_seconds",
        "Seconds since the device was last read well, at scrape time; its readings are withheld (up 0) "
        "once this passes the staleness limit.",
        labels=GPU_LABELS,
    )
    labels_of = {g.uuid: device_labels(g.identity) for g in listed}
    for g in listed:
        ident = g.identity
        labels = labels_of[g.uuid]
        extra = {"parent_uuid": ident.mig.parent_uuid} if ident.mig else {}
        info_labels = {
            **labels,
            "model": ident.name,
            "driver_version": snapshot.driver_version,
            "pci_bus_id": ident.pci_bus_id,
            "architecture": ident.architecture,
            "sm_activity_source": g.sm_activity_source,
            **extra,
        }
        add_sample(info, info_labels, 1)
        add_sample(up, labels, 1 if g.up else 0)
        if g.mig_mode is not None and g.up:
            add_sample(mig_mode, labels, 1 if g.mig_mode else 0)
        read_at = snapshot.read_at.get(g.uuid)
        if now is not None and read_at is not None:
            add_sample(age, labels, max(0.0, now - read_at))
    yield info
    yield up
    yield mig_mode
    yield age

    live = [g for g in gpus if g.up]
    for name, help_text, value_of in _GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=GPU_LABELS)
        for g in live:
            value = value_of(g)
            if value is not None:
                add_sample(family, labels_of[g.uuid], value)
        yield family

    energy = CounterMetricFamily(
        "mfu_gpu_energy_joules", "Energy used since the driver loaded.", labels=GPU_LABELS
    )
    gpm = GaugeMetricFamily(
        "mfu_gpu_gpm_status",
        "1 for what GPM (the source of the SM activity ratios) answered at the last try, 0 for the other "
        "statuses: ok, not_supported, no_permission (profiling restricted to administrators), in_use "
        "(another tool holds the performance counters), error.",
        labels=[*GPU_LABELS, "status"],
    )
    reasons = GaugeMetricFamily(
        "mfu_gpu_clock_event_active",
        "1 while this reason holds the clocks down (NVML clock event reasons).",
        labels=[*GPU_LABELS, "reason"],
    )
    ecc = CounterMetricFamily(
        "mfu_gpu_ecc_errors",
        "ECC errors since the driver loaded (volatile count).",
        labels=[*GPU_LABELS, "type"],
    )
    rows = CounterMetricFamily(
        "mfu_gpu_remapped_rows",
        "Memory rows remapped, by the error that caused it.",
        labels=[*GPU_LABELS, "type"],
    )
    memory = GaugeMetricFamily(
        "mfu_gpu_process_memory_bytes", "GPU memory used by a compute process.", labels=[*GPU_LABELS, "pid"]
    )
    process_sm = GaugeMetricFamily(
        "mfu_gpu_process_sm_utilization_ratio",
        "Fraction of the sample period a compute process had a kernel on the SMs (NVML process "
        "utilisation samples; time-sliced and MPS GPUs).",
        labels=[*GPU_LABELS, "pid"],
    )
    process_memory = GaugeMetricFamily(
        "mfu_gpu_process_memory_utilization_ratio",
        "Fraction of the sample period a compute process read or wrote device memory (NVML process "
        "utilisation samples).",
        labels=[*GPU_LABELS, "pid"],
    )
    process_info = GaugeMetricFamily(
        "mfu_gpu_process_info",
        "A compute process on the GPU and the pod (UID and container id from its cgroup; namespace, pod "
        "and container from the kubelet) or Slurm job it belongs to; always 1.",
        labels=[*GPU_LABELS, "pid", *OWNER_LABELS],
    )
    for g in live:
        labels = labels_of[g.uuid]
        if g.energy_joules is not None:
            add_sample(energy, labels, g.energy_joules)
        if g.gpm_status is not None:
            for status in GPM_STATUSES:
                add_sample(gpm, {**labels, "status": status}, 1 if status == g.gpm_status else 0)
        if g.clock_event_reasons is not None:
            for reason in CLOCK_EVENT_REASONS.values():
                add_sample(reasons, {**labels, "reason": reason}, 1 if reason in g.clock_event_reasons else 0)
        if g.ecc_corrected_total is not None:
            add_sample(ecc, {**labels, "type": "corrected"}, g.ecc_corrected_total)
            add_sample(ecc, {**labels, "type": "uncorrected"}, g.ecc_uncorrected_total)  # type: ignore[arg-type]
        if g.remapped_rows is not None:
            add_sample(rows, {**labels, "type": "corrected"}, g.remapped_rows.corrected)
            add_sample(rows, {**labels, "type": "uncorrected"}, g.remapped_rows.uncorrected)
        if g.processes:
            biggest = sorted(g.processes, key=lambda p: p.used_memory_bytes or 0, reverse=True)
            for proc in biggest[:MAX_PROCESSES_PER_GPU]:
                by_pid = {**labels, "pid": str(proc.pid)}
                if proc.used_memory_bytes is not None:
                    add_sample(memory, by_pid, proc.used_memory_bytes)
                if proc.sm_utilization_ratio is not None:
                    add_sample(process_sm, by_pid, proc.sm_utilization_ratio)
                if proc.memory_utilization_ratio is not None:
                    add_sample(process_memory, by_pid, proc.memory_utilization_ratio)
                owner = owners.process(g.uuid, proc.pid).as_dict() if owners else _NOBODY
                add_sample(process_info, {**by_pid, **owner}, 1)
    yield from (energy, gpm, reasons, ecc, rows, memory, process_sm, process_memory, process_info)
    yield from interconnect_families(live)

    xid = CounterMetricFamily(
        "mfu_gpu_xid_errors",
        'XID error events, every one counted; codes outside NVIDIA\'s XID catalogue as xid="other".',
        labels=[*GPU_LABELS, "xid"],
    )
    dbe = CounterMetricFamily(
        "mfu_gpu_double_bit_ecc_events", "Double-bit ECC error events delivered by NVML.", labels=GPU_LABELS
    )
    for (index, uuid, kind, code), count in sorted(events.items(), key=_event_order):
        if kind == "xid":
            xid.add_metric([str(index), uuid, str(code)], count)
        else:
            dbe.add_metric([str(index), uuid], count)
    yield xid
    yield dbe
