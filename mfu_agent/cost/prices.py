"""The price file (--gpu-price-file): US dollars per GPU-hour by GPU model, as NVML names it.

    {"NVIDIA H100 80GB HBM3": 2.49, "NVIDIA A100-SXM4-80GB": 1.29, "default": 1.5}

Keys are device names exactly as NVML reports them (`nvidia-smi --query-gpu=name --format=csv`;
case and repeated spaces do not matter), plus an optional "default" for every other model. A model
with no entry and no default has no price: it gets no cost series, never a guessed one. A MIG device
costs its share of its GPU's price, its SMs / the GPU's SMs, as for its peak (gpu/peaks.py).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..gpu.model import GpuIdentity
from ..specs import PeakTable, reject_duplicate_keys

DEFAULT_KEY = "default"
EXAMPLE = '{"NVIDIA H100 80GB HBM3": 2.49, "default": 1.5}'


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


class PriceTable:
    def __init__(self, prices: Mapping[str, float]) -> None:
        validated = validate_prices(prices, "prices")
        self._default = validated.pop(DEFAULT_KEY, None)
        self._by_name = {_fold(name): price for name, price in validated.items()}

    def model_price(self, model: str) -> float | None:
        """Dollars per hour for a whole GPU of this NVML device name; None when unknown."""
        return self._by_name.get(_fold(model), self._default)

    def device_price(self, identity: GpuIdentity, peaks: PeakTable) -> float | None:
        """Dollars per hour for the device: a whole GPU's price, or a MIG device's share of its GPU's
        (None when the share is unknown: the GPU's or the slice's SM count)."""
        price = self.model_price(identity.name)
        if price is None or identity.mig is None:
            return price
        fraction = peaks.mig_fraction(identity.name, identity.mig.sm_count)
        return price * fraction if fraction is not None else None


def load_prices(path: str | os.PathLike[str]) -> PriceTable:
    """Reads the price file. ValueError naming the file (and the key) for bad JSON, a bad shape, a
    duplicate key (also by case) or a price that is not a finite number above 0; OSError if unreadable."""
    origin = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None
    return PriceTable(validate_prices(data, origin))


def validate_prices(data: Any, origin: str) -> dict[str, float]:
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{origin}: expected an object mapping GPU device names (as NVML reports them) to US dollars "
            f"per GPU-hour, e.g. {EXAMPLE}; got {type(data).__name__}"
        )
    if not data:
        raise ValueError(f"{origin}: no prices; expected e.g. {EXAMPLE}")
    result: dict[str, float] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{origin}: keys must be non-empty GPU device names or 'default', got {key!r}")
        folded = _fold(key)
        if folded in seen:
            raise ValueError(f"{origin}: key {key!r} duplicates {seen[folded]!r} (keys are case-insensitive)")
        seen[folded] = key
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(
                f"{origin}: key {key!r}: expected US dollars per GPU-hour, a number, got {value!r}"
            )
        if value <= 0:
            raise ValueError(f"{origin}: key {key!r}: a price must be above 0, got {value!r}")
        result[DEFAULT_KEY if folded == DEFAULT_KEY else " ".join(key.split())] = float(value)
    return result
