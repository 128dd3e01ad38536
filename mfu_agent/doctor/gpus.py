"""Checks through NVML (the agent's own gateway): the library and driver, each GPU's model and GPM,
and whether the processes NVML lists can be seen in /proc for attribution."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from ..attribution import attribute_pid
from ..gpu.gpm import GPM_FIXES, GPM_MIN_GAP_SECONDS, GpmPairs, GpmState
from ..gpu.model import GpmStatus
from ..gpu.nvml import ABSENT, GpuDown, NvmlGateway, NvmlUnavailable
from ..specs import PeakTable
from .report import Check

NO_NVML_FIX = (
    "install the NVIDIA driver on the host; in a container, run it with the NVIDIA runtime so "
    "libnvidia-ml.so.1 is mounted (Kubernetes: runtimeClassName nvidia or the NVIDIA GPU Operator; docker: "
    "--gpus all). Without GPUs, try `mfu-agent demo`"
)
HOST_PID_FIX = (
    "run the agent in the host PID namespace: Kubernetes hostPID: true (deploy/kubernetes/daemonset.yaml), "
    "docker --pid=host, compose pid: host"
)


@dataclass
class _Gpu:
    index: int
    handle: Any
    name: str = "unknown"
    mig_mode: bool = False
    gpm: GpmState | None = None
    gpm_status: GpmStatus = "not_supported"
    # In MIG mode the agent reads GPM per GPU instance: (MIG device key, GPU instance id) of the first
    # MIG device, sampled through the parent as the agent does; None: the whole GPU.
    gpu_instance: tuple[str, int] | None = None


def nvml_checks(proc_root: str, peaks: PeakTable) -> list[Check]:
    gateway = NvmlGateway()
    try:
        gateway.init()
    except NvmlUnavailable as exc:
        return [Check("fail", "nvml", f"NVML does not load: {exc}", NO_NVML_FIX)]
    try:
        return _checks(gateway, proc_root, peaks)
    except NvmlUnavailable as exc:
        return [Check("fail", "nvml", f"NVML stopped answering: {exc}", NO_NVML_FIX)]
    finally:
        with contextlib.suppress(NvmlUnavailable):
            gateway.shutdown()


def _checks(gateway: NvmlGateway, proc_root: str, peaks: PeakTable) -> list[Check]:
    driver, nvml = gateway.driver_version() or "unknown", gateway.nvml_version() or "unknown"
    checks = [Check("ok", "nvml", f"NVML loads: driver {driver}, NVML {nvml}")]
    count = gateway.device_count()
    if not count:
        checks.append(
            Check(
                "fail",
                "gpus",
                "NVML lists no GPU: there is nothing to measure",
                "check `nvidia-smi`; in a container, make the GPUs visible (NVIDIA_VISIBLE_DEVICES=all, "
                "as deploy/kubernetes/daemonset.yaml sets)",
            )
        )
        return checks
    checks.append(Check("ok", "gpus", f"{count} GPU(s)"))
    gpus: list[_Gpu] = []
    per_gpu: dict[int, list[Check]] = {}
    pairs = GpmPairs(gateway, time.monotonic)
    for index in range(count):
        gpu, check = _identify(gateway, pairs, index)
        per_gpu[index] = [check]
        if gpu is not None:
            gpus.append(gpu)
            per_gpu[index].append(_model_check(gpu, peaks))
    if any(g.gpm is not None for g in gpus):
        time.sleep(GPM_MIN_GAP_SECONDS * 1.5)  # GPM compares two samples more than 100 ms apart
    for gpu in gpus:
        per_gpu[gpu.index].append(_gpm_check(gateway, pairs, gpu, proc_root))
    checks += [check for index in range(count) for check in per_gpu[index]]
    checks.append(_process_check(gateway, gpus, proc_root))
    return checks


def _identify(gateway: NvmlGateway, pairs: GpmPairs, index: int) -> tuple[_Gpu | None, Check]:
    try:
        handle = gateway.handle(index)
        if handle is ABSENT:
            raise GpuDown(index, "nvmlDeviceGetHandleByIndex", "no handle")
        gpu = _Gpu(index, handle, gateway.name(index, handle), bool(gateway.mig_mode(index, handle)))
        gpu.gpm_status = gateway.gpm_support(index, handle)
        if gpu.mig_mode:
            gpu.gpu_instance = _first_gpu_instance(gateway, index, handle)
        if gpu.gpm_status != "not_supported" and (not gpu.mig_mode or gpu.gpu_instance):
            gpu.gpm = pairs.new(index, _sampler(gateway, gpu))
            gpu.gpm_status = gpu.gpm.status if gpu.gpm is not None else "error"
    except GpuDown as exc:
        return None, Check(
            "warn",
            "gpu",
            f"GPU {index} does not answer ({exc.error}): it is exported as down",
            "see `nvidia-smi` and the kernel log (XID errors); a GPU reset or a reboot brings it back",
            gpu=index,
        )
    uuid = gateway.uuid(index, handle)
    mode = ", MIG mode" if gpu.mig_mode else ""
    return gpu, Check("ok", "gpu", f"{gpu.name} {uuid}{mode}", gpu=index)


def _first_gpu_instance(gateway: NvmlGateway, index: int, handle: Any) -> tuple[str, int] | None:
    for slot in range(gateway.mig_slots(index, handle)):
        key = f"{index}.{slot}"
        mig = gateway.mig_handle(index, handle, slot)
        ids = gateway.mig_ids(key, mig) if mig not in (None, ABSENT) else None
        if ids is not None:
            return key, ids.gpu_instance_id
    return None


def _sampler(gateway: NvmlGateway, gpu: _Gpu):
    if gpu.gpu_instance is not None:
        key, gpu_instance_id = gpu.gpu_instance
        return lambda sample: gateway.gpm_mig_sample_get(key, gpu.handle, gpu_instance_id, sample)
    return lambda sample: gateway.gpm_sample_get(gpu.index, gpu.handle, sample)


def _model_check(gpu: _Gpu, peaks: PeakTable) -> Check:
    model = peaks.match_model(gpu.name)
    if model is not None:
        return Check("ok", "peak", f"{gpu.name!r} is in the peak table ({model})", gpu=gpu.index)
    return Check(
        "warn",
        "peak",
        f"no peak FLOP/s known for {gpu.name!r}: MFU is not computed on this GPU",
        "add its dense datasheet figures with --peak-flops-file (docs/peak-flops.md)",
        gpu=gpu.index,
    )


def _gpm_check(gateway: NvmlGateway, pairs: GpmPairs, gpu: _Gpu, proc_root: str) -> Check:
    status = gpu.gpm_status
    if gpu.mig_mode and gpu.gpu_instance is None and status != "not_supported":
        return Check(
            "skip",
            "gpm",
            "MIG mode without MIG devices: GPM is read per GPU instance, and there is none",
            gpu=gpu.index,
        )
    where = f" on GPU instance {gpu.gpu_instance[1]} (MIG mode)" if gpu.gpu_instance else ""
    if gpu.gpm is not None:
        try:
            activity = pairs.activity(gpu.gpm, gpu.index, _sampler(gateway, gpu))
        except GpuDown as exc:
            return Check("warn", "gpm", f"GPU stopped answering ({exc.error})", gpu=gpu.index)
        finally:
            pairs.free(gpu.index, gpu.gpm)
        status = gpu.gpm.status
        if status == "ok" and activity is None:
            status = "error"  # samples taken, but no metrics between them
    if status == "ok":
        return Check("ok", "gpm", f"GPM answers{where}: SM activity ratios are exported", gpu=gpu.index)
    if status == "not_supported":
        return Check(
            "warn",
            "gpm",
            "GPM is not supported on this GPU or driver (status not_supported): the SM activity series, "
            "their panels and the busy-but-idle alerts stay empty; MFU from reports is unaffected",
            "none on this GPU: GPM needs a Hopper or newer datacenter GPU and a driver that has it",
            gpu=gpu.index,
        )
    if status in GPM_FIXES:
        why = {
            "no_permission": "NO_PERMISSION" + _profiling_restriction(proc_root),
            "in_use": "IN_USE, another tool holds the performance counters",
        }[status]
        return Check(
            "warn",
            "gpm",
            f"GPM refuses its samples{where}: {why} (status {status}); the SM activity series stay absent "
            "until that ends",
            GPM_FIXES[status],
            gpu=gpu.index,
        )
    errors = sorted(f"{call}: {error}" for (call, error) in gateway.errors_snapshot() if "Gpm" in call)
    return Check(
        "warn",
        "gpm",
        f"GPM samples failed (status error; {', '.join(errors) or 'no metrics between two samples'})",
        "retried every tick by the agent; if it persists, check the driver",
        gpu=gpu.index,
    )


def _profiling_restriction(proc_root: str) -> str:
    """What the nvidia module says of its profiling restriction, where its parameters can be read."""
    try:
        with open(os.path.join(proc_root, "driver", "nvidia", "params"), encoding="utf-8") as f:
            params = f.read(1 << 16)
    except OSError:
        return ""
    for line in params.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "RmProfilingAdminOnly":
            return f", the nvidia module has RmProfilingAdminOnly: {value.strip()}"
    return ""


def _process_check(gateway: NvmlGateway, gpus: list[_Gpu], proc_root: str) -> Check:
    """NVML gives host PIDs; the agent attributes them through <proc_root>/<pid>/cgroup."""
    pids: set[int] = set()
    for gpu in gpus:
        try:
            pids.update(pid for pid, _ in gateway.compute_processes(gpu.index, gpu.handle) or ())
        except GpuDown:
            continue
    if not pids:
        return Check(
            "skip",
            "processes",
            "no compute process on any GPU now, so visibility cannot be checked; if jobs are running, "
            "NVML not listing them means the agent is outside the host PID namespace",
            HOST_PID_FIX,
        )
    visible = {pid for pid in pids if pid > 0 and os.path.isdir(os.path.join(proc_root, str(pid)))}
    attributed = sum(1 for pid in visible if attribute_pid(pid, proc_root))
    listed = ", ".join(str(p) for p in sorted(pids)[:5]) + (", ..." if len(pids) > 5 else "")
    if not visible:
        return Check(
            "warn",
            "processes",
            f"none of the {len(pids)} GPU process(es) NVML lists (PIDs {listed}) is in {proc_root}: "
            "processes are not attributed to pods or Slurm jobs",
            HOST_PID_FIX,
        )
    message = (
        f"{len(visible)} of {len(pids)} GPU process(es) visible in {proc_root}, "
        f"{attributed} attributed to a pod or Slurm job"
    )
    if len(visible) < len(pids):
        return Check("warn", "processes", message + f" (PIDs listed: {listed})", HOST_PID_FIX)
    return Check("ok", "processes", message)
