"""POST /v1/reports and GET /v1/jobs through the real HTTP server, and the MFU the agent derives."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import pytest
from conftest import serve
from metrics_text import one, samples, values

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.simulated import SimulatedBackend

H100_SXM_BF16 = 989.4e12  # NVIDIA H100 SXM datasheet, dense BF16 (1979 TFLOP/s with sparsity, halved)
H100_SXM_FP8 = 1979e12  # datasheet 3958 sparse, halved


def reports_at_rate(
    job_id: str,
    rank: int,
    flops_per_second: float,
    start: float,
    seconds: int,
    every: int = 5,
    offset: float = 0.0,
    **extra,
) -> list[dict]:
    return [
        {
            "job_id": job_id,
            "rank": rank,
            "model_flops_total": offset + flops_per_second * t,
            "timestamp": start + t,
            **extra,
        }
        for t in range(0, seconds + 1, every)
    ]


@pytest.fixture(scope="module")
def report_schema() -> jsonschema.Draft202012Validator:
    """The request body's JSON schema as /openapi.json publishes it."""
    agent = Agent(SimulatedBackend("1xNVIDIA H100 80GB HBM3"), AgentOptions())
    with serve(agent) as url:
        spec = httpx.get(url + "/openapi.json", timeout=30).json()
    schema = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def post(client: httpx.Client, body, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(
        "/v1/reports",
        content=json.dumps(body),
        headers={"content-type": "application/json", **(headers or {})},
    )


def job_state(client: httpx.Client) -> tuple[str, dict]:
    """Job lines of /metrics and /v1/jobs without ages and energy (which grow with time): what a rejected
    request must not change."""
    text = client.get("/metrics").text
    lines = sorted(
        line
        for line in text.splitlines()
        if line.startswith("mfu_job_") and not line.startswith("mfu_job_node_energy_joules_total")
    )
    jobs = client.get("/v1/jobs").json()
    for job in jobs["jobs"]:
        for rank in job["ranks"]:
            rank.pop("last_report_age_seconds")
            rank.pop("first_report_age_seconds")
    return "\n".join(lines), jobs


def test_known_rate_gives_mfu_within_one_percent(served):
    _, client = served
    rate = 0.4 * H100_SXM_BF16
    start = time.time() - 60
    for report in reports_at_rate("llm-1", 0, rate, start, 55, gpus=[2], dtype="bf16"):
        assert post(client, report).status_code == 202
    text = client.get("/metrics").text
    mfu = one(text, "mfu_job_mfu_ratio", job_id="llm-1", rank="0", gpu="2", dtype="bf16")
    assert mfu == pytest.approx(rate / H100_SXM_BF16, rel=0.01)
    assert one(text, "mfu_job_peak_flops", job_id="llm-1", gpu="2") == pytest.approx(H100_SXM_BF16)
    assert one(text, "mfu_job_model_flops_total", job_id="llm-1", gpu="2") == pytest.approx(rate * 55)


def test_dtype_selects_the_peak(served):
    _, client = served
    rate = 0.3 * H100_SXM_FP8
    for report in reports_at_rate("fp8-job", 0, rate, time.time() - 30, 30, gpus=[0], dtype="fp8"):
        assert post(client, report).status_code == 202
    text = client.get("/metrics").text
    assert one(text, "mfu_job_peak_flops", job_id="fp8-job", dtype="fp8") == pytest.approx(H100_SXM_FP8)
    assert one(text, "mfu_job_mfu_ratio", job_id="fp8-job") == pytest.approx(0.3, rel=0.01)


def test_counter_reset_is_a_restart_not_a_negative_rate(served):
    _, client = served
    rate = 0.5 * H100_SXM_BF16
    start = time.time() - 60
    before = reports_at_rate("restarts", 0, rate, start, 25, gpus=[1])
    # The job restarts at t=30: its cumulative counter starts again from the work done since (5 s worth).
    after = reports_at_rate("restarts", 0, rate, start + 30, 25, offset=rate * 5, gpus=[1])
    totals = []
    for report in before + after:
        assert post(client, report).status_code == 202
        totals.append(one(client.get("/metrics").text, "mfu_job_model_flops_total", job_id="restarts"))
    assert totals == sorted(totals), "the exported counter must never go down"
    text = client.get("/metrics").text
    assert one(text, "mfu_job_mfu_ratio", job_id="restarts") == pytest.approx(0.5, rel=0.01)
    assert totals[-1] == pytest.approx(rate * 25 + rate * (5 + 25))
    assert client.get("/v1/jobs").json()["jobs"][0]["ranks"][0]["restarts"] == 1


def test_rank_on_two_gpus_splits_its_work_and_job_mfu_sums(served):
    _, client = served
    rate = 0.45 * 2 * H100_SXM_BF16  # a rank driving two GPUs at 45% each
    for report in reports_at_rate(
        "tp2", 0, rate, time.time() - 40, 40, gpus=[0, "GPU-00000000-5157-4000-8000-000000000003"]
    ):
        assert post(client, report).status_code == 202
    text = client.get("/metrics").text
    per_gpu = values(text, "mfu_job_model_flops_total", job_id="tp2")
    assert len(per_gpu) == 2 and per_gpu[0] == pytest.approx(per_gpu[1])
    assert sum(per_gpu) == pytest.approx(rate * 40)
    # The PromQL job MFU: sum of the per-GPU rates over sum of the per-GPU peaks.
    peaks = values(text, "mfu_job_peak_flops", job_id="tp2")
    assert sum(peaks) == pytest.approx(2 * H100_SXM_BF16)
    assert sorted(values(text, "mfu_job_mfu_ratio", job_id="tp2")) == pytest.approx([0.45, 0.45], rel=0.01)
    assert client.get("/v1/jobs").json()["jobs"][0]["mfu"] == pytest.approx(0.45, rel=0.01)


def test_attribution_by_pid_then_local_rank(served, sim_backend: SimulatedBackend):
    agent, client = served
    sim_backend.set_processes(3, [(4242, 30 * 1024**3)])
    agent.sampler.sample_once()
    assert (
        post(
            client, {"job_id": "p", "rank": 0, "pid": 4242, "local_rank": 0, "model_flops_total": 1}
        ).status_code
        == 202
    )
    assert (
        post(
            client, {"job_id": "p", "rank": 1, "pid": 999, "local_rank": 1, "model_flops_total": 1}
        ).status_code
        == 202
    )
    text = client.get("/metrics").text
    assert one(text, "mfu_job_info", job_id="p", rank="0", attributed_by="pid") == 1
    assert values(text, "mfu_job_info", job_id="p", rank="0", gpu="3")
    assert values(text, "mfu_job_info", job_id="p", rank="1", gpu="1", attributed_by="local_rank")


def test_client_reports_reach_the_agent(served):
    from mfu_agent.client import Reporter

    _, client = served
    with Reporter(
        job_id="via-client",
        rank=3,
        local_rank=2,
        world_size=4,
        flops_per_step=1e12,
        tokens_per_step=512,
        url=str(client.base_url),
        interval=0.1,
    ) as reporter:
        for _ in range(25):
            reporter.step()
        assert reporter.flush()
        text = client.get("/metrics").text
    assert one(text, "mfu_job_model_flops_total", job_id="via-client", rank="3", gpu="2") == 25e12
    assert one(text, "mfu_job_tokens_total", job_id="via-client") == 25 * 512
    assert one(text, "mfu_job_step", job_id="via-client") == 25
    # Leaving the block closed the reporter: its final report made the agent drop the finished rank.
    assert reporter.stats["final_report"] == "delivered"
    assert values(client.get("/metrics").text, "mfu_job_info", job_id="via-client") == []


def test_batch_is_applied_whole(served):
    _, client = served
    batch = [{"job_id": "b", "rank": r, "gpus": [r], "model_flops_total": 10.0 * r} for r in range(4)]
    response = post(client, batch)
    assert response.status_code == 202 and response.json() == {"accepted": 4}
    assert len(values(client.get("/metrics").text, "mfu_job_info", job_id="b")) == 4


GOOD = {"job_id": "good-job", "rank": 0, "gpus": [0], "model_flops_total": 1e15}

BAD_INPUTS = [
    ("malformed JSON", b'{"job_id": "x", "rank": 0,', 400, "JSON"),
    ("not an object", [1, 2], 422, "reports[0]"),
    ("scalar body", "hello", 422, "body"),
    ("missing job_id", {"rank": 0, "model_flops_total": 1}, 422, "job_id"),
    ("missing counter", {"job_id": "j", "rank": 0}, 422, "model_flops_total"),
    ("rank as string", {**GOOD, "rank": "0"}, 422, "rank"),
    ("rank as bool", {**GOOD, "rank": True}, 422, "rank"),
    ("negative rank", {**GOOD, "rank": -1}, 422, "rank"),
    ("counter as string", {**GOOD, "model_flops_total": "1e15"}, 422, "model_flops_total"),
    ("negative counter", {**GOOD, "model_flops_total": -5}, 422, "model_flops_total"),
    ("negative tokens", {**GOOD, "tokens_total": -1}, 422, "tokens_total"),
    ("empty dtype map", {**GOOD, "model_flops_total": {}}, 422, "model_flops_total"),
    ("unknown dtype in map", {**GOOD, "model_flops_total": {"fp4": 1.0}}, 422, "model_flops_total"),
    ("negative amount in map", {**GOOD, "model_flops_total": {"fp8": -1.0}}, 422, "model_flops_total"),
    ("precision not in map", {**GOOD, "model_flops_total": {"fp8": 1.0}, "dtype": "bf16"}, 422, "dtype"),
    ("instance with spaces", {**GOOD, "instance": "a b"}, 422, "instance"),
    ("interval of zero", {**GOOD, "interval": 0}, 422, "interval"),
    (
        "NaN counter",
        b'{"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": NaN}',
        422,
        "model_flops_total",
    ),
    (
        "infinite counter",
        b'{"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": 1e999}',
        422,
        "model_flops_total",
    ),
    (
        "huge integer",
        b'{"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": 1' + b"0" * 400 + b"}",
        422,
        "model_flops_total",
    ),
    (
        "infinite timestamp",
        b'{"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": 1, "timestamp": Infinity}',
        422,
        "timestamp",
    ),
    ("job id with a space", {**GOOD, "job_id": "my job"}, 422, "job_id"),
    ("job id too long", {**GOOD, "job_id": "j" * 129}, 422, "job_id"),
    ("empty job id", {**GOOD, "job_id": ""}, 422, "job_id"),
    ("unknown dtype", {**GOOD, "dtype": "fp4"}, 422, "dtype"),
    ("GPU index that does not exist", {**GOOD, "gpus": [7]}, 422, "gpus"),
    (
        "GPU UUID that does not exist",
        {**GOOD, "gpus": ["GPU-ffffffff-0000-0000-0000-000000000000"]},
        422,
        "gpus",
    ),
    ("GPU given as garbage", {**GOOD, "gpus": ["sda1"]}, 422, "gpus"),
    ("empty gpus", {**GOOD, "gpus": []}, 422, "gpus"),
    (
        "local_rank past the GPUs",
        {"job_id": "j", "rank": 0, "local_rank": 4, "model_flops_total": 1},
        422,
        "local_rank",
    ),
    ("no way to attribute", {"job_id": "j", "rank": 0, "model_flops_total": 1}, 422, "gpus"),
    ("unknown field", {**GOOD, "model_flop_total": 1}, 422, "model_flop_total"),
    ("unknown label key", {**GOOD, "labels": {"team": "a"}}, 422, "labels"),
    ("17 GPUs", {**GOOD, "gpus": [0, 1, 2, 3] * 4 + [0]}, 422, "gpus"),
    (
        "label values over 512 in all",
        {**GOOD, "labels": {"pod": "p" * 253, "hostname": "h" * 253, "namespace": "n" * 7}},
        422,
        "labels",
    ),
    ("final as a string", {**GOOD, "final": "yes"}, 422, "final"),
    ("final as a number", {**GOOD, "final": 1}, 422, "final"),
    ("rank as a float", {**GOOD, "rank": 1.0}, 422, "rank"),
    ("step as a float", {**GOOD, "step": 3.5}, 422, "step"),
    ("counter as bool", {**GOOD, "model_flops_total": True}, 422, "model_flops_total"),
    ("amount in map as bool", {**GOOD, "model_flops_total": {"bf16": False}}, 422, "model_flops_total.bf16"),
    ("tokens as string", {**GOOD, "tokens_total": "5"}, 422, "tokens_total"),
    ("GPU given as bool", {**GOOD, "gpus": [True]}, 422, "gpus[0]"),
    ("label value as number", {**GOOD, "labels": {"pod": 5}}, 422, "labels.pod"),
    ("timestamp of zero", {**GOOD, "timestamp": 0}, 422, "timestamp"),
    ("null rank", {**GOOD, "rank": None}, 422, "rank"),
    ("label value with spaces", {**GOOD, "labels": {"pod": "a b"}}, 422, "labels.pod"),
    ("empty batch", [], 422, "reports"),
    (
        "batch with one bad report",
        [GOOD, {**GOOD, "rank": 1, "model_flops_total": -1}],
        422,
        "reports[1].model_flops_total",
    ),
    (
        "batch with a float rank",
        [GOOD, {**GOOD, "rank": 1.5}, {**GOOD, "rank": 2}],
        422,
        "reports[1].rank",
    ),
    ("batch with a scalar", [GOOD, "x"], 422, "reports[1]"),
    ("batch over the cap", [GOOD] * 1001, 413, "reports"),
    ("body over 1 MiB", {**GOOD, "labels": {"pod": "p" * 200}, "pad": "x" * (1024 * 1024)}, 413, "bytes"),
]


@pytest.mark.parametrize(
    ("body", "status", "names"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_refused_and_changes_nothing(served, body, status, names):
    _, client = served
    assert post(client, [{**GOOD, "job_id": "existing", "rank": 5}]).status_code == 202
    before = job_state(client)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/reports", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert names in message or names == response.json().get("field"), message
    assert job_state(client) == before
    rejected = one(
        client.get("/metrics").text,
        "mfu_agent_reports_total",
        outcome={413: "too_large"}.get(status, "invalid"),
    )
    assert rejected == 1


# Refused by the agent for what the body's JSON schema (in /openapi.json) cannot say: which GPUs exist
# on the node, the sum of the label values, a precision among the FLOPs' dtypes; and an integer written
# as 1.0, which JSON Schema counts as an integer while the agent wants it written as one.
SCHEMA_CANNOT_SAY = {
    "rank as a float",
    "precision not in map",
    "GPU index that does not exist",
    "GPU UUID that does not exist",
    "local_rank past the GPUs",
    "no way to attribute",
    "label values over 512 in all",
}


@pytest.mark.parametrize(
    "body",
    [case[1] for case in BAD_INPUTS if case[0] not in SCHEMA_CANNOT_SAY and not isinstance(case[1], bytes)],
    ids=[
        case[0] for case in BAD_INPUTS if case[0] not in SCHEMA_CANNOT_SAY and not isinstance(case[1], bytes)
    ],
)
def test_the_published_schema_refuses_what_the_agent_refuses(report_schema, body):
    assert not report_schema.is_valid(body)


FULL = {
    **GOOD,
    "local_rank": 0,
    "world_size": 8,
    "pid": 4242,
    "instance": "inst-1",
    "interval": 5,
    "dtype": "bf16",
    "hardware_flops_total": 2e15,
    "tokens_total": 100,
    "samples_total": 4,
    "step": 1,
    "timestamp": 1.7e9,
    "labels": {"pod": "p-0"},
    "final": False,
    "start_step": 0,
    "phase_seconds_total": {"checkpoint": 1.5, "own_phase": 0},
}
ODD_VALUES = [None, True, 0, -1, 1.5, 2**70, "", "x", "GPU-x", [], [0, "GPU-x"], {}, {"bf16": 1}, {"pod": []}]


def test_every_odd_value_in_every_field_is_taken_or_refused_naming_that_field(served):
    """Each field of a full report (alone, and as the second report of a batch) given each of a set of
    odd JSON values: the answer is 202 or 4xx, never 5xx, and a 422 names the field it was about."""
    _, client = served
    for name in FULL:
        for value in ODD_VALUES:
            for batch in (False, True):
                report = {**FULL, name: value, "rank": 1 if name != "rank" else value}
                body = [FULL, report] if batch else report
                response = post(client, body)
                assert response.status_code in (202, 409, 422), (name, value, response.text)
                if response.status_code == 422:
                    where = ("reports[1]." if batch else "") + name
                    assert response.json()["field"].startswith(where), (name, value, response.text)
                    assert response.json()["error"].startswith(where), (name, value, response.text)


def test_strict_validation_still_takes_what_json_allows(served, report_schema):
    _, client = served
    timestamp = int(time.time()) - 10
    bodies = [
        # Integers where numbers are expected; nulls for optional fields.
        {**GOOD, "rank": 0, "model_flops_total": 10**15, "timestamp": timestamp, "step": None, "pid": None},
        {**GOOD, "rank": 1, "model_flops_total": {"fp8": 2 * 10**15, "bf16": 0}, "tokens_total": 7},
    ]
    for body in bodies:
        assert report_schema.is_valid(body)
        assert post(client, body).status_code == 202
    # A batch after whitespace, and a body behind a UTF-8 byte-order mark (Python's parser takes both).
    batch = b" \r\n\t" + json.dumps([{**GOOD, "rank": 2, "model_flops_total": 3}]).encode()
    bom = b"\xef\xbb\xbf" + json.dumps({**GOOD, "rank": 3, "model_flops_total": 4}).encode()
    for content in (batch, bom):
        response = client.post("/v1/reports", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
    text = client.get("/metrics").text
    assert one(text, "mfu_job_model_flops_total", job_id="good-job", rank="0") == 1e15
    assert one(text, "mfu_job_model_flops_total", job_id="good-job", rank="1", dtype="fp8") == 2e15
    assert one(text, "mfu_job_model_flops_total", job_id="good-job", rank="2") == 3
    assert one(text, "mfu_job_model_flops_total", job_id="good-job", rank="3") == 4
    assert one(text, "mfu_job_tokens_total", job_id="good-job", rank="1") == 7


def test_bearer_token(tmp_path, sim_backend):
    agent = Agent(sim_backend, AgentOptions(report_token="s3cret"))
    with serve(agent) as url, httpx.Client(base_url=url) as client:
        before = job_state(client)
        assert post(client, GOOD).status_code == 401
        assert post(client, GOOD).headers["www-authenticate"] == "Bearer"
        assert post(client, GOOD, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert job_state(client) == before
        response = client.post("/v1/reports", json=GOOD, headers={"authorization": "Bearer s3cret"})
        assert response.status_code == 202
        assert one(client.get("/metrics").text, "mfu_agent_reports_total", outcome="unauthorized") == 3


def test_capacity_refuses_new_ranks_and_keeps_existing(sim_backend):
    agent = Agent(sim_backend, AgentOptions(max_ranks=2))
    with serve(agent) as url, httpx.Client(base_url=url) as client:
        assert post(client, [{**GOOD, "rank": 0}, {**GOOD, "rank": 1}]).status_code == 202
        before = job_state(client)
        response = post(client, {**GOOD, "rank": 2})
        assert response.status_code == 429 and "at most 2" in response.json()["error"]
        assert job_state(client) == before
        assert post(client, {**GOOD, "rank": 1, "model_flops_total": 2e15}).status_code == 202
        assert one(client.get("/metrics").text, "mfu_job_model_flops_total", rank="1") == 2e15
        assert one(client.get("/metrics").text, "mfu_agent_reports_total", outcome="over_capacity") == 1


def test_final_report_drops_the_rank_at_once(served):
    _, client = served
    assert post(client, [{**GOOD, "rank": 0, "instance": "a"}, {**GOOD, "rank": 1}]).status_code == 202
    assert values(client.get("/metrics").text, "mfu_job_info", job_id="good-job", rank="0")
    response = post(client, {**GOOD, "rank": 0, "instance": "a", "model_flops_total": 3e15, "final": True})
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    text = client.get("/metrics").text
    assert [name for (name, labels) in samples(text) if ("rank", "0") in labels] == []
    assert one(text, "mfu_job_model_flops_total", job_id="good-job", rank="1") == 1e15
    assert one(text, "mfu_agent_rank_evictions_total", reason="final") == 1
    assert one(text, "mfu_agent_tracked_ranks") == 1
    assert [r["rank"] for r in client.get("/v1/jobs").json()["jobs"][0]["ranks"]] == [1]
    # Another sender cannot end a rank it does not own.
    response = post(client, {**GOOD, "rank": 1, "instance": "intruder", "final": True})
    assert response.status_code == 409 and one(client.get("/metrics").text, "mfu_agent_tracked_ranks") == 1


def test_jobs_endpoint(served):
    _, client = served
    rate = 0.25 * H100_SXM_BF16
    start = time.time() - 30
    for report in reports_at_rate(
        "j1",
        0,
        rate,
        start,
        30,
        gpus=[0],
        step=7,
        tokens_total=1000,
        labels={"pod": "trainer-0", "namespace": "ml"},
    ):
        assert post(client, report).status_code == 202
    (job,) = client.get("/v1/jobs").json()["jobs"]
    (rank,) = job["ranks"]
    assert job["job_id"] == "j1" and job["mfu"] == pytest.approx(0.25, rel=0.01)
    assert rank["gpus"][0]["index"] == 0 and rank["peak_flops"] == pytest.approx(H100_SXM_BF16)
    assert rank["step"] == 7 and rank["labels"] == {"namespace": "ml", "pod": "trainer-0"}
    assert rank["tokens_per_second"] == 0.0  # tokens_total did not move
    assert 0 <= rank["last_report_age_seconds"] < 600


def test_unknown_peak_is_said_not_guessed(tmp_path):
    agent = Agent(SimulatedBackend("1xNVIDIA Imaginary X9"), AgentOptions())
    with serve(agent) as url, httpx.Client(base_url=url) as client:
        for report in reports_at_rate("x", 0, 1e14, time.time() - 30, 30, gpus=[0]):
            assert post(client, report).status_code == 202
        text = client.get("/metrics").text
        assert one(text, "mfu_job_peak_flops_unknown", job_id="x", model="NVIDIA Imaginary X9") == 1
        assert values(text, "mfu_job_mfu_ratio") == []
        assert values(text, "mfu_job_peak_flops") == []
        assert client.get("/v1/jobs").json()["jobs"][0]["ranks"][0]["mfu"] is None


def test_peak_overrides_apply(tmp_path):
    agent = Agent(
        SimulatedBackend("1xNVIDIA Imaginary X9"),
        AgentOptions(peak_overrides={"NVIDIA Imaginary X9": {"bf16": 5e14}}),
    )
    with serve(agent) as url, httpx.Client(base_url=url) as client:
        for report in reports_at_rate("x", 0, 1e14, time.time() - 30, 30, gpus=[0]):
            assert post(client, report).status_code == 202
        text = client.get("/metrics").text
        assert one(text, "mfu_job_mfu_ratio", job_id="x") == pytest.approx(0.2, rel=0.01)
        assert one(text, "mfu_gpu_peak_flops", gpu="0", dtype="bf16") == 5e14
