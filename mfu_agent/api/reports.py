"""POST /v1/reports (training jobs report cumulative FLOPs) and GET /v1/jobs."""

from __future__ import annotations

import hmac
import json
import math
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
)
from starlette.requests import ClientDisconnect

from ..attribution.owners import Attributed
from ..jobs.registry import RankView, ReportData, ReportRejected
from ..jobs.rollup import peak_weighted, per_gpu
from ..metrics.jobs import rank_owner
from ..specs import DTYPES

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 1000
MAX_GPUS = 16  # per report: no process drives more; each GPU adds series (docs/metrics.md#cardinality)
# Report bodies read at once (each buffers up to MAX_BODY_BYTES); more get 429 with Retry-After.
MAX_REPORTS_IN_FLIGHT = 32
JOB_ID_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"
LABEL_KEYS = ("pod", "namespace", "slurm_job_id", "hostname")
MAX_LABEL_CHARACTERS = 512  # all label values of a report together (Kubernetes names: 253 + 63 + ...)

router = APIRouter()


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise ValueError("must be a finite number (NaN, infinity and numbers past 1.8e308 are refused)")
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)]
Index = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=1_000_000)]
Uuid = Annotated[str, StringConstraints(pattern=r"^(GPU|MIG)-[A-Za-z0-9-]{1,80}$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,253}$")]
Dtype = Literal["fp8", "bf16", "fp16", "tf32", "fp32", "fp64", "int8"]
FlopsByDtype = Annotated[dict[Dtype, Count], Field(min_length=1, max_length=7)]


class ReportIn(BaseModel):
    """One rank's cumulative counters. Unknown fields are refused, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")

    job_id: Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)] = Field(
        description="1..128 characters of [A-Za-z0-9._:/-]"
    )
    rank: Index
    local_rank: Index | None = None
    world_size: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=1_000_000)] | None = None
    pid: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=2**32 - 1)] | None = None
    gpus: (
        Annotated[
            list[Annotated[int, BeforeValidator(_integer), Field(ge=0, le=1023)] | Uuid],
            Field(min_length=1, max_length=MAX_GPUS),
        ]
        | None
    ) = None
    instance: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = Field(
        default=None, description="the sender's random per-Reporter id: who owns this (job_id, rank)"
    )
    interval: Annotated[float, BeforeValidator(_number), Field(gt=0, le=3600)] | None = Field(
        default=None, description="seconds between the sender's reports (for rank hand-over)"
    )
    dtype: Dtype | None = Field(
        default=None,
        description="number form: the FLOPs' dtype (default bf16); object form: the rank's precision "
        "(default: the first of fp8, bf16, fp16, tf32, fp32, fp64, int8 among its keys)",
    )
    model_flops_total: Count | FlopsByDtype
    hardware_flops_total: Count | FlopsByDtype | None = None
    tokens_total: Count | None = None
    samples_total: Count | None = None
    step: Annotated[int, BeforeValidator(_integer), Field(ge=0, le=2**63 - 1)] | None = Field(
        default=None, description="last optimizer step, >= 0"
    )
    timestamp: Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="sender's Unix time (seconds) when the counters had these values"
    )
    labels: dict[Literal["pod", "namespace", "slurm_job_id", "hostname"], LabelValue] | None = None
    final: StrictBool | None = Field(
        default=None,
        description="true on the sender's last report (Reporter.close()): its counters are applied, then "
        "the rank is dropped at once",
    )

    @field_validator("labels")
    @classmethod
    def _labels_size(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        size = sum(len(value) for value in (labels or {}).values())
        if size > MAX_LABEL_CHARACTERS:
            raise ValueError(
                f"the label values add up to {size} characters; at most {MAX_LABEL_CHARACTERS} in all"
            )
        return labels

    def to_data(self) -> ReportData:
        """Raises ValueError (a message naming the field) for a dtype that contradicts the FLOPs."""
        if isinstance(self.model_flops_total, dict):
            model = dict(self.model_flops_total)
            precision = self.dtype or next(d for d in DTYPES if d in model)  # fastest first
            if precision not in model:
                raise ValueError(
                    f"dtype: {precision!r} is not one of the dtypes in model_flops_total "
                    f"({', '.join(sorted(model))}); the precision must be one the rank computes in"
                )
        else:
            precision = self.dtype or "bf16"
            model = {precision: self.model_flops_total}
        hardware = self.hardware_flops_total
        return ReportData(
            job_id=self.job_id,
            rank=self.rank,
            model_flops=model,
            dtype=precision,
            hardware_flops=(dict(hardware) if isinstance(hardware, dict) else {precision: hardware})
            if hardware is not None
            else None,
            local_rank=self.local_rank,
            world_size=self.world_size,
            pid=self.pid,
            instance=self.instance,
            interval=self.interval,
            gpus=tuple(self.gpus) if self.gpus is not None else None,
            tokens_total=self.tokens_total,
            samples_total=self.samples_total,
            step=self.step,
            timestamp=self.timestamp,
            labels=tuple(sorted((self.labels or {}).items())),
            final=bool(self.final),
        )


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


def _field_path(loc: tuple[Any, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (isinstance(part, str) and _is_type_tag(part)):
            path += ("." if path else "") + str(part)
    return path


@router.post("/v1/reports", status_code=202, summary="Report cumulative FLOPs of one rank, or a batch")
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
    try:
        payload = json.loads(body)
    except RecursionError:
        return _error(
            400, "invalid", agent, "body is nested too deeply: a report nests JSON arrays and objects 3 deep"
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, "invalid", agent, f"body is not valid JSON: {exc}")
    batch = isinstance(payload, list)
    items = payload if batch else [payload]
    if batch and not items:
        return _error(422, "invalid", agent, "empty batch: send at least one report", "reports")
    if len(items) > MAX_BATCH:
        return _error(
            413, "too_large", agent, f"batch of {len(items)} reports; at most {MAX_BATCH}", "reports"
        )
    reports = []
    for i, item in enumerate(items):
        prefix = f"reports[{i}]" if batch else ""
        if not isinstance(item, dict):
            return _error(
                422, "invalid", agent, f"{prefix or 'body'}: a report must be a JSON object", prefix or "body"
            )
        try:
            report = ReportIn.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = _field_path(first["loc"], prefix)
            messages = "; ".join(f"{_field_path(e['loc'], prefix)}: {e['msg']}" for e in exc.errors())
            return _error(422, "invalid", agent, messages, field)
        try:
            reports.append(report.to_data())
        except ValueError as exc:
            where = f"{prefix}." if prefix else ""
            return _error(422, "invalid", agent, f"{where}{exc}", f"{where}dtype")
    try:
        accepted = agent.jobs.apply(reports, agent.sampler.latest)
    except ReportRejected as exc:
        outcome = {429: "over_capacity", 409: "conflict"}.get(exc.status, "invalid")
        return _error(exc.status, outcome, agent, exc.message, exc.field)
    agent.count_reports("accepted", accepted)
    return JSONResponse({"accepted": accepted}, status_code=202)


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
