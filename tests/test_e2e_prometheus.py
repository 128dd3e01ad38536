"""End to end: a real Prometheus with our rules scraping two real agents (two nodes, simulated GPUs),
one training job spread over both, reporting through the real client.

Test-only changes to the rules, both made by `rules_with_short_for`: alerts' `for:` become 2 s,
and the 5-minute rate windows 40 s, so that the suite takes well under two minutes. Prometheus
scrapes every 0.5 s: rate() extrapolates at most half a scrape interval past the window's last
sample, an error of up to interval / window that a 5-minute window makes negligible but 40 s not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import free_port
from prometheus_server import (
    PROMETHEUS_BUILTIN_METRICS,
    PrometheusAPIError,
    PrometheusServer,
    promql_metric_names,
    rules_with_short_for,
)
from test_dashboards import RULE_FILES, VARIABLE_VALUES, all_exprs, substitute

from mfu_agent.client import Reporter

ROOT = Path(__file__).resolve().parents[1]
H100_SXM_BF16 = 989.4e12  # NVIDIA H100 SXM datasheet, dense BF16
JOB_ID = VARIABLE_VALUES["job_id"]
JOB_MFU = 0.20  # below MfuLow's 0.25 threshold, on purpose
RATE_WINDOW_SECONDS = 40
# The rule is read as the mean of its evaluations over this many seconds after a full window: one
# evaluation can be off by up to a scrape interval over the window (rate()'s extrapolation at the
# window's edges, which moves with the moment of evaluation); the mean is what the reports imply.
SETTLE_SECONDS = 10
GPUS_PER_NODE = 4


def start_agent(port: int, node: str, *faults: str, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    args = [
        "run",
        "--backend",
        "simulated",
        "--simulate",
        f"{GPUS_PER_NODE}xNVIDIA H100 80GB HBM3",
        "--listen",
        f"127.0.0.1:{port}",
        "--node-name",
        node,
        "--interval",
        "0.5",
        "--log-level",
        "warning",
    ]
    for fault in faults:
        args += ["--fault", fault]
    args += extra
    return subprocess.Popen(
        [sys.executable, "-m", "mfu_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready")


class TrainingJob:
    """Eight ranks, four per node, each doing JOB_MFU of an H100's dense bf16 peak."""

    def __init__(self, urls: list[str]) -> None:
        self.reporters = [
            Reporter(
                job_id=JOB_ID,
                rank=node * GPUS_PER_NODE + local,
                local_rank=local,
                world_size=len(urls) * GPUS_PER_NODE,
                url=url,
                interval=0.1,
                dtype="bf16",
            )
            for node, url in enumerate(urls)
            for local in range(GPUS_PER_NODE)
        ]
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            flops = JOB_MFU * H100_SXM_BF16 * (now - last)
            last = now
            for reporter in self.reporters:
                reporter.step(model_flops=flops, hardware_flops=flops * 4 / 3, tokens=flops / 6e9, samples=1)

    def start(self) -> None:
        for reporter in self.reporters:  # the job marks a phase (goodput: a phase's series from then on)
            with reporter.phase("data_wait"):
                time.sleep(0.001)
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for reporter in self.reporters:
            reporter.close(timeout=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    prices = tmp / "gpu-prices.json"  # node a counts what its GPUs cost (tests/test_cost.py checks the sums)
    prices.write_text('{"NVIDIA H100 80GB HBM3": 3.6}')
    agents = [
        # two processes time-share GPU 0
        start_agent(ports[0], "node-a", "busy-idle:3", "shared:0", extra=("--gpu-price-file", str(prices))),
        # XID 79 (reboot the node) on GPU 1 and XID 13 (restart the application) on GPU 3.
        start_agent(ports[1], "node-b", "xid:1:79", "xid:3:13", "throttle:2", "ecc:0"),
    ]
    job = None
    try:
        for url, proc in zip(urls, agents, strict=True):
            wait_ready(url, proc)
        job = TrainingJob(urls)
        job.start()
        rules = rules_with_short_for(
            RULE_FILES, tmp / "rules", for_="2s", rate_window=f"{RATE_WINDOW_SECONDS}s", warm_up_s=0
        )
        with PrometheusServer(
            rule_files=rules,
            scrape_targets=[f"127.0.0.1:{p}" for p in ports],
            tmp_dir=tmp,
            scrape_interval="500ms",
        ) as prom:
            # A whole rate window of data, so Prometheus's rate() is not cut short by the series' start.
            prom.wait_for(
                lambda: time.monotonic() - job.started > RATE_WINDOW_SECONDS + SETTLE_SECONDS + 5,
                timeout=RATE_WINDOW_SECONDS + SETTLE_SECONDS + 30,
                what="a full rate window of reports",
            )
            yield prom, urls
    finally:
        if job is not None:
            job.stop()
        for proc in agents:
            proc.terminate()
            proc.wait(15)


def test_both_agents_are_scraped(cluster):
    prom, _ = cluster
    up = prom.query('up{job="mfu-agent"}')
    assert sorted(float(s["value"][1]) for s in up) == [1.0, 1.0]
    gpus = prom.query("count(mfu_gpu_info)")
    assert float(gpus[0]["value"][1]) == 2 * GPUS_PER_NODE, "each node has its own GPU UUIDs"
    uuids = prom.query("count(count by (uuid) (mfu_gpu_info))")
    assert float(uuids[0]["value"][1]) == 2 * GPUS_PER_NODE


def test_job_mfu_recording_rule_matches_the_reports(cluster):
    prom, _ = cluster
    (series,) = prom.query(f'avg_over_time(mfu:job_mfu:ratio{{job_id="{JOB_ID}"}}[{SETTLE_SECONDS}s])')
    assert float(series["value"][1]) == pytest.approx(JOB_MFU, rel=0.02)
    (latest,) = prom.query(f'mfu:job_mfu:ratio{{job_id="{JOB_ID}"}}')
    assert float(latest["value"][1]) == pytest.approx(JOB_MFU, rel=0.05)
    # The same from the raw series, as the issue states the formula.
    (raw,) = prom.query(
        f'sum by (job_id) (rate(mfu_job_model_flops_total{{job_id="{JOB_ID}"}}'
        f'[{RATE_WINDOW_SECONDS}s])) / sum by (job_id) (mfu_job_peak_flops{{job_id="{JOB_ID}"}})'
    )
    assert float(raw["value"][1]) == pytest.approx(JOB_MFU, rel=0.05)
    nodes = prom.query(f'avg_over_time(mfu:job_node_mfu:ratio{{job_id="{JOB_ID}"}}[{SETTLE_SECONDS}s])')
    assert len(nodes) == 2
    assert [float(s["value"][1]) for s in nodes] == pytest.approx([JOB_MFU, JOB_MFU], rel=0.02)


def test_busy_but_idle_and_low_mfu_alerts_reach_prometheus(cluster):
    prom, _ = cluster

    def active(name: str) -> list[dict]:
        return [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == name and a["state"] in ("pending", "firing")
        ]

    busy = prom.wait_for(lambda: active("GpuBusyButIdle"), timeout=30, what="GpuBusyButIdle active")
    assert {(a["labels"]["gpu"], a["labels"]["instance"].split(":")[-1]) for a in busy} == {
        ("3", prom.scrape_targets[0].split(":")[-1])
    }, "only the busy-but-idle GPU of node a"
    low = prom.wait_for(lambda: active("MfuLow"), timeout=30, what="MfuLow active")
    assert {a["labels"]["job_id"] for a in low} == {JOB_ID}


def test_gpu_health_reaches_prometheus(cluster):
    """The agent's health state per GPU, as Prometheus scraped it, and the alerts by action of the shipped
    rules: node b's XID 79 asks for a node reboot, its XID 13 only for an application restart, its
    uncorrectable ECC error for a GPU reset; its throttled GPU is not (yet) sustained; node a is healthy."""
    prom, _ = cluster
    node_a, node_b = prom.scrape_targets

    def states() -> dict[tuple[str, str], tuple[str, str]] | None:
        got = {
            (s["metric"]["instance"], s["metric"]["gpu"]): (s["metric"]["action"], s["metric"]["reason"])
            for s in prom.query("mfu_gpu_health_action")
        }
        return got if len(got) == 2 * GPUS_PER_NODE else None

    got = prom.wait_for(states, timeout=30, what="a health state for every GPU")
    assert got == {
        **{(node_a, str(i)): ("none", "none") for i in range(GPUS_PER_NODE)},
        (node_b, "0"): ("reset_gpu", "ecc_uncorrectable"),
        (node_b, "1"): ("reboot_node", "xid_79"),
        (node_b, "2"): ("none", "none"),
        (node_b, "3"): ("restart_application", "xid_13"),
    }

    def worst_per_node() -> dict[str, str] | None:
        worst = prom.query("mfu:node_gpu_health_severity:max")
        return {s["metric"]["instance"]: s["value"][1] for s in worst} if len(worst) == 2 else None

    assert prom.wait_for(worst_per_node, what="the worst severity per node") == {node_a: "0", node_b: "4"}

    def firing(name: str) -> list[tuple[str, str, str]] | None:
        alerts = [
            (a["labels"]["instance"], a["labels"]["gpu"], a["labels"]["reason"]) for a in prom.firing(name)
        ]
        return alerts or None

    assert prom.wait_for(lambda: firing("GpuNeedsNodeReboot"), what="GpuNeedsNodeReboot") == [
        (node_b, "1", "xid_79")
    ]
    assert firing("GpuNeedsAppRestart") == [(node_b, "3", "xid_13")]
    assert firing("GpuNeedsReset") == [(node_b, "0", "ecc_uncorrectable")]
    assert firing("GpuNeedsInspection") is None and firing("GpuXidUnclassified") is None
    (reboot,) = prom.firing("GpuNeedsNodeReboot")
    assert reboot["labels"]["severity"] == "critical"
    assert reboot["annotations"]["summary"] == f"GPU 1 on {node_b} needs a node reboot (xid_79)"


def test_the_jobs_nvlink_traffic_is_summed_over_its_gpus(cluster):
    """mfu-interconnect.yml: the job's NVLink bytes/s (rx + tx) over the GPUs its ranks run on, from the
    agents' GPM series (the simulated H100s have NVLink), beside its MFU."""
    prom, _ = cluster
    job = f'job_id="{JOB_ID}"'
    (total,) = prom.query(f"mfu:job_nvlink_bytes_per_second:sum{{{job}}}")
    (mean,) = prom.query(f"mfu:job_gpu_nvlink_bytes_per_second:avg{{{job}}}")
    (gpus,) = prom.query(
        f"count(mfu:gpu_nvlink_bytes_per_second:sum and on (instance, uuid) group by (instance, uuid) "
        f"(mfu_job_info{{{job}}}))"
    )
    (raw,) = prom.query(
        f"sum(mfu_gpu_nvlink_bytes_per_second and on (instance, uuid) group by (instance, uuid) "
        f"(mfu_job_info{{{job}}}))"
    )
    assert float(gpus["value"][1]) == 2 * GPUS_PER_NODE
    assert float(total["value"][1]) > 0
    # The rule and the raw query may be a scrape apart; the simulated traffic moves little in one.
    assert float(total["value"][1]) == pytest.approx(float(raw["value"][1]), rel=0.1)
    assert float(mean["value"][1]) == pytest.approx(float(total["value"][1]) / (2 * GPUS_PER_NODE), rel=0.1)
    assert prom.query(f"mfu:job_pcie_bytes_per_second:sum{{{job}}}")


def test_every_dashboard_query_parses_and_returns_data(cluster):
    prom, _ = cluster
    errors, empty = [], []
    for name, where, expr in all_exprs():
        try:
            if not prom.query(substitute(expr)):
                empty.append(f"{name} {where}: {substitute(expr)}")
        except PrometheusAPIError as exc:
            errors.append(f"{name} {where}: {exc}")
    assert not errors, "\n".join(errors)
    unexpected = [e for e in empty if not any(e.startswith(allowed) for allowed in EMPTY_WITH_SIMULATED_GPUS)]
    assert not unexpected, "queries with no data from real agents:\n" + "\n".join(unexpected)


# Panels that stay empty here, and why.
EMPTY_WITH_SIMULATED_GPUS = (
    "mfu-gpu-node.json GPU processes /",  # simulated GPUs run no processes
    "mfu-fleet.json GPU processes of jobs not reporting MFU /",  # likewise
    "mfu-gpu-node.json NVML errors /",  # the simulated backend makes no NVML calls
    # The ranks' steps span less than the agents' --mfu-window (60 s) when this test queries, so they have
    # no step rate yet (mfu_job_rank_steps_per_second), hence no median and no straggler; test_dashboards.py
    # shows these panels on a straggling job.
    "mfu-training-job.json Step rate per rank /",
    "mfu-training-job.json Pace vs job median /",
    "mfu-training-job.json Stragglers /",
    # The week's and the range's cost: subqueries at 5-minute steps, whose points fall on multiples of 5
    # minutes; the agents' data is younger than one step (test_dashboards.py says the same).
    "mfu-fleet.json What low MFU and idle GPUs cost this week /",
    "mfu-fleet.json Idle GPUs cost this week /",
    "mfu-fleet.json Below the MFU target this week /",
    "mfu-fleet.json All GPU time this week /",
    "mfu-fleet.json Idle and below-target dollars by node (range) /",
)


def test_every_metric_name_in_dashboards_and_rules_is_exported(cluster):
    _, urls = cluster
    exported = set()
    for url in urls:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("# TYPE "):  # the text format names counters with _total, info with _info
                exported.add(line.split()[2])

    recorded, used = set(), {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    recorded.add(rule["record"])
                for metric in promql_metric_names(str(rule["expr"])):
                    used.setdefault(metric, f"{path.name}: {rule.get('record') or rule.get('alert')}")
    for name, where, expr in all_exprs():
        for metric in promql_metric_names(substitute(expr)):
            used.setdefault(metric, f"{name} {where}")
    unknown = {
        m: where for m, where in used.items() if m not in exported | recorded | PROMETHEUS_BUILTIN_METRICS
    }
    assert not unknown, f"names the agent does not export: {unknown}"
