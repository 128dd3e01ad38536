"""Hugging Face transformers integration.

``Trainer(..., callbacks=[MfuTrainerCallback(job_flops_per_step=...)])``
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mfu_agent.client import Reporter
from mfu_agent.integrations import Flops, _ReporterOwner, cuda_gpu_uuids

__all__ = ["MfuTrainerCallback", "training_args_dtype"]


def training_args_dtype(args: TrainingArguments) -> str:
    """The dtype whose peak FLOP/s is the MFU denominator, from bf16/fp16/tf32 in the arguments."""
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "tf32", None):
        return "tf32"
    try:
        import torch

        if torch.get_float32_matmul_precision() in ("high", "medium"):
            return "tf32"
    except Exception:  # pragma: no cover
        pass
    return "fp32"


def _args_device(args: Any) -> Any:
    try:
        return args.device
    except Exception:
        return None


class MfuTrainerCallback(TrainerCallback):
    """Reports this rank's cumulative model FLOPs to the node's mfu-agent.

    ``on_step_end`` (once per optimizer step, after gradient accumulation) counts one step:
    ``job_flops_per_step`` is the model FLOPs of one optimizer step of the whole job (its global
    batch; the Reporter counts 1/world_size of it on each rank), ``flops_per_step`` this process's
    share instead (all its micro-batches). Either may be a ``{dtype: FLOPs}`` mapping (FP8 training:
    :func:`mfu_agent.flops.fp8_flops_by_dtype`). Likewise ``job_tokens_per_step`` /
    ``tokens_per_step``.

    Rank, local rank and world size come from the TrainingArguments (``process_index``,
    ``local_process_index``, ``world_size``) and the dtype from ``bf16``/``fp16``/``tf32`` unless
    given in ``reporter_kwargs`` (any :class:`mfu_agent.client.Reporter` argument). The Reporter is
    created in ``on_train_begin`` and closed in ``on_train_end``; a ``reporter`` you pass in is
    only flushed at the end (you close it).
    """

    def __init__(
        self,
        flops_per_step: Flops | None = None,
        tokens_per_step: float | None = None,
        reporter: Reporter | None = None,
        *,
        job_flops_per_step: Flops | None = None,
        job_tokens_per_step: float | None = None,
        **reporter_kwargs: Any,
    ) -> None:
        self._owner = _ReporterOwner(
            "MfuTrainerCallback",
            flops_per_step,
            tokens_per_step,
            reporter,
            reporter_kwargs,
            job_flops_per_step=job_flops_per_step,
            job_tokens_per_step=job_tokens_per_step,
        )

    @property
    def reporter(self) -> Reporter | None:
        return self._owner.reporter

    # Every hook runs through _ReporterOwner.guarded: an error is logged once and reporting stops for
    # the run; training goes on.
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._owner.guarded("on_train_begin", lambda: self._start(args, state))

    def _start(self, args: TrainingArguments, state: TrainerState) -> None:
        self._owner.ensure(
            {
                # The Trainer loads its state before on_train_begin: a run resumed from a checkpoint
                # starts at the checkpoint's step, and the agent counts the steps it redoes as lost work.
                "start_step": getattr(state, "global_step", None),
                "rank": getattr(args, "process_index", None),
                "local_rank": getattr(args, "local_process_index", None),
                "world_size": getattr(args, "world_size", None),
                "dtype": training_args_dtype(args),
                "gpus": cuda_gpu_uuids(_args_device(args)),
            }
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._owner.guarded("on_step_end", self._owner.step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._owner.guarded("on_train_end", self._owner.finish)
