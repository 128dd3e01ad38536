"""Model FLOPs for the training side: analytic per-token counts and a measured count via PyTorch.

Stdlib only at import time (training processes import this without pulling in the agent); torch is
imported lazily inside :func:`measure_flops`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

__all__ = ["measure_flops", "transformer_flops_per_token"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return result


def transformer_flops_per_token(
    n_params: float,
    n_layers: int,
    n_heads: int,
    head_dim: int,
    seq_len: int,
    causal: bool = False,
) -> float:
    """Training FLOPs per token of a decoder transformer: ``6N + 12·L·H·Q·T``.

    The PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the parameter matmuls
    (forward 2N, backward 4N) plus 12·L·H·Q·T for the attention score and value matmuls, where
    L = layers, H = heads, Q = head dim, T = sequence length. With ``causal=True`` the attention
    term is halved, as Megatron-LM counts it (only the lower triangle is computed).

    ``n_params`` should exclude embedding parameters that do no matmul (as in PaLM); the caller
    decides. Raises ValueError naming the offending argument.
    """
    n = _positive_number("n_params", n_params)
    layers = _positive_int("n_layers", n_layers)
    heads = _positive_int("n_heads", n_heads)
    q = _positive_int("head_dim", head_dim)
    t = _positive_int("seq_len", seq_len)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    attention = 12.0 * layers * heads * q * t
    if causal:
        attention /= 2.0
    return 6.0 * n + attention


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
