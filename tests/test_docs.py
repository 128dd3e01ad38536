"""The docs list what the code does: every exported metric, every endpoint."""

from __future__ import annotations

import re
from pathlib import Path

from kubelet_server import FakeKubelet
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.app import create_app
from mfu_agent.cost.prices import PriceTable
from mfu_agent.events import EventCounter
from mfu_agent.gpu.model import GpuEvent
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import ReportData

DOCS = Path(__file__).resolve().parents[1] / "docs"


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables."""
    return set(re.findall(r"^\| `(mfu_[a-z0-9_]+)`", (DOCS / "metrics.md").read_text(), re.M))


def exported_metrics() -> set[str]:
    """Every family a busy agent exports: GPUs with processes and faults, events, a reporting job."""
    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3,1xNVIDIA Imaginary X9")
    backend.set_processes(0, [(1, 1024)])
    backend.set_shared(1)  # two time-sliced processes with their own utilisation
    with FakeKubelet() as kubelet:  # the kubelet's PodResources API, asked once
        # A price for the H100s (the cost series), none for the X9 (mfu_gpu_price_unknown).
        prices = PriceTable({"NVIDIA H100 80GB HBM3": 2.0})
        agent = Agent(backend, AgentOptions(kubelet_socket=kubelet.socket_path, prices=prices))
        agent.kubelet.refresh()
        agent.kubelet.stop()
    agent.events = EventCounter()
    agent.events.add(GpuEvent(0, "GPU-x", "xid", 79))
    agent.events.add(GpuEvent(0, "GPU-x", "double_bit_ecc"))
    snapshot = agent.sampler.sample_once()
    reports = [
        ReportData(
            job_id="j",
            rank=0,
            model_flops={"bf16": 1.0},
            gpus=(0,),
            hardware_flops={"bf16": 1.0},
            tokens_total=1.0,
            samples_total=1.0,
            step=1,
            timestamp=1.0,
        ),
        ReportData(job_id="j", rank=1, model_flops={"bf16": 1.0}, gpus=(2,)),
    ]
    agent.jobs.apply(reports, snapshot)
    agent.jobs.apply(
        [
            ReportData(
                job_id="j",
                rank=0,
                model_flops={"bf16": 2.0},
                gpus=(0,),
                hardware_flops={"bf16": 2.0},
                tokens_total=2.0,
                samples_total=2.0,
                step=2,
                timestamp=2.0,
            )
        ],
        snapshot,
    )
    agent.count_reports("accepted", 3)
    text = generate_latest(agent.registry).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_metrics_doc_lists_exactly_what_is_exported():
    exported, documented = exported_metrics(), documented_metrics()
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"


def test_api_doc_lists_every_endpoint():
    app = create_app(Agent(SimulatedBackend("1xNVIDIA L4")), manage_agent=False)
    paths = {path for path in app.openapi()["paths"]}
    api = (DOCS / "api.md").read_text()
    missing = {p for p in paths if f"`GET {p}`" not in api and f"`POST {p}`" not in api}
    assert not missing, f"endpoints missing from docs/api.md: {missing}"
