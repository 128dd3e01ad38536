"""The figures the agent adds up for the rules (per GPU, rank and job on this node), through real HTTP:
peak-weighted, a shared GPU counted once, each dtype against its own peak."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from metrics_text import one, values

H100_SXM_BF16 = 989.4e12  # NVIDIA H100 whitepaper, SXM5 dense BF16
H100_SXM_FP8 = 1979e12  # datasheet 3,958 "with sparsity", halved


def post_series(
    client: httpx.Client, job_id: str, rank: int, gpu: int, model_flops_per_second, **extra
) -> None:
    """Reports every 5 s for 55 s of sender time; `model_flops_per_second` a number or {dtype: rate}."""
    start = time.time() - 60
    for t in range(0, 56, 5):
        if isinstance(model_flops_per_second, dict):
            total = {d: r * t for d, r in model_flops_per_second.items()}
        else:
            total = model_flops_per_second * t
        report = {
            "job_id": job_id,
            "rank": rank,
            "gpus": [gpu],
            "model_flops_total": total,
            "timestamp": start + t,
        }
        response = client.post("/v1/reports", content=json.dumps({**report, **extra}))
        assert response.status_code == 202, response.text


def test_two_ranks_sharing_a_gpu_count_its_peak_once(served):
    _, client = served
    post_series(client, "shared", 0, 0, 0.25 * H100_SXM_BF16)
    post_series(client, "shared", 1, 0, 0.25 * H100_SXM_BF16)
    text = client.get("/metrics").text
    assert one(text, "mfu_gpu_mfu_ratio", gpu="0") == pytest.approx(0.50, rel=0.01)
    assert one(text, "mfu_job_node_mfu_ratio", job_id="shared") == pytest.approx(0.50, rel=0.01)
    assert one(text, "mfu_job_node_peak_flops", job_id="shared") == pytest.approx(H100_SXM_BF16)
    assert one(text, "mfu_job_node_gpus", job_id="shared") == 1
    assert one(text, "mfu_gpu_reporting_ranks", gpu="0") == 2
    assert values(text, "mfu_gpu_reporting_ranks", gpu="1") == [0]
    assert values(text, "mfu_gpu_mfu_ratio", gpu="1") == []
    for rank in ("0", "1"):
        assert one(text, "mfu_job_rank_mfu_ratio", job_id="shared", rank=rank) == pytest.approx(
            0.25, rel=0.01
        )
    assert client.get("/v1/jobs").json()["jobs"][0]["mfu"] == pytest.approx(0.50, rel=0.01)


def test_mixed_precision_is_weighted_by_the_fastest_dtype(served):
    _, client = served
    post_series(client, "te", 0, 1, {"fp8": 0.30 * H100_SXM_FP8, "bf16": 0.10 * H100_SXM_BF16})
    post_series(client, "te", 1, 2, 0.20 * H100_SXM_BF16)  # a plain bf16 rank of the same job
    text = client.get("/metrics").text
    assert one(text, "mfu_gpu_mfu_ratio", gpu="1") == pytest.approx(0.40, rel=0.01)
    assert one(text, "mfu_job_rank_mfu_ratio", job_id="te", rank="0") == pytest.approx(0.40, rel=0.01)
    weights = H100_SXM_FP8 + H100_SXM_BF16
    expected = (0.40 * H100_SXM_FP8 + 0.20 * H100_SXM_BF16) / weights
    assert one(text, "mfu_job_node_peak_flops", job_id="te") == pytest.approx(weights)
    assert one(text, "mfu_job_node_mfu_ratio", job_id="te") == pytest.approx(expected, rel=0.01)
    assert client.get("/v1/jobs").json()["jobs"][0]["mfu"] == pytest.approx(expected, rel=0.01)
    rates = (0.30 * H100_SXM_FP8 + 0.10 * H100_SXM_BF16) + 0.20 * H100_SXM_BF16
    assert one(text, "mfu_job_node_model_flops_per_second", job_id="te") == pytest.approx(rates, rel=0.01)


def test_a_gpu_whose_rank_has_no_figure_yet_is_left_out(served):
    _, client = served
    post_series(client, "warming", 0, 0, 0.30 * H100_SXM_BF16)
    body = {"job_id": "warming", "rank": 1, "gpus": [3], "model_flops_total": 1e15}
    assert client.post("/v1/reports", content=json.dumps(body)).status_code == 202  # one report: no rate
    text = client.get("/metrics").text
    assert one(text, "mfu_job_node_gpus", job_id="warming") == 2
    assert one(text, "mfu_job_node_peak_flops", job_id="warming") == pytest.approx(H100_SXM_BF16)
    assert one(text, "mfu_job_node_mfu_ratio", job_id="warming") == pytest.approx(0.30, rel=0.01)
    assert values(text, "mfu_job_rank_mfu_ratio", job_id="warming", rank="1") == []
    progress = one(text, "mfu_job_rank_last_progress_timestamp_seconds", job_id="warming", rank="0")
    last = one(text, "mfu_job_rank_last_report_timestamp_seconds", job_id="warming", rank="0")
    assert 0 < progress <= last <= time.time()
