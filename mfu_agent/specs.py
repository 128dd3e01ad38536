"""Dense peak FLOP/s of NVIDIA GPUs by model and dtype, and the matching of NVML device names to models.

Every figure is the DENSE peak: NVIDIA datasheets headline tensor-core throughput "with sparsity"
(2:4 structured sparsity), which is twice the dense figure. MFU is measured against dense peaks, so
sparse-only datasheet figures are halved here and the comment on each row says so.

Conventions per dtype:

* ``fp32``: plain (non-tensor) FP32 CUDA-core peak.
* ``tf32``: tensor-core TF32 peak.
* ``bf16`` / ``fp16``: tensor-core peak with FP32 accumulate (what training frameworks use; on
  GeForce cards this is half the FP16-accumulate figure).
* ``fp8``: tensor-core FP8 peak (FP32 accumulate where the datasheet distinguishes).
* ``fp64``: the higher of the FP64 tensor-core and FP64 CUDA-core peaks.
* ``int8``: tensor-core INT8 peak in OP/s, treated like FLOP/s.

A dtype a GPU has no (datasheet) figure for is absent, so its peak is ``None``; nothing ever falls
back to another GPU's or another dtype's peak.

Reference clocks: each row also states the SM clock its figures assume, so that a peak can be scaled
to the clock a GPU actually runs at (``peak x current SM clock / reference clock``). A figure is
``SMs x FLOP per clock per SM x clock``; where the datasheet or whitepaper names the boost clock the
figure was computed at, that clock is used, otherwise the clock is DERIVED as
``figure / (SMs x FLOP per clock per SM)`` and the row says so. Figures of one row may assume
different clocks (H100 SXM: tensor figures at 1830 MHz, FP32/FP64 at 1980 MHz), so the clock is per
dtype. Where it is unknown the reference clock is ``None``; nothing guesses one.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILTIN_PEAKS",
    "BUILTIN_REFERENCE_CLOCKS",
    "CLOCK_SOURCES",
    "DTYPES",
    "MIG_SM_COUNTS",
    "PeakTable",
    "SOURCES",
    "known_models",
    "load_overrides",
    "match_model",
    "normalize_dtype",
    "peak_flops",
    "peaks_for",
    "reference_clock_hz",
    "reference_clocks_for",
]

DTYPES: tuple[str, ...] = ("fp8", "bf16", "fp16", "tf32", "fp32", "fp64", "int8")

_TERA = 1e12


_MEGA = 1e6


@dataclass(frozen=True)
class _Model:
    key: str
    pattern: str  # full-match regex over the normalised device name (see _normalize)
    tflops: Mapping[str, float]  # dense TFLOP/s (TOP/s for int8)
    source: str
    # SM clock (MHz) the row's figures assume; None where unknown. ``clock_by_dtype`` holds the
    # dtypes whose figure assumes another clock (None there: unknown for that dtype).
    clock_mhz: float | None = None
    clock_source: str = ""
    clock_by_dtype: Mapping[str, float | None] = field(default_factory=dict)

    def reference_clock_mhz(self, dtype: str) -> float | None:
        """SM clock (MHz) behind this row's ``dtype`` figure; None when unknown or no figure."""
        if dtype not in self.tflops:
            return None
        if dtype in self.clock_by_dtype:
            return self.clock_by_dtype[dtype]
        return self.clock_mhz


# Building blocks of the name patterns. Names are normalised first: lower case, "-" and "_" to
# spaces, whitespace collapsed. Every pattern must match the WHOLE name, so "nvidia l4" can never
# match "nvidia l40s", nor "nvidia a10" match "nvidia a100 ...".
_VENDOR = r"(?:nvidia )?(?:tesla )?(?:geforce )?"
_MEM = r"(?: \d+ ?gb?)?"  # optional memory size: "80gb", "144g", "32 gb"

# Ordered most specific first. Patterns are anchored full matches, so order only matters as a
# tie-break; tests check that no real NVML name matches two patterns.
_MODELS: tuple[_Model, ...] = (
    # ---- Hopper ----------------------------------------------------------------------------------
    # NVIDIA H100 NVL product brief / datasheet (per GPU, 2024 revision): FP64 30, FP64 Tensor 60,
    # FP32 60 TFLOPS; TF32 835, BF16/FP16 1,671, FP8/INT8 3,341 are "with sparsity" -> halved here.
    # Reference clock unknown: NVIDIA publishes neither the clock nor the SM count behind them.
    _Model(
        "H100 NVL",
        rf"{_VENDOR}h100 nvl{_MEM}",
        {
            "fp8": 1670.5,
            "bf16": 835.5,
            "fp16": 835.5,
            "tf32": 417.5,
            "fp32": 60.0,
            "fp64": 60.0,
            "int8": 1670.5,
        },
        "NVIDIA H100 NVL datasheet (per GPU); tensor figures halved from the sparse headline",
    ),
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 PCIe column), dense figures:
    # FP64 Tensor 51.2, FP32 51.2, TF32 378, BF16/FP16 756, FP8 1,513, INT8 1,513
    # (datasheet sparse headline: 756 / 1,513 / 3,026).
    # Clock: tensor figures DERIVED 756e12 / (114 SMs x 4096 dense BF16 FLOP/clk/SM) = 1619 MHz;
    # FP32/FP64 51.2e12 = 14,592 cores x 2 x 1755 MHz (the H100 PCIe boost clock).
    _Model(
        "H100 PCIe",
        rf"{_VENDOR}h100{_MEM} pcie{_MEM}",
        {
            "fp8": 1513.0,
            "bf16": 756.0,
            "fp16": 756.0,
            "tf32": 378.0,
            "fp32": 51.2,
            "fp64": 51.2,
            "int8": 1513.0,
        },
        "NVIDIA H100 whitepaper, H100 PCIe dense column (datasheet headline is sparse, 2x)",
        1619.0,
        "DERIVED for tensor dtypes: 756e12 / (114 SMs x 4096 FLOP/clk/SM); FP32/FP64: 1755 MHz boost",
        {"fp32": 1755.0, "fp64": 1755.0},
    ),
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5 column), dense figures:
    # FP64 Tensor 66.9, FP32 66.9, TF32 494.7, BF16/FP16 989.4; FP8/INT8 1,979 = datasheet's
    # 3,958 "with sparsity" halved. NVML reports the SXM5 part as "NVIDIA H100 80GB HBM3".
    # Clock: tensor figures 132 SMs x 4096 dense BF16 FLOP/clk/SM x 1830 MHz = 989.4e12 (the
    # whitepaper's tensor clock); FP32/FP64 66.9e12 = 16,896 cores x 2 x 1980 MHz (max boost).
    _Model(
        "H100 SXM",
        rf"{_VENDOR}h100(?: sxm5?{_MEM}(?: hbm3)?|{_MEM} hbm3)",
        {
            "fp8": 1979.0,
            "bf16": 989.4,
            "fp16": 989.4,
            "tf32": 494.7,
            "fp32": 66.9,
            "fp64": 66.9,
            "int8": 1979.0,
        },
        "NVIDIA H100 whitepaper / datasheet, H100 SXM5 (dense; datasheet headline is sparse, 2x)",
        1830.0,
        "H100 whitepaper: 132 SMs x 4096 FLOP/clk/SM x 1830 MHz; FP32/FP64 at the 1980 MHz max boost",
        {"fp32": 1980.0, "fp64": 1980.0},
    ),
    # NVIDIA H200 NVL datasheet: same compute as H100 NVL (FP64 30, FP64 Tensor 60, FP32 60;
    # TF32 835, BF16/FP16 1,671, FP8/INT8 3,341 "with sparsity" -> halved). Clock unknown, as H100 NVL.
    _Model(
        "H200 NVL",
        rf"{_VENDOR}h200 nvl{_MEM}",
        {
            "fp8": 1670.5,
            "bf16": 835.5,
            "fp16": 835.5,
            "tf32": 417.5,
            "fp32": 60.0,
            "fp64": 60.0,
            "int8": 1670.5,
        },
        "NVIDIA H200 NVL datasheet; tensor figures halved from the sparse headline",
    ),
    # NVIDIA H200 datasheet (SXM): compute identical to H100 SXM (FP64 Tensor 67, FP32 67;
    # TF32 989, BF16/FP16 1,979, FP8/INT8 3,958 "with sparsity"); the H100 SXM whitepaper's dense
    # figures are used, and with them its clocks. NVML reports it as "NVIDIA H200".
    _Model(
        "H200 SXM",
        rf"{_VENDOR}h200(?: sxm5?)?{_MEM}(?: hbm3e?)?",
        {
            "fp8": 1979.0,
            "bf16": 989.4,
            "fp16": 989.4,
            "tf32": 494.7,
            "fp32": 66.9,
            "fp64": 66.9,
            "int8": 1979.0,
        },
        "NVIDIA H200 datasheet (SXM) = H100 SXM compute; dense figures from the H100 whitepaper",
        1830.0,
        "as H100 SXM (its figures): tensor 1830 MHz, FP32/FP64 1980 MHz",
        {"fp32": 1980.0, "fp64": 1980.0},
    ),
    # NVIDIA GH200 Grace Hopper Superchip datasheet, GPU part: FP64 Tensor 67, FP32 67, TF32 494,
    # BF16/FP16 990, FP8/INT8 1,979 dense (it lists dense and sparse); same GPU as H100 SXM, whose
    # whitepaper figures (and clocks) are used.
    _Model(
        "GH200",
        rf"{_VENDOR}gh200{_MEM}(?: hbm3e?)?",
        {
            "fp8": 1979.0,
            "bf16": 989.4,
            "fp16": 989.4,
            "tf32": 494.7,
            "fp32": 66.9,
            "fp64": 66.9,
            "int8": 1979.0,
        },
        "NVIDIA GH200 datasheet, GPU (dense column; = H100 SXM whitepaper figures)",
        1830.0,
        "as H100 SXM (its figures): tensor 1830 MHz, FP32/FP64 1980 MHz",
        {"fp32": 1980.0, "fp64": 1980.0},
    ),
    # NVIDIA H800 datasheet, H800 SXM: FP64 1, FP64 Tensor 1, FP32 67 TFLOPS; TF32 989, BF16/FP16
    # 1,979, FP8 3,958, INT8 3,958 TOPS "with sparsity" -> halved. NVML: "NVIDIA H800".
    # Clock DERIVED: the tensor and FP32 figures are the H100 SXM's (same GH100 with 132 SMs), so
    # 989.5e12 ~ 132 x 4096 x 1830 MHz and 67e12 ~ 16,896 x 2 x 1980 MHz. FP64 (cut down): unknown.
    _Model(
        "H800 SXM",
        rf"{_VENDOR}h800(?: sxm5?)?{_MEM}(?: hbm3)?",
        {
            "fp8": 1979.0,
            "bf16": 989.5,
            "fp16": 989.5,
            "tf32": 494.5,
            "fp32": 67.0,
            "fp64": 1.0,
            "int8": 1979.0,
        },
        "NVIDIA H800 datasheet, H800 SXM; tensor figures halved from the sparse headline",
        1830.0,
        "DERIVED: H800 SXM figures = H100 SXM's (132 SMs): tensor 1830 MHz, FP32 1980 MHz; FP64 unknown",
        {"fp32": 1980.0, "fp64": None},
    ),
    # NVIDIA H800 datasheet, H800 PCIe: FP64 0.8, FP64 Tensor 0.8, FP32 51 TFLOPS; TF32 756,
    # BF16/FP16 1,513, FP8 3,026, INT8 3,026 TOPS "with sparsity" -> halved.
    # Clock DERIVED: the figures are the H100 PCIe's (114 SMs): tensor 756.5e12 / (114 x 4096)
    # = 1620 MHz; FP32 51e12 ~ 14,592 x 2 x 1755 MHz. FP64 (cut down): unknown.
    _Model(
        "H800 PCIe",
        rf"{_VENDOR}h800{_MEM} pcie{_MEM}",
        {
            "fp8": 1513.0,
            "bf16": 756.5,
            "fp16": 756.5,
            "tf32": 378.0,
            "fp32": 51.0,
            "fp64": 0.8,
            "int8": 1513.0,
        },
        "NVIDIA H800 datasheet, H800 PCIe; tensor figures halved from the sparse headline",
        1620.0,
        "DERIVED: H800 PCIe figures = H100 PCIe's (114 SMs): tensor 1620 MHz, FP32 1755 MHz; FP64 unknown",
        {"fp32": 1755.0, "fp64": None},
    ),
    # NVIDIA H20 (China-market Hopper) spec sheet as reproduced in the press (NVIDIA publishes no
    # datasheet page): FP64 1, FP32 44, TF32 74, BF16/FP16 148, FP8 296, INT8 296, dense. Less
    # certain than the rest. Clock unknown: the figures fit no published SM count and clock.
    _Model(
        "H20",
        rf"{_VENDOR}h20{_MEM}(?: hbm3e?)?",
        {
            "fp8": 296.0,
            "bf16": 148.0,
            "fp16": 148.0,
            "tf32": 74.0,
            "fp32": 44.0,
            "fp64": 1.0,
            "int8": 296.0,
        },
        "NVIDIA H20 spec sheet as reported by the press (dense; no public NVIDIA datasheet; less certain)",
    ),
    # ---- Blackwell -------------------------------------------------------------------------------
    # Datacenter Blackwell reference clocks are unknown: NVIDIA publishes no SM count or clock for
    # the figures below.
    # NVIDIA GB200 NVL72 datasheet, "individual Blackwell GPU": FP8 10 PF, INT8 10 POPS,
    # FP16/BF16 5 PF, TF32 2.5 PF (all "with sparsity" -> halved); FP32 80, FP64/FP64 Tensor 40 TF.
    _Model(
        "GB200",
        rf"{_VENDOR}gb200{_MEM}(?: hbm3e?)?",
        {
            "fp8": 5000.0,
            "bf16": 2500.0,
            "fp16": 2500.0,
            "tf32": 1250.0,
            "fp32": 80.0,
            "fp64": 40.0,
            "int8": 5000.0,
        },
        "NVIDIA GB200 NVL72 datasheet, per GPU; tensor figures halved from the sparse headline",
    ),
    # NVIDIA HGX B200 datasheet, per GPU: FP8 9 PF, INT8 9 POPS, FP16/BF16 4.5 PF, TF32 2.2 PF
    # (all "with sparsity" -> halved); FP32 75, FP64/FP64 Tensor 37 TF.
    _Model(
        "B200",
        rf"{_VENDOR}b200{_MEM}(?: hbm3e?)?",
        {
            "fp8": 4500.0,
            "bf16": 2250.0,
            "fp16": 2250.0,
            "tf32": 1100.0,
            "fp32": 75.0,
            "fp64": 37.0,
            "int8": 4500.0,
        },
        "NVIDIA HGX B200 datasheet, per GPU; tensor figures halved from the sparse headline",
    ),
    # NVIDIA HGX B100 datasheet (Blackwell launch, 2024), per GPU: FP8 7 PF, INT8 7 POPS,
    # FP16/BF16 3.5 PF, TF32 1.8 PF (all "with sparsity" -> halved); FP64 30 TF. No FP32 figure.
    _Model(
        "B100",
        rf"{_VENDOR}b100{_MEM}(?: hbm3e?)?",
        {"fp8": 3500.0, "bf16": 1750.0, "fp16": 1750.0, "tf32": 900.0, "fp64": 30.0, "int8": 3500.0},
        "NVIDIA HGX B100 datasheet, per GPU; tensor figures halved from the sparse headline",
    ),
    # NVIDIA HGX B300 datasheet, for its 8 GPUs: FP8 72 PF, FP16/BF16 36 PF, TF32 18 PF (all "with
    # sparsity"), FP32 600 TF, FP64/FP64 Tensor 10 TF -> per GPU /8, tensor halved: FP8 4,500,
    # BF16 2,250, TF32 1,125, FP32 75, FP64 1.25. INT8 left out: the board's "2 POPS" and
    # third-party per-GPU tables disagree on what it means. NVML: "NVIDIA B300 SXM6 AC".
    _Model(
        "B300",
        rf"{_VENDOR}b300(?: sxm6)?(?: ac)?{_MEM}(?: hbm3e?)?",
        {"fp8": 4500.0, "bf16": 2250.0, "fp16": 2250.0, "tf32": 1125.0, "fp32": 75.0, "fp64": 1.25},
        "NVIDIA HGX B300 datasheet, 8-GPU figures / 8; tensor figures halved from the sparse headline",
    ),
    # NVIDIA GB300 NVL72 datasheet, for its 72 GPUs: FP8/FP6 720 PF, FP16/BF16 360 PF, TF32 180 PF
    # (all "with sparsity") -> per GPU /72, halved: FP8 5,000, BF16 2,500, TF32 1,250. FP32
    # (6 PF), FP64 (100 TF) and INT8 are rack totals too rounded to give a per-GPU figure: left out.
    _Model(
        "GB300",
        rf"{_VENDOR}gb300{_MEM}(?: hbm3e?)?",
        {"fp8": 5000.0, "bf16": 2500.0, "fp16": 2500.0, "tf32": 1250.0},
        "NVIDIA GB300 NVL72 datasheet, rack figures / 72; tensor figures halved from the sparse headline",
    ),
    # NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet: FP32 125 TFLOPS, "4,000 AI TOPS"
    # (FP4 with sparsity). DERIVED: FP4 dense 2,000 -> FP8 1,000, BF16/FP16 500, TF32 250 (the
    # Blackwell tensor-core ratios; FP32 accumulate at full rate on RTX PRO cards, as on the RTX
    # A6000 and RTX 6000 Ada). INT8 left out (no figure). Clock DERIVED: 500e12 / (188 SMs x 1024
    # FLOP/clk/SM) = 125e12 / (24,064 cores x 2) = 2597 MHz.
    _Model(
        "RTX PRO 6000 Blackwell WS",
        rf"{_VENDOR}rtx pro 6000 blackwell workstation edition",
        {"fp8": 1000.0, "bf16": 500.0, "fp16": 500.0, "tf32": 250.0, "fp32": 125.0},
        "NVIDIA RTX PRO 6000 Blackwell Workstation datasheet; tensor dtypes DERIVED from its FP4 AI TOPS",
        2597.0,
        "DERIVED: 500e12 / (188 SMs x 1024 FLOP/clk/SM) = 125e12 / (24,064 x 2) = 2597 MHz",
    ),
    # NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition datasheet: FP32 110 TFLOPS, "3,511 AI
    # TOPS" (FP4 with sparsity). DERIVED as for the Workstation Edition: FP8 877.75, BF16/FP16
    # 438.875, TF32 219.4375. Less certain (figures from NVIDIA's product page as quoted). Clock
    # DERIVED: 438.875e12 / (188 x 1024) = 2280 MHz; FP32 110e12 / (24,064 x 2) = 2286 MHz.
    _Model(
        "RTX PRO 6000 Blackwell Max-Q",
        rf"{_VENDOR}rtx pro 6000 blackwell max q workstation edition",
        {"fp8": 877.75, "bf16": 438.875, "fp16": 438.875, "tf32": 219.4375, "fp32": 110.0},
        "NVIDIA RTX PRO 6000 Blackwell Max-Q datasheet; tensor dtypes DERIVED from its FP4 AI TOPS",
        2280.0,
        "DERIVED: 438.875e12 / (188 SMs x 1024 FLOP/clk/SM) = 2280 MHz; FP32 110e12 / (24,064 x 2) = 2286",
        {"fp32": 2286.0},
    ),
    # NVIDIA RTX Blackwell GPU architecture whitepaper, GeForce RTX 5090: FP32 104.8; FP16/BF16
    # tensor with FP32 accumulate 209.5, TF32 104.8, FP8 (FP32 acc.) 419, INT8 838 dense (sparse 2x;
    # FP16-accumulate FP16 is 419). Clock: 170 SMs x 512 FLOP/clk/SM x 2407 MHz (boost) = 209.5e12.
    _Model(
        "RTX 5090",
        rf"{_VENDOR}rtx 5090",
        {"fp8": 419.0, "bf16": 209.5, "fp16": 209.5, "tf32": 104.8, "fp32": 104.8, "int8": 838.0},
        "NVIDIA RTX Blackwell whitepaper, RTX 5090 (dense, FP32 accumulate)",
        2407.0,
        "RTX Blackwell whitepaper boost clock: 170 SMs x 512 FLOP/clk/SM x 2407 MHz = 209.5 TFLOPS",
    ),
    # ---- Ampere ----------------------------------------------------------------------------------
    # NVIDIA A100 Tensor Core GPU datasheet (40GB and 80GB, SXM and PCIe list the same compute):
    # FP64 Tensor 19.5, FP32 19.5, TF32 156, BF16/FP16 312, INT8 624 dense (sparse: 312/624/1,248).
    # Clock: 108 SMs x 2048 dense BF16 FLOP/clk/SM x 1410 MHz (A100 whitepaper boost) = 312e12.
    _Model(
        "A100 SXM",
        rf"{_VENDOR}a100{_MEM} sxm4?{_MEM}",
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5, "int8": 624.0},
        "NVIDIA A100 datasheet, SXM4 (dense column; the starred sparse figures are 2x)",
        1410.0,
        "A100 whitepaper boost clock: 108 SMs x 2048 FLOP/clk/SM x 1410 MHz = 312 TFLOPS",
    ),
    # NVIDIA A100 datasheet, PCIe (same figures and clock as SXM, see above).
    _Model(
        "A100 PCIe",
        rf"{_VENDOR}a100{_MEM} pcie{_MEM}",
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5, "int8": 624.0},
        "NVIDIA A100 datasheet, PCIe (dense column; the starred sparse figures are 2x)",
        1410.0,
        "A100 whitepaper boost clock: 108 SMs x 2048 FLOP/clk/SM x 1410 MHz = 312 TFLOPS",
    ),
    # NVIDIA A800 datasheet (China-market A100 with slower NVLink), A800 SXM4 80GB: FP64 Tensor
    # 19.5, FP32 19.5, TF32 156, BF16/FP16 312, INT8 624 dense (starred sparse figures 2x) - the
    # A100's compute. Clock DERIVED: same GA100 (108 SMs) and figures as A100, so 1410 MHz.
    _Model(
        "A800 SXM",
        rf"{_VENDOR}a800{_MEM} sxm4?{_MEM}",
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5, "int8": 624.0},
        "NVIDIA A800 datasheet, SXM4 (dense column; = A100 compute)",
        1410.0,
        "DERIVED: A800 figures = A100's (108 SMs x 2048 FLOP/clk/SM x 1410 MHz)",
    ),
    # NVIDIA A800 datasheet, A800 80GB PCIe: same compute as the A100 PCIe (see above).
    _Model(
        "A800 PCIe",
        rf"{_VENDOR}a800{_MEM} pcie{_MEM}",
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5, "int8": 624.0},
        "NVIDIA A800 datasheet, PCIe (dense column; = A100 compute)",
        1410.0,
        "DERIVED: A800 figures = A100's (108 SMs x 2048 FLOP/clk/SM x 1410 MHz)",
    ),
    # A10G (AWS EC2 G5 only): NVIDIA publishes no datasheet. AWS-published figures (as tabulated in
    # Baseten's "NVIDIA A10 vs A10G" comparison): FP32 35, TF32 35, BF16/FP16 70, INT8 140, dense.
    # NOT the A10's figures: the A10G has more CUDA cores but half the A10's tensor rate.
    # Clock unknown (no NVIDIA figure for its SM count or tensor rate).
    _Model(
        "A10G",
        rf"{_VENDOR}a10g",
        {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 35.0, "int8": 140.0},
        "AWS EC2 G5 A10G figures (no NVIDIA datasheet; dense; less certain than the rest)",
    ),
    # NVIDIA A10 datasheet: FP32 31.2; TF32 62.5, BF16/FP16 125, INT8 250 dense (sparse 2x).
    # Clock: 72 SMs x 1024 FLOP/clk/SM x 1695 MHz (boost) = 125e12; 9,216 x 2 x 1695 MHz = 31.2e12.
    _Model(
        "A10",
        rf"{_VENDOR}a10{_MEM}",
        {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2, "int8": 250.0},
        "NVIDIA A10 datasheet (dense column; the starred sparse figures are 2x)",
        1695.0,
        "A10 boost clock: 72 SMs x 1024 FLOP/clk/SM x 1695 MHz = 125 TFLOPS",
    ),
    # NVIDIA A30 datasheet: FP64 Tensor 10.3, FP32 10.3; TF32 82, BF16/FP16 165, INT8 330 dense
    # (sparse 2x). Clock: 56 SMs x 2048 FLOP/clk/SM x 1440 MHz (boost) = 165e12.
    _Model(
        "A30",
        rf"{_VENDOR}a30{_MEM}",
        {"bf16": 165.0, "fp16": 165.0, "tf32": 82.0, "fp32": 10.3, "fp64": 10.3, "int8": 330.0},
        "NVIDIA A30 datasheet (dense column; the starred sparse figures are 2x)",
        1440.0,
        "A30 boost clock: 56 SMs x 2048 FLOP/clk/SM x 1440 MHz = 165 TFLOPS",
    ),
    # NVIDIA A40 datasheet: FP32 37.4; TF32 74.8, BF16 149.7 (FP32 acc.), FP16 149.7,
    # INT8 299.3 dense (sparse 2x). Clock: 84 SMs x 1024 FLOP/clk/SM x 1740 MHz (boost) = 149.7e12.
    _Model(
        "A40",
        rf"{_VENDOR}a40{_MEM}",
        {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4, "int8": 299.3},
        "NVIDIA A40 datasheet (dense column; the starred sparse figures are 2x)",
        1740.0,
        "A40 boost clock: 84 SMs x 1024 FLOP/clk/SM x 1740 MHz = 149.7 TFLOPS",
    ),
    # NVIDIA RTX A6000 datasheet: FP32 38.7 TFLOPS, "Tensor performance" 309.7 TFLOPS (FP16, with
    # sparsity) -> BF16/FP16 154.85 dense. TF32 77.425 and INT8 309.7 DERIVED from the A40 datasheet's
    # ratios (same GA102, 84 SMs). Clock DERIVED: 84 SMs x 1024 FLOP/clk/SM x 1800 MHz = 154.8e12
    # and 10,752 x 2 x 1800 MHz = 38.7e12.
    _Model(
        "RTX A6000",
        rf"{_VENDOR}rtx a6000",
        {"bf16": 154.85, "fp16": 154.85, "tf32": 77.425, "fp32": 38.7, "int8": 309.7},
        "NVIDIA RTX A6000 datasheet (tensor halved from sparse; TF32/INT8 DERIVED from A40 ratios)",
        1800.0,
        "DERIVED: 154.85e12 ~ 84 SMs x 1024 FLOP/clk/SM x 1800 MHz; 38.7e12 = 10,752 x 2 x 1800 MHz",
    ),
    # NVIDIA A2 datasheet: FP32 4.5; TF32 9, BF16/FP16 18, INT8 36 dense (the starred sparse
    # figures are 2x). Clock DERIVED: 18e12 / (10 SMs x 1024 FLOP/clk/SM) = 4.5e12 / (1,280 x 2)
    # = 1758 MHz (the datasheet rounds to two digits).
    _Model(
        "A2",
        rf"{_VENDOR}a2",
        {"bf16": 18.0, "fp16": 18.0, "tf32": 9.0, "fp32": 4.5, "int8": 36.0},
        "NVIDIA A2 datasheet (dense column; the starred sparse figures are 2x)",
        1758.0,
        "DERIVED: 18e12 / (10 SMs x 1024 FLOP/clk/SM) = 1758 MHz",
    ),
    # NVIDIA A16 datasheet, per GPU (the board has four; NVML shows each as "NVIDIA A16"):
    # FP32 4.5; TF32 9, BF16/FP16 18, INT8 36 dense ("4x" figures; starred sparse figures 2x).
    # Clock unknown: the published 1695 MHz boost does not reproduce these figures.
    _Model(
        "A16",
        rf"{_VENDOR}a16",
        {"bf16": 18.0, "fp16": 18.0, "tf32": 9.0, "fp32": 4.5, "int8": 36.0},
        "NVIDIA A16 datasheet, per GPU (board figures are 4x; dense column)",
    ),
    # NVIDIA Ampere GA102 whitepaper, GeForce RTX 3090: FP32 35.6; FP16/BF16 tensor with FP32
    # accumulate 71, TF32 35.6, INT8 284 dense (sparse 2x; FP16-accumulate FP16 is 142).
    # Clock: 82 SMs x 512 FLOP/clk/SM x 1695 MHz (whitepaper boost) = 71.2e12.
    _Model(
        "RTX 3090",
        rf"{_VENDOR}rtx 3090",
        {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6, "int8": 284.0},
        "NVIDIA Ampere GA102 whitepaper, RTX 3090 (dense, FP32 accumulate)",
        1695.0,
        "GA102 whitepaper boost clock: 82 SMs x 512 FLOP/clk/SM x 1695 MHz = 71.2 TFLOPS",
    ),
    # ---- Ada Lovelace ----------------------------------------------------------------------------
    # NVIDIA L40S datasheet: FP32 91.6; TF32 183, BF16/FP16 362.05, FP8 733, INT8 733 dense
    # (sparse 366 / 733 / 1,466 / 1,466). Clock: 18,176 x 2 x 2520 MHz (boost) = 91.6e12 and
    # 142 SMs x 2048 x 2520 MHz = 733e12; the BF16/FP16 figure is DERIVED 362.05e12 / (142 x 1024)
    # = 2490 MHz (the datasheet's dense BF16 disagrees with its own sparse 733).
    _Model(
        "L40S",
        rf"{_VENDOR}l40s",
        {"fp8": 733.0, "bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6, "int8": 733.0},
        "NVIDIA L40S datasheet (dense column; the starred sparse figures are 2x)",
        2520.0,
        "L40S boost clock 2520 MHz (142 SMs); BF16/FP16 DERIVED 362.05e12 / (142 x 1024) = 2490 MHz",
        {"bf16": 2490.0, "fp16": 2490.0},
    ),
    # NVIDIA L40 datasheet: FP32 90.5; TF32 90.5, BF16/FP16 181.05, FP8 362, INT8 362 dense
    # (sparse 181 / 362.1 / 724 / 724). Clock: 142 SMs x 512 FLOP/clk/SM x 2490 MHz (boost).
    _Model(
        "L40",
        rf"{_VENDOR}l40",
        {"fp8": 362.0, "bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5, "int8": 362.0},
        "NVIDIA L40 datasheet (dense column; the starred sparse figures are 2x)",
        2490.0,
        "L40 boost clock: 142 SMs x 512 FLOP/clk/SM x 2490 MHz = 181 TFLOPS",
    ),
    # NVIDIA L20 (China-market AD102) spec sheet as reproduced in the press (no public NVIDIA
    # datasheet page): FP32 59.8, TF32 59.8, BF16/FP16 119.5, FP8 239, INT8 239, dense. Less certain.
    # Clock unknown: the figures do not fit the published SM count and boost clock.
    _Model(
        "L20",
        rf"{_VENDOR}l20",
        {"fp8": 239.0, "bf16": 119.5, "fp16": 119.5, "tf32": 59.8, "fp32": 59.8, "int8": 239.0},
        "NVIDIA L20 spec sheet as reported by the press (dense; no public NVIDIA datasheet; less certain)",
    ),
    # NVIDIA L4 datasheet: FP32 30.3; TF32 120, BF16/FP16 242, FP8 485, INT8 485 are all
    # "with sparsity" -> halved. Clock: 58 SMs x 1024 FLOP/clk/SM x 2040 MHz (boost) = 121e12.
    _Model(
        "L4",
        rf"{_VENDOR}l4",
        {"fp8": 242.5, "bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3, "int8": 242.5},
        "NVIDIA L4 datasheet; tensor figures halved from the sparse headline",
        2040.0,
        "L4 boost clock: 58 SMs x 1024 FLOP/clk/SM x 2040 MHz = 121 TFLOPS",
    ),
    # NVIDIA RTX 6000 Ada Generation datasheet: FP32 91.1 TFLOPS, tensor 1,457 "AI TFLOPS" (FP8
    # with sparsity) -> FP8 dense 728.5. The datasheet gives no other tensor dtype; BF16/FP16 (half
    # the FP8 rate), TF32 (a quarter) and INT8 (equal) follow the Ada ratios of the L40/L40S
    # datasheets. Derived, so less certain than the rest. Clock: 142 SMs x 2048 FP8 FLOP/clk/SM x
    # 2505 MHz (boost) = 728.5e12; 18,176 x 2 x 2505 MHz = 91.1e12.
    _Model(
        "RTX 6000 Ada",
        rf"{_VENDOR}rtx 6000 ada(?: generation)?",
        {"fp8": 728.5, "bf16": 364.25, "fp16": 364.25, "tf32": 182.125, "fp32": 91.1, "int8": 728.5},
        "NVIDIA RTX 6000 Ada datasheet (FP8 halved from sparse; other tensor dtypes derived)",
        2505.0,
        "RTX 6000 Ada boost clock: 142 SMs x 2048 FP8 FLOP/clk/SM x 2505 MHz = 728.5 TFLOPS",
    ),
    # NVIDIA Ada Lovelace whitepaper, GeForce RTX 4090: FP32 82.6; FP16/BF16 tensor with FP32
    # accumulate 165.2, TF32 82.6, FP8 (FP32 acc.) 330.3, INT8 660.6 dense (sparse 2x;
    # FP16-accumulate FP16 is 330.3). Clock: 128 SMs x 512 FLOP/clk/SM x 2520 MHz (boost).
    _Model(
        "RTX 4090",
        rf"{_VENDOR}rtx 4090",
        {"fp8": 330.3, "bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6, "int8": 660.6},
        "NVIDIA Ada Lovelace whitepaper, RTX 4090 (dense, FP32 accumulate)",
        2520.0,
        "Ada whitepaper boost clock: 128 SMs x 512 FLOP/clk/SM x 2520 MHz = 165.2 TFLOPS",
    ),
    # ---- Volta / Turing (no BF16, TF32 or FP8 tensor cores) --------------------------------------
    # NVIDIA V100S datasheet (PCIe): FP64 8.2, FP32 16.4, tensor (FP16) 130 TFLOPS; no sparsity.
    # Clock DERIVED: 130e12 / (80 SMs x 1024 FLOP/clk/SM) = 1587 MHz; FP32/FP64 16.4e12 /
    # (5,120 x 2) = 1601 MHz (the datasheet rounds the tensor figure down).
    _Model(
        "V100S PCIe",
        rf"{_VENDOR}v100s pcie{_MEM}",
        {"fp16": 130.0, "fp32": 16.4, "fp64": 8.2},
        "NVIDIA V100 datasheet, V100S PCIe (Volta has no sparsity)",
        1587.0,
        "DERIVED: 130e12 / (80 SMs x 1024 FLOP/clk/SM) = 1587 MHz; FP32/FP64 16.4e12 / (5,120 x 2) = 1601",
        {"fp32": 1601.0, "fp64": 1601.0},
    ),
    # NVIDIA V100 datasheet (SXM2): FP64 7.8, FP32 15.7, tensor (FP16) 125 TFLOPS; no sparsity.
    # Clock: 80 SMs x 1024 FLOP/clk/SM x 1530 MHz (V100 whitepaper boost) = 125e12.
    _Model(
        "V100 SXM2",
        rf"{_VENDOR}v100{_MEM} sxm2{_MEM}",
        {"fp16": 125.0, "fp32": 15.7, "fp64": 7.8},
        "NVIDIA V100 datasheet, SXM2 (Volta has no sparsity)",
        1530.0,
        "V100 whitepaper boost clock: 80 SMs x 1024 FLOP/clk/SM x 1530 MHz = 125 TFLOPS",
    ),
    # V100 SXM3 (DGX-2, "Tesla V100-SXM3-32GB"): no V100 datasheet column. DERIVED from the NVIDIA
    # DGX-2 datasheet's "2 petaFLOPS" tensor (FP16) for 16 GPUs = 125 TFLOPS per GPU, the V100
    # SXM2's figure; no FP32/FP64 figure. Clock DERIVED likewise: 125e12 = 80 x 1024 x 1530 MHz.
    # The DGX-2H part ("...-SXM3-32GB-H", higher clocks) deliberately matches nothing.
    _Model(
        "V100 SXM3",
        rf"{_VENDOR}v100{_MEM} sxm3{_MEM}",
        {"fp16": 125.0},
        "DERIVED: NVIDIA DGX-2 datasheet, 2 PFLOPS tensor / 16 GPUs (Volta has no sparsity)",
        1530.0,
        "DERIVED: 125e12 / (80 SMs x 1024 FLOP/clk/SM) ~ 1530 MHz, the V100 SXM2 boost clock",
    ),
    # NVIDIA V100 datasheet (PCIe): FP64 7, FP32 14, tensor (FP16) 112 TFLOPS; no sparsity.
    # Clock DERIVED: all three fit 1370 MHz (80 x 1024, 5,120 x 2 and 2,560 x 2 FLOP/clk), below
    # the card's 1380 MHz boost.
    _Model(
        "V100 PCIe",
        rf"{_VENDOR}v100{_MEM} pcie{_MEM}",
        {"fp16": 112.0, "fp32": 14.0, "fp64": 7.0},
        "NVIDIA V100 datasheet, PCIe (Volta has no sparsity)",
        1370.0,
        "DERIVED: 112e12 / (80 SMs x 1024 FLOP/clk/SM) = 14e12 / (5,120 x 2) ~ 1370 MHz",
    ),
    # NVIDIA T4 datasheet: FP32 8.1, mixed-precision FP16/FP32 65 TFLOPS, INT8 130 TOPS; no sparsity.
    # Clock: 40 SMs x 1024 FLOP/clk/SM x 1590 MHz (boost) = 65e12.
    _Model(
        "T4",
        rf"{_VENDOR}t4",
        {"fp16": 65.0, "fp32": 8.1, "int8": 130.0},
        "NVIDIA T4 datasheet (Turing has no sparsity)",
        1590.0,
        "T4 boost clock: 40 SMs x 1024 FLOP/clk/SM x 1590 MHz = 65 TFLOPS",
    ),
)

_COMPILED: tuple[tuple[_Model, re.Pattern[str]], ...] = tuple((m, re.compile(m.pattern)) for m in _MODELS)
_KEY_BY_FOLDED: dict[str, str] = {m.key.casefold(): m.key for m in _MODELS}

#: Built-in dense peaks in FLOP/s (OP/s for int8): {model key: {dtype: FLOP/s}}. Read-only.
BUILTIN_PEAKS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {m.key: MappingProxyType({dt: m.tflops[dt] * _TERA for dt in DTYPES if dt in m.tflops}) for m in _MODELS}
)

#: Where each built-in row comes from: {model key: source}.
SOURCES: Mapping[str, str] = MappingProxyType({m.key: m.source for m in _MODELS})

#: SM clock in Hz each built-in figure assumes: {model key: {dtype: Hz}}; a dtype is absent where
#: that clock is unknown (and a model without any known clock maps to an empty mapping). Read-only.
BUILTIN_REFERENCE_CLOCKS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        m.key: MappingProxyType(
            {
                dt: mhz * _MEGA
                for dt in DTYPES
                if dt in m.tflops and (mhz := m.reference_clock_mhz(dt)) is not None
            }
        )
        for m in _MODELS
    }
)

#: SM count of the whole GPU, for the models that have MIG: a MIG device's peak is the GPU's peak x
#: its SMs (nvmlDeviceGetAttributes, which answers for MIG devices only) / the whole GPU's SMs.
#: Only counts NVIDIA states (whitepapers) or that follow from a stated equivalence are listed; a
#: MIG model missing here has unknown slice peaks until --peak-flops-file gives "sm_count".
MIG_SM_COUNTS: Mapping[str, int] = MappingProxyType(
    {
        "A100 SXM": 108,  # A100 whitepaper: 108 SMs
        "A100 PCIe": 108,
        "A800 SXM": 108,  # = A100 (GA100, 108 SMs; see the A800 rows)
        "A800 PCIe": 108,
        "A30": 56,  # A30 datasheet/whitepaper: 56 SMs
        "H100 SXM": 132,  # H100 whitepaper, SXM5: 132 SMs
        "H100 PCIe": 114,  # H100 whitepaper, PCIe: 114 SMs
        "H200 SXM": 132,  # = H100 SXM compute (H200 datasheet)
        "GH200": 132,  # = H100 SXM GPU (GH200 datasheet)
        "H800 SXM": 132,  # = H100 SXM (see the H800 rows)
        "H800 PCIe": 114,  # = H100 PCIe
    }
)

#: Where each built-in row's reference clock comes from: {model key: source} ("" where unknown).
CLOCK_SOURCES: Mapping[str, str] = MappingProxyType({m.key: m.clock_source for m in _MODELS})

_MODEL_BY_KEY: dict[str, _Model] = {m.key: m for m in _MODELS}


def known_models() -> tuple[str, ...]:
    """Canonical model keys of the built-in table, in matching order."""
    return tuple(m.key for m in _MODELS)


def normalize_dtype(dtype: str) -> str:
    """Return ``dtype`` as one of :data:`DTYPES` (case-insensitive) or raise ValueError."""
    if isinstance(dtype, str):
        folded = dtype.strip().lower()
        if folded in DTYPES:
            return folded
    raise ValueError(f"unknown dtype {dtype!r}; allowed dtypes: {', '.join(DTYPES)}")


def _normalize(name: str) -> str:
    return " ".join(re.sub(r"[-_]", " ", name).lower().split())


def _fold_device(name: str) -> str:
    return " ".join(name.split()).casefold()


def match_model(device_name: str) -> str | None:
    """Canonical model key for a device name as NVML reports it (or a model key), else None.

    MIG instance names ("... MIG 1g.10gb") deliberately match nothing: a slice has a fraction of
    the GPU's peak.
    """
    if not isinstance(device_name, str):
        return None
    key = _KEY_BY_FOLDED.get(_fold_device(device_name))
    if key is not None:
        return key
    name = _normalize(device_name)
    if not name:
        return None
    for model, pattern in _COMPILED:
        if pattern.fullmatch(name):
            return model.key
    return None


def _check_peak(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: peak must be a number in FLOP/s (e.g. 989.4e12), got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{where}: peak must be finite, got {value!r}")
    if result <= 0:
        raise ValueError(f"{where}: peak must be positive, got {value!r}")
    return result


SM_COUNT_KEY = "sm_count"  # in an override entry: the whole GPU's SMs (for MIG slice peaks)


def _check_sm_count(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError(f"{where}: must be the GPU's SM count, a whole number 1..1024, got {value!r}")
    return float(value)


def _validate_overrides(data: Any, origin: str) -> dict[str, dict[str, float]]:
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{origin}: expected an object mapping device names or model keys to "
            f'{{dtype: FLOP/s}} objects, e.g. {{"NVIDIA H100 80GB HBM3": {{"bf16": 989.4e12}}}}; '
            f"got {type(data).__name__}"
        )
    result: dict[str, dict[str, float]] = {}
    seen: dict[str, str] = {}
    for key, peaks in data.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{origin}: keys must be non-empty device names or model keys, got {key!r}")
        folded = _fold_device(key)
        if folded in seen:
            raise ValueError(f"{origin}: key {key!r} duplicates {seen[folded]!r} (keys are case-insensitive)")
        seen[folded] = key
        if not isinstance(peaks, Mapping):
            raise ValueError(
                f"{origin}: key {key!r}: expected an object of {{dtype: FLOP/s}}, got {type(peaks).__name__}"
            )
        entry: dict[str, float] = {}
        for dtype, value in peaks.items():
            if dtype == SM_COUNT_KEY:
                entry[SM_COUNT_KEY] = _check_sm_count(value, f"{origin}: key {key!r}, {SM_COUNT_KEY!r}")
                continue
            where = f"{origin}: key {key!r}, dtype {dtype!r}"
            try:
                dt = normalize_dtype(dtype)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if dt in entry:
                raise ValueError(f"{where}: dtype given twice")
            entry[dt] = _check_peak(value, where)
        result[key.strip()] = entry
    return result


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook for the agent's JSON files: a key given twice is an error, not the
    last one silently winning."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_overrides(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read a JSON file of peak overrides: ``{device name or model key: {dtype: FLOP/s}}``.

    Raises ValueError naming the file (and the key) for malformed JSON, a bad shape, non-numeric,
    non-positive, NaN or infinite values, or unknown dtypes. OSError if the file cannot be read.
    """
    origin = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON: {exc}") from None
    except ValueError as exc:  # duplicate key
        raise ValueError(f"{origin}: {exc}") from None
    return _validate_overrides(data, origin)


class PeakTable:
    """The built-in peak table plus operator overrides.

    Override keys are a canonical model key (applies to every GPU of that model) or a device name
    exactly as NVML reports it (case-insensitive; applies to that name only, and adds the device
    if no built-in model matches it). Values are ``{dtype: FLOP/s}``; they replace the built-in
    figure for those dtypes only. A device-name override wins over a model override, which wins
    over the built-in table.
    """

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        validated = _validate_overrides(overrides if overrides is not None else {}, "overrides")
        self._model_overrides: dict[str, dict[str, float]] = {}
        self._device_overrides: dict[str, tuple[str, dict[str, float]]] = {}
        for key, peaks in validated.items():
            folded = _fold_device(key)
            canonical = _KEY_BY_FOLDED.get(folded)
            if canonical is not None:
                self._model_overrides[canonical] = peaks
            else:
                self._device_overrides[folded] = (key, peaks)
        # peaks_for / reference_clocks_for by device name: matching a name is the costly step, and
        # the agent asks for the same few names on every report and scrape. Bounded whatever names
        # callers pass.
        self._peaks_by_name: dict[str, dict[str, float]] = {}
        self._clocks_by_name: dict[str, dict[str, float]] = {}

    def match_model(self, device_name: str) -> str | None:
        """Built-in model key for the name; else the override key when the name was added by one."""
        model = match_model(device_name)
        if model is not None or not isinstance(device_name, str):
            return model
        entry = self._device_overrides.get(_fold_device(device_name))
        return entry[0] if entry is not None else None

    def peak_flops(self, device_name: str, dtype: str = "bf16") -> float | None:
        """Dense peak FLOP/s of ``device_name`` at ``dtype``; None when unknown or unsupported."""
        return self._cached_peaks(device_name).get(normalize_dtype(dtype))

    def peaks_for(self, device_name: str) -> dict[str, float]:
        """Every known dense peak of ``device_name``: {dtype: FLOP/s} (empty when unknown)."""
        return dict(self._cached_peaks(device_name))

    def sm_count(self, device_name: str) -> int | None:
        """SMs of the whole GPU (override, else MIG_SM_COUNTS); None when unknown."""
        if isinstance(device_name, str):
            entry = self._device_overrides.get(_fold_device(device_name))
            if entry is not None and SM_COUNT_KEY in entry[1]:
                return int(entry[1][SM_COUNT_KEY])
        model = match_model(device_name)
        if model is None:
            return None
        override = self._model_overrides.get(model, {}).get(SM_COUNT_KEY)
        return int(override) if override is not None else MIG_SM_COUNTS.get(model)

    def mig_fraction(self, device_name: str, slice_sm_count: int | None) -> float | None:
        """A MIG slice's share of the whole GPU's peak: its SMs / the GPU's SMs; None when either is
        unknown or the figures contradict each other (more SMs in the slice than in the GPU)."""
        full = self.sm_count(device_name)
        if full is None or not slice_sm_count or slice_sm_count <= 0 or slice_sm_count > full:
            return None
        return slice_sm_count / full

    def reference_clock_hz(self, device_name: str, dtype: str | None = None) -> float | None:
        """SM clock (Hz) the built-in datasheet figure assumes; None when unknown.

        With ``dtype``: the clock behind that dtype's figure, and None where an override replaced
        the figure (an operator's number comes with no known clock) or the model has no figure for
        it. Without: the model's reference clock, that of its tensor-core figures.
        """
        if dtype is None:
            model = match_model(device_name)
            mhz = _MODEL_BY_KEY[model].clock_mhz if model is not None else None
            return mhz * _MEGA if mhz is not None else None
        clocks = self._cached(self._clocks_by_name, self._lookup_clocks, device_name)
        return clocks.get(normalize_dtype(dtype))

    def reference_clocks_for(self, device_name: str) -> dict[str, float]:
        """{dtype: Hz} for every peak of ``device_name`` that is a built-in figure with a known clock."""
        return dict(self._cached(self._clocks_by_name, self._lookup_clocks, device_name))

    def _cached_peaks(self, device_name: str) -> dict[str, float]:
        return self._cached(self._peaks_by_name, self._lookup_peaks, device_name)

    @staticmethod
    def _cached(
        cache: dict[str, dict[str, float]], lookup: Callable[[str], dict[str, float]], device_name: str
    ) -> dict[str, float]:
        if not isinstance(device_name, str):
            return lookup(device_name)
        found = cache.get(device_name)
        if found is None:
            if len(cache) >= 1024:
                cache.clear()
            found = cache[device_name] = lookup(device_name)
        return found

    def _lookup_clocks(self, device_name: str) -> dict[str, float]:
        model = match_model(device_name)
        if model is None:
            return {}
        replaced = set(self._model_overrides.get(model, {}))
        if isinstance(device_name, str):
            entry = self._device_overrides.get(_fold_device(device_name))
            if entry is not None:
                replaced |= set(entry[1])
        return {dt: hz for dt, hz in BUILTIN_REFERENCE_CLOCKS[model].items() if dt not in replaced}

    def _lookup_peaks(self, device_name: str) -> dict[str, float]:
        peaks: dict[str, float] = {}
        model = match_model(device_name)
        if model is not None:
            peaks.update(BUILTIN_PEAKS[model])
            peaks.update(self._model_overrides.get(model, {}))
        if isinstance(device_name, str):
            entry = self._device_overrides.get(_fold_device(device_name))
            if entry is not None:
                peaks.update(entry[1])
        return {dt: peaks[dt] for dt in DTYPES if dt in peaks}


_DEFAULT_TABLE = PeakTable()


def peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """Dense peak FLOP/s from the built-in table (no overrides); see :class:`PeakTable`."""
    return _DEFAULT_TABLE.peak_flops(device_name, dtype)


def peaks_for(device_name: str) -> dict[str, float]:
    """Every built-in dense peak of ``device_name``: {dtype: FLOP/s}."""
    return _DEFAULT_TABLE.peaks_for(device_name)


def reference_clock_hz(device_name: str, dtype: str | None = None) -> float | None:
    """SM clock (Hz) the built-in figure assumes (no overrides); see :meth:`PeakTable.reference_clock_hz`."""
    return _DEFAULT_TABLE.reference_clock_hz(device_name, dtype)


def reference_clocks_for(device_name: str) -> dict[str, float]:
    """{dtype: Hz} of the built-in figures of ``device_name`` whose reference clock is known."""
    return _DEFAULT_TABLE.reference_clocks_for(device_name)
