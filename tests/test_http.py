"""Health, readiness, the GPU snapshot as JSON, and OpenAPI."""

from __future__ import annotations

import httpx
import jsonschema

from mfu_agent.agent import Agent
from mfu_agent.app import create_app


def test_health_and_readiness(served):
    agent, client = served
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_not_ready_before_the_first_sample(agent: Agent):
    app = create_app(agent, manage_agent=False)
    transport = httpx.ASGITransport(app=app)

    async def ask():
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return (
                (await client.get("/readyz")).status_code,
                (await client.get("/v1/gpus")).status_code,
                (await client.get("/healthz")).status_code,
            )

    import asyncio

    assert asyncio.run(ask()) == (503, 503, 200)


def test_gpus_json(served, sim_backend):
    agent, client = served
    sim_backend.set_throttled(2)
    agent.sampler.sample_once()
    body = client.get("/v1/gpus").json()
    assert body["backend"] == "simulated" and len(body["gpus"]) == 4
    gpu = body["gpus"][2]
    assert gpu["index"] == 2 and gpu["uuid"].startswith("GPU-") and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert "hw_thermal_slowdown" in gpu["clock_event_reasons"]
    assert 0 <= gpu["activity"]["sm_active"] <= 1


def test_openapi_lists_every_endpoint(served):
    _, client = served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/metrics", "/healthz", "/readyz", "/v1/gpus", "/v1/reports", "/v1/jobs"} <= set(paths)
    assert "post" in paths["/v1/reports"]


REPORT_FIELDS = {
    "job_id", "rank", "local_rank", "world_size", "pid", "gpus", "instance", "interval", "dtype",
    "model_flops_total", "hardware_flops_total", "tokens_total", "samples_total", "step", "timestamp",
    "labels", "final", "start_step", "phase_seconds_total",
}  # fmt: skip


def test_openapi_describes_the_report_body_and_its_example_is_accepted(served):
    _, client = served
    operation = client.get("/openapi.json").json()["paths"]["/v1/reports"]["post"]
    assert operation["requestBody"]["required"] is True
    media = operation["requestBody"]["content"]["application/json"]
    schema = media["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    report, batch = schema["anyOf"]  # one report, or a batch of them
    assert set(report["properties"]) == REPORT_FIELDS
    assert set(report["required"]) == {"job_id", "rank", "model_flops_total"}
    assert report["additionalProperties"] is False
    assert batch["type"] == "array" and batch["items"] == report
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)
    validator = jsonschema.Draft202012Validator(schema)
    example = media["example"]
    assert report["examples"] == [example]
    validator.validate(example)
    validator.validate([{**example, "rank": 1}, {**example, "rank": 2}])
    # The published example is a report the agent takes, alone and in a batch.
    assert client.post("/v1/reports", json=example).status_code == 202
    response = client.post("/v1/reports", json=[{**example, "rank": 1}, {**example, "rank": 2}])
    assert response.status_code == 202 and response.json() == {"accepted": 2}
