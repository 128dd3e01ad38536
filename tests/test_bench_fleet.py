"""The fleet generator of bench/rules_scale.py (bench/fleet.py) at a tiny scale: its OpenMetrics text is
accepted by `promtool tsdb create-blocks-from openmetrics`, its label sets are those of docs/metrics.md
and the issue 9 contract, and its counters and gauges agree (what the contract's peak-weighted job
MFU query returns over it is what the generator expects). No timings are checked."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_server import PrometheusNotInstalled, PrometheusServer, find_binary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet import CORE_FAMILIES, Fleet, write_files  # noqa: E402

GPU = {"instance", "job", "gpu", "uuid"}
RANK = {"instance", "job", "job_id", "rank", "gpu", "uuid", "dtype"}
NODE = {"instance", "job"}
# Round 2 of the contract: per rank (over its GPUs), per job on a node and GPU model, per job on a node.
RANK_ONLY = {"instance", "job", "job_id", "rank"}
JOB_NODE_MODEL = {"instance", "job", "job_id", "model"}
JOB_NODE = {"instance", "job", "job_id"}
# Label names per sample name: docs/metrics.md, plus the contract's new families.
EXTRA = {
    "mfu_gpu_info": GPU | {"model", "driver_version", "pci_bus_id", "architecture", "sm_activity_source"},
    "mfu_gpu_clock_event_active": GPU | {"reason"},
    "mfu_gpu_ecc_errors_total": GPU | {"type"},
    "mfu_gpu_remapped_rows_total": GPU | {"type"},
    "mfu_gpu_xid_errors_total": GPU | {"xid"},
    "mfu_gpu_health_action": GPU | {"action", "reason"},
    "mfu_gpu_process_memory_bytes": GPU | {"pid"},
    "mfu_gpu_process_sm_utilization_ratio": GPU | {"pid"},
    "mfu_gpu_process_memory_utilization_ratio": GPU | {"pid"},
    "mfu_gpu_process_info": GPU
    | {"pid", "pod_uid", "container_id", "slurm_job_id", "namespace", "pod", "container"},
    "mfu_gpu_peak_flops": GPU | {"dtype"},
    "mfu_gpu_clock_peak_flops": GPU | {"dtype"},
    "mfu_gpu_peak_flops_unknown": GPU | {"model"},
    "mfu_gpu_price_unknown": GPU | {"model"},
    "mfu_job_info": RANK
    | {"pid", "local_rank", "world_size", "attributed_by", "pod", "namespace", "slurm_job_id", "hostname"}
    | {"pod_uid", "container_id", "container"},
    "mfu_job_peak_flops_unknown": RANK | {"model"},
    "mfu_agent_build_info": NODE | {"version", "backend", "node"},
    "mfu_agent_nvml_errors_total": NODE | {"call", "error"},
    "mfu_agent_reports_total": NODE | {"outcome"},
    "mfu_agent_rank_evictions_total": NODE | {"reason"},
    "mfu_agent_kubelet_errors_total": NODE | {"error"},
    "mfu_gpu_gpm_status": GPU | {"status"},
    "mfu_gpu_pcie_bytes_per_second": GPU | {"direction"},
    "mfu_gpu_nvlink_bytes_per_second": GPU | {"direction"},
    "mfu_gpu_nvlink_errors_total": GPU | {"type"},
    "up": NODE,
    **dict.fromkeys(
        (
            "mfu_job_rank_mfu_ratio",
            "mfu_job_rank_hfu_ratio",
            "mfu_job_rank_last_progress_timestamp_seconds",
            "mfu_job_rank_last_report_timestamp_seconds",
            "mfu_job_rank_steps_per_second",
            "mfu_job_wall_seconds_total",
            "mfu_job_productive_seconds_total",
            "mfu_job_stall_seconds_total",
            "mfu_job_restart_downtime_seconds_total",
            "mfu_job_lost_work_steps_total",
            "mfu_job_lost_work_flops_total",
            "mfu_job_lost_work_tokens_total",
            "mfu_job_lost_work_seconds_total",
        ),
        RANK_ONLY,
    ),
    "mfu_job_phase_seconds_total": RANK_ONLY | {"phase"},
    "mfu_job_restarts_total": RANK_ONLY | {"cause"},
    **dict.fromkeys(
        ("mfu_job_node_peak_flops", "mfu_job_node_mfu_ratio", "mfu_job_node_hfu_ratio", "mfu_job_node_gpus"),
        JOB_NODE_MODEL,
    ),
    **dict.fromkeys(
        (
            "mfu_job_node_model_flops_per_second",
            "mfu_job_node_tokens_per_second",
            "mfu_job_node_first_report_timestamp_seconds",
            "mfu_job_node_energy_joules_total",
        ),
        JOB_NODE,
    ),
}
LINE = re.compile(r"^([a-z_:][a-z0-9_:]*)\{(.*)\} (\S+) (\d+)$")
HISTORY, STEP = 120, 15


def expected_labels(sample: str) -> set[str]:
    if sample in EXTRA:
        return EXTRA[sample]
    if sample.startswith("mfu_job_"):
        return RANK
    if sample.startswith("mfu_gpu_"):
        return GPU
    return NODE


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fleet, Path, float, dict]:
    fleet = Fleet.build(nodes=50, jobs=50)
    out = tmp_path_factory.mktemp("fleet") / "fleet.om"
    end = float(int(time.time()) - 30)
    stats = write_files(fleet, [out], end=end, history=HISTORY, step=STEP, families=None)
    return fleet, out, end, stats


def test_fleet_has_the_cases_rules_must_handle(generated):
    fleet, *_ = generated
    s = fleet.summary()
    assert s["gpus"] == 400 and s["jobs"] == 50
    assert s["gpus_with_two_ranks"] >= 1 and s["mixed_precision_jobs"] >= 1 and s["gpus_without_peak"] >= 1
    assert 0 < s["jobs_with_mfu"] < s["jobs"]  # jobs only on a GPU model without a known peak have none
    assert len({r.job.job_id for r in fleet.ranks}) == s["jobs"]


def test_label_sets_match_the_contract(generated):
    _, path, end, stats = generated
    labels: dict[str, set[frozenset[str]]] = {}
    times: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, line
        name, text, value, ts = m.groups()
        float(value)
        pairs = re.findall(r'([a-z_]+)="([^"\\]*)"', text)
        rebuilt = ",".join(f'{k}="{v}"' for k, v in pairs)
        assert text == rebuilt, line
        keys = frozenset(k for k, _ in pairs)
        assert len(keys) == len(pairs), f"a label given twice: {line}"
        labels.setdefault(name, set()).add(keys)
        times.setdefault(f"{name}{{{text}}}", []).append(int(ts))
    for name, sets in labels.items():
        assert sets == {frozenset(expected_labels(name))}, name
    documented = set(re.findall(r"\bmfu_[a-z0-9_]+", (ROOT / "docs" / "metrics.md").read_text()))
    assert documented <= set(labels), f"documented but not generated: {sorted(documented - set(labels))}"
    assert set(labels) >= CORE_FAMILIES
    assert len(times) == stats["series"] and sum(map(len, times.values())) == stats["samples"]
    for series, ts in times.items():
        assert ts == list(range(int(end) - HISTORY, int(end) + 1, STEP)), series


def test_promtool_backfills_it_and_the_contract_query_gives_the_expected_mfu(generated, tmp_path):
    fleet, path, end, _ = generated
    try:
        promtool = find_binary("promtool")
        find_binary("prometheus")
    except PrometheusNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    data = tmp_path / "prometheus-data"
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(path), str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p for p in data.iterdir() if (p / "meta.json").is_file()], "no block written"
    with PrometheusServer(tmp_dir=tmp_path) as prom:
        # Every counter's rate is what the MFU gauge beside it says, per GPU and dtype.
        ratio = prom.query(
            "rate(mfu_job_model_flops_total[1m]) / mfu_job_peak_flops / mfu_job_mfu_ratio", time_=end
        )
        assert ratio and all(math.isclose(float(r["value"][1]), 1.0, rel_tol=1e-6) for r in ratio)
        # The contract's peak-weighted job MFU over the raw series.
        gpu_mfu = "sum by (job_id, instance, gpu) (mfu_job_mfu_ratio)"
        gpu_w = "max by (job_id, instance, gpu) (mfu_job_peak_flops)"
        expr = (
            f"sum by (job_id) (({gpu_mfu}) * on (job_id, instance, gpu) ({gpu_w}))"
            f" / sum by (job_id) (({gpu_w}) and on (job_id, instance, gpu) ({gpu_mfu}))"
        )
        got = {r["metric"]["job_id"]: float(r["value"][1]) for r in prom.query(expr, time_=end)}
        # The same from the node-level families (Round 2 of the contract): sum / sum over nodes.
        node_expr = (
            "sum by (job_id) (mfu_job_node_mfu_ratio * mfu_job_node_peak_flops)"
            " / sum by (job_id) (mfu_job_node_peak_flops)"
        )
        from_nodes = {r["metric"]["job_id"]: float(r["value"][1]) for r in prom.query(node_expr, time_=end)}
        # The GPU's MFU is every rank's on it; the rank's (one GPU each here) its dtypes' sum.
        gpu_check = prom.query(
            "sum by (instance, gpu) (mfu_job_mfu_ratio) / on (instance, gpu) mfu_gpu_mfu_ratio", time_=end
        )
        rank_check = prom.query(
            "sum by (instance, job_id, rank) (mfu_job_mfu_ratio)"
            " / on (instance, job_id, rank) mfu_job_rank_mfu_ratio",
            time_=end,
        )
        ranks_check = prom.query(
            "count by (instance, gpu) (mfu_job_info) / on (instance, gpu) (mfu_gpu_reporting_ranks > 0)",
            time_=end,
        )
        idle = prom.query("count(mfu_gpu_reporting_ranks == 0)", time_=end)
        first_job = fleet.jobs[0].job_id
        gpus = prom.query(f'sum by (job_id) (mfu_job_node_gpus{{job_id="{first_job}"}})', time_=end)
    expected = fleet.expected_job_mfu()
    assert got.keys() == expected.keys()
    for job_id, value in expected.items():
        assert math.isclose(got[job_id], value, rel_tol=1e-9), job_id
    assert from_nodes.keys() == expected.keys()
    for job_id, value in expected.items():
        assert math.isclose(from_nodes[job_id], value, rel_tol=1e-9), job_id
    for check in (gpu_check, rank_check, ranks_check):
        assert check and all(math.isclose(float(r["value"][1]), 1.0, rel_tol=1e-9) for r in check)
    assert len(gpu_check) == sum(1 for g in fleet.gpus if any(r.known for r in g.ranks))
    assert len(rank_check) == sum(1 for r in fleet.ranks if r.known)
    assert len(ranks_check) == sum(1 for g in fleet.gpus if g.ranks)
    assert int(float(idle[0]["value"][1])) == sum(1 for g in fleet.gpus if g.up and not g.ranks)
    assert float(gpus[0]["value"][1]) == len({(r.gpu.instance, r.gpu.index) for r in fleet.jobs[0].ranks})


def test_node_level_families_give_the_per_gpu_peak_weighted_mfu(generated):
    """In the generator itself, for every job: the node-level families' sum / sum is the per-GPU
    peak-weighted MFU, and the fleet's likewise (no Prometheus needed)."""
    fleet, *_ = generated
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    gpus: dict[str, int] = {}
    for (job_id, _, _), row in fleet.job_node().items():
        gpus[job_id] = gpus.get(job_id, 0) + row["gpus"]
        if "peak" in row:
            num[job_id] = num.get(job_id, 0.0) + row["mfu"] * row["peak"]
            den[job_id] = den.get(job_id, 0.0) + row["peak"]
    expected = fleet.expected_job_mfu()
    assert num.keys() == expected.keys()
    for job_id, value in expected.items():
        assert math.isclose(num[job_id] / den[job_id], value, rel_tol=1e-12), job_id
    assert math.isclose(sum(num.values()) / sum(den.values()), fleet.expected_fleet_mfu(), rel_tol=1e-12)
    for job in fleet.jobs:
        assert gpus[job.job_id] == len({(r.gpu.instance, r.gpu.index) for r in job.ranks})
