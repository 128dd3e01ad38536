"""Model FLOPs for the training side: analytic per-token counts and a measured count via PyTorch.

Stdlib only at import time (training processes import this without pulling in the agent); torch is
imported lazily inside :func:`measure_flops`.

What is counted
---------------
Training FLOPs = forward + backward = 3 x the forward's matmul FLOPs (2 per multiply-add). Only
matmuls count: element-wise work (norms, activations, softmax, residuals, biases) does not.

* Weight matmuls: 6 FLOPs per token per parameter a token is multiplied by ("6N").
* Attention score (QK^T) and value (AV) matmuls: 12·L·H·Q·T per token (L layers, H *query* heads,
  Q head dim, T sequence length), from PaLM (Chowdhery et al. 2022), appendix B.

The causal convention (one, everywhere): ``causal=False`` is the default and counts the FULL T x T
attention matrix, as PaLM's appendix B and Megatron-LM's formula do, so MFU figures compare with
published ones. ``causal=True`` halves the attention term: only the lower triangle that a causal
kernel (FlashAttention with ``causal=True``) computes. Choose one per fleet and keep it.

Relation to Megatron-LM: Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on
GPU Clusters using Megatron-LM", appendix "Floating-point operations") count a GPT with batch B,
sequence s, l layers, hidden h and vocabulary V. Without activation recomputation (model FLOPs, as
Megatron-LM's training loop computes them) an iteration is ``72·B·s·l·h²·(1 + s/(6h) + V/(12lh))``.
Per token that is 72lh² (6 x the 12lh² layer weights), 12lsh (the full attention term, H·Q = h)
and 6Vh (the LM head): :func:`transformer_flops_breakdown` with its defaults (``causal=False``,
``include_lm_head=True``) gives exactly this for a GPT (MHA, 4h MLP); with
``include_lm_head=False`` it is 6Vh per token less. The paper's own figure,
``96·B·s·l·h²·(1 + s/(6h) + V/(16lh))``, adds the recomputed forward of the layers (the LM head is
not recomputed): hardware FLOPs, for ``hardware_flops_per_step``, not model FLOPs.

PaLM's ``6N + 12·L·H·Q·T`` (:func:`transformer_flops_per_token`) is the same count expressed with
the parameter count N: the LM head is in N when N includes the (input/output) embedding matrix once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

__all__ = [
    "FlopsBreakdown",
    "TransformerArch",
    "active_params",
    "fp8_flops_by_dtype",
    "measure_flops",
    "transformer_flops_breakdown",
    "transformer_flops_per_token",
]

#: The dtypes the agent knows peaks for (the same list as ``mfu_agent.client.DTYPES``).
DTYPES = ("fp8", "bf16", "fp16", "tf32", "fp32", "fp64", "int8")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return result


def _non_negative_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return result


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def transformer_flops_per_token(
    n_params: float,
    n_layers: int,
    n_heads: int,
    head_dim: int,
    seq_len: int,
    causal: bool = False,
) -> float:
    """Training FLOPs per token of a decoder transformer: ``6N + 12·L·H·Q·T`` (PaLM, appendix B).

    6N for the weight matmuls (forward 2N, backward 4N) plus 12·L·H·Q·T for the attention score
    and value matmuls, where L = layers, H = query heads, Q = head dim, T = sequence length.
    ``causal=False`` (the default) counts the full attention matrix, as PaLM and Megatron-LM do;
    ``causal=True`` halves the attention term (the module docstring states the convention).

    ``n_params`` is the parameters a token is multiplied by:

    * exclude embedding parameters that do no matmul (a lookup); include the LM head (with tied
      input/output embeddings PaLM counts the shared matrix once, as the LM head);
    * grouped-query attention: n_heads is the number of *query* heads; the smaller K and V
      projections only make N smaller (the score/value matmuls run per query head);
    * mixture of experts: the *active* parameters (top-k routed plus shared experts, the router,
      attention, LM head): :func:`active_params` computes them from the architecture.

    Raises ValueError naming the offending argument.
    """
    n = _positive_number("n_params", n_params)
    layers = _positive_int("n_layers", n_layers)
    heads = _positive_int("n_heads", n_heads)
    q = _positive_int("head_dim", head_dim)
    t = _positive_int("seq_len", seq_len)
    _flag("causal", causal)
    return 6.0 * n + _attention_flops(layers, heads, q, t, causal)


def _attention_flops(layers: int, heads: int, head_dim: int, seq_len: int, causal: bool) -> float:
    """QK^T and AV: 2·T·Q FLOPs each per token, head and layer forward (4·T·Q), x3 with backward."""
    attention = 12.0 * layers * heads * head_dim * seq_len
    return attention / 2.0 if causal else attention


@dataclass(frozen=True)
class TransformerArch:
    """The shape of a decoder-only transformer, as far as its matmul FLOPs go.

    Every layer has the same shape (for a stack that mixes dense and MoE layers, add the
    :func:`active_params` of each part and use :func:`transformer_flops_per_token`).

    * ``n_heads`` query heads of ``head_dim`` (default ``d_model // n_heads``) and ``n_kv_heads``
      key/value heads (default ``n_heads``: multi-head attention; fewer: grouped-query attention,
      1: multi-query). Q and output projections: ``d_model x n_heads·head_dim`` each; K and V
      projections: ``d_model x n_kv_heads·head_dim`` each.
    * MLP: ``ffn_hidden`` units; 2 weight matrices (up, down), or 3 with ``gated_mlp=True``
      (SwiGLU / GeGLU: gate, up, down).
    * Mixture of experts (``n_experts`` > 0 routed experts per layer): each token goes through
      ``top_k`` routed experts and all ``n_shared_experts`` shared experts, each an MLP of
      ``ffn_hidden`` units (a wider shared expert counts as several), plus the router
      (``d_model x n_experts``).
    * ``vocab_size``: the LM head is ``d_model x vocab_size`` (the embedding table too).

    Raises ValueError naming the offending field.
    """

    n_layers: int
    d_model: int
    n_heads: int
    ffn_hidden: int
    vocab_size: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    gated_mlp: bool = False
    n_experts: int = 0
    top_k: int = 0
    n_shared_experts: int = 0

    def __post_init__(self) -> None:
        _positive_int("n_layers", self.n_layers)
        _positive_int("d_model", self.d_model)
        heads = _positive_int("n_heads", self.n_heads)
        _positive_int("ffn_hidden", self.ffn_hidden)
        _positive_int("vocab_size", self.vocab_size)
        if self.n_kv_heads is not None:
            kv = _positive_int("n_kv_heads", self.n_kv_heads)
            if kv > heads or heads % kv:
                raise ValueError(f"n_kv_heads must divide n_heads ({heads}), got {kv!r}")
        if self.head_dim is not None:
            _positive_int("head_dim", self.head_dim)
        elif self.d_model % heads:
            raise ValueError(
                f"head_dim is required when n_heads ({heads}) does not divide d_model ({self.d_model})"
            )
        _flag("gated_mlp", self.gated_mlp)
        experts = _non_negative_int("n_experts", self.n_experts)
        top_k = _non_negative_int("top_k", self.top_k)
        shared = _non_negative_int("n_shared_experts", self.n_shared_experts)
        if experts == 0 and (top_k or shared):
            raise ValueError(
                f"top_k and n_shared_experts need n_experts > 0, got top_k={top_k}, n_shared_experts={shared}"
            )
        if experts and not 1 <= top_k <= experts:
            raise ValueError(f"top_k must be between 1 and n_experts ({experts}), got {top_k!r}")

    @property
    def query_dim(self) -> int:
        """n_heads x head_dim: the width of the queries (and of the attention output)."""
        return self.n_heads * (self.head_dim or self.d_model // self.n_heads)

    @property
    def kv_dim(self) -> int:
        """n_kv_heads x head_dim: the width of the keys and of the values."""
        kv_heads = self.n_kv_heads or self.n_heads
        return kv_heads * (self.head_dim or self.d_model // self.n_heads)

    def attention_params(self) -> int:
        """Per layer: Q, K, V and output projection weights."""
        return self.d_model * (2 * self.query_dim + 2 * self.kv_dim)

    def mlp_params(self) -> int:
        """One MLP (or one expert): 2 or, gated, 3 matrices of d_model x ffn_hidden."""
        return (3 if self.gated_mlp else 2) * self.d_model * self.ffn_hidden

    def router_params(self) -> int:
        """Per layer: d_model x n_experts (0 for a dense model)."""
        return self.d_model * self.n_experts

    def active_mlp_params(self) -> int:
        """Per layer: the MLP weights one token is multiplied by (top-k routed + shared experts)."""
        if self.n_experts == 0:
            return self.mlp_params()
        return (self.top_k + self.n_shared_experts) * self.mlp_params()


def active_params(
    arch: TransformerArch, *, include_embedding: bool = False, include_lm_head: bool = True
) -> int:
    """Parameters one token is multiplied by: the ``N`` of ``6N``.

    Per layer: attention projections (GQA: smaller K and V), the MLP or, for a mixture of
    experts, the top-k routed plus the shared experts and the router. Plus the LM head
    (``include_lm_head``, default True: it is a matmul) and the embedding table
    (``include_embedding``, default False: a lookup does no matmul; True counts it as if it did,
    like "6 x all parameters"). Biases and norms are left out. Raises ValueError naming the
    offending argument.
    """
    if not isinstance(arch, TransformerArch):
        raise ValueError(f"arch must be a TransformerArch, got {arch!r}")
    _flag("include_embedding", include_embedding)
    _flag("include_lm_head", include_lm_head)
    per_layer = arch.attention_params() + arch.router_params() + arch.active_mlp_params()
    table = arch.vocab_size * arch.d_model
    return arch.n_layers * per_layer + table * (int(include_lm_head) + int(include_embedding))


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs (forward + backward) per token, by kind of matmul.

    ``linear``: the layers' weight matmuls (attention projections, MLP or active experts);
    ``attention``: the score and value matmuls; ``router``: the MoE router; ``lm_head`` and
    ``embedding``: 6·vocab·d_model each when counted. Build one with
    :func:`transformer_flops_breakdown`, or directly (``FlopsBreakdown(linear=6 * n, attention=a)``)
    when you have a parameter count rather than the architecture.
    """

    linear: float
    attention: float
    router: float = 0.0
    lm_head: float = 0.0
    embedding: float = 0.0

    def __post_init__(self) -> None:
        for name in ("linear", "attention", "router", "lm_head", "embedding"):
            _non_negative_number(name, getattr(self, name))

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.router + self.lm_head + self.embedding


def transformer_flops_breakdown(
    arch: TransformerArch,
    seq_len: int,
    *,
    causal: bool = False,
    include_embedding: bool = False,
    include_lm_head: bool = True,
) -> FlopsBreakdown:
    """Training FLOPs per token of ``arch`` at ``seq_len``, by kind (``.total`` for the sum).

    6 x :func:`active_params` for the weight matmuls plus 12·L·H·Q·T for attention (H = query
    heads), the full matrix unless ``causal=True`` (which halves it). With the defaults this is
    PaLM's ``6N + 12·L·H·Q·T`` and, for a GPT, exactly Megatron-LM's
    ``72·s·l·h²·(1 + s/(6h) + V/(12lh))`` per sequence. Raises ValueError naming the offending
    argument.
    """
    if not isinstance(arch, TransformerArch):
        raise ValueError(f"arch must be a TransformerArch, got {arch!r}")
    t = _positive_int("seq_len", seq_len)
    _flag("causal", causal)
    _flag("include_embedding", include_embedding)
    _flag("include_lm_head", include_lm_head)
    layers = arch.n_layers
    table = 6.0 * arch.vocab_size * arch.d_model
    return FlopsBreakdown(
        linear=6.0 * layers * (arch.attention_params() + arch.active_mlp_params()),
        attention=_attention_flops(layers, arch.n_heads, arch.query_dim // arch.n_heads, t, causal),
        router=6.0 * layers * arch.router_params(),
        lm_head=table if include_lm_head else 0.0,
        embedding=table if include_embedding else 0.0,
    )


def fp8_flops_by_dtype(
    flops: FlopsBreakdown,
    *,
    tokens: float = 1,
    other_dtype: str = "bf16",
    fp8_lm_head: bool = False,
) -> dict[str, float]:
    """``{"fp8": ..., other_dtype: ...}`` for FP8 training with NVIDIA Transformer Engine.

    Inside ``fp8_autocast`` Transformer Engine runs the linear layers' GEMMs in FP8 (``linear``);
    the attention score and value matmuls (``attention``, unless FP8 attention is enabled), the
    MoE router and, by default, the LM head run in ``other_dtype`` (bf16, or fp16). Megatron-LM
    and NeMo keep the output layer out of FP8; Lightning's ``transformer-engine`` precisions (unless
    ``replace_layers=False``) turn every ``nn.Linear`` whose sizes suit FP8 into ``te.Linear``, LM
    head included: pass ``fp8_lm_head=True`` there. ``embedding`` FLOPs, when counted, go to
    ``other_dtype``.

    ``flops`` is per token; ``tokens`` multiplies it (e.g. the global batch's tokens, for
    ``Reporter(job_flops_per_step=...)``). The result is a ``{dtype: FLOPs}`` mapping the client
    accepts as is. Raises ValueError naming the offending argument.
    """
    if not isinstance(flops, FlopsBreakdown):
        raise ValueError(f"flops must be a FlopsBreakdown, got {flops!r}")
    n = _positive_number("tokens", tokens)
    if other_dtype not in DTYPES or other_dtype == "fp8":
        raise ValueError(f"other_dtype must be one of {', '.join(DTYPES[1:])}, got {other_dtype!r}")
    _flag("fp8_lm_head", fp8_lm_head)
    lm_head_fp8 = flops.lm_head if fp8_lm_head else 0.0
    fp8 = flops.linear + lm_head_fp8
    other = flops.attention + flops.router + flops.embedding + (flops.lm_head - lm_head_fp8)
    return {"fp8": fp8 * n, other_dtype: other * n}


def measure_flops(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> float:
    """FLOPs PyTorch counts while running ``fn(*args, **kwargs)`` once.

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts matmul/convolution/attention
    FLOPs (2 per multiply-add) and ignores element-wise work, i.e. model FLOPs. Pass a closure that
    runs one full training step (forward + backward) to get FLOPs per step. Raises RuntimeError if
    PyTorch (with ``torch.utils.flop_counter``, torch >= 2.1) is not installed.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as exc:
        raise RuntimeError(
            "measure_flops needs PyTorch >= 2.1 (torch.utils.flop_counter); install torch, or use "
            "transformer_flops_per_token() for an analytic count"
        ) from exc
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return float(counter.get_total_flops())
