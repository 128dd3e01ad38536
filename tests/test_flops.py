"""Training-side FLOP counting: the PaLM formula, the architecture-based count (GQA, MoE, LM head),
the FP8 split, and torch's FlopCounterMode.

Expected values are computed here from published constants (each cited), never pasted outputs."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfu_agent import flops
from mfu_agent.flops import (
    FlopsBreakdown,
    TransformerArch,
    active_params,
    fp8_flops_by_dtype,
    measure_flops,
    transformer_flops_breakdown,
    transformer_flops_per_token,
)

# PaLM (Chowdhery et al. 2022, arXiv:2204.02311): table 1 (architecture: 118 layers, 48 heads of
# 256, 2048-token sequences), table 3 (46.2% MFU on 6144 TPU v4 chips), appendix B (238.3K tokens/s;
# TPU v4 bf16 peak 275 TFLOP/s).
PALM_PARAMS = 540e9
PALM_LAYERS = 118
PALM_HEADS = 48
PALM_HEAD_DIM = 256
PALM_SEQ = 2048
PALM_TOKENS_PER_S = 238.3e3
PALM_CHIPS = 6144
PALM_CHIP_PEAK = 275e12  # TPU v4 bf16 peak FLOP/s
PALM_MFU_PERCENT = 46.2


# MT-NLG 530B (Smith et al. 2022, arXiv:2201.11990): 105 layers, hidden 20480, 128 heads,
# 2048-token sequences, global batch 1920 sequences; 280 DGX A100 nodes = 2240 GPUs (TP 8 x PP 35 x
# DP 8) take 60.1 s per iteration, "126 TFLOP/s per GPU" (section 2.4). Vocabulary 50257 padded to
# 50272. A100 dense bf16 peak: 312 TFLOP/s (NVIDIA A100 datasheet). PaLM's table 3: 30.2% MFU.
MTNLG_PARAMS = 530e9
MTNLG_LAYERS = 105
MTNLG_HIDDEN = 20480
MTNLG_HEADS = 128
MTNLG_SEQ = 2048
MTNLG_VOCAB = 50272
MTNLG_BATCH = 1920
MTNLG_GPUS = 2240
MTNLG_ITERATION_S = 60.1
MTNLG_REPORTED_TFLOPS_PER_GPU = 126
A100_PEAK = 312e12
MTNLG_MFU_PERCENT = 30.2

MTNLG = TransformerArch(
    n_layers=MTNLG_LAYERS,
    d_model=MTNLG_HIDDEN,
    n_heads=MTNLG_HEADS,
    ffn_hidden=4 * MTNLG_HIDDEN,
    vocab_size=MTNLG_VOCAB,
)


def test_palm_540b_mfu_is_reproduced() -> None:
    per_token = transformer_flops_per_token(PALM_PARAMS, PALM_LAYERS, PALM_HEADS, PALM_HEAD_DIM, PALM_SEQ)
    mfu = per_token * PALM_TOKENS_PER_S / (PALM_CHIPS * PALM_CHIP_PEAK)
    assert mfu * 100 == pytest.approx(PALM_MFU_PERCENT, rel=0.01)
    assert abs(mfu * 100 - PALM_MFU_PERCENT) < 0.1


def test_mtnlg_530b_mfu_is_reproduced() -> None:
    tokens_per_s = MTNLG_BATCH * MTNLG_SEQ / MTNLG_ITERATION_S
    head_dim = MTNLG_HIDDEN // MTNLG_HEADS
    per_token = transformer_flops_per_token(MTNLG_PARAMS, MTNLG_LAYERS, MTNLG_HEADS, head_dim, MTNLG_SEQ)
    from_arch = transformer_flops_breakdown(MTNLG, MTNLG_SEQ).total
    for flops_per_token in (per_token, from_arch):
        mfu = flops_per_token * tokens_per_s / (MTNLG_GPUS * A100_PEAK)
        assert mfu * 100 == pytest.approx(MTNLG_MFU_PERCENT, rel=0.01)


def test_mtnlg_throughput_constants_match_the_reported_hardware_tflops() -> None:
    # Cross-check of the constants above: Megatron's hardware count with activation recomputation
    # (Narayanan et al. 2021, appendix "Floating-point operations") over 60.1 s on 2240 GPUs gives
    # MT-NLG's "126 TFLOP/s per GPU".
    b, s, n_l, h, v = MTNLG_BATCH, MTNLG_SEQ, MTNLG_LAYERS, MTNLG_HIDDEN, MTNLG_VOCAB
    hardware = 96 * b * s * n_l * h**2 * (1 + s / (6 * h) + v / (16 * n_l * h))
    per_gpu = hardware / MTNLG_ITERATION_S / MTNLG_GPUS
    assert per_gpu / 1e12 == pytest.approx(MTNLG_REPORTED_TFLOPS_PER_GPU, rel=0.01)


def test_megatron_formula_matches_the_breakdown_for_gpt3_175b() -> None:
    # GPT-3 175B as in Narayanan et al. 2021 (table 1): l=96 layers, h=12288, 96 heads, s=2048,
    # batch 1536; Megatron-LM's GPT configurations use V=51200 (its README). Model FLOPs per
    # iteration: the paper's appendix count without the recomputed forward,
    # 72·B·s·l·h²·(1 + s/(6h) + V/(12lh)): full attention matrix and the LM head included.
    b, s, n_l, h, v = 1536, 2048, 96, 12288, 51200
    megatron = 72 * b * s * n_l * h**2 * (1 + s / (6 * h) + v / (12 * n_l * h))
    gpt3 = TransformerArch(n_layers=n_l, d_model=h, n_heads=96, ffn_hidden=4 * h, vocab_size=v)
    tokens = b * s

    assert transformer_flops_breakdown(gpt3, s).total * tokens == pytest.approx(megatron, rel=1e-12)
    # The documented difference: without the LM head the count is short by exactly 6·V·h per token.
    no_head = transformer_flops_breakdown(gpt3, s, include_lm_head=False).total * tokens
    assert megatron - no_head == pytest.approx(6 * v * h * tokens, rel=1e-9)
    # PaLM's form with N = the layers' 12·l·h² weights plus the V·h LM head is the same count.
    n = 12 * n_l * h**2 + v * h
    assert transformer_flops_per_token(n, n_l, 96, h // 96, s) * tokens == pytest.approx(megatron, rel=1e-12)
    # causal=True removes half of Megatron's s/(6h) attention term.
    causal = transformer_flops_breakdown(gpt3, s, causal=True).total * tokens
    assert megatron - causal == pytest.approx(72 * b * s * n_l * h**2 * s / (12 * h), rel=1e-9)


def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha() -> None:
    kwargs = {"n_layers": 32, "d_model": 4096, "n_heads": 32, "ffn_hidden": 11008, "vocab_size": 32000}
    mha = TransformerArch(**kwargs)
    same = TransformerArch(**kwargs, n_kv_heads=32)
    assert active_params(same) == active_params(mha)
    assert transformer_flops_breakdown(same, 4096) == transformer_flops_breakdown(mha, 4096)


def test_gqa_shrinks_only_the_k_and_v_projections() -> None:
    layers, d, heads, kv_heads, head_dim, seq = 32, 4096, 32, 8, 128, 8192
    kwargs = {"n_layers": layers, "d_model": d, "n_heads": heads, "ffn_hidden": 14336, "vocab_size": 128256}
    mha = transformer_flops_breakdown(TransformerArch(**kwargs), seq)
    gqa = transformer_flops_breakdown(TransformerArch(**kwargs, n_kv_heads=kv_heads), seq)
    # K and V: d x heads·head_dim each with MHA, d x kv_heads·head_dim each with GQA; 6 FLOPs/weight.
    assert mha.linear - gqa.linear == 6 * layers * 2 * d * (heads - kv_heads) * head_dim
    # The score/value matmuls run once per query head whatever the number of K/V heads.
    assert gqa.attention == mha.attention == 12 * layers * heads * head_dim * seq
    assert gqa.lm_head == mha.lm_head


# Mixtral 8x7B (Jiang et al. 2024, arXiv:2401.04088, table 1; Mistral AI, "Mixtral of experts",
# Dec 2023): 32 layers, dim 4096, 32 query heads of 128, 8 KV heads, SwiGLU hidden 14336,
# vocabulary 32000, 8 experts, top-2 routing; "12.9B active parameters per token".
MIXTRAL = TransformerArch(
    n_layers=32,
    d_model=4096,
    n_heads=32,
    n_kv_heads=8,
    ffn_hidden=14336,
    vocab_size=32000,
    gated_mlp=True,
    n_experts=8,
    top_k=2,
)
MIXTRAL_PUBLISHED_ACTIVE = 12.9e9


def test_mixtral_active_params_and_flops_by_hand() -> None:
    d, layers, vocab = 4096, 32, 32000
    q_and_out = 2 * d * (32 * 128)
    k_and_v = 2 * d * (8 * 128)
    expert = 3 * d * 14336  # gate, up, down
    router = d * 8
    per_layer = q_and_out + k_and_v + 2 * expert + router  # top-2 of 8 experts
    lm_head = d * vocab
    assert active_params(MIXTRAL) == layers * per_layer + lm_head
    assert active_params(MIXTRAL, include_lm_head=False) == layers * per_layer
    assert active_params(MIXTRAL, include_embedding=True) == layers * per_layer + 2 * lm_head
    # Mistral's "active parameters" count the embedding table too.
    assert active_params(MIXTRAL, include_embedding=True) == pytest.approx(MIXTRAL_PUBLISHED_ACTIVE, rel=0.01)

    seq = 4096
    flops = transformer_flops_breakdown(MIXTRAL, seq)
    attention = 12 * layers * 32 * 128 * seq
    assert flops.total == pytest.approx(6 * (layers * per_layer + lm_head) + attention, rel=1e-12)
    assert flops.router == 6 * layers * router
    assert flops.linear == 6 * layers * (q_and_out + k_and_v + 2 * expert)
    assert transformer_flops_per_token(active_params(MIXTRAL), layers, 32, 128, seq) == pytest.approx(
        flops.total, rel=1e-12
    )


def test_shared_experts_count_in_full() -> None:
    kwargs = {"n_layers": 4, "d_model": 256, "n_heads": 4, "ffn_hidden": 128, "vocab_size": 1000}
    routed = TransformerArch(**kwargs, gated_mlp=True, n_experts=64, top_k=6)
    shared = TransformerArch(**kwargs, gated_mlp=True, n_experts=64, top_k=6, n_shared_experts=2)
    assert active_params(shared) - active_params(routed) == 4 * 2 * 3 * 256 * 128
    dense = TransformerArch(**kwargs)
    assert active_params(dense) == 4 * (4 * 256 * 256 + 2 * 256 * 128) + 1000 * 256


def test_fp8_split_for_transformer_engine() -> None:
    flops = transformer_flops_breakdown(MIXTRAL, 4096)
    tokens = 4 * 4096
    split = fp8_flops_by_dtype(flops, tokens=tokens)
    assert split == {
        "fp8": flops.linear * tokens,
        "bf16": (flops.attention + flops.router + flops.lm_head) * tokens,
    }
    assert sum(split.values()) == pytest.approx(flops.total * tokens, rel=1e-12)
    head_in_fp8 = fp8_flops_by_dtype(flops, other_dtype="fp16", fp8_lm_head=True)
    assert head_in_fp8 == {"fp8": flops.linear + flops.lm_head, "fp16": flops.attention + flops.router}
    by_hand = fp8_flops_by_dtype(FlopsBreakdown(linear=6e9, attention=1e9))
    assert by_hand == {"fp8": 6e9, "bf16": 1e9}


def test_one_causal_default_everywhere() -> None:
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(transformer_flops_per_token, "causal") is False
    assert default(transformer_flops_breakdown, "causal") is False
    assert "``causal=False`` is the default" in (flops.__doc__ or "")
    root = Path(__file__).resolve().parents[1]
    assert "`causal=False` is the default" in (root / "docs" / "client.md").read_text(encoding="utf-8")
    for doc in (root / "README.md", root / "docs" / "client.md"):
        code = "".join(re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S))
        assert "causal=True" not in code, f"{doc.name}: an example departs from the default convention"


def test_formula_terms() -> None:
    n, layers, heads, q, t = 1e9, 24, 16, 64, 1024
    full = transformer_flops_per_token(n, layers, heads, q, t)
    # The attention term grows linearly with sequence length; the 6N term does not.
    doubled_seq = transformer_flops_per_token(n, layers, heads, q, 2 * t)
    attention = doubled_seq - full
    assert full - attention == pytest.approx(6 * n)
    # ... and is linear in layers and heads too.
    assert transformer_flops_per_token(n, 2 * layers, heads, q, t) - full == pytest.approx(attention)
    assert transformer_flops_per_token(n, layers, 2 * heads, q, t) - full == pytest.approx(attention)
    # 6N: with a tiny attention term the total approaches 6 FLOPs per parameter.
    assert transformer_flops_per_token(n, 1, 1, 1, 1) == pytest.approx(6 * n, rel=1e-6)


def test_causal_halves_the_attention_term() -> None:
    args = (7e9, 32, 32, 128, 4096)
    full = transformer_flops_per_token(*args)
    causal = transformer_flops_per_token(*args, causal=True)
    six_n = 6 * args[0]
    assert causal < full
    assert causal - six_n == pytest.approx((full - six_n) / 2)


def test_accepts_integer_and_float_params() -> None:
    assert transformer_flops_per_token(10**9, 2, 2, 2, 2) == transformer_flops_per_token(1e9, 2, 2, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"n_params": 0}, "n_params"),
        ({"n_params": -1e9}, "n_params"),
        ({"n_params": float("nan")}, "n_params"),
        ({"n_params": float("inf")}, "n_params"),
        ({"n_params": "7e9"}, "n_params"),
        ({"n_params": True}, "n_params"),
        ({"n_layers": 0}, "n_layers"),
        ({"n_layers": 2.5}, "n_layers"),
        ({"n_heads": -4}, "n_heads"),
        ({"n_heads": None}, "n_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"head_dim": True}, "head_dim"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 2048.0}, "seq_len"),
        ({"causal": "yes"}, "causal"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict, bad: str) -> None:
    args = {"n_params": 1e9, "n_layers": 2, "n_heads": 2, "head_dim": 8, "seq_len": 16} | kwargs
    with pytest.raises(ValueError, match=bad):
        transformer_flops_per_token(**args)


@pytest.mark.parametrize(("n", "a", "b"), [(7, 3, 5), (4, 16, 32)])
def test_measure_flops_linear_forward_backward(n: int, a: int, b: int) -> None:
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(a, b)
    x = torch.randn(n, a, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    # forward x @ W^T: 2nab; backward grad_x and grad_W: 2nab each -> 6nab matmul FLOPs in all
    assert measure_flops(step) == 6 * n * a * b


def test_measure_flops_passes_arguments_through() -> None:
    torch = pytest.importorskip("torch")
    n, a, b = 3, 4, 5
    seen = {}

    def forward(x, w, *, scale):
        seen["scale"] = scale
        return (x @ w) * scale

    count = measure_flops(forward, torch.randn(n, a), torch.randn(a, b), scale=2.0)
    assert seen == {"scale": 2.0}
    assert count == 2 * n * a * b  # forward matmul only


def test_measure_flops_without_torch_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if torch were not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.flop_counter", None)
    with pytest.raises(RuntimeError, match="torch"):
        measure_flops(lambda: None)


def test_flops_module_imports_only_the_stdlib() -> None:
    tree = ast.parse(Path(flops.__file__).read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:  # module-level imports only; measure_flops imports torch lazily
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "flops.py must not import from the agent package"
            top_level.add((node.module or "").split(".")[0])
    assert top_level, "expected some imports"
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level


def test_importing_flops_does_not_import_torch_or_the_agent() -> None:
    code = (
        "import sys, mfu_agent.flops;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or (m.startswith('mfu_agent.') and m != 'mfu_agent.flops'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


ARCH = {"n_layers": 2, "d_model": 64, "n_heads": 4, "ffn_hidden": 128, "vocab_size": 100}


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"n_layers": 0}, "n_layers"),
        ({"d_model": 64.0}, "d_model"),
        ({"n_heads": True}, "n_heads"),
        ({"ffn_hidden": -1}, "ffn_hidden"),
        ({"vocab_size": None}, "vocab_size"),
        ({"n_kv_heads": 3}, "n_kv_heads"),  # does not divide 4 query heads
        ({"n_kv_heads": 8}, "n_kv_heads"),  # more than the query heads
        ({"n_kv_heads": 0}, "n_kv_heads"),
        ({"n_heads": 3}, "head_dim"),  # 3 does not divide 64: head_dim must be given
        ({"head_dim": 0}, "head_dim"),
        ({"gated_mlp": 1}, "gated_mlp"),
        ({"n_experts": -1}, "n_experts"),
        ({"top_k": 2}, "n_experts"),  # top_k without experts
        ({"n_shared_experts": 1}, "n_experts"),
        ({"n_experts": 8}, "top_k"),  # top_k 0 with experts
        ({"n_experts": 8, "top_k": 9}, "top_k"),
    ],
)
def test_invalid_architecture_raises_naming_the_field(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        TransformerArch(**(ARCH | kwargs))


def test_head_dim_may_differ_from_d_model_over_heads() -> None:
    arch = TransformerArch(**(ARCH | {"n_heads": 3, "head_dim": 32}))
    assert arch.query_dim == 96
    assert active_params(arch, include_lm_head=False) == 2 * (2 * 64 * 96 + 2 * 64 * 96 + 2 * 64 * 128)


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda: active_params(ARCH), "arch"),
        (lambda: active_params(TransformerArch(**ARCH), include_lm_head=None), "include_lm_head"),
        (lambda: active_params(TransformerArch(**ARCH), include_embedding="no"), "include_embedding"),
        (lambda: transformer_flops_breakdown(ARCH, 16), "arch"),
        (lambda: transformer_flops_breakdown(TransformerArch(**ARCH), 0), "seq_len"),
        (lambda: transformer_flops_breakdown(TransformerArch(**ARCH), 16, causal=1), "causal"),
        (
            lambda: transformer_flops_breakdown(TransformerArch(**ARCH), 16, include_lm_head=0),
            "include_lm_head",
        ),
        (lambda: FlopsBreakdown(linear=-1.0, attention=0.0), "linear"),
        (lambda: FlopsBreakdown(linear=1.0, attention=float("nan")), "attention"),
        (lambda: fp8_flops_by_dtype(1e9), "flops"),
        (lambda: fp8_flops_by_dtype(FlopsBreakdown(1.0, 1.0), tokens=0), "tokens"),
        (lambda: fp8_flops_by_dtype(FlopsBreakdown(1.0, 1.0), other_dtype="fp8"), "other_dtype"),
        (lambda: fp8_flops_by_dtype(FlopsBreakdown(1.0, 1.0), other_dtype="bfloat"), "other_dtype"),
        (lambda: fp8_flops_by_dtype(FlopsBreakdown(1.0, 1.0), fp8_lm_head="yes"), "fp8_lm_head"),
    ],
)
def test_invalid_helper_arguments_raise_naming_the_argument(call, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        call()


def test_dtype_list_matches_the_client() -> None:
    from mfu_agent.client import DTYPES

    assert flops.DTYPES == DTYPES  # flops.py cannot import the client (stdlib only); keep them in step
