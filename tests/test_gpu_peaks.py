"""Per-GPU peak families through the real agent: datasheet peak, clock-scaled peak, unknown models.

Expectations are computed here from datasheet / whitepaper constants, not read back from specs.py.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid

import pynvml
import pytest
from agent_clock import Clock
from fakenvml import FakeDevice, FakeNvml
from metrics_text import one, samples, values
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.nvml_backend import NvmlBackend
from mfu_agent.gpu.simulated import SimulatedBackend

# NVIDIA A100 datasheet: 312 TFLOPS dense BF16; A100 whitepaper: 108 SMs, 1410 MHz boost clock,
# 2048 dense BF16 FLOP per clock per SM (4 tensor cores x 256 FMA x 2).
A100_NAME = "NVIDIA A100-SXM4-80GB"
A100_BF16 = 312e12
A100_BOOST_MHZ = 1410
A100_SMS = 108
A100_BF16_PER_CLOCK_PER_SM = 2048
# NVIDIA H100 whitepaper, SXM5: BF16 989.4 TFLOPS at 1830 MHz; FP32 66.9 TFLOPS at 1980 MHz.
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_BF16 = 989.4e12
H100_TENSOR_MHZ = 1830
H100_FP32 = 66.9e12
H100_MAX_BOOST_MHZ = 1980


def scrape_nvml(**options) -> tuple[Agent, Clock]:
    """An agent on the installed fake NVML, with a clock the test moves."""
    clock = Clock()
    backend = NvmlBackend(clock=clock)
    backend.start()
    return Agent(backend, AgentOptions(interval=1.0, **options)), clock


def tick(agent: Agent, clock: Clock) -> str:
    clock.now += 1.0
    agent.sampler.sample_once()
    return generate_latest(agent.registry).decode()


def a100(sm_clock_mhz: int, **fields) -> FakeDevice:
    return FakeDevice(
        name=A100_NAME,
        architecture=pynvml.NVML_DEVICE_ARCH_AMPERE,
        sm_clock_mhz=sm_clock_mhz,
        sm_clock_max_mhz=A100_BOOST_MHZ,
        gpm_supported=False,
        **fields,
    )


@pytest.fixture
def throttled_a100s():
    """GPU 0 at half the A100's reference clock, GPU 1 at it."""
    fake = FakeNvml([a100(A100_BOOST_MHZ // 2), a100(A100_BOOST_MHZ)])
    with fake.installed():
        yield fake


def test_throttled_gpu_exports_half_the_datasheet_peak(throttled_a100s: FakeNvml):
    agent, clock = scrape_nvml()
    text = tick(agent, clock)
    half, full = throttled_a100s.devices
    # The datasheet peak does not move with the clock...
    assert one(text, "mfu_gpu_peak_flops", uuid=half.uuid, dtype="bf16") == A100_BF16
    assert one(text, "mfu_gpu_peak_flops", uuid=full.uuid, dtype="bf16") == A100_BF16
    # ...the clock peak does: half the clock, half the peak, which is also SMs x rate x clock.
    throttled = one(text, "mfu_gpu_clock_peak_flops", uuid=half.uuid, dtype="bf16")
    assert throttled == pytest.approx(A100_BF16 / 2, rel=1e-3)
    physical = A100_SMS * A100_BF16_PER_CLOCK_PER_SM * (A100_BOOST_MHZ // 2) * 1e6
    assert throttled == pytest.approx(physical, rel=1e-3)
    at_reference = one(text, "mfu_gpu_clock_peak_flops", uuid=full.uuid, dtype="bf16")
    assert at_reference == pytest.approx(A100_BF16, rel=1e-9)
    # every dtype with a peak and a known clock gets a clock peak
    assert {
        labels["dtype"]
        for (name, ls), _ in samples(text).items()
        if name == "mfu_gpu_clock_peak_flops" and (labels := dict(ls))["uuid"] == half.uuid
    } == {"bf16", "fp16", "tf32", "fp32", "fp64", "int8"}
    assert values(text, "mfu_gpu_peak_flops_unknown") == []


def test_clock_peak_is_not_clamped_and_uses_each_figures_own_clock():
    # An H100 SXM at its 1980 MHz maximum: above the 1830 MHz its tensor figures assume, so the
    # BF16 clock peak reads above the datasheet; its FP32 figure already assumes 1980 MHz.
    fake = FakeNvml([FakeDevice(name=H100_NAME, sm_clock_mhz=H100_MAX_BOOST_MHZ)])
    with fake.installed():
        agent, clock = scrape_nvml()
        text = tick(agent, clock)
    bf16 = one(text, "mfu_gpu_clock_peak_flops", gpu="0", dtype="bf16")
    assert bf16 == pytest.approx(H100_BF16 * H100_MAX_BOOST_MHZ / H100_TENSOR_MHZ, rel=1e-9)
    assert bf16 > one(text, "mfu_gpu_peak_flops", gpu="0", dtype="bf16")
    assert one(text, "mfu_gpu_clock_peak_flops", gpu="0", dtype="fp32") == pytest.approx(H100_FP32, rel=1e-9)


def test_clock_peak_absent_without_a_clock_reading():
    fake = FakeNvml([a100(A100_BOOST_MHZ, not_supported={"nvmlDeviceGetClockInfo"})])
    with fake.installed():
        agent, clock = scrape_nvml()
        text = tick(agent, clock)
    assert values(text, "mfu_gpu_sm_clock_hertz") == []
    assert one(text, "mfu_gpu_peak_flops", gpu="0", dtype="bf16") == A100_BF16
    assert values(text, "mfu_gpu_clock_peak_flops") == []


def test_clock_peak_absent_where_the_reference_clock_is_unknown_or_overridden():
    # B200: NVIDIA publishes no clock behind its figures. A100 with an overridden BF16 peak: the
    # operator's number has no known clock, while its other dtypes keep theirs.
    fake = FakeNvml([FakeDevice(name="NVIDIA B200", sm_clock_mhz=1965), a100(A100_BOOST_MHZ)])
    with fake.installed():
        agent, clock = scrape_nvml(peak_overrides={"A100 SXM": {"bf16": 300e12}})
        text = tick(agent, clock)
    assert one(text, "mfu_gpu_peak_flops", gpu="0", dtype="bf16") > 0
    assert values(text, "mfu_gpu_clock_peak_flops", gpu="0") == []
    assert one(text, "mfu_gpu_peak_flops", gpu="1", dtype="bf16") == 300e12
    assert values(text, "mfu_gpu_clock_peak_flops", gpu="1", dtype="bf16") == []
    assert values(text, "mfu_gpu_clock_peak_flops", gpu="1", dtype="tf32") != []


def test_unknown_model_exports_the_unknown_gauge_and_warns_once(caplog: pytest.LogCaptureFixture):
    # A name no other test has used: the warning is once per name for the life of the process.
    name = f"NVIDIA Mystery GPU {uuid.uuid4().hex[:8]}"
    fake = FakeNvml([FakeDevice(name=name), FakeDevice(name=name), FakeDevice(name=H100_NAME)])
    with fake.installed(), caplog.at_level(logging.WARNING, logger="mfu_agent.metrics.peaks"):
        agent, clock = scrape_nvml()
        texts = [tick(agent, clock) for _ in range(3)]
    for text in texts:
        for i in (0, 1):
            assert one(text, "mfu_gpu_peak_flops_unknown", gpu=str(i), model=name) == 1
            assert values(text, "mfu_gpu_peak_flops", gpu=str(i)) == []
            assert values(text, "mfu_gpu_clock_peak_flops", gpu=str(i)) == []
        assert values(text, "mfu_gpu_peak_flops_unknown", gpu="2") == []
        assert one(text, "mfu_gpu_peak_flops", gpu="2", dtype="bf16") == H100_BF16
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "--peak-flops-file" in message and "docs/peak-flops.md" in message


def test_unknown_model_named_in_the_override_file_is_known():
    name = f"NVIDIA Mystery GPU {uuid.uuid4().hex[:8]}"
    fake = FakeNvml([FakeDevice(name=name)])
    with fake.installed():
        agent, clock = scrape_nvml(peak_overrides={name: {"bf16": 1e15}})
        text = tick(agent, clock)
    assert values(text, "mfu_gpu_peak_flops_unknown") == []
    assert one(text, "mfu_gpu_peak_flops", gpu="0", dtype="bf16") == 1e15
    assert values(text, "mfu_gpu_clock_peak_flops") == []  # no reference clock for an operator's figure


def test_simulated_throttle_fault_lowers_the_clock_peak():
    backend = SimulatedBackend(f"2x{A100_NAME}")
    backend.apply_fault("throttle:1")
    agent = Agent(backend, AgentOptions(interval=1.0))
    agent.sampler.sample_once()
    text = generate_latest(agent.registry).decode()
    for gpu in ("0", "1"):
        sm_clock = one(text, "mfu_gpu_sm_clock_hertz", gpu=gpu)
        expected = A100_BF16 * sm_clock / (A100_BOOST_MHZ * 1e6)
        exported = one(text, "mfu_gpu_clock_peak_flops", gpu=gpu, dtype="bf16")
        assert exported == pytest.approx(expected, rel=1e-9)
    throttled = one(text, "mfu_gpu_clock_peak_flops", gpu="1", dtype="bf16")
    assert throttled < 0.7 * A100_BF16  # the simulator throttles to 62% of the maximum clock
    assert throttled < one(text, "mfu_gpu_clock_peak_flops", gpu="0", dtype="bf16")


def test_promtool_accepts_the_peak_families():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    name = f"NVIDIA Mystery GPU {uuid.uuid4().hex[:8]}"
    fake = FakeNvml([a100(A100_BOOST_MHZ // 2), FakeDevice(name=name)])
    with fake.installed():
        agent, clock = scrape_nvml()
        text = tick(agent, clock)
    assert "mfu_gpu_peak_flops_unknown{" in text and "mfu_gpu_clock_peak_flops{" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
