"""Attribute a GPU process to a Kubernetes pod/container or a Slurm job from its cgroup.

NVML lists the pids running on each GPU (host pids: the agent needs the host pid namespace, so
``hostPID: true`` in Kubernetes). The kernel names the cgroup of every process in
``/proc/<pid>/cgroup``; container runtimes and Slurm put the pod UID, the container id and the job id
into those paths:

* cgroup v2, systemd driver (containerd / CRI-O / cri-dockerd)::

    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
       cri-containerd-<64 hex>.scope          (crio-<id>.scope, docker-<id>.scope)

* cgroupfs driver: ``/kubepods/burstable/pod<uid>/<64 hex>`` (guaranteed pods sit directly under
  ``/kubepods``);
* cgroup v1: one line per hierarchy, ``12:memory:/kubepods/...``, ``11:devices:/...``;
* Slurm: ``/slurm/uid_1000/job_12345/step_0/task_0`` (v1) or
  ``0::/system.slice/slurmstepd.scope/job_12345/step_0/user/task_0`` (v2).

When the reader sits in a private cgroup namespace (the default for containers on cgroup v2) the
paths of other containers are shown relative to its own cgroup, e.g. ``0::/../../kubepods-...``:
parsing goes by path segments, so leading ``..`` segments do no harm.

Nothing here raises: an unreadable or unrecognised file gives an empty attribution.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ProcessAttribution", "attribute_pid", "parse_cgroup"]

# /proc/<pid>/cgroup is a few hundred bytes; never read an unbounded amount from a pseudo-file.
_MAX_READ = 64 * 1024

_HEX = "0-9a-fA-F"
# Pod UID as the kubelet writes it: dashed (cgroupfs), underscored (systemd driver), or the 32-hex
# md5 UID of a static pod.
_POD_SEGMENT = re.compile(
    rf"(?:^|-)pod(?P<uid>[{_HEX}]{{8}}([-_])[{_HEX}]{{4}}\2[{_HEX}]{{4}}\2[{_HEX}]{{4}}\2[{_HEX}]{{12}}"
    rf"|[{_HEX}]{{32}})(?:\.slice)?$"
)
# Container scope as named by the runtime; "crio-conmon-<id>" is CRI-O's monitor process, not the
# container, and does not match.
_RUNTIME_SEGMENT = re.compile(
    rf"^(?:cri-containerd|crio|docker|containerd|libpod|cri-o)-(?P<id>[{_HEX}]{{64}})(?:\.scope)?$"
)
_BARE_ID_SEGMENT = re.compile(rf"^(?P<id>[{_HEX}]{{64}})$")
_SLURM_JOB_SEGMENT = re.compile(r"^job_(?P<id>[0-9]+)$")


@dataclass(frozen=True, slots=True)
class ProcessAttribution:
    """Who a process belongs to. Empty strings mean "not known / not applicable"."""

    pod_uid: str = ""  # canonical dashed lowercase form (8-4-4-4-12), or 32 hex for static pods
    container_id: str = ""  # 64 lowercase hex, no runtime prefix
    slurm_job_id: str = ""

    def __bool__(self) -> bool:
        return bool(self.pod_uid or self.container_id or self.slurm_job_id)


_EMPTY = ProcessAttribution()


def _segments(path: str) -> list[str]:
    return [s for s in path.strip().split("/") if s and s not in (".", "..")]


def _parse_path(path: str) -> ProcessAttribution:
    segs = _segments(path)
    pod_uid = ""
    container_id = ""
    slurm_job_id = ""

    in_kubepods = False
    in_slurm = False
    pod_index = -1
    for i, seg in enumerate(segs):
        low = seg.lower()
        if "kubepods" in low:
            in_kubepods = True
        if low.startswith("slurm"):
            in_slurm = True
        if in_kubepods and not pod_uid:
            m = _POD_SEGMENT.search(low)
            if m:
                pod_uid = m.group("uid").replace("_", "-")
                pod_index = i
                continue
        if in_slurm and not slurm_job_id:
            m = _SLURM_JOB_SEGMENT.match(seg)
            if m:
                slurm_job_id = m.group("id")
                continue
        if not container_id:
            m = _RUNTIME_SEGMENT.match(low)
            if m:
                container_id = m.group("id")
                continue
            # A bare id is only trusted right under a pod or a docker (cgroupfs) cgroup.
            prev = segs[i - 1].lower() if i > 0 else ""
            m = _BARE_ID_SEGMENT.match(low)
            if m and ((pod_index >= 0 and i == pod_index + 1) or prev == "docker"):
                container_id = m.group("id")
    return ProcessAttribution(pod_uid=pod_uid, container_id=container_id, slurm_job_id=slurm_job_id)


def _cgroup_paths(text: str) -> Iterable[tuple[bool, str]]:
    """Yield (is_v2, path) for each well-formed line of a /proc/<pid>/cgroup file."""
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if not hierarchy.isdigit() or not path.startswith("/"):
            continue
        yield hierarchy == "0" and controllers == "", path


def _score(a: ProcessAttribution) -> int:
    return 2 * bool(a.pod_uid or a.slurm_job_id) + bool(a.container_id)


def parse_cgroup(text: str) -> ProcessAttribution:
    """Parse the content of a ``/proc/<pid>/cgroup`` file (cgroup v1, v2 or hybrid).

    The unified (v2) line is looked at first, then the v1 hierarchies in file order; the most
    complete attribution wins, and a pod found on one line may take its container id from another
    line naming the same pod.
    """
    if not isinstance(text, str) or not text:
        return _EMPTY
    lines = list(_cgroup_paths(text))
    ordered = [p for v2, p in lines if v2] + [p for v2, p in lines if not v2]
    found = [a for a in (_parse_path(p) for p in ordered) if a]
    if not found:
        return _EMPTY
    best = max(found, key=_score)  # max() keeps the first of equals: v2 before v1, file order
    if best.pod_uid and not best.container_id:
        for other in found:
            if other.pod_uid == best.pod_uid and other.container_id:
                return ProcessAttribution(best.pod_uid, other.container_id, best.slurm_job_id)
    return best


def attribute_pid(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> ProcessAttribution:
    """Attribution of ``pid`` from ``<proc_root>/<pid>/cgroup``; empty when it cannot be read."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return _EMPTY
    try:
        path = os.path.join(os.fspath(proc_root), str(pid), "cgroup")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(_MAX_READ)
    except (OSError, ValueError, TypeError):
        return _EMPTY
    return parse_cgroup(text)
