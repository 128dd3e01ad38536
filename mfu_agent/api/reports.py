"""POST /v1/reports (training jobs report cumulative FLOPs) and GET /v1/jobs."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import ClientDisconnect

from ..attribution.owners import Attributed
from ..jobs.registry import RankView, ReportRejected
from ..jobs.rollup import peak_weighted, per_gpu
from ..metrics.jobs import rank_owner
from .models import BATCH, MAX_BATCH, ONE, Invalid, request_body_schema, to_data

MAX_BODY_BYTES = 1024 * 1024
# Report bodies read at once (each buffers up to MAX_BODY_BYTES); more get 429 with Retry-After.
MAX_REPORTS_IN_FLIGHT = 32
_JSON_WHITESPACE = b" \t\n\r"

router = APIRouter()


def _error(
    status: int,
    outcome: str,
    agent: Any,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    agent.count_reports(outcome, 1)
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


_TYPE_TAG_PREFIXES = ("function-", "constrained-", "dict[", "list[", "literal[")
_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "dict", "list", "[key]"})


def _is_type_tag(part: str) -> bool:
    """Pydantic names union branches and validators in an error's location; they are not fields."""
    return part.startswith(_TYPE_TAG_PREFIXES) or part in _TYPE_TAGS


def _field_path(loc: tuple[Any, ...], batch: bool) -> str:
    path = "reports" if batch else ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (isinstance(part, str) and _is_type_tag(part)):
            path += ("." if path else "") + str(part)
    return path or "body"


def _message(error: ErrorDetails, batch: bool) -> str:
    where = _field_path(error["loc"], batch)
    if error["type"] == "model_type" and len(error["loc"]) <= 1:
        return f"{where}: a report must be a JSON object"
    return f"{where}: {error['msg']}"


@router.post(
    "/v1/reports",
    status_code=202,
    summary="Report cumulative FLOPs of one rank, or a batch",
    openapi_extra={"requestBody": request_body_schema()},
)
async def post_reports(request: Request) -> JSONResponse:
    agent = request.app.state.agent
    token = agent.report_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(
                401,
                "unauthorized",
                agent,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return _error(413, "too_large", agent, f"body over {MAX_BODY_BYTES} bytes")
    state = request.app.state
    in_flight = getattr(state, "reports_in_flight", 0)
    if in_flight >= MAX_REPORTS_IN_FLIGHT:
        return _error(
            429,
            "over_capacity",
            agent,
            f"{in_flight} reports are being received already; retry in a second",
            headers={"Retry-After": "1"},
        )
    state.reports_in_flight = in_flight + 1
    try:
        body = await _read_body(request)
    except ClientDisconnect:  # gone (or cut off by the server's request deadline): nobody to answer
        return JSONResponse({"error": "the client went away before sending the whole body"}, 400)
    finally:
        state.reports_in_flight -= 1
    if body is None:
        return _error(413, "too_large", agent, f"body over {MAX_BODY_BYTES} bytes")
    batch = body.lstrip(_JSON_WHITESPACE)[:1] == b"["
    try:
        # pydantic-core parses and validates the bytes in one pass: the fast path for good reports.
        items = BATCH.validate_json(body) if batch else [ONE.validate_json(body)]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors[0]["type"] != "json_invalid":
            return _refusal(agent, batch, errors)
        # Python's parser takes what pydantic-core's refuses only for its form (nested past 200 levels,
        # a byte-order mark, UTF-16), or says in its own words why the body is not JSON.
        try:
            payload = json.loads(body)
        except RecursionError:
            message = "body is nested too deeply: a report nests JSON arrays and objects 3 deep"
            return _error(400, "invalid", agent, message)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "invalid", agent, f"body is not valid JSON: {exc}")
        batch = isinstance(payload, list)
        try:
            items = BATCH.validate_python(payload) if batch else [ONE.validate_python(payload)]
        except ValidationError as exc:
            return _refusal(agent, batch, exc.errors(include_url=False, include_input=False))
    reports = []
    for i, item in enumerate(items):
        try:
            reports.append(to_data(item, f"reports[{i}]" if batch else ""))
        except Invalid as exc:
            return _error(422, "invalid", agent, str(exc), exc.field)
    try:
        accepted = agent.jobs.apply(reports, agent.sampler.latest)
    except ReportRejected as exc:
        outcome = {429: "over_capacity", 409: "conflict"}.get(exc.status, "invalid")
        return _error(exc.status, outcome, agent, exc.message, exc.field)
    agent.count_reports("accepted", accepted)
    return JSONResponse({"accepted": accepted}, status_code=202)


def _refusal(agent: Any, batch: bool, errors: list[ErrorDetails]) -> JSONResponse:
    """413 for a batch over MAX_BATCH, else 422 naming every field that is wrong, the first in `field`
    (`reports[3].model_flops_total: Input should be greater than or equal to 0`)."""
    whole = [e for e in errors if not e["loc"]]
    if batch and whole and whole[0]["type"] == "too_short":
        return _error(422, "invalid", agent, "empty batch: send at least one report", "reports")
    if batch and whole and whole[0]["type"] == "too_long":
        count = whole[0].get("ctx", {}).get("actual_length", "more")
        return _error(413, "too_large", agent, f"batch of {count} reports; at most {MAX_BATCH}", "reports")
    message = "; ".join(_message(e, batch) for e in errors)
    return _error(422, "invalid", agent, message, _field_path(errors[0]["loc"], batch))


async def _read_body(request: Request) -> bytearray | None:
    """The body, or None once it passes MAX_BODY_BYTES (the rest is left to api/drain.py)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


@router.get("/v1/jobs", summary="Active jobs: ranks, GPUs, MFU, HFU, tokens/s, last report age")
def get_jobs(request: Request) -> dict[str, Any]:
    agent = request.app.state.agent
    now = time.time()
    views = agent.jobs.views()
    owners = agent.attributed()
    by_job: dict[str, list[RankView]] = {}
    for v in views:
        by_job.setdefault(v.job_id, []).append(v)
    jobs = []
    for job_id, ranks in by_job.items():
        jobs.append(
            {
                "job_id": job_id,
                "mfu": peak_weighted(per_gpu(ranks, "model_flops").values())[0],
                "hfu": peak_weighted(per_gpu(ranks, "hardware_flops").values())[0],
                "ranks": [_rank_json(v, now, owners) for v in ranks],
            }
        )
    return {"jobs": jobs}


def _rank_json(v: RankView, now: float, owners: Attributed) -> dict[str, Any]:
    rates = v.rates
    return {
        "rank": v.rank,
        "local_rank": v.local_rank,
        "world_size": v.world_size,
        "pid": v.pid,
        "instance": v.instance,
        "dtype": v.dtype,
        "attributed_by": v.attributed_by,
        "attribution": v.attribution_detail,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "model": g.model,
                "peak_flops": dict(g.peaks),
                "mfu": v.gpu_utilisation(g, "model_flops"),
            }
            for g in v.gpus
        ],
        "peak_flops": v.peak_flops,
        "mfu": v.utilisation("model_flops"),
        "hfu": v.utilisation("hardware_flops"),
        "model_flops_total": {d: v.totals[("model_flops", d)] for d in v.dtypes("model_flops")},
        "model_flops_per_second": v.rate("model_flops"),
        "tokens_per_second": v.rate("tokens"),
        "rate_span_seconds": rates.span_seconds if rates else None,
        "rate_basis": rates.basis if rates else None,
        "step": v.step,
        "restarts": v.restarts,
        "labels": dict(v.labels),
        "owner": rank_owner(v, owners).as_dict(),
        "first_report_age_seconds": max(0.0, now - v.first_received),
        "last_report_age_seconds": max(0.0, now - v.last_received),
    }
