"""Training-side FLOP counting: the PaLM formula and torch's FlopCounterMode."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mfu_agent import flops
from mfu_agent.flops import measure_flops, transformer_flops_per_token

# PaLM (Chowdhery et al. 2022), section 4.1 / table 3 and appendix B: the 540B model.
PALM_PARAMS = 540e9
PALM_LAYERS = 118
PALM_HEADS = 48
PALM_HEAD_DIM = 256
PALM_SEQ = 2048
PALM_TOKENS_PER_S = 238.3e3
PALM_CHIPS = 6144
PALM_CHIP_PEAK = 275e12  # TPU v4 bf16 peak FLOP/s
PALM_MFU_PERCENT = 46.2


def test_palm_540b_mfu_is_reproduced() -> None:
    per_token = transformer_flops_per_token(PALM_PARAMS, PALM_LAYERS, PALM_HEADS, PALM_HEAD_DIM, PALM_SEQ)
    mfu = per_token * PALM_TOKENS_PER_S / (PALM_CHIPS * PALM_CHIP_PEAK)
    assert abs(mfu * 100 - PALM_MFU_PERCENT) < 0.1


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
