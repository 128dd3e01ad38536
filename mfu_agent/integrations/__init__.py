"""Framework integrations for the training-side client.

* :class:`mfu_agent.integrations.lightning.MfuCallback` - a Lightning ``Callback``.
* :class:`mfu_agent.integrations.huggingface.MfuTrainerCallback` - a transformers ``TrainerCallback``.

Importing this package imports no framework; each submodule imports its own framework.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from mfu_agent.client import Reporter, normalize_dtype
from mfu_agent.client._reporter import GPU_UUID_RE, JOB_ID_RE, _env, _env_job_id, _parse_agent_url

__all__ = ["MfuCallback", "MfuTrainerCallback", "cuda_gpu_uuids"]

logger = logging.getLogger("mfu_agent.client")

_REPORTER_PARAMS = frozenset(inspect.signature(Reporter).parameters)


def __getattr__(name: str) -> Any:
    if name == "MfuCallback":
        from mfu_agent.integrations.lightning import MfuCallback

        return MfuCallback
    if name == "MfuTrainerCallback":
        from mfu_agent.integrations.huggingface import MfuTrainerCallback

        return MfuTrainerCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cuda_gpu_uuids(device: Any) -> list[str] | None:
    """``["GPU-<uuid>"]`` (a whole GPU) or ``["MIG-<uuid>"]`` (a MIG instance) for a CUDA
    ``torch.device``, spelt as NVML spells it; else None.

    The UUID names the device unambiguously for the agent whatever CUDA_VISIBLE_DEVICES or the
    container's PID namespace do to indices and pids. On a MIG instance torch reports the
    instance's own UUID; the device name (``"... MIG 1g.10gb"``) tells the two apart. Best effort:
    None when unknown (CPU, old torch, any failure); the agent then falls back to pid / local_rank.
    """
    try:
        if device is None or getattr(device, "type", None) != "cuda":
            return None
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        prefix = "MIG-" if "MIG" in str(torch.cuda.get_device_name(index)) else "GPU-"
        uuid = str(torch.cuda.get_device_properties(index).uuid).strip()
        if uuid.startswith(("GPU-", "MIG-")):
            uuid = uuid[4:]
        uuid = prefix + uuid
        # What the Reporter accepts: anything else would make it refuse to start.
        return [uuid] if GPU_UUID_RE.fullmatch(uuid) else None
    except Exception:
        return None


#: A per-step FLOPs amount: a number, or ``{dtype: FLOPs}`` when the step runs in several dtypes.
Flops = float | Mapping[str, float]


def _check_flops(who: str, name: str, value: Any) -> None:
    """A number >= 0 or a non-empty ``{dtype: number >= 0}`` mapping; ValueError naming ``name``."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{who}: {name} must not be an empty mapping")
        for dtype, amount in value.items():
            try:
                normalize_dtype(dtype)
            except ValueError as exc:
                raise ValueError(f"{who}: {name}: {exc}") from None
            _check_number(who, f"{name}[{dtype!r}]", amount)
    else:
        _check_number(who, name, value)


def _check_number(who: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{who}: {name} must be a finite number >= 0, got {value!r}")


class _ReporterOwner:
    """The part the framework callbacks share: a Reporter created lazily (in the training process,
    once the framework knows the rank) or one the user passed in.

    The per-step amounts are this rank's (``flops_per_step``, ``tokens_per_step``) or the whole
    job's (``job_flops_per_step``, ``job_tokens_per_step``, which the Reporter divides by the world
    size); FLOPs may be ``{dtype: FLOPs}`` mappings. All are passed to the Reporter as given.

    A Reporter this object created is closed at the end of training; one the user passed in is only
    flushed (its owner closes it).
    """

    def __init__(
        self,
        who: str,
        flops_per_step: Flops | None,
        tokens_per_step: float | None,
        reporter: Reporter | None,
        reporter_kwargs: dict[str, Any],
        job_flops_per_step: Flops | None = None,
        job_tokens_per_step: float | None = None,
    ) -> None:
        unknown = sorted(set(reporter_kwargs) - _REPORTER_PARAMS)
        if unknown:
            raise TypeError(f"{who}: unknown Reporter argument(s): {', '.join(unknown)}")
        for name in ("flops_per_step", "job_flops_per_step", "tokens_per_step", "job_tokens_per_step"):
            if name in reporter_kwargs:
                raise TypeError(f"{who}: pass {name} directly, not in reporter_kwargs")
        if reporter is not None and reporter_kwargs:
            raise TypeError(f"{who}: pass either reporter=... or Reporter arguments, not both")
        if reporter_kwargs.get("url") is not None:
            # The Reporter is created later, inside training; a bad url= is refused here, up front.
            _parse_agent_url(reporter_kwargs["url"], "url")
        if flops_per_step is not None and job_flops_per_step is not None:
            raise ValueError(
                f"{who}: pass flops_per_step (this rank) or job_flops_per_step (whole job), not both"
            )
        if tokens_per_step is not None and job_tokens_per_step is not None:
            raise ValueError(
                f"{who}: pass tokens_per_step (this rank) or job_tokens_per_step (whole job), not both"
            )
        if reporter is not None and (job_flops_per_step is not None or job_tokens_per_step is not None):
            raise TypeError(
                f"{who}: with reporter=..., give job_flops_per_step / job_tokens_per_step to that "
                "Reporter (it knows the world size)"
            )
        if reporter is None and flops_per_step is None and job_flops_per_step is None:
            raise ValueError(
                f"{who}: job_flops_per_step (model FLOPs of one optimizer step of the whole job's "
                "global batch) or flops_per_step (this rank's share) is required, e.g. from "
                "mfu_agent.flops.transformer_flops_per_token; or pass reporter=Reporter(...)"
            )
        for name, value in (("flops_per_step", flops_per_step), ("job_flops_per_step", job_flops_per_step)):
            if value is not None:
                _check_flops(who, name, value)
        for name, value in (
            ("tokens_per_step", tokens_per_step),
            ("job_tokens_per_step", job_tokens_per_step),
        ):
            if value is not None:
                _check_number(who, name, value)
        self.who = who
        given = {
            "flops_per_step": flops_per_step,
            "job_flops_per_step": job_flops_per_step,
            "tokens_per_step": tokens_per_step,
            "job_tokens_per_step": job_tokens_per_step,
        }
        #: What the created Reporter gets: the amounts given, as given (None ones left out).
        self.amounts: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        self.flops_per_step = flops_per_step
        self.tokens_per_step = tokens_per_step
        self.reporter_kwargs = reporter_kwargs
        self.reporter: Reporter | None = reporter
        self.owned = reporter is None
        self.refused = False

    def plain_number_flops(self) -> list[str]:
        """The FLOPs amounts the created Reporter would get as plain numbers (no dtype split)."""
        given = dict(self.amounts)
        if "hardware_flops_per_step" in self.reporter_kwargs:
            given["hardware_flops_per_step"] = self.reporter_kwargs["hardware_flops_per_step"]
        return [
            name
            for name, value in given.items()
            if "flops" in name and value is not None and not isinstance(value, Mapping)
        ]

    def refuse(self, message: str) -> None:
        """Report nothing (more) for this run: log ``message`` once as an error; training goes on. A
        Reporter already created is still closed (or flushed) at the end: what it counted is sent."""
        if not self.refused:
            logger.error("%s", message)
        self.refused = True

    def guarded(self, hook: str, action: Callable[[], None]) -> None:
        """Runs a hook's work. Telemetry never stops training: an exception is logged once (the first;
        later hooks do nothing more) and reporting stops for this run."""
        try:
            action()
        except Exception as exc:
            self.refuse(
                f"{self.who}.{hook} failed: {type(exc).__name__}: {exc}. Reporting nothing more for "
                "this run; training goes on"
            )

    def ensure(self, defaults: dict[str, Any]) -> Reporter | None:
        """Create the Reporter if needed (None once :meth:`refuse` was called). Explicit
        reporter_kwargs win over ``defaults`` (what the framework knows: rank, world size, dtype),
        which win over the environment. Never raises: a Reporter that cannot be created (no job id,
        a bad RANK, an unreadable token file, ...) is logged once as an error and nothing is
        reported; training goes on."""
        if self.refused:
            return None
        if self.reporter is not None and not (self.owned and self.reporter.closed):
            return self.reporter
        kwargs = {k: v for k, v in defaults.items() if v is not None}
        kwargs.update(self.reporter_kwargs)
        kwargs.update(self.amounts)
        try:
            reporter = Reporter(**kwargs)
        except Exception as exc:  # never let telemetry stop a training run that is starting
            hint = _job_id_hint() if "job_id" not in kwargs else ""
            self.refuse(
                f"{self.who}: cannot report for this run: {exc}{hint}. Reporting nothing; training goes on"
            )
            return None
        self.reporter = reporter
        self.owned = True
        return self.reporter

    def step(self) -> None:
        reporter = self.reporter
        if reporter is None or self.refused:
            return
        if self.owned:
            reporter.step()  # the per-step amounts are the reporter's defaults
        else:
            reporter.step(model_flops=self.flops_per_step, tokens=self.tokens_per_step)

    def finish(self) -> None:
        reporter = self.reporter
        if reporter is None:
            return
        if self.owned:
            reporter.close()
        else:
            reporter.flush()


_JOB_ID_VARS = ("MFU_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")


def _job_id_hint() -> str:
    """Which environment variable an unusable job id came from, and the fix; "" when it is not that."""
    job_id = _env_job_id()
    if job_id is None or JOB_ID_RE.fullmatch(job_id):
        return ""
    source = next((name for name in _JOB_ID_VARS if _env(name) == job_id), "MFU_JOB_ID")
    return (
        f" (the job id comes from the environment variable {source}: set MFU_JOB_ID to 1..128 characters "
        "of [A-Za-z0-9._:/-], or pass job_id=... to the callback)"
    )
