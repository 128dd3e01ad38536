"""The sampler tick (off the request path): what one tick costs on the simulated backend, and on the
real NVML code path (pynvml and the agent's NVML backend) over the tests' fake libnvidia-ml."""

from __future__ import annotations

import sys
import time

from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.sampler import Sampler

from .common import ROOT, summary
from .fixtures import GPU_MODEL


def _ticks(sampler: Sampler, n: int) -> dict:
    times = []
    for _ in range(n):
        started = time.perf_counter_ns()
        sampler.sample_once()
        times.append(time.perf_counter_ns() - started)
    return summary(times)


def run(quick: bool, log) -> dict:
    n = 30 if quick else 100
    out: dict = {}
    for gpus in (8, 64):
        out[f"simulated_{gpus}"] = _ticks(Sampler(SimulatedBackend(f"{gpus}x{GPU_MODEL}")), n)
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from fakenvml import FakeNvml  # the tests' fake libnvidia-ml under the real pynvml

        from mfu_agent.gpu.nvml_backend import NvmlBackend
    except ImportError as exc:  # pragma: no cover - tests/ or pytest absent
        out["nvml_fake_8"] = {"skipped": repr(exc)}
    else:
        fake = FakeNvml.h100s(8)
        with fake.installed():
            backend = NvmlBackend()
            backend.start()
            try:
                sampler = Sampler(backend)
                sampler.sample_once()
                calls_before = sum(fake.calls.values())
                out["nvml_fake_8"] = _ticks(sampler, n)
                out["nvml_fake_8"]["nvml_calls_per_tick"] = (sum(fake.calls.values()) - calls_before) / n
            finally:
                backend.close()
    for name, stats in out.items():
        if "median" in stats:
            extra = (
                f", {stats['nvml_calls_per_tick']:.0f} NVML calls" if "nvml_calls_per_tick" in stats else ""
            )
            median, p99 = stats["median"] / 1e6, stats["p99"] / 1e6
            log(f"  {name}: tick median {median:.2f} ms, p99 {p99:.2f} ms{extra}")
    return out
