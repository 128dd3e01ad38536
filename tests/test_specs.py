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
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
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


def test_docs_list_nvml_names_that_really_match() -> None:
    rows = _doc_rows()
    for model, cells in rows.items():
        names = re.findall(r"`([^`]+)`", cells[1])
        assert names, model
        for name in names:
            assert match_model(name) == model, name
