"""The body of POST /v1/reports as a declared model: the JSON schema /openapi.json shows, and the strict
validation of the raw bytes (pydantic-core parses and checks the JSON in one pass, no Python per field).

Strict means no coercion: a number is a JSON number (an integer is taken where a float is expected, a
bool never), a string is a JSON string, and NaN, infinity and numbers past 1.8e308 are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from ..jobs.goodput import MAX_PHASES, PHASE_NAME_PATTERN
from ..jobs.registry import ReportData
from ..specs import DTYPES

MAX_BATCH = 1000
MAX_GPUS = 16  # per report: no process drives more; each GPU adds series (docs/metrics.md#cardinality)
JOB_ID_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"
LABEL_KEYS = ("pod", "namespace", "slurm_job_id", "hostname")
MAX_LABEL_CHARACTERS = 512  # all label values of a report together (Kubernetes names: 253 + 63 + ...)

Count = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Index = Annotated[int, Field(ge=0, le=1_000_000)]
GpuIndex = Annotated[int, Field(ge=0, le=1023)]
Uuid = Annotated[str, StringConstraints(pattern=r"^(GPU|MIG)-[A-Za-z0-9-]{1,80}$")]
LabelKey = Literal["pod", "namespace", "slurm_job_id", "hostname"]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,253}$")]
Dtype = Literal["fp8", "bf16", "fp16", "tf32", "fp32", "fp64", "int8"]
FlopsByDtype = Annotated[dict[Dtype, Count], Field(min_length=1, max_length=7)]
PhaseName = Annotated[str, StringConstraints(pattern=PHASE_NAME_PATTERN)]
Step = Annotated[int, Field(ge=0, le=2**63 - 1)]

EXAMPLE = {
    "job_id": "llama-70b-run7",
    "rank": 0,
    "local_rank": 0,
    "world_size": 64,
    "instance": "9c1e0f6a2b7d4e11",
    "interval": 5.0,
    "dtype": "bf16",
    "model_flops_total": 3.1e18,
    "tokens_total": 4.2e6,
    "step": 512,
    "timestamp": 1795000000.5,
    "labels": {"pod": "trainer-0", "namespace": "ml"},
}


class ReportIn(BaseModel):
    """One rank's cumulative counters. Unknown fields are refused, so a typo never goes unnoticed."""

    model_config = ConfigDict(
        extra="forbid", strict=True, title="Report", json_schema_extra={"examples": [EXAMPLE]}
    )

    job_id: Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)] = Field(
        description="the job, the same on every rank and node: 1..128 characters of [A-Za-z0-9._:/-]"
    )
    rank: Index = Field(description="the global rank")
    local_rank: Index | None = Field(
        default=None, description="the rank on this node; the last resort for finding its GPU"
    )
    world_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    pid: Annotated[int, Field(ge=1, le=2**32 - 1)] | None = Field(
        default=None, description="the training process, looked up in NVML's process list to find its GPU"
    )
    gpus: Annotated[list[GpuIndex | Uuid], Field(min_length=1, max_length=MAX_GPUS)] | None = Field(
        default=None, description="the GPUs the rank uses (indices or GPU-/MIG- UUIDs); overrides pid"
    )
    instance: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = Field(
        default=None, description="the sender's random per-Reporter id: who owns this (job_id, rank)"
    )
    interval: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None, description="seconds between the sender's reports (for rank hand-over)"
    )
    dtype: Dtype | None = Field(
        default=None,
        description="number form: the FLOPs' dtype (default bf16); object form: the rank's precision "
        "(default: the first of fp8, bf16, fp16, tf32, fp32, fp64, int8 among its keys)",
    )
    model_flops_total: Count | FlopsByDtype = Field(
        description="model FLOPs done by this rank since the sender started: a number, or {dtype: number}"
    )
    hardware_flops_total: Count | FlopsByDtype | None = Field(
        default=None, description="FLOPs including recomputation (for HFU); a number counts in dtype"
    )
    tokens_total: Count | None = None
    samples_total: Count | None = None
    step: Step | None = Field(default=None, description="last optimizer step, >= 0")
    start_step: Step | None = Field(
        default=None,
        description="the step this sender resumed from (the checkpoint it restored; 0 for a fresh start); "
        "needs step, at most step. A new sender resuming below the highest step counts lost work",
    )
    phase_seconds_total: Annotated[dict[PhaseName, Count], Field(max_length=MAX_PHASES)] | None = Field(
        default=None,
        description="seconds the sender spent in each phase it marked, since it started: checkpoint, eval, "
        f"data_wait, other, or names of its own ({PHASE_NAME_PATTERN}); at most {MAX_PHASES} names",
    )
    timestamp: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="sender's Unix time (seconds) when the counters had these values"
    )
    labels: dict[LabelKey, LabelValue] | None = Field(
        default=None, description=f"extra attribution; {MAX_LABEL_CHARACTERS} characters of values in all"
    )
    final: bool | None = Field(
        default=None,
        description="true on the sender's last report (Reporter.close()): its counters are applied, then "
        "the rank is dropped at once",
    )


class Invalid(ValueError):
    """A report that passed the schema but not a check across fields; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def to_data(report: ReportIn, prefix: str = "") -> ReportData:
    """The registry's form of a validated report. Raises Invalid for what one field's schema cannot say:
    label values over MAX_LABEL_CHARACTERS in all, a precision that is not among the FLOPs' dtypes.
    (On the ingestion path for every report: bench/ingest.py times it.)"""
    labels = report.labels
    if labels:
        size = sum(map(len, labels.values()))
        if size > MAX_LABEL_CHARACTERS:
            raise Invalid(
                f"{prefix}.labels" if prefix else "labels",
                f"the label values add up to {size} characters; at most {MAX_LABEL_CHARACTERS} in all",
            )
        label_pairs = tuple(sorted(labels.items()))
    else:
        label_pairs = ()
    flops, precision, hardware = report.model_flops_total, report.dtype, report.hardware_flops_total
    if type(flops) is dict:
        if precision is None:
            precision = next(d for d in DTYPES if d in flops)  # fastest first
        elif precision not in flops:
            raise Invalid(
                f"{prefix}.dtype" if prefix else "dtype",
                f"{precision!r} is not one of the dtypes in model_flops_total "
                f"({', '.join(sorted(flops))}); the precision must be one the rank computes in",
            )
        model = flops
    else:
        if precision is None:
            precision = "bf16"
        model = {precision: flops}
    if hardware is not None and type(hardware) is not dict:
        hardware = {precision: hardware}
    start_step = report.start_step
    if start_step is not None and report.step is None:
        raise Invalid(
            f"{prefix}.step" if prefix else "step",
            f"missing: a report with start_step ({start_step}) must carry its step",
        )
    if start_step is not None and start_step > report.step:  # type: ignore[operator]
        raise Invalid(
            f"{prefix}.start_step" if prefix else "start_step",
            f"{start_step} is past the step ({report.step}): the step a sender resumed from comes before "
            "the steps it reports",
        )
    return ReportData(
        job_id=report.job_id,
        rank=report.rank,
        model_flops=model,
        dtype=precision,
        hardware_flops=hardware,
        local_rank=report.local_rank,
        world_size=report.world_size,
        pid=report.pid,
        instance=report.instance,
        interval=report.interval,
        gpus=tuple(report.gpus) if report.gpus is not None else None,
        tokens_total=report.tokens_total,
        samples_total=report.samples_total,
        step=report.step,
        timestamp=report.timestamp,
        labels=label_pairs,
        final=report.final is True,
        start_step=start_step,
        phase_seconds=report.phase_seconds_total,
    )


ONE = TypeAdapter(ReportIn)
BATCH = TypeAdapter(Annotated[list[ReportIn], Field(min_length=1, max_length=MAX_BATCH)])


def request_body_schema() -> dict[str, Any]:
    """The requestBody of POST /v1/reports for /openapi.json: one report, or a batch of them."""
    report = ReportIn.model_json_schema()
    batch = {
        "type": "array",
        "title": "Batch",
        "items": report,
        "minItems": 1,
        "maxItems": MAX_BATCH,
        "description": "a batch: applied whole or not at all",
    }
    return {
        "required": True,
        "content": {"application/json": {"schema": {"anyOf": [report, batch]}, "example": EXAMPLE}},
    }
