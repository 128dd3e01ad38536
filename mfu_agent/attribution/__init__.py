"""Who a GPU process or a reporting rank belongs to.

* `cgroup`: /proc/<pid>/cgroup -> pod UID, container id, Slurm job id (always on; the fallback);
* `podresources`: the kubelet's PodResources v1 gRPC API -> which container holds which device;
* `cache`: that answer, refreshed in a thread of its own (`--kubelet-socket`);
* `owners`: the two joined for a snapshot, for the metrics and the JSON API.
"""

from .cgroup import ProcessAttribution, attribute_pid, parse_cgroup

__all__ = ["ProcessAttribution", "attribute_pid", "parse_cgroup"]
