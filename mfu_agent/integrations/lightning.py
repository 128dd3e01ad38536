"""Lightning integration: ``trainer = Trainer(callbacks=[MfuCallback(job_flops_per_step=...)])``.

Works with the ``lightning`` package (``lightning.pytorch``) and falls back to the older
``pytorch_lightning`` package.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(
            "mfu_agent.integrations.lightning needs the 'lightning' (or 'pytorch_lightning') package"
        ) from exc

from mfu_agent.client import Reporter
from mfu_agent.integrations import Flops, _ReporterOwner, cuda_gpu_uuids

__all__ = ["MfuCallback", "precision_to_dtype", "transformer_engine_other_dtype"]


def precision_to_dtype(precision: object) -> str:
    """Map a Lightning precision setting ("bf16-mixed", "16-mixed", "32-true", ...) to the dtype
    whose peak FLOP/s is the MFU denominator."""
    text = str(precision).lower()
    if text.startswith("transformer-engine"):
        return "fp8"
    if text.startswith("bf16"):
        return "bf16"
    if text.startswith("16") or text.startswith("fp16"):
        return "fp16"
    if text.startswith("64"):
        return "fp64"
    try:
        import torch

        if torch.get_float32_matmul_precision() in ("high", "medium"):
            return "tf32"
    except Exception:  # pragma: no cover - torch always present with Lightning
        pass
    return "fp32"


def transformer_engine_other_dtype(precision: object) -> str | None:
    """For Lightning's Transformer Engine precisions, the dtype of the work that is not an FP8 GEMM
    (``"transformer-engine"``: bf16, ``"transformer-engine-float16"``: fp16); None otherwise."""
    text = str(precision).lower()
    if text == "transformer-engine":
        return "bf16"
    if text == "transformer-engine-float16":
        return "fp16"
    return None


class MfuCallback(pl.Callback):
    """Reports this rank's cumulative model FLOPs to the node's mfu-agent.

    Counts one step per training batch that advanced ``trainer.global_step`` (an optimizer step;
    with ``accumulate_grad_batches=k`` that is every k-th batch). ``job_flops_per_step`` is the
    model FLOPs of one such step of the whole job (its global batch; the Reporter counts
    1/world_size of it on each rank); ``flops_per_step`` is this rank's share instead. Either may be
    a ``{dtype: FLOPs}`` mapping. Likewise ``job_tokens_per_step`` / ``tokens_per_step``.

    With the ``"transformer-engine"`` precisions the linear layers' GEMMs run in FP8 and the rest
    in bf16 (fp16 for ``"transformer-engine-float16"``): pass the FLOPs as a mapping
    (:func:`mfu_agent.flops.fp8_flops_by_dtype`). Given a plain number there (and no explicit
    ``dtype``), the callback logs an error and reports nothing; training goes on.

    Rank, local rank and world size come from the trainer and the dtype from ``trainer.precision``
    unless given in ``reporter_kwargs`` (any :class:`mfu_agent.client.Reporter` argument, e.g.
    ``job_id``, ``url``, ``interval``). The Reporter is created in ``on_train_start`` (in the training
    process, after any launcher forked or spawned it, and after a resumed fit restored its checkpoint:
    it starts at ``trainer.global_step``) and closed when training ends. A
    ``reporter`` you pass in is used as is and only flushed at the end (you close it).
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
        super().__init__()
        self._owner = _ReporterOwner(
            "MfuCallback",
            flops_per_step,
            tokens_per_step,
            reporter,
            reporter_kwargs,
            job_flops_per_step=job_flops_per_step,
            job_tokens_per_step=job_tokens_per_step,
        )
        self._last_global_step: int | None = None

    @property
    def reporter(self) -> Reporter | None:
        return self._owner.reporter

    # Every hook runs through _ReporterOwner.guarded: an error is logged once and reporting stops for
    # the run; training goes on.
    def _start(self, trainer: pl.Trainer) -> None:
        if self._cannot_split(trainer.precision):
            return
        self._owner.ensure(
            {
                # At on_train_start a resumed fit has restored its checkpoint: the Reporter counts on
                # from its step, and the agent counts the steps redone as lost work.
                "start_step": trainer.global_step,
                "rank": trainer.global_rank,
                "local_rank": trainer.local_rank,
                "world_size": trainer.world_size,
                "dtype": precision_to_dtype(trainer.precision),
                "gpus": cuda_gpu_uuids(getattr(trainer.strategy, "root_device", None)),
            }
        )

    def _cannot_split(self, precision: object) -> bool:
        """True (after logging one error) when a Transformer Engine precision meets plain-number
        FLOPs: the FP8 and the bf16/fp16 parts cannot be told apart, so nothing is reported."""
        owner = self._owner
        other = transformer_engine_other_dtype(precision)
        if other is None or not owner.owned or "dtype" in owner.reporter_kwargs:
            return False
        plain = owner.plain_number_flops()
        if not plain:
            return False
        owner.refuse(
            f"MfuCallback: precision {str(precision)!r} runs the linear layers' GEMMs in FP8 and the "
            f"attention matmuls in {other}; a plain number ({', '.join(plain)}) cannot say how much is "
            f"which. Pass a mapping, e.g. job_flops_per_step={{'fp8': ..., '{other}': ...}} "
            "(mfu_agent.flops.fp8_flops_by_dtype computes one from the architecture). Reporting "
            "nothing for this run; training goes on."
        )
        return True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        owner = self._owner
        if owner.reporter is None or (owner.owned and owner.reporter.closed):
            owner.guarded("on_train_start", lambda: self._start(trainer))
        self._last_global_step = trainer.global_step  # resumed runs do not count restored steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        global_step = trainer.global_step
        last = self._last_global_step
        self._last_global_step = global_step
        if last is not None and global_step > last:
            self._owner.guarded("on_train_batch_end", self._owner.step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._owner.guarded("on_train_end", self._owner.finish)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._owner.guarded("on_exception", self._owner.finish)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._owner.guarded("teardown", self._owner.finish)
