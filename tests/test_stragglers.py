"""Stragglers (issue 13 point 2): the agent's per-rank step rate (`mfu_job_rank_steps_per_second`), and
the shipped rules (deploy/prometheus/rules/mfu-stragglers.yml) on it in a real Prometheus scraping two
real agents: an 8-rank job over both, one rank 20 % slower, makes RankStraggler pending for that rank
on its node and GPU, and for no other.

The rules are loaded unchanged. The agents run with a short window (`--mfu-window`, so that a rank has a
step rate seconds after its first step instead of a minute); the alert is checked `pending`, the state
it enters at its first evaluation, before its `for:` (5m) has passed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from agent_process import AgentProcess
from metrics_text import values
from prometheus_server import PrometheusServer

from mfu_agent.client import Reporter

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
WINDOW = 60.0  # the agent's default --mfu-window


def post(client: httpx.Client, job_id: str, rank: int, t: float, step: int | None, flops: float) -> None:
    report = {"job_id": job_id, "rank": rank, "gpus": [rank % 4], "model_flops_total": flops, "timestamp": t}
    if step is not None:
        report["step"] = step
    response = client.post("/v1/reports", content=json.dumps(report))
    assert response.status_code == 202, response.text


def step_rate(client: httpx.Client, job_id: str, rank: int) -> list[float]:
    return values(client.get("/metrics").text, "mfu_job_rank_steps_per_second", job_id=job_id, rank=str(rank))


def test_step_rate_only_once_the_steps_cover_the_window(served):
    """2 steps/s of sender time, a report every 10 s: no rate while the rank's reports span less than the
    window (a young rank must not be compared with the others), then the exact rate."""
    _, client = served
    start = time.time() - 200
    for t in range(0, 60, 10):
        post(client, "young", 0, start + t, 2 * t, 1e12 * t)
        assert step_rate(client, "young", 0) == [], f"a rate after {t} s of steps"
    post(client, "young", 0, start + 60, 120, 6e13)
    assert step_rate(client, "young", 0) == [pytest.approx(2.0)]
    post(client, "young", 0, start + 75, 150, 7.5e13)  # the window's start now falls between two reports
    assert step_rate(client, "young", 0) == [pytest.approx(2.0)]
    # The windowed MFU gauges, by contrast, are there from the second report.
    assert values(client.get("/metrics").text, "mfu_job_rank_mfu_ratio", job_id="young", rank="0")


def test_step_rate_restarts_after_a_restore(served):
    """A step that goes back (restored from a checkpoint) starts the count afresh: the rate across the
    restore would be wrong (negative, or a fraction of the true one)."""
    _, client = served
    start = time.time() - 300
    for t in range(0, 70, 10):
        post(client, "restore", 1, start + t, 3 * t, 1e12 * t)
    assert step_rate(client, "restore", 1) == [pytest.approx(3.0)]
    # Restored at step 90 (from 180) at t=70, then 1 step/s.
    for t in range(70, 130, 10):
        post(client, "restore", 1, start + t, 90 + (t - 70), 1e12 * t)
        assert step_rate(client, "restore", 1) == [], f"a rate across the restore at t={t}"
    post(client, "restore", 1, start + 130, 150, 1.3e14)
    assert step_rate(client, "restore", 1) == [pytest.approx(1.0)]


def test_no_step_no_rate(served):
    _, client = served
    start = time.time() - 200
    for t in range(0, 80, 10):
        post(client, "stepless", 2, start + t, None, 1e12 * t)
    text = client.get("/metrics").text
    assert values(text, "mfu_job_rank_mfu_ratio", job_id="stepless", rank="2")
    assert values(text, "mfu_job_rank_steps_per_second", job_id="stepless") == []


# -- end to end: two agents, a real Prometheus, the shipped rules ------------------------------------

AGENT_WINDOW = 8  # seconds: each rank's rate is over 8 s of its steps
JOB_ID = "straggle"
GPUS_PER_NODE = 4
STEP_SECONDS = 0.05  # 20 steps/s
SLOW_RANK = 6  # on the second node, local rank (and GPU) 2
SLOW_STEP_SECONDS = STEP_SECONDS / 0.8  # 20 % slower: 16 steps/s


class SteppingJob:
    """Eight ranks through the real client, four per agent; each steps on its own period."""

    def __init__(self, urls: list[str]) -> None:
        self.reporters = [
            Reporter(
                job_id=JOB_ID,
                flops_per_step=1e12,
                rank=node * GPUS_PER_NODE + local,
                local_rank=local,
                world_size=len(urls) * GPUS_PER_NODE,
                url=url,
                interval=0.2,
            )
            for node, url in enumerate(urls)
            for local in range(GPUS_PER_NODE)
        ]
        self.periods = [
            SLOW_STEP_SECONDS if r == SLOW_RANK else STEP_SECONDS for r in range(len(self.reporters))
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        due = [time.monotonic()] * len(self.reporters)
        while not self._stop.wait(0.01):
            now = time.monotonic()
            for i, reporter in enumerate(self.reporters):
                while due[i] <= now:  # catch up after a late wake-up: the pace holds on average
                    reporter.step()
                    due[i] += self.periods[i]

    def __enter__(self) -> SteppingJob:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for reporter in self.reporters:
            reporter.close(timeout=1)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stragglers")
    agents = [
        AgentProcess(
            "--simulate",
            f"{GPUS_PER_NODE}xNVIDIA H100 80GB HBM3",
            "--node-name",
            node,
            "--mfu-window",
            str(AGENT_WINDOW),
            "--interval",
            "0.5",
        )
        for node in ("node-a", "node-b")
    ]
    try:
        for agent in agents:
            agent.start()
        with (
            SteppingJob([a.url for a in agents]),
            PrometheusServer(
                rule_files=RULE_FILES,
                scrape_targets=[f"127.0.0.1:{a.port}" for a in agents],
                scrape_interval="500ms",
                evaluation_interval="500ms",
                tmp_dir=tmp,
            ) as prom,
        ):
            yield prom, agents
    finally:
        for agent in agents:
            agent.stop()


def active(prom: PrometheusServer, name: str) -> list[dict]:
    return [
        a for a in prom.alerts() if a["labels"]["alertname"] == name and a["state"] in ("pending", "firing")
    ]


def test_one_slow_rank_of_eight_on_two_nodes_makes_rank_straggler_pending_for_it_alone(two_nodes):
    prom, agents = two_nodes
    node_b = f"127.0.0.1:{agents[1].port}"
    (gpu,) = prom.wait_for(
        lambda: prom.query(f'mfu_gpu_info{{instance="{node_b}",gpu="2"}}'), what="node b's GPU 2 scraped"
    )
    uuid = gpu["metric"]["uuid"]

    def all_ranks_rated():
        rated = prom.query(f'mfu:job_rank_steps_per_second:ratio_to_median{{job_id="{JOB_ID}"}}')
        return rated if len(rated) == 8 else None

    prom.wait_for(all_ranks_rated, timeout=60, what="a step rate for every rank, over its job's median")
    alerts = prom.wait_for(lambda: active(prom, "RankStraggler"), timeout=30, what="RankStraggler pending")
    expected = {(JOB_ID, str(SLOW_RANK), node_b, "2", uuid)}
    # For a few evaluations: the slow rank, on its node and GPU, and never any other rank.
    for _ in range(6):
        got = {
            (
                a["labels"]["job_id"],
                a["labels"]["rank"],
                a["labels"]["instance"],
                a["labels"]["gpu"],
                a["labels"]["uuid"],
            )
            for a in alerts
        }
        assert got == expected
        assert {a["state"] for a in alerts} == {"pending"}  # for: 5m has not passed
        time.sleep(0.5)
        alerts = active(prom, "RankStraggler")
    (alert,) = alerts
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"].startswith(
        f"Job {JOB_ID} rank {SLOW_RANK} on {node_b} (GPU 2) steps at "
    )
    assert uuid in alert["annotations"]["description"]
    assert float(alert["value"]) == pytest.approx(0.8, abs=0.05)

    # One thread steps every rank, so a late wake-up on a busy machine delays them all alike: the ratios
    # hold where the absolute rates (the median) move a little.
    ratios = {
        s["metric"]["rank"]: float(s["value"][1])
        for s in prom.query(f'mfu:job_rank_steps_per_second:ratio_to_median{{job_id="{JOB_ID}"}}')
    }
    assert ratios.pop(str(SLOW_RANK)) == pytest.approx(0.8, abs=0.05)
    assert ratios == {str(r): pytest.approx(1.0, abs=0.05) for r in range(8) if r != SLOW_RANK}
    (median,) = prom.query(f'mfu:job_steps_per_second:median{{job_id="{JOB_ID}"}}')
    assert float(median["value"][1]) == pytest.approx(1 / STEP_SECONDS, rel=0.1)
