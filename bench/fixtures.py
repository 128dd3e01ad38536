"""In-process fixtures: an agent on simulated GPUs with reporting ranks, and the plain-registry twin
of its /metrics output that the scrape benchmark uses as a baseline."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import ReportData

GPU_MODEL = "NVIDIA H100 80GB HBM3"
RANKS_PER_JOB = 8
_PROC_ROOT = tempfile.mkdtemp(prefix="mfu-bench-proc-")  # a fake /proc holding only <pid>/cgroup files


def fake_cgroup(pid: int) -> None:
    """/proc/<pid>/cgroup of a containerd container in a Kubernetes pod (cgroup v2, systemd driver), so
    process attribution finds a pod as it would on a Kubernetes node."""
    pod = str(uuid.UUID(int=pid)).replace("-", "_")
    container = f"{pid:064x}"
    path = Path(_PROC_ROOT, str(pid))
    path.mkdir(exist_ok=True)
    (path / "cgroup").write_text(
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{pod}.slice/cri-containerd-{container}.scope\n"
    )


def report(
    rank: int,
    n_gpus: int,
    t: float,
    progress: float,
    ranks_per_job: int = RANKS_PER_JOB,
    gpu: int | str | None = None,
) -> ReportData:
    """One rank's cumulative counters after `progress` seconds of training at ~400 TFLOP/s, on GPU
    `rank % n_gpus` unless `gpu` (an index or a UUID, such as a MIG device's) is given."""
    job = rank // ranks_per_job
    steps = int(progress * 2)
    return ReportData(
        job_id=f"bench-job-{job}",
        rank=rank,
        model_flops={"bf16": 4e14 * progress},
        dtype="bf16",
        local_rank=rank % ranks_per_job,
        world_size=ranks_per_job,
        pid=100_000 + rank,
        gpus=(rank % n_gpus if gpu is None else gpu,),
        hardware_flops={"bf16": 5e14 * progress},
        tokens_total=float(8192 * steps),
        samples_total=float(4 * steps),
        step=steps,
        timestamp=t,
        labels=(
            ("hostname", "node-1"),
            ("namespace", "ml"),
            ("pod", f"trainer-{job}-{rank % ranks_per_job}"),
        ),
    )


def mig_spec(n_gpus: int, profiles: tuple[str, ...] = ()) -> str:
    """The --simulate spec of `n_gpus` H100s, each in MIG mode with `profiles` when any are given."""
    return f"{n_gpus}x{GPU_MODEL}" + (f"[mig={','.join(profiles)}]" if profiles else "")


def make_agent(
    n_gpus: int, n_ranks: int, ranks_per_job: int = RANKS_PER_JOB, mig: tuple[str, ...] = ()
) -> Agent:
    """An agent (threads not started) with one snapshot of `n_gpus` simulated H100s, every rank's
    process on its GPU, and two reports per rank 10 s apart so that MFU/HFU/tokens/s are computed.

    With `mig` profiles every GPU is in MIG mode with those MIG devices, and the ranks run on the MIG
    devices (named by UUID in their reports), slice 0 of every GPU first, then slice 1, and so on: 8
    ranks on 8 GPUs x 7 slices are one per GPU, 56 one per MIG device."""
    backend = SimulatedBackend(mig_spec(n_gpus, mig))
    # Where ranks run: (GPU index, MIG GPU instance id or None, what the report names).
    targets: list[tuple[int, int | None, int | str]] = [(g, None, g) for g in range(n_gpus)]
    if mig:
        slices = [d for d in backend.devices() if d.mig is not None]
        slices.sort(key=lambda d: (d.mig.gpu_instance_id, d.index))
        targets = [(d.index, d.mig.gpu_instance_id, d.uuid) for d in slices]
    memory = 8 * 1024**3 if mig else 60 * 1024**3
    for t, (gpu, instance, _) in enumerate(targets):
        pids = [(100_000 + r, memory) for r in range(t, n_ranks, len(targets))]
        for pid, _ in pids:
            fake_cgroup(pid)
        if mig:
            backend.set_processes(gpu, pids, gpu_instance_id=instance)
        else:
            backend.set_processes(gpu, pids)
    # The agent's clock stands still at the one snapshot's time: every render exports the same page (the
    # GPUs' reading age is computed at scrape time), which the benches compare byte for byte.
    frozen = time.time()
    agent = Agent(
        backend,
        AgentOptions(node_name="bench-node", proc_root=_PROC_ROOT, max_ranks=max(4096, n_ranks)),
        clock=lambda: frozen,
    )
    snapshot = agent.sampler.sample_once()
    now = time.time()
    for t, progress in ((now - 10.0, 100.0), (now, 110.0)):
        reports = [
            report(r, n_gpus, t, progress, ranks_per_job, gpu=targets[r % len(targets)][2] if mig else None)
            for r in range(n_ranks)
        ]
        for i in range(0, len(reports), 256):
            agent.jobs.apply(reports[i : i + 256], snapshot)
    return agent


class _MixedFamily:
    """A family whose series differ in label names (MIG devices carry three labels whole GPUs do not),
    which a `Gauge` or `Counter` cannot hold: it keeps its series in a dict as a `Gauge` keeps its
    children, and builds the family at each collect as a `Gauge` does (one `add_sample` per series,
    its labels zipped into a dict), without the per-child lock and value object."""

    def __init__(self, family) -> None:
        self.name, self.documentation, self.type = family.name, family.documentation, family.type
        self.series: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, float]] = {
            (tuple(s.labels), tuple(s.labels.values())): (s.name, s.value) for s in family.samples
        }

    def collect(self):
        metric = (CounterMetricFamily if self.type == "counter" else GaugeMetricFamily)(
            self.name, self.documentation
        )
        for (names, values), (sample, value) in self.series.items():
            metric.add_sample(sample, dict(zip(names, values, strict=True)), value)
        return [metric]


def plain_registry(text: str) -> CollectorRegistry:
    """The same families, labels and values as `text`, held by ordinary Gauge and Counter objects; a
    family whose series differ in label names (MIG) by a `_MixedFamily`, the nearest plain equivalent."""
    prometheus_client.disable_created_metrics()  # the agent's counters carry no _created series
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(text):
        if family.type not in ("gauge", "counter"):
            raise ValueError(f"unexpected family type {family.type} for {family.name}")
        if len({tuple(s.labels) for s in family.samples}) > 1:
            registry.register(_MixedFamily(family))
            continue
        # An empty family keeps its HELP and TYPE lines only if the metric has labels (any will do).
        labelnames = list(family.samples[0].labels) if family.samples else ["_"]
        cls = Counter if family.type == "counter" else Gauge
        metric = cls(family.name, family.documentation, labelnames=labelnames, registry=registry)
        for s in family.samples:
            child = metric.labels(*s.labels.values()) if labelnames else metric
            if family.type == "counter":
                child.inc(s.value)
            else:
                child.set(s.value)
    return registry


def mixed_families(registry: CollectorRegistry) -> int:
    """How many of a plain_registry's families hold series with different label names."""
    return sum(1 for c in registry._collector_to_names if isinstance(c, _MixedFamily))


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
