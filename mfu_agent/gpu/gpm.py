"""GPM (GPU Performance Monitoring) sampling: two sample buffers per device, compared each tick.

What GPM answered is kept per device (`GpmState.status`, exported as mfu_gpu_gpm_status). A refusal
(no_permission: profiling restricted to administrators; in_use: another tool holds the performance
counters) can end without a restart, so the sample is asked for again every GPM_REFUSAL_RETRY_SECONDS,
not every tick; not_supported stays so (the gateway remembers it); any other error is retried next tick.
One warning per kind of refusal names the fix, not one per GPU or tick; one line per GPU when GPM
answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import GpmStatus, SmActivity
from .nvml import ABSENT, GPM_METRICS, GPM_REFUSALS, GPM_TRAFFIC_METRICS, GpuKey, NvmlGateway

log = logging.getLogger(__name__)

GPM_MIN_GAP_SECONDS = 0.1  # NVML needs GPM samples more than 100 ms apart
GPM_REFUSAL_RETRY_SECONDS = 300.0  # a refused GPM sample is asked for again after this long
MIB = 1024**2  # GPM gives interconnect throughput in MiB/s

# What each refusal means and how to lift it (also in docs/deploy.md, troubleshooting).
GPM_FIXES: dict[str, str] = {
    "no_permission": "the driver restricts GPU profiling counters to administrators "
    "(NVreg_RestrictProfilingToAdminUsers=1, the default): run the agent with CAP_SYS_ADMIN "
    "(deploy/kubernetes/daemonset.yaml and deploy/compose grant it), as root on the host, or set "
    "NVreg_RestrictProfilingToAdminUsers=0 for the nvidia kernel module",
    "in_use": "another tool holds the GPU performance counters (DCGM profiling metrics, e.g. "
    "dcgm-exporter's DCP fields, or Nsight Compute/Systems): stop it or disable its profiling metrics",
}

# Takes one GPM sample into the buffer given (a whole GPU's, or a GPU instance's through its parent).
TakeSample = Callable[[Any], GpmStatus]


@dataclass
class GpmState:
    """Two sample buffers: each tick one is filled and compared with the other, then they swap roles."""

    samples: list[Any]
    request: Any
    older: int = -1  # index of the buffer holding the previous sample; -1 before the first
    older_at: float = 0.0
    last: SmActivity | None = None
    status: GpmStatus = "ok"  # what the last sample call answered
    retry_at: float = 0.0  # while refused: when the sample is asked for again (monotonic)


class GpmPairs:
    def __init__(self, gateway: NvmlGateway, clock: Callable[[], float]) -> None:
        self.gateway = gateway
        self._clock = clock
        self._warned: set[str] = set()  # the refusals warned about (until some GPU answers again)

    def new(self, key: GpuKey, take_sample: TakeSample, traffic: bool = True) -> GpmState | None:
        """`traffic`: also ask for PCIe and NVLink throughput (whole GPUs; not GPU instances, whose
        links are the physical GPU's)."""
        samples = [self.gateway.gpm_sample_alloc(key) for _ in range(2)]
        if any(s is ABSENT for s in samples):
            for s in samples:
                if s is not ABSENT:
                    self.gateway.gpm_sample_free(key, s)
            return None
        state = GpmState(samples=samples, request=self.gateway.gpm_request(traffic))
        # Take a first sample now, so the first tick ~1 s later already has activity to report.
        if self._take(state, key, take_sample, 0):
            state.older, state.older_at = 0, self._clock()
        return state

    def free(self, key: GpuKey, state: GpmState | None) -> None:
        for sample in state.samples if state is not None else ():
            self.gateway.gpm_sample_free(key, sample)

    def activity(self, state: GpmState, key: GpuKey, take_sample: TakeSample) -> SmActivity | None:
        now = self._clock()
        if state.status in GPM_REFUSALS and now < state.retry_at:
            return None
        if state.older >= 0 and now - state.older_at < GPM_MIN_GAP_SECONDS:
            return state.last  # too soon for a new pair: keep the last figures
        newer = 1 - state.older if state.older >= 0 else 0
        if not self._take(state, key, take_sample, newer):
            state.older, state.last = -1, None
            return None
        if state.older >= 0:
            values = self.gateway.gpm_metrics(
                key, state.request, state.samples[state.older], state.samples[newer]
            )
            state.last = activity_of(values) if values else None
        state.older, state.older_at = newer, now
        return state.last

    def _take(self, state: GpmState, key: GpuKey, take_sample: TakeSample, buffer: int) -> bool:
        """Takes a sample into `buffer`, following what GPM answers; True when it gave one."""
        status = take_sample(state.samples[buffer])
        before, state.status = state.status, status
        if status in GPM_REFUSALS:
            state.retry_at = self._clock() + GPM_REFUSAL_RETRY_SECONDS
            if status not in self._warned:
                self._warned.add(status)
                log.warning(
                    "GPU %s: GPM refused the sample (%s): its SM activity series (mfu_gpu_sm_active_ratio "
                    "and the other GPM ratios) are absent, and so is every GPU that answers the same "
                    "(mfu_gpu_gpm_status); asking again every %g s. Fix: %s",
                    key,
                    status,
                    GPM_REFUSAL_RETRY_SECONDS,
                    GPM_FIXES[status],
                )
        elif status == "ok" and before in GPM_REFUSALS:
            log.warning("GPU %s: GPM answers again (it had refused: %s)", key, before)
            self._warned.discard(before)
        return status == "ok"


def status_of(state: GpmState | None, without: GpmStatus) -> GpmStatus:
    """What GPM answers for a device: its state's last answer; `without` a state (no GPM, or buffers
    that could not be allocated)."""
    return state.status if state is not None else without


def activity_of(values: dict[str, float]) -> SmActivity:
    """GPM metrics in NVML's units (percent; MiB/s) as an SmActivity in ratios and bytes per second."""
    fields = {name: ratio(value) for name, value in values.items() if name in GPM_METRICS}
    for name, value in values.items():
        if name in GPM_TRAFFIC_METRICS:
            fields[f"{name}_bytes_per_second"] = max(value, 0.0) * MIB
    return SmActivity(**fields)


def ratio(percent: float) -> float:
    return min(max(percent / 100.0, 0.0), 1.0)
