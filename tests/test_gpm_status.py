"""What GPM answers, per GPU, through the real pynvml wrappers against the fake libnvidia-ml: a refusal
(no_permission, in_use) is told apart from not_supported, exported in mfu_gpu_gpm_status, warned about
once with its fix, and asked again slowly until it ends."""

from __future__ import annotations

import logging
import subprocess

import pynvml
import pytest
from agent_clock import Clock, started, tick
from fakenvml import FakeDevice, FakeNvml
from metrics_text import one, values
from prometheus_server import find_binary

from mfu_agent.gpu.gpm import GPM_REFUSAL_RETRY_SECONDS
from mfu_agent.gpu.model import GPM_STATUSES


def status(text: str, gpu: str) -> str:
    """The one status whose series reads 1; every status has a series."""
    current = [s for s in GPM_STATUSES if one(text, "mfu_gpu_gpm_status", gpu=gpu, status=s) == 1]
    assert len(current) == 1, current
    return current[0]


def gpm_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "GPM refused" in r.getMessage()]


@pytest.mark.parametrize(
    ("error", "name", "fix"),
    [
        (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission", "CAP_SYS_ADMIN"),
        (pynvml.NVML_ERROR_IN_USE, "in_use", "another tool holds the GPU performance counters"),
    ],
)
def test_a_refusal_is_exported_warned_once_and_retried_slowly_until_it_ends(
    error: int, name: str, fix: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="mfu_agent")
    fake = FakeNvml.h100s(3)
    fake.devices[1].gpm_error = error
    fake.devices[2].gpm_error = error
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        text = tick(agent, clock)
        text = tick(agent, clock)
        assert status(text, "0") == "ok"
        assert values(text, "mfu_gpu_sm_active_ratio", gpu="0")
        for gpu in ("1", "2"):
            assert status(text, gpu) == name
            assert values(text, "mfu_gpu_sm_active_ratio", gpu=gpu) == [], "absent, never 0"
            assert one(text, "mfu_gpu_info", gpu=gpu, sm_activity_source="gpm") == 1
        warnings = gpm_warnings(caplog)
        assert len(warnings) == 1, "one warning for the node, not one per GPU or tick"
        assert name in warnings[0] and fix in warnings[0]

        gets = fake.calls["nvmlGpmSampleGet"]
        for _ in range(5):
            tick(agent, clock)
        assert fake.calls["nvmlGpmSampleGet"] == gets + 5, "only GPU 0 is asked each tick"

        clock.now += GPM_REFUSAL_RETRY_SECONDS
        tick(agent, clock)
        assert fake.calls["nvmlGpmSampleGet"] == gets + 5 + 3, "the refused GPUs are asked again"
        assert len(gpm_warnings(caplog)) == 1, "a refusal that goes on is not warned about again"

        fake.devices[1].gpm_error = None  # the privilege was granted, the profiler stopped
        clock.now += GPM_REFUSAL_RETRY_SECONDS
        text = tick(agent, clock)
        text = tick(agent, clock)
        assert status(text, "1") == "ok"
        assert values(text, "mfu_gpu_sm_active_ratio", gpu="1") == [pytest.approx(0.715)]
        assert status(text, "2") == name
        assert one(text, "mfu_agent_nvml_errors_total", call="nvmlGpmSampleGet", error=name) >= 3
        backend.close()


def test_not_supported_is_told_apart_and_never_asked_again():
    fake = FakeNvml(
        [
            FakeDevice(
                name="NVIDIA A100-SXM4-80GB", architecture=pynvml.NVML_DEVICE_ARCH_AMPERE, gpm_supported=False
            ),
            FakeDevice(gpm_error=pynvml.NVML_ERROR_NO_PERMISSION),
        ]
    )
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        text = tick(agent, clock)
        assert status(text, "0") == "not_supported"
        assert status(text, "1") == "no_permission"
        clock.now += 10 * GPM_REFUSAL_RETRY_SECONDS
        text = tick(agent, clock)
        assert status(text, "0") == "not_supported"
        assert fake.calls["nvmlGpmSampleGet"] == 2, "GPU 0 never; GPU 1 at start and after the wait"
        backend.close()


def test_a_refusal_of_the_parent_reaches_its_mig_devices():
    fake = FakeNvml.h100_mig(1, profiles=("3g.40gb", "3g.40gb"), gpm_error=pynvml.NVML_ERROR_NO_PERMISSION)
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        text = tick(agent, clock)
        text = tick(agent, clock)
        assert values(text, "mfu_gpu_gpm_status", gpu="0", uuid=fake.devices[0].uuid) == [], (
            "a GPU in MIG mode: its MIG devices carry it"
        )
        migs = [m.uuid for m in fake.devices[0].mig_devices]
        for uuid in migs:
            assert one(text, "mfu_gpu_gpm_status", uuid=uuid, status="no_permission") == 1
            assert values(text, "mfu_gpu_sm_active_ratio", uuid=uuid) == []
        fake.devices[0].gpm_error = None
        clock.now += GPM_REFUSAL_RETRY_SECONDS
        tick(agent, clock)
        text = tick(agent, clock)
        for uuid in migs:
            assert one(text, "mfu_gpu_gpm_status", uuid=uuid, status="ok") == 1
            assert values(text, "mfu_gpu_sm_active_ratio", uuid=uuid)
        backend.close()


def test_promtool_accepts_the_gpm_status_family():
    fake = FakeNvml.h100s(2)
    fake.devices[1].gpm_error = pynvml.NVML_ERROR_IN_USE
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        text = tick(agent, clock)
        backend.close()
    assert one(text, "mfu_gpu_gpm_status", gpu="1", status="in_use") == 1
    result = subprocess.run(
        [find_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
