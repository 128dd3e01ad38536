"""Framework integrations for the training-side client.

* :class:`mfu_agent.integrations.lightning.MfuCallback` - a Lightning ``Callback``.
* :class:`mfu_agent.integrations.huggingface.MfuTrainerCallback` - a transformers ``TrainerCallback``.

Importing this package imports no framework; each submodule imports its own framework.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from mfu_agent.client import Reporter

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
    """``["GPU-<uuid>"]`` for a CUDA ``torch.device`` (as NVML spells it), else None.

    The UUID names the GPU unambiguously for the agent whatever CUDA_VISIBLE_DEVICES or the
    container's PID namespace do to indices and pids. Best effort: None when unknown (CPU, MIG
    instance, old torch); the agent then falls back to pid / local_rank.
    """
    try:
        if device is None or getattr(device, "type", None) != "cuda":
            return None
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        if "MIG" in torch.cuda.get_device_name(index):
            return None
        uuid = str(torch.cuda.get_device_properties(index).uuid).strip()
        if not uuid:
            return None
        return [uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"]
    except Exception:
        return None


class _ReporterOwner:
    """The part the framework callbacks share: a Reporter created lazily (in the training process,
    once the framework knows the rank) or one the user passed in.

    A Reporter this object created is closed at the end of training; one the user passed in is only
    flushed (its owner closes it).
    """

    def __init__(
        self,
        who: str,
        flops_per_step: float | None,
        tokens_per_step: float | None,
        reporter: Reporter | None,
        reporter_kwargs: dict[str, Any],
    ) -> None:
        unknown = sorted(set(reporter_kwargs) - _REPORTER_PARAMS)
        if unknown:
            raise TypeError(f"{who}: unknown Reporter argument(s): {', '.join(unknown)}")
        for name in ("flops_per_step", "tokens_per_step"):
            if name in reporter_kwargs:
                raise TypeError(f"{who}: pass {name} directly, not in reporter_kwargs")
        if reporter is not None and reporter_kwargs:
            raise TypeError(f"{who}: pass either reporter=... or Reporter arguments, not both")
        if reporter is None and flops_per_step is None:
            raise ValueError(
                f"{who}: flops_per_step is required (model FLOPs of one optimizer step, all "
                "micro-batches of this rank; see mfu_agent.flops.transformer_flops_per_token), "
                "or pass reporter=Reporter(...)"
            )
        for name, value in (("flops_per_step", flops_per_step), ("tokens_per_step", tokens_per_step)):
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
            if value is not None and bad:
                raise ValueError(f"{who}: {name} must be a number >= 0, got {value!r}")
        self.who = who
        self.flops_per_step = flops_per_step
        self.tokens_per_step = tokens_per_step
        self.reporter_kwargs = reporter_kwargs
        self.reporter: Reporter | None = reporter
        self.owned = reporter is None

    def ensure(self, defaults: dict[str, Any]) -> Reporter:
        """Create the Reporter if needed. Explicit reporter_kwargs win over ``defaults`` (what the
        framework knows: rank, world size, dtype), which win over the environment."""
        if self.reporter is not None and not (self.owned and self.reporter.closed):
            return self.reporter
        kwargs = {k: v for k, v in defaults.items() if v is not None}
        kwargs.update(self.reporter_kwargs)
        kwargs["flops_per_step"] = self.flops_per_step
        kwargs["tokens_per_step"] = self.tokens_per_step
        self.reporter = Reporter(**kwargs)
        self.owned = True
        return self.reporter

    def step(self) -> None:
        reporter = self.reporter
        if reporter is None:
            return
        if self.owned:
            reporter.step()  # the per-step amounts are the reporter's defaults
        else:
            reporter.step(model_flops=self.flops_per_step, tokens=self.tokens_per_step)

    def finish(self) -> None:
        reporter = self.reporter
        if reporter is None:
            return
        try:
            if self.owned:
                reporter.close()
            else:
                reporter.flush()
        except Exception as exc:  # pragma: no cover - close/flush never raise; belt and braces
            logger.warning("%s: final report failed: %r", self.who, exc)
