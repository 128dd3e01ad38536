"""The rows `mfu-agent top` shows, from /v1/gpus and /v1/jobs: flags and sort order, no formatting.

A value the agent does not know is None here and a dash on screen, never 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# As mfu:gpu_busy_but_idle:bool in deploy/prometheus/rules/mfu-recording.yml: utilisation >= 0.9 and
# SM active < 0.5. (The alert waits 10 minutes; top flags what it sees now.)
BUSY_UTILISATION = 0.9
IDLE_SM_ACTIVE = 0.5
# The clock event reasons GpuThermalOrPowerThrottling alerts on (deploy/prometheus/rules/mfu-alerts.yml);
# sw_power_cap is left out: capping at the power limit is normal under heavy load.
THROTTLE_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown")


class ShapeError(Exception):
    """The JSON is not what an mfu-agent serves."""


@dataclass(frozen=True)
class GpuRow:
    label: str  # "3"; a MIG device: "7 3g.40gb" (its parent's index and its profile)
    index: int
    uuid: str
    name: str
    up: bool
    mig_mode: bool  # a whole GPU in MIG mode: its work runs on the MIG devices listed after it
    utilisation: float | None
    sm_active: float | None
    tensor_active: float | None
    mfu: float | None
    power_watts: float | None
    power_limit_watts: float | None
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    temperature_celsius: float | None
    sm_clock_hertz: float | None
    sm_clock_max_hertz: float | None
    clock_reasons: tuple[str, ...]
    throttled: tuple[str, ...]  # the throttling reasons among clock_reasons
    busy_idle: bool
    ranks: tuple[str, ...]  # "job r0" for every reporting rank the agent places on the device
    position: int  # place in the agent's order (whole GPUs by index, each followed by its MIG devices)


@dataclass(frozen=True)
class ProcessRow:
    gpu_label: str
    pid: int
    memory_bytes: float | None
    sm_utilisation: float | None
    owner: str  # "pod <uid>", "slurm <id>", "container <id>", or "" when unknown
    ranks: tuple[str, ...]  # reporting ranks that sent this pid


@dataclass(frozen=True)
class JobRow:
    job_id: str
    mfu: float | None
    hfu: float | None
    tokens_per_second: float | None  # the sum over its ranks; None unless every rank has a rate
    step_min: int | None
    step_max: int | None
    ranks: int  # ranks reporting to this agent
    world_size: int | None
    gpus: tuple[str, ...]  # labels of the devices its ranks run on
    last_report_age_seconds: float | None  # of its least recently heard rank


@dataclass(frozen=True)
class NodeView:
    backend: str
    driver_version: str
    nvml_up: bool
    unavailable_reason: str
    taken_at: float
    gpus: tuple[GpuRow, ...]
    processes: tuple[ProcessRow, ...]
    jobs: tuple[JobRow, ...]


@dataclass(frozen=True)
class SortColumn:
    key: str
    title: str
    value: Callable[[GpuRow], float | None]
    descending: bool  # the natural direction: the biggest first, like top


SORT_COLUMNS: tuple[SortColumn, ...] = (
    SortColumn("gpu", "GPU", lambda g: g.position, False),
    SortColumn("util", "UTIL", lambda g: g.utilisation, True),
    SortColumn("sm", "SM", lambda g: g.sm_active, True),
    SortColumn("tensor", "TENSOR", lambda g: g.tensor_active, True),
    SortColumn("mfu", "MFU", lambda g: g.mfu, True),
    SortColumn("power", "POWER", lambda g: g.power_watts, True),
    SortColumn("mem", "MEM", lambda g: g.memory_used_bytes, True),
    SortColumn("temp", "TEMP", lambda g: g.temperature_celsius, True),
)
SORT_KEYS = tuple(c.key for c in SORT_COLUMNS)


def sort_column(key: str) -> SortColumn:
    return next(c for c in SORT_COLUMNS if c.key == key)


def sorted_gpus(rows: Sequence[GpuRow], key: str, reverse: bool = False) -> list[GpuRow]:
    """Rows by the column, in its natural direction (flipped by `reverse`); unknown values always last,
    in the agent's order."""
    column = sort_column(key)
    known = [r for r in rows if column.value(r) is not None]
    unknown = [r for r in rows if column.value(r) is None]
    known.sort(key=lambda r: r.position)
    known.sort(key=column.value, reverse=column.descending != reverse)  # stable: ties in the agent's order
    return known + unknown


def build_view(gpus_json: dict[str, Any], jobs_json: dict[str, Any]) -> NodeView:
    try:
        return _build(gpus_json, jobs_json)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ShapeError(f"unexpected JSON from the agent ({type(exc).__name__}: {exc})") from None


def _build(gpus_json: dict[str, Any], jobs_json: dict[str, Any]) -> NodeView:
    devices = gpus_json["gpus"]
    labels = {d["uuid"]: _label(d) for d in devices}
    ranks_on: dict[str, list[str]] = {}
    ranks_of_pid: dict[int, list[str]] = {}
    jobs = []
    for job in jobs_json["jobs"]:
        ranks = job["ranks"]
        job_gpus: list[str] = []
        for rank in ranks:
            name = f"{job['job_id']} r{rank['rank']}"
            for gpu in rank["gpus"]:
                ranks_on.setdefault(gpu["uuid"], []).append(name)
                label = labels.get(gpu["uuid"], str(gpu["index"]))
                if label not in job_gpus:
                    job_gpus.append(label)
            if rank.get("pid") is not None:
                ranks_of_pid.setdefault(rank["pid"], []).append(name)
        jobs.append(_job_row(job, ranks, job_gpus))
    rows = []
    processes = []
    for position, d in enumerate(devices):
        row = _gpu_row(d, labels[d["uuid"]], tuple(ranks_on.get(d["uuid"], ())), position)
        rows.append(row)
        for p in d.get("processes") or ():
            processes.append(
                ProcessRow(
                    gpu_label=row.label,
                    pid=p["pid"],
                    memory_bytes=p.get("used_memory_bytes"),
                    sm_utilisation=p.get("sm_utilization_ratio"),
                    owner=_owner(p),
                    ranks=tuple(ranks_of_pid.get(p["pid"], ())),
                )
            )
    return NodeView(
        backend=str(gpus_json.get("backend", "")),
        driver_version=str(gpus_json.get("driver_version", "")),
        nvml_up=bool(gpus_json.get("nvml_up", True)),
        unavailable_reason=str(gpus_json.get("unavailable_reason") or ""),
        taken_at=float(gpus_json["taken_at"]),
        gpus=tuple(rows),
        processes=tuple(processes),
        jobs=tuple(sorted(jobs, key=lambda j: j.job_id)),
    )


def _label(device: dict[str, Any]) -> str:
    mig = device.get("mig")
    if mig:
        return f"{device['index']} {mig.get('profile') or 'mig'}"
    return str(device["index"])


def _gpu_row(d: dict[str, Any], label: str, ranks: tuple[str, ...], position: int) -> GpuRow:
    activity = d.get("activity") or {}
    reasons = tuple(d.get("clock_event_reasons") or ())
    utilisation = d.get("utilization_ratio")
    sm_active = activity.get("sm_active")
    busy_idle = (
        utilisation is not None
        and sm_active is not None
        and utilisation >= BUSY_UTILISATION
        and sm_active < IDLE_SM_ACTIVE
    )
    return GpuRow(
        label=label,
        index=d["index"],
        uuid=d["uuid"],
        name=d.get("name", ""),
        up=bool(d.get("up", True)),
        mig_mode=bool(d.get("mig_mode")),
        utilisation=utilisation,
        sm_active=sm_active,
        tensor_active=activity.get("tensor_active"),
        mfu=d.get("mfu"),
        power_watts=d.get("power_watts"),
        power_limit_watts=d.get("power_limit_watts"),
        memory_used_bytes=d.get("memory_used_bytes"),
        memory_total_bytes=d.get("memory_total_bytes"),
        temperature_celsius=d.get("temperature_celsius"),
        sm_clock_hertz=d.get("sm_clock_hertz"),
        sm_clock_max_hertz=d.get("sm_clock_max_hertz"),
        clock_reasons=reasons,
        throttled=tuple(r for r in reasons if r in THROTTLE_REASONS),
        busy_idle=busy_idle,
        ranks=ranks,
        position=position,
    )


def _owner(process: dict[str, Any]) -> str:
    if process.get("pod_uid"):
        return f"pod {process['pod_uid']}"
    if process.get("slurm_job_id"):
        return f"slurm {process['slurm_job_id']}"
    if process.get("container_id"):
        return f"container {process['container_id'][:12]}"
    return ""


def _job_row(job: dict[str, Any], ranks: list[dict[str, Any]], gpus: list[str]) -> JobRow:
    rates = [r.get("tokens_per_second") for r in ranks]
    steps = [r["step"] for r in ranks if r.get("step") is not None]
    sizes = [r["world_size"] for r in ranks if r.get("world_size") is not None]
    ages = [r["last_report_age_seconds"] for r in ranks if r.get("last_report_age_seconds") is not None]
    return JobRow(
        job_id=job["job_id"],
        mfu=job.get("mfu"),
        hfu=job.get("hfu"),
        tokens_per_second=sum(rates) if rates and None not in rates else None,  # type: ignore[arg-type]
        step_min=min(steps) if steps else None,
        step_max=max(steps) if steps else None,
        ranks=len(ranks),
        world_size=max(sizes) if sizes else None,
        gpus=tuple(gpus),
        last_report_age_seconds=max(ages) if ages else None,
    )
