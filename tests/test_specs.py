"""Peak FLOP/s table: name matching, datasheet figures (dense), overrides."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mfu_agent import specs
from mfu_agent.specs import (
    BUILTIN_PEAKS,
    DTYPES,
    PeakTable,
    known_models,
    load_overrides,
    match_model,
    peak_flops,
    peaks_for,
)

T = 1e12  # TFLOP/s -> FLOP/s

# Device names exactly as NVML (nvidia-smi --query-gpu=name) reports them, and the model they are.
NVML_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA GH200 144G HBM3e": "GH200",
    "NVIDIA A100-SXM4-80GB": "A100 SXM",
    "NVIDIA A100-SXM4-40GB": "A100 SXM",
    "NVIDIA A100 80GB PCIe": "A100 PCIe",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe",
    "NVIDIA A10G": "A10G",
    "NVIDIA A10": "A10",
    "NVIDIA A30": "A30",
    "NVIDIA A40": "A40",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA B200": "B200",
    "NVIDIA B100": "B100",
    "NVIDIA GB200": "GB200",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "NVIDIA GeForce RTX 3090": "RTX 3090",
    "NVIDIA RTX 6000 Ada Generation": "RTX 6000 Ada",
    "Tesla V100-SXM2-32GB": "V100 SXM2",
    "Tesla V100-SXM2-16GB": "V100 SXM2",
    "Tesla V100-PCIE-32GB": "V100 PCIe",
    "Tesla V100S-PCIE-32GB": "V100S PCIe",
    "Tesla T4": "T4",
    "NVIDIA A800-SXM4-80GB": "A800 SXM",
    "NVIDIA A800 80GB PCIe": "A800 PCIe",
    "NVIDIA H800": "H800 SXM",
    "NVIDIA H800 PCIe": "H800 PCIe",
    "NVIDIA H20": "H20",
    "NVIDIA L20": "L20",
    "NVIDIA RTX A6000": "RTX A6000",
    "NVIDIA RTX PRO 6000 Blackwell Workstation Edition": "RTX PRO 6000 Blackwell WS",
    "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition": "RTX PRO 6000 Blackwell Max-Q",
    "NVIDIA GeForce RTX 5090": "RTX 5090",
    "NVIDIA B300 SXM6 AC": "B300",
    "NVIDIA B300": "B300",
    "NVIDIA GB300": "GB300",
    "NVIDIA A2": "A2",
    "NVIDIA A16": "A16",
    "Tesla V100-SXM3-32GB": "V100 SXM3",
}


@pytest.mark.parametrize(("name", "model"), sorted(NVML_NAMES.items()))
def test_every_nvml_name_maps_to_its_model(name: str, model: str) -> None:
    assert match_model(name) == model


@pytest.mark.parametrize("name", sorted(NVML_NAMES))
def test_no_nvml_name_matches_two_patterns(name: str) -> None:
    normalized = specs._normalize(name)
    hits = [m.key for m, pattern in specs._COMPILED if pattern.fullmatch(normalized)]
    assert len(hits) == 1, hits


@pytest.mark.parametrize(
    ("name", "model"),
    [
        # substring traps: the shorter name must not swallow the longer one, nor the reverse
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GB200", "GB200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA H20", "H20"),  # not the H200
        ("NVIDIA L20", "L20"),  # not the L4 / L40
        ("NVIDIA A2", "A2"),  # not the A10 / A16 / A2000
        ("NVIDIA A16", "A16"),
        ("NVIDIA H800", "H800 SXM"),
        ("NVIDIA H800 PCIe", "H800 PCIe"),
        ("Tesla V100-SXM3-32GB", "V100 SXM3"),  # not the SXM2
        ("NVIDIA GB300", "GB300"),
        # case and separators do not matter
        ("nvidia a100-sxm4-80gb", "A100 SXM"),
        ("  NVIDIA  L40S ", "L40S"),
        # canonical keys resolve to themselves
        ("H100 SXM", "H100 SXM"),
        ("a100 pcie", "A100 PCIe"),
        ("RTX 6000 Ada", "RTX 6000 Ada"),
    ],
)
def test_near_misses_resolve_to_the_right_model(name: str, model: str) -> None:
    assert match_model(name) == model


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H999",
        "NVIDIA H100",  # ambiguous: SXM, PCIe and NVL differ by ~30%
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a MIG slice has a fraction of the peak
        "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
        "NVIDIA A1000",
        "NVIDIA L4000",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 3090 Ti",
        "Quadro RTX 6000",
        "NVIDIA A100X",
        "AMD Instinct MI300X",
        # no datasheet figure found for these: an operator adds them with --peak-flops-file
        "Tesla V100-FHHL-16GB",
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        "Tesla V100-SXM3-32GB-H",  # DGX-2H: higher clocks than the DGX-2's SXM3
        "NVIDIA GeForce RTX 5090 D",
        "NVIDIA A20",
        "NVIDIA RTX A2000",
        "NVIDIA H20 MIG 1g.12gb",
        "",
    ],
)
def test_unknown_or_ambiguous_names_match_nothing(name: str) -> None:
    assert match_model(name) is None
    assert peaks_for(name) == {}
    for dtype in DTYPES:
        assert peak_flops(name, dtype) is None


# Datasheet / whitepaper facts, TFLOP/s, as printed. "sparse" figures are the "with sparsity"
# headlines, which are 2x the dense peak; "dense" ones are printed dense.
H100_SXM_DENSE = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 66.9}
H100_SXM_SPARSE = {"fp8": 3958.0, "int8": 3958.0}
A100_DENSE = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5, "int8": 624.0}


def test_h100_sxm_matches_the_datasheet_dense_figures() -> None:
    for dtype, tflops in H100_SXM_DENSE.items():
        assert peak_flops("NVIDIA H100 80GB HBM3", dtype) == pytest.approx(tflops * T)
    for dtype, sparse_tflops in H100_SXM_SPARSE.items():
        assert peak_flops("NVIDIA H100 80GB HBM3", dtype) == pytest.approx(sparse_tflops / 2 * T)


def test_default_dtype_is_bf16() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(H100_SXM_DENSE["bf16"] * T)


@pytest.mark.parametrize("name", ["NVIDIA H200", "NVIDIA GH200 480GB"])
def test_h200_and_gh200_have_h100_sxm_compute(name: str) -> None:
    assert peaks_for(name) == peaks_for("NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize("name", ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe"])
def test_a100_matches_the_datasheet_dense_figures(name: str) -> None:
    for dtype, tflops in A100_DENSE.items():
        assert peak_flops(name, dtype) == pytest.approx(tflops * T)


@pytest.mark.parametrize(
    ("name", "dtype", "sparse_tflops"),
    [
        # datasheet BF16 headlines, all "with sparsity"
        ("NVIDIA H100 80GB HBM3", "bf16", 1978.9),  # H100 whitepaper
        ("NVIDIA H100 PCIe", "bf16", 1513.0),
        ("NVIDIA H100 NVL", "bf16", 1671.0),
        ("NVIDIA H200 NVL", "bf16", 1671.0),
        ("NVIDIA L40S", "bf16", 733.0),
        ("NVIDIA L4", "bf16", 242.0),
        ("NVIDIA B200", "bf16", 4500.0),
        ("NVIDIA GB200", "bf16", 5000.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 624.0),
        ("NVIDIA L4", "fp8", 485.0),
        ("NVIDIA B200", "fp8", 9000.0),
    ],
)
def test_peaks_are_dense_not_the_sparse_headline(name: str, dtype: str, sparse_tflops: float) -> None:
    # Dense is half the 2:4-sparsity headline; allow 1.5% for NVIDIA's own rounding (L40S prints
    # 362.05 dense next to 733 sparse).
    assert peak_flops(name, dtype) == pytest.approx(sparse_tflops / 2 * T, rel=0.015)


@pytest.mark.parametrize(
    ("name", "dtype", "dense_tflops"),
    [
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA L40S", "bf16", 362.05),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA B200", "bf16", 2250.0),
        ("Tesla V100-SXM2-32GB", "fp16", 125.0),
        ("Tesla T4", "fp16", 65.0),
    ],
)
def test_datasheet_dense_figures(name: str, dtype: str, dense_tflops: float) -> None:
    assert peak_flops(name, dtype) == pytest.approx(dense_tflops * T)


# The devices added for issue 9, by NVML name: (dtype, dense TFLOP/s as computed from the sheet's
# printed figure). "sparse / 2" where the sheet prints the 2:4-sparsity headline; board or rack
# figures divided by their GPU count; "AI TOPS" (FP4 with sparsity) / 8 = dense BF16.
NEW_DEVICE_DENSE_TFLOPS = [
    ("NVIDIA A800-SXM4-80GB", "bf16", 312.0),  # A800 datasheet, dense column
    ("NVIDIA A800 80GB PCIe", "bf16", 312.0),  # A800 datasheet, dense column
    ("NVIDIA H800", "bf16", 1979.0 / 2),  # H800 datasheet, SXM: BF16 1,979 with sparsity
    ("NVIDIA H800 PCIe", "bf16", 1513.0 / 2),  # H800 datasheet, PCIe: BF16 1,513 with sparsity
    ("NVIDIA H800", "fp8", 3958.0 / 2),
    ("NVIDIA H20", "bf16", 148.0),  # H20 spec sheet, dense
    ("NVIDIA L20", "bf16", 119.5),  # L20 spec sheet, dense
    ("NVIDIA RTX A6000", "bf16", 309.7 / 2),  # RTX A6000 datasheet: tensor 309.7 with sparsity
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "bf16", 4000.0 / 8),  # 4,000 AI TOPS
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "bf16", 3511.0 / 8),  # 3,511 AI TOPS
    ("NVIDIA GeForce RTX 5090", "bf16", 419.0 / 2),  # RTX Blackwell whitepaper: FP32 acc. 209.5/419
    ("NVIDIA B300 SXM6 AC", "bf16", 36_000.0 / 8 / 2),  # HGX B300: 36 PF for 8 GPUs, sparse
    ("NVIDIA B300", "fp8", 72_000.0 / 8 / 2),  # HGX B300: 72 PF for 8 GPUs, sparse
    ("NVIDIA GB300", "bf16", 360_000.0 / 72 / 2),  # GB300 NVL72: 360 PF for 72 GPUs, sparse
    ("NVIDIA A2", "bf16", 36.0 / 2),  # A2 datasheet: 18 | 36*
    ("NVIDIA A16", "bf16", 4 * 36.0 / 2 / 4),  # A16 datasheet: 4x 18 | 4x 36* for the 4-GPU board
    ("Tesla V100-SXM3-32GB", "fp16", 2000.0 / 16),  # DGX-2 datasheet: 2 PFLOPS for 16 GPUs
]


@pytest.mark.parametrize(("name", "dtype", "dense_tflops"), NEW_DEVICE_DENSE_TFLOPS)
def test_new_devices_have_their_datasheet_dense_figure(name: str, dtype: str, dense_tflops: float) -> None:
    assert peak_flops(name, dtype) == pytest.approx(dense_tflops * T)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA B300", "int8"),  # the HGX B300 INT8 figure is ambiguous: left out
        ("NVIDIA GB300", "fp32"),  # only a rounded rack total
        ("Tesla V100-SXM3-32GB", "fp32"),  # the DGX-2 sheet gives tensor figures only
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "int8"),
    ],
)
def test_new_devices_leave_unknown_dtypes_out(name: str, dtype: str) -> None:
    assert match_model(name) is not None
    assert peak_flops(name, dtype) is None


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("Tesla V100-SXM2-32GB", "bf16"),  # Volta has no BF16
        ("Tesla V100-SXM2-32GB", "tf32"),
        ("Tesla T4", "bf16"),  # Turing has no BF16
        ("Tesla T4", "fp8"),
        ("NVIDIA A100-SXM4-80GB", "fp8"),  # FP8 arrived with Hopper / Ada
        ("NVIDIA A10G", "fp8"),
        ("NVIDIA GeForce RTX 3090", "fp8"),
    ],
)
def test_unsupported_dtype_is_none_not_a_fallback(name: str, dtype: str) -> None:
    assert match_model(name) is not None
    assert peak_flops(name, dtype) is None


def test_unknown_dtype_raises_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        peak_flops("NVIDIA H100 80GB HBM3", "fp4")
    for dtype in DTYPES:
        assert dtype in str(excinfo.value)
    with pytest.raises(ValueError):
        peak_flops("NVIDIA H999", "float")  # unknown dtype is an error even for an unknown GPU


def test_dtype_is_case_insensitive() -> None:
    assert peak_flops("NVIDIA L4", "BF16") == peak_flops("NVIDIA L4", "bf16")


def test_every_row_has_a_source_and_positive_peaks() -> None:
    for model in specs._MODELS:
        assert model.source.strip()
        assert model.tflops, model.key
        assert set(model.tflops) <= set(DTYPES), model.key
        assert all(v > 0 for v in model.tflops.values()), model.key
    assert list(BUILTIN_PEAKS) == list(known_models())
    assert len(set(known_models())) == len(known_models())


def test_source_comment_above_every_row() -> None:
    # Each _Model(...) row in the source is preceded by a comment naming where its figures are from.
    text = Path(specs.__file__).read_text(encoding="utf-8")
    rows = text.split("    _Model(\n")[1:]
    assert len(rows) == len(specs._MODELS)
    chunks = text.split("    _Model(\n")[:-1]
    for chunk in chunks:
        last_lines = [line.strip() for line in chunk.rstrip().splitlines()[-3:]]
        assert any(line.startswith("#") for line in last_lines), chunk[-200:]


@pytest.mark.parametrize("model", known_models())
def test_tensor_dtype_ratios_are_consistent(model: str) -> None:
    # Tensor cores run BF16 at twice the TF32 rate and FP8 at twice the BF16 rate (dense). A row
    # that mixed a sparse figure with dense ones would be off by 2x here.
    peaks = BUILTIN_PEAKS[model]
    if "bf16" in peaks and "fp16" in peaks:
        assert peaks["bf16"] == peaks["fp16"]
    if "bf16" in peaks and "tf32" in peaks:
        assert peaks["bf16"] / peaks["tf32"] == pytest.approx(2, rel=0.05)
    if "fp8" in peaks and "bf16" in peaks:
        assert peaks["fp8"] / peaks["bf16"] == pytest.approx(2, rel=0.05)


# ---- reference clocks -------------------------------------------------------------------------

# Hardware facts, from the whitepapers: execution units and dense FLOP per clock per unit at a dtype
# (SMs x tensor FLOP/clk/SM, or CUDA cores x 2 for FP32/FP64 FMA). A figure is units x rate x the
# clock it assumes, so peak / (units x rate) must give back the reference clock. A wrong clock, or
# a figure mixing two clocks, fails here.
UNITS_AND_RATE = [
    ("NVIDIA A100-SXM4-80GB", "bf16", 108, 2048),  # A100 whitepaper: 108 SMs
    ("NVIDIA A100-SXM4-80GB", "fp32", 6912, 2),
    ("NVIDIA A800-SXM4-80GB", "bf16", 108, 2048),
    ("NVIDIA H100 80GB HBM3", "bf16", 132, 4096),  # H100 whitepaper: 132 SMs (SXM5)
    ("NVIDIA H100 80GB HBM3", "fp8", 132, 8192),
    ("NVIDIA H100 80GB HBM3", "fp32", 16896, 2),  # FP32 at another clock than the tensor figures
    ("NVIDIA H100 PCIe", "bf16", 114, 4096),  # 114 SMs (PCIe)
    ("NVIDIA H100 PCIe", "fp32", 14592, 2),
    ("NVIDIA H800", "bf16", 132, 4096),
    ("NVIDIA H800 PCIe", "bf16", 114, 4096),
    ("NVIDIA A30", "bf16", 56, 2048),
    ("NVIDIA A40", "bf16", 84, 1024),  # GA102: 84 SMs
    ("NVIDIA A10", "bf16", 72, 1024),
    ("NVIDIA RTX A6000", "bf16", 84, 1024),
    ("NVIDIA RTX A6000", "fp32", 10752, 2),
    ("NVIDIA A2", "bf16", 10, 1024),  # GA107: 10 SMs (1,280 cores)
    ("NVIDIA GeForce RTX 3090", "bf16", 82, 512),  # GeForce: FP32 accumulate at half rate
    ("NVIDIA L4", "bf16", 58, 1024),
    ("NVIDIA L40", "bf16", 142, 512),
    ("NVIDIA L40S", "bf16", 142, 1024),
    ("NVIDIA L40S", "fp8", 142, 2048),
    ("NVIDIA L40S", "fp32", 18176, 2),
    ("NVIDIA RTX 6000 Ada Generation", "fp8", 142, 2048),
    ("NVIDIA GeForce RTX 4090", "bf16", 128, 512),
    ("NVIDIA GeForce RTX 5090", "bf16", 170, 512),
    ("NVIDIA GeForce RTX 5090", "fp32", 21760, 2),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "bf16", 188, 1024),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "fp32", 24064, 2),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "bf16", 188, 1024),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "fp32", 24064, 2),
    ("Tesla V100-SXM2-32GB", "fp16", 80, 1024),  # Volta: 8 tensor cores x 64 FMA per SM
    ("Tesla V100-SXM3-32GB", "fp16", 80, 1024),
    ("Tesla V100-PCIE-32GB", "fp16", 80, 1024),
    ("Tesla V100S-PCIE-32GB", "fp16", 80, 1024),
    ("Tesla V100S-PCIE-32GB", "fp32", 5120, 2),
    ("Tesla T4", "fp16", 40, 1024),
]


@pytest.mark.parametrize(("name", "dtype", "units", "flop_per_clock"), UNITS_AND_RATE)
def test_reference_clock_reproduces_the_figure(name: str, dtype: str, units: int, flop_per_clock: int):
    clock = specs.reference_clock_hz(name, dtype)
    assert clock is not None
    # 1%: datasheets round their figures (L4 prints TF32 60 for 60.6).
    assert units * flop_per_clock * clock == pytest.approx(peak_flops(name, dtype), rel=0.01)


def test_reference_clocks_named_by_the_whitepapers() -> None:
    # A100 whitepaper: 1410 MHz boost; H100 whitepaper: tensor figures at 1830 MHz, FP32 at 1980 MHz.
    assert specs.reference_clock_hz("NVIDIA A100-SXM4-80GB") == 1410e6
    assert specs.reference_clock_hz("NVIDIA H100 80GB HBM3") == 1830e6
    assert specs.reference_clock_hz("NVIDIA H100 80GB HBM3", "bf16") == 1830e6
    assert specs.reference_clock_hz("NVIDIA H100 80GB HBM3", "FP32") == 1980e6
    assert specs.reference_clocks_for("NVIDIA H100 80GB HBM3")["tf32"] == 1830e6


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA H100 NVL", None),  # no published SM count / clock behind the NVL figures
        ("NVIDIA B200", None),
        ("NVIDIA B300", "bf16"),
        ("NVIDIA A10G", None),
        ("NVIDIA H20", None),
        ("NVIDIA L20", "bf16"),
        ("NVIDIA A16", None),
        ("NVIDIA H800", "fp64"),  # the cut-down FP64 has no known clock
        ("Tesla V100-SXM2-32GB", "bf16"),  # no figure, so no clock
        ("NVIDIA H999", None),
        ("NVIDIA H999", "bf16"),
    ],
)
def test_unknown_reference_clock_is_none(name: str, dtype: str | None) -> None:
    assert specs.reference_clock_hz(name, dtype) is None
    if dtype is not None:
        assert dtype not in specs.reference_clocks_for(name)


def test_reference_clocks_for_agrees_with_reference_clock_hz() -> None:
    for name in NVML_NAMES:
        clocks = specs.reference_clocks_for(name)
        assert set(clocks) <= set(peaks_for(name)), name
        for dtype in DTYPES:
            assert clocks.get(dtype) == specs.reference_clock_hz(name, dtype), (name, dtype)


def test_every_row_states_its_clock_and_where_it_comes_from() -> None:
    for model in specs._MODELS:
        assert set(model.clock_by_dtype) <= set(model.tflops), model.key
        clocks = specs.BUILTIN_REFERENCE_CLOCKS[model.key]
        assert set(clocks) <= set(model.tflops), model.key
        assert all(1e8 < hz < 4e9 for hz in clocks.values()), model.key  # 100 MHz .. 4 GHz
        assert bool(model.clock_source.strip()) == bool(clocks), model.key
        if model.clock_mhz is None:
            assert not model.clock_by_dtype, model.key


def test_overridden_peak_has_no_reference_clock() -> None:
    # An operator's figure comes with no known clock; the untouched dtypes keep theirs.
    name = "NVIDIA A100-SXM4-80GB"
    by_model = PeakTable({"A100 SXM": {"bf16": 300e12}})
    assert by_model.reference_clock_hz(name, "bf16") is None
    assert by_model.reference_clock_hz(name, "tf32") == 1410e6
    assert "bf16" not in by_model.reference_clocks_for(name)
    by_device = PeakTable({name: {"tf32": 150e12}})
    assert by_device.reference_clock_hz(name, "tf32") is None
    assert by_device.reference_clock_hz("NVIDIA A100-SXM4-40GB", "tf32") == 1410e6
    added = PeakTable({"My Custom GPU": {"bf16": 1e15}})
    assert added.reference_clock_hz("My Custom GPU") is None
    assert added.reference_clocks_for("My Custom GPU") == {}


# ---- overrides --------------------------------------------------------------------------------


def test_override_by_model_key_applies_to_every_name_of_that_model() -> None:
    table = PeakTable({"A100 SXM": {"bf16": 300e12}})
    assert table.peak_flops("NVIDIA A100-SXM4-80GB") == 300e12
    assert table.peak_flops("NVIDIA A100-SXM4-40GB") == 300e12
    # other dtypes and other models are untouched
    assert table.peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == pytest.approx(A100_DENSE["tf32"] * T)
    assert table.peak_flops("NVIDIA A100-PCIE-40GB") == pytest.approx(A100_DENSE["bf16"] * T)


def test_override_by_exact_nvml_name_is_case_insensitive_and_name_specific() -> None:
    table = PeakTable({"nvidia a100-sxm4-40gb": {"bf16": 280e12}})
    assert table.peak_flops("NVIDIA A100-SXM4-40GB") == 280e12
    assert table.peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(A100_DENSE["bf16"] * T)
    assert table.match_model("NVIDIA A100-SXM4-40GB") == "A100 SXM"


def test_device_override_beats_model_override() -> None:
    table = PeakTable({"A100 SXM": {"bf16": 300e12}, "NVIDIA A100-SXM4-80GB": {"bf16": 290e12}})
    assert table.peak_flops("NVIDIA A100-SXM4-80GB") == 290e12
    assert table.peak_flops("NVIDIA A100-SXM4-40GB") == 300e12


def test_override_adds_an_unknown_device() -> None:
    table = PeakTable({"My Custom GPU": {"bf16": 1e15, "fp8": 2e15}})
    assert table.match_model("my custom gpu") == "My Custom GPU"
    assert table.peak_flops("My Custom GPU") == 1e15
    assert table.peak_flops("MY CUSTOM GPU", "fp8") == 2e15
    assert table.peak_flops("My Custom GPU", "fp32") is None
    assert table.peaks_for("My Custom GPU") == {"fp8": 2e15, "bf16": 1e15}
    assert table.match_model("My Other GPU") is None


def test_override_can_add_a_dtype_a_model_lacks() -> None:
    table = PeakTable({"T4": {"fp64": 0.25e12}})
    assert table.peak_flops("Tesla T4", "fp64") == 0.25e12
    assert peak_flops("Tesla T4", "fp64") is None


def test_overrides_do_not_leak_into_the_default_table() -> None:
    PeakTable({"H100 SXM": {"bf16": 1.0}, "NVIDIA H999": {"bf16": 1.0}})
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(H100_SXM_DENSE["bf16"] * T)
    assert peak_flops("NVIDIA H999") is None
    assert match_model("NVIDIA H999") is None


def test_peak_table_validates_its_overrides() -> None:
    with pytest.raises(ValueError, match="fp4"):
        PeakTable({"H100 SXM": {"fp4": 1e15}})
    with pytest.raises(ValueError, match="positive"):
        PeakTable({"H100 SXM": {"bf16": -1.0}})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peaks.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_overrides_reads_the_documented_shape(tmp_path: Path) -> None:
    doc = {"NVIDIA H100 80GB HBM3": {"bf16": 989.4e12}, "My Custom GPU": {"bf16": 1e15, "FP8": 2e15}}
    loaded = load_overrides(_write(tmp_path, json.dumps(doc)))
    assert loaded == {
        "NVIDIA H100 80GB HBM3": {"bf16": 989.4e12},
        "My Custom GPU": {"bf16": 1e15, "fp8": 2e15},
    }
    assert PeakTable(loaded).peak_flops("My Custom GPU") == 1e15
    assert load_overrides(str(_write(tmp_path, "{}"))) == {}


@pytest.mark.parametrize(
    ("text", "fragment", "key"),
    [
        ("[1, 2]", "expected an object", None),
        ('{"NVIDIA L4": 121e12}', "expected an object", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": "121e12"}}', "number", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": true}}', "number", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": null}}', "number", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": -1}}', "positive", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": 0}}', "positive", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": NaN}}', "finite", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": Infinity}}', "finite", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bfloat16": 1e12}}', "bfloat16", "NVIDIA L4"),
        ('{"NVIDIA L4": {"bf16": 1e12}, "nvidia l4": {"bf16": 2e12}}', "duplicate", "nvidia l4"),
        ('{"NVIDIA L4": {"bf16": 1e12}, "NVIDIA L4": {"bf16": 2e12}}', "duplicate", "NVIDIA L4"),
        ('{"": {"bf16": 1e12}}', "non-empty", None),
        ('{"NVIDIA L4": {"bf16": 1e12,}}', "JSON", None),
    ],
)
def test_load_overrides_rejects_bad_files_naming_file_and_key(
    tmp_path: Path, text: str, fragment: str, key: str | None
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        load_overrides(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert fragment in message
    if key is not None:
        assert repr(key) in message


def test_load_overrides_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_overrides(tmp_path / "absent.json")


# ---- docs stay in step with the table -----------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "peak-flops.md"


def _doc_rows() -> dict[str, list[str]]:
    """The rows of the "## Table" section (other sections' tables, such as MIG SM counts, are not it)."""
    rows: dict[str, list[str]] = {}
    section = DOC.read_text(encoding="utf-8").split("\n## Table", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in BUILTIN_PEAKS:
            rows[cells[0]] = cells
    return rows


def test_docs_table_matches_the_builtin_table() -> None:
    rows = _doc_rows()
    assert set(rows) == set(BUILTIN_PEAKS)
    for model, cells in rows.items():
        values = cells[2 : 2 + len(DTYPES)]
        for dtype, cell in zip(DTYPES, values, strict=True):
            expected = BUILTIN_PEAKS[model].get(dtype)
            if expected is None:
                assert cell in {"—", "-", ""}, (model, dtype, cell)
            else:
                assert math.isclose(float(cell) * T, expected, rel_tol=1e-9), (model, dtype, cell)


def test_docs_table_states_each_reference_clock() -> None:
    # The "SM clock" column: the model's clock in MHz (first number), or a dash where unknown.
    for model, cells in _doc_rows().items():
        cell = cells[2 + len(DTYPES)]
        mhz = specs._MODEL_BY_KEY[model].clock_mhz
        if mhz is None:
            assert cell in {"—", "-"}, (model, cell)
        else:
            first = re.match(r"[0-9.]+", cell)
            assert first and float(first.group()) == mhz, (model, cell)


def test_docs_list_nvml_names_that_really_match() -> None:
    rows = _doc_rows()
    for model, cells in rows.items():
        names = re.findall(r"`([^`]+)`", cells[1])
        assert names, model
        for name in names:
            assert match_model(name) == model, name
