"""Peak-weighted MFU over several GPUs: one definition for /v1/jobs, the rollup gauges and the rules.

MFU over a set of GPUs is sum(MFU on the GPU x W) / sum(W), where a GPU's MFU adds up every rank and
dtype on it and W is its peak at the fastest dtype reported there. With one dtype this is total achieved
FLOP/s over total peak, and a GPU shared by two ranks counts once. A GPU where any of the ranks has no
figure (no two reports yet, stalled, unknown peak) is left out of both sums: adding only the ranks that
have one would understate it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .registry import RankView


@dataclass(frozen=True, slots=True)
class GpuFigure:
    uuid: str
    index: int
    model: str
    utilisation: float  # summed over the ranks and dtypes on it
    weight: float  # W: the highest peak among the dtypes reported on it


def per_gpu(views: Iterable[RankView], counter: str = "model_flops") -> dict[str, GpuFigure]:
    """{uuid: figure} for every GPU of these ranks whose every rank has a figure."""
    sums: dict[str, list] = {}  # uuid -> [index, model, utilisation, weight, complete]
    for v in views:
        for gpu in v.gpus:
            entry = sums.setdefault(gpu.uuid, [gpu.index, gpu.model, 0.0, 0.0, True])
            parts, weight = v.gpu_utilisation(gpu, counter), gpu.weight
            if parts is None or not weight:
                entry[4] = False
                continue
            entry[2] += sum(parts.values())
            entry[3] = max(entry[3], weight)
    return {
        uuid: GpuFigure(uuid, index, model, utilisation, weight)
        for uuid, (index, model, utilisation, weight, complete) in sums.items()
        if complete
    }


def peak_weighted(figures: Iterable[GpuFigure]) -> tuple[float | None, float]:
    """(MFU over these GPUs, sum of their weights); MFU is None for no GPU."""
    weighted = total = 0.0
    for f in figures:
        weighted += f.utilisation * f.weight
        total += f.weight
    return (weighted / total if total else None), total
