"""In-process fixtures: an agent on simulated GPUs with reporting ranks, and the plain-registry twin
of its /metrics output that the scrape benchmark uses as a baseline."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
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
    rank: int, n_gpus: int, t: float, progress: float, ranks_per_job: int = RANKS_PER_JOB
) -> ReportData:
    """One rank's cumulative counters after `progress` seconds of training at ~400 TFLOP/s."""
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
        gpus=(rank % n_gpus,),
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


def make_agent(n_gpus: int, n_ranks: int, ranks_per_job: int = RANKS_PER_JOB) -> Agent:
    """An agent (threads not started) with one snapshot of `n_gpus` simulated H100s, every rank's
    process on its GPU, and two reports per rank 10 s apart so that MFU/HFU/tokens/s are computed."""
    backend = SimulatedBackend(f"{n_gpus}x{GPU_MODEL}")
    for gpu in range(n_gpus):
        pids = [(100_000 + r, 60 * 1024**3) for r in range(gpu, n_ranks, n_gpus)]
        for pid, _ in pids:
            fake_cgroup(pid)
        backend.set_processes(gpu, pids)
    agent = Agent(
        backend, AgentOptions(node_name="bench-node", proc_root=_PROC_ROOT, max_ranks=max(4096, n_ranks))
    )
    snapshot = agent.sampler.sample_once()
    now = time.time()
    for t, progress in ((now - 10.0, 100.0), (now, 110.0)):
        reports = [report(r, n_gpus, t, progress, ranks_per_job) for r in range(n_ranks)]
        for i in range(0, len(reports), 256):
            agent.jobs.apply(reports[i : i + 256], snapshot)
    return agent


def plain_registry(text: str) -> CollectorRegistry:
    """The same families, labels and values as `text`, held by ordinary Gauge and Counter objects."""
    prometheus_client.disable_created_metrics()  # the agent's counters carry no _created series
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(text):
        if family.type not in ("gauge", "counter"):
            raise ValueError(f"unexpected family type {family.type} for {family.name}")
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


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
