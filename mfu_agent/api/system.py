"""/metrics, health, readiness and the GPU snapshot as JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..attribution.owners import Attributed
from ..jobs.rollup import per_gpu
from ..metrics.exposition import stream

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics (text format, or OpenMetrics when asked for)")
def metrics(request: Request) -> Response:
    # Streamed a few families at a time: a scrape never holds the whole page (metrics/exposition.py).
    chunks, content_type = stream(request.app.state.agent.registry, request.headers.get("accept", ""))
    return StreamingResponse(chunks, media_type=content_type)


@router.get("/healthz", summary="Liveness: the process is up", response_class=PlainTextResponse)
def healthz() -> str:
    return "ok\n"


@router.get(
    "/readyz",
    summary="Readiness: a fresh GPU snapshot exists and NVML answers",
    response_class=PlainTextResponse,
)
def readyz(request: Request) -> Response:
    reason = request.app.state.agent.readiness()
    if not reason:
        return PlainTextResponse("ready\n")
    return PlainTextResponse(reason + "\n", status_code=503)


@router.get("/v1/gpus", summary="The latest GPU snapshot as JSON")
def gpus(request: Request) -> Any:
    agent = request.app.state.agent
    snapshot = agent.snapshot()  # as exported: GPUs down once it is stale
    if snapshot is None:
        return JSONResponse({"detail": "no GPU sample yet"}, status_code=503)
    owners = agent.attribution.of(snapshot)
    mfu_by_uuid = {uuid: f.utilisation for uuid, f in per_gpu(agent.jobs.views(), "model_flops").items()}
    return {
        "taken_at": snapshot.taken_at,
        "driver_version": snapshot.driver_version,
        "backend": snapshot.backend,
        "sample_duration_seconds": snapshot.sample_duration_seconds,
        "nvml_up": snapshot.nvml_up,
        "unavailable_reason": snapshot.unavailable_reason,
        "gpus": [_gpu_json(g, owners, mfu_by_uuid) for g in snapshot.gpus],
    }


def _gpu_json(gpu: Any, owners: Attributed, mfu_by_uuid: dict[str, float]) -> dict[str, Any]:
    data = dataclasses.asdict(gpu)
    for process in data.get("processes") or ():
        process.update(owners.process(gpu.uuid, process["pid"]).as_dict())
    identity = data.pop("identity")
    reasons = data.get("clock_event_reasons")
    data["clock_event_reasons"] = sorted(reasons) if reasons is not None else None
    # MFU of the device, every reporting rank and dtype on it, as mfu_gpu_mfu_ratio: None (null) while no
    # rank reports on it, a rank on it has no figure yet, or it is a GPU in MIG mode (see its MIG devices).
    data["mfu"] = None if gpu.mig_mode or not gpu.up else mfu_by_uuid.get(gpu.uuid)
    return {**identity, **data}
