"""Health, readiness, the GPU snapshot as JSON, and OpenAPI."""

from __future__ import annotations

import httpx

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
