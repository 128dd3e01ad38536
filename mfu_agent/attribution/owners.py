"""Who each GPU process and each reporting rank belongs to: cgroups (pod UID, container id, Slurm job)
joined with the kubelet's device holders (namespace, pod, container).

Consulted by the metrics and the JSON API after sampling, never by the sampler. The rules, so that a name
is never a guess:

* A device gets Kubernetes names when the kubelet lists exactly one container holding it, and the
  processes on it that sit in a pod (by cgroup) all sit in one pod. A device several containers hold
  (time-slicing replicas) or with processes of two pods on it has no names: PodResources carries no pod
  UID, so nothing tells which holder a process is.
* A GPU process gets its device's names only when its own cgroup puts it in a pod; a host or Slurm
  process on a pod's GPU gets none. Its pod UID and container id always come from its cgroup.
* A rank found by pid takes its process's names; a rank that named its GPUs takes theirs when they all
  have the same names; a rank placed only by local_rank gets none (its GPU is itself an assumption).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ..gpu.model import Snapshot
from .cache import KubeletDevices, KubeNames
from .cgroup import ProcessAttribution, attribute_pid

__all__ = ["Attributed", "Attribution", "CgroupLookup", "Owner"]


@dataclass(frozen=True, slots=True)
class Owner:
    """Empty strings mean "not known"."""

    pod_uid: str = ""
    container_id: str = ""
    slurm_job_id: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "pod_uid": self.pod_uid,
            "container_id": self.container_id,
            "slurm_job_id": self.slurm_job_id,
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
        }


NOBODY = Owner()


class CgroupLookup:
    """pid -> its cgroup attribution, read from /proc once per process."""

    def __init__(self, proc_root: str) -> None:
        self.proc_root = proc_root
        self._cache: dict[int, ProcessAttribution] = {}
        self._lock = threading.Lock()

    def __call__(self, pid: int) -> ProcessAttribution:
        found = self._cache.get(pid)
        if found is None:
            found = attribute_pid(pid, self.proc_root)
            if found:  # an empty answer may be a race with a starting process: ask again next time
                with self._lock:
                    self._cache[pid] = found
        return found

    def keep_only(self, pids: Iterable[int]) -> None:
        live = set(pids)
        with self._lock:
            for pid in [p for p in self._cache if p not in live]:
                del self._cache[pid]


@dataclass(frozen=True, slots=True)
class Attributed:
    """The owners in one snapshot: of each (device uuid, pid), and each device's names."""

    processes: dict[tuple[str, int], Owner]
    device_names: dict[str, KubeNames | None]

    def process(self, uuid: str, pid: int) -> Owner:
        return self.processes.get((uuid, pid), NOBODY)

    def rank(self, uuids: Iterable[str], pid: int | None, attributed_by: str) -> Owner:
        """The owner of a rank on these devices, placed by `attributed_by` ("pid", "gpus", "local_rank")."""
        uuids = list(uuids)
        if attributed_by == "pid" and pid:
            owners = {self.process(uuid, pid) for uuid in uuids}
            return owners.pop() if len(owners) == 1 else _cgroup_part_only(owners)
        if attributed_by == "gpus":
            names = {self.device_names.get(uuid) for uuid in uuids}
            if len(names) == 1:
                only = names.pop()
                if only is not None:
                    return Owner(namespace=only.namespace, pod=only.pod, container=only.container)
        return NOBODY


def _cgroup_part_only(owners: set[Owner]) -> Owner:
    """One process on devices with different names: its cgroup part stands, the names do not."""
    cgroup = {(o.pod_uid, o.container_id, o.slurm_job_id) for o in owners}
    return Owner(*cgroup.pop()) if len(cgroup) == 1 else NOBODY


class Attribution:
    """Joins the cgroup lookup and the kubelet's holders for a snapshot; the answer for the latest
    snapshot is kept, so the GPU and job families of one scrape compute it once."""

    def __init__(self, proc_root: str, kubelet: KubeletDevices | None = None) -> None:
        self.cgroups = CgroupLookup(proc_root)
        self.kubelet = kubelet
        self._last: tuple[Snapshot, int, Attributed] | None = None
        self._lock = threading.Lock()

    def of(self, snapshot: Snapshot | None) -> Attributed:
        if snapshot is None:
            return Attributed({}, {})
        generation = self.kubelet.generation if self.kubelet else 0
        with self._lock:
            last = self._last
            if last is not None and last[0] is snapshot and last[1] == generation:
                return last[2]
            attributed = self._attribute(snapshot)
            self._last = (snapshot, generation, attributed)
            return attributed

    def _attribute(self, snapshot: Snapshot) -> Attributed:
        self.cgroups.keep_only(p.pid for g in snapshot.gpus for p in (g.processes or ()))
        processes: dict[tuple[str, int], Owner] = {}
        device_names: dict[str, KubeNames | None] = {}
        missed = False
        for gpu in snapshot.gpus:
            cgroups = {p.pid: self.cgroups(p.pid) for p in gpu.processes or ()}
            pods_here = {a.pod_uid for a in cgroups.values() if a.pod_uid}
            holders = self.kubelet.holders(gpu.uuid) if self.kubelet else frozenset()
            names = next(iter(holders)) if len(holders) == 1 and len(pods_here) <= 1 else None
            device_names[gpu.uuid] = names
            missed = missed or (not holders and bool(pods_here))
            for pid, a in cgroups.items():
                named = names if names is not None and a.pod_uid else None
                processes[(gpu.uuid, pid)] = Owner(
                    a.pod_uid,
                    a.container_id,
                    a.slurm_job_id,
                    named.namespace if named else "",
                    named.pod if named else "",
                    named.container if named else "",
                )
        if missed and self.kubelet is not None:
            self.kubelet.missed()
        return Attributed(processes, device_names)
