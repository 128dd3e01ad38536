"""Which GPU(s) a report's work ran on: named by the sender, found by pid in NVML's process list, or by
local_rank. A process can hold a CUDA context on a GPU it does not compute on (a stray `torch.cuda`
call on device 0 is common); by pid, the GPUs where it holds most of its memory win.

A GPU in MIG mode computes nothing itself: its MIG devices do. A report naming it (by index or UUID)
is refused with the MIG devices it has, and so is a bare local_rank on a node with MIG devices, since
local_rank counts the devices the process sees (CUDA_VISIBLE_DEVICES), which the agent cannot know."""

from __future__ import annotations

from dataclasses import dataclass

from ..gpu.model import GpuReading, Snapshot
from .errors import ReportRejected
from .rank import ReportData

# By pid, a GPU counts when the process holds at least this fraction of its largest allocation there.
# A stray context is a few hundred MiB; a training process holds tens of GiB where it computes.
MEMORY_FRACTION = 0.25
_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Placement:
    gpus: tuple[GpuReading, ...]
    attributed_by: str  # "gpus" | "pid" | "local_rank"
    detail: str


def place(report: ReportData, snapshot: Snapshot | None, where: str) -> Placement:
    """Raises ReportRejected (422) naming the field when the GPU cannot be found."""
    all_gpus = snapshot.gpus if snapshot else ()
    if report.gpus is not None:
        chosen: list[GpuReading] = []
        for wanted in report.gpus:
            if snapshot is None:
                found = None
            elif isinstance(wanted, int):
                found = snapshot.by_index.get(wanted)
            else:
                found = snapshot.by_uuid.get(wanted)
            if found is None:
                have = ", ".join(str(g.index) for g in all_gpus if not g.is_mig) or "none"
                raise ReportRejected(
                    422,
                    f"{where}gpus",
                    f"{where}gpus: GPU {wanted!r} does not exist on this node (GPUs: {have})",
                )
            if found.mig_mode:
                raise ReportRejected(
                    422,
                    f"{where}gpus",
                    f"{where}gpus: GPU {wanted!r} is in MIG mode; name the MIG device the rank runs on by "
                    f"its UUID ({_mig_devices_of(found, all_gpus)})",
                )
            if found not in chosen:
                chosen.append(found)
        return Placement(tuple(chosen), "gpus", "named in the report")
    if snapshot is not None and report.pid:
        by_pid = by_process_memory(snapshot, report.pid)
        if by_pid is not None:
            return by_pid
    if report.local_rank is not None:
        if any(g.mig_mode for g in all_gpus):
            raise ReportRejected(
                422,
                f"{where}local_rank",
                f"{where}local_rank: this node has GPUs in MIG mode, where local_rank counts the MIG devices "
                "the process sees (CUDA_VISIBLE_DEVICES), which the agent cannot know; send gpus with the "
                "MIG device's UUID (the Python client does so from CUDA_VISIBLE_DEVICES)",
            )
        whole = [g for g in all_gpus if not g.is_mig]
        if report.local_rank >= len(whole):
            raise ReportRejected(
                422,
                f"{where}local_rank",
                f"{where}local_rank: {report.local_rank} has no GPU of that index on this node "
                f"({len(whole)} GPU(s)); send gpus explicitly",
            )
        gpu = whole[report.local_rank]
        return Placement((gpu,), "local_rank", f"local_rank {report.local_rank} -> GPU {gpu.index}")
    raise ReportRejected(
        422,
        f"{where}gpus",
        f"{where}gpus: cannot tell which GPU this rank uses: pid {report.pid} holds no GPU in "
        f"NVML's process list and no local_rank was given; send gpus or local_rank",
    )


def by_process_memory(snapshot: Snapshot, pid: int) -> Placement | None:
    held: list[tuple[GpuReading, int | None]] = []
    for gpu in snapshot.gpus:
        for p in gpu.processes or ():
            if p.pid == pid:
                held.append((gpu, p.used_memory_bytes))
                break
    if not held:
        return None
    if len(held) == 1:
        return Placement((held[0][0],), "pid", f"pid {pid} holds a context on GPU {held[0][0].index} only")
    if any(m is None for _, m in held):
        gpus = tuple(g for g, _ in held)
        return Placement(
            gpus,
            "pid",
            f"pid {pid} holds contexts on GPUs {_indices(gpus)} and NVML gives no per-process memory: "
            "its work is split evenly over them; send gpus to be exact",
        )
    largest = max(m for _, m in held if m is not None)
    chosen = tuple(g for g, m in held if m is not None and m >= MEMORY_FRACTION * largest and m > 0)
    if not chosen:
        chosen = tuple(g for g, _ in held)
    left_out = [(g, m) for g, m in held if g not in chosen]
    detail = f"pid {pid} computes on GPU(s) {_indices(chosen)} (most of its memory)"
    if left_out:
        detail += "; ignored as stray contexts: " + ", ".join(
            f"GPU {g.index} ({(m or 0) / _GIB:.2f} GiB)" for g, m in left_out
        )
    return Placement(chosen, "pid", detail)


def _mig_devices_of(parent: GpuReading, all_gpus: tuple[GpuReading, ...]) -> str:
    devices = [
        f"{g.uuid} {g.identity.mig.profile}".strip()
        for g in all_gpus
        if g.identity.mig is not None and g.index == parent.index
    ]
    return "its MIG devices: " + ", ".join(devices) if devices else "it has no MIG device now"


def _indices(gpus: tuple[GpuReading, ...]) -> str:
    return ", ".join(str(g.index) for g in gpus)
