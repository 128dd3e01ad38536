"""GPM (GPU Performance Monitoring) sampling: two sample buffers per device, compared each tick."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import SmActivity
from .nvml import ABSENT, GpuKey, NvmlGateway

GPM_MIN_GAP_SECONDS = 0.1  # NVML needs GPM samples more than 100 ms apart

# Takes one GPM sample into the buffer given (a whole GPU's, or a GPU instance's through its parent).
TakeSample = Callable[[Any], bool]


@dataclass
class GpmState:
    """Two sample buffers: each tick one is filled and compared with the other, then they swap roles."""

    samples: list[Any]
    request: Any
    older: int = -1  # index of the buffer holding the previous sample; -1 before the first
    older_at: float = 0.0
    last: SmActivity | None = None


class GpmPairs:
    def __init__(self, gateway: NvmlGateway, clock: Callable[[], float]) -> None:
        self.gateway = gateway
        self._clock = clock

    def new(self, key: GpuKey, take_sample: TakeSample) -> GpmState | None:
        samples = [self.gateway.gpm_sample_alloc(key) for _ in range(2)]
        if any(s is ABSENT for s in samples):
            for s in samples:
                if s is not ABSENT:
                    self.gateway.gpm_sample_free(key, s)
            return None
        state = GpmState(samples=samples, request=self.gateway.gpm_request())
        # Take a first sample now, so the first tick ~1 s later already has activity to report.
        if take_sample(samples[0]):
            state.older, state.older_at = 0, self._clock()
        return state

    def free(self, key: GpuKey, state: GpmState | None) -> None:
        for sample in state.samples if state is not None else ():
            self.gateway.gpm_sample_free(key, sample)

    def activity(self, state: GpmState, key: GpuKey, take_sample: TakeSample) -> SmActivity | None:
        now = self._clock()
        if state.older >= 0 and now - state.older_at < GPM_MIN_GAP_SECONDS:
            return state.last  # too soon for a new pair: keep the last figures
        newer = 1 - state.older if state.older >= 0 else 0
        if not take_sample(state.samples[newer]):
            state.older, state.last = -1, None
            return None
        if state.older >= 0:
            percent = self.gateway.gpm_metrics(
                key, state.request, state.samples[state.older], state.samples[newer]
            )
            state.last = (
                SmActivity(**{name: ratio(value) for name, value in percent.items()}) if percent else None
            )
        state.older, state.older_at = newer, now
        return state.last


def ratio(percent: float) -> float:
    return min(max(percent / 100.0, 0.0), 1.0)
