"""The NVML backend through the real pynvml wrappers, against a fake libnvidia-ml at the ctypes boundary."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import fakenvml
import pynvml
import pytest
from conftest import free_port
from fakenvml import FakeDevice, FakeNvml
from metrics_text import one, values
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.cli import main
from mfu_agent.gpu.nvml import NvmlUnavailable
from mfu_agent.gpu.nvml_backend import NvmlBackend

fake_nvml = fakenvml.fake_nvml
no_nvml = fakenvml.no_nvml


class Clock:
    """Monotonic time the test moves by hand, so GPM sample spacing needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def started(clock: Clock | None = None) -> tuple[NvmlBackend, Agent, Clock]:
    clock = clock or Clock()
    backend = NvmlBackend(clock=clock)
    backend.start()
    return backend, Agent(backend, AgentOptions(interval=1.0)), clock


def tick(agent: Agent, clock: Clock, seconds: float = 1.0) -> str:
    clock.now += seconds
    agent.sampler.sample_once()
    return generate_latest(agent.registry).decode()


def test_every_reading_matches_the_fake_in_base_units(fake_nvml: FakeNvml):
    fake_nvml.devices[4].clock_event_reasons = (
        pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    )
    fake_nvml.devices[4].processes = [(4242, 20 * 1024**3), (4343, 1024**3)]
    fake_nvml.devices[4].remapped_rows = (5, 1, 1, 0)
    backend, agent, clock = started()
    text = tick(agent, clock)
    for i, dev in enumerate(fake_nvml.devices):
        g = {"gpu": str(i), "uuid": dev.uuid}
        assert (
            one(
                text,
                "mfu_gpu_info",
                **g,
                model=dev.name,
                pci_bus_id=dev.pci_bus_id,
                driver_version="550.54.15",
                architecture="hopper",
                sm_activity_source="gpm",
            )
            == 1
        )
        assert one(text, "mfu_gpu_up", **g) == 1
        assert one(text, "mfu_gpu_utilization_ratio", **g) == dev.utilization_gpu / 100
        assert one(text, "mfu_gpu_memory_utilization_ratio", **g) == dev.utilization_memory / 100
        assert one(text, "mfu_gpu_memory_used_bytes", **g) == dev.memory_used
        assert one(text, "mfu_gpu_memory_total_bytes", **g) == dev.memory_total
        assert one(text, "mfu_gpu_power_watts", **g) == dev.power_mw / 1000
        assert one(text, "mfu_gpu_power_limit_watts", **g) == dev.power_limit_mw / 1000
        assert one(text, "mfu_gpu_energy_joules_total", **g) == dev.energy_mj / 1000
        assert one(text, "mfu_gpu_temperature_celsius", **g) == dev.temperature_c
        assert one(text, "mfu_gpu_sm_clock_hertz", **g) == dev.sm_clock_mhz * 1e6
        assert one(text, "mfu_gpu_sm_clock_max_hertz", **g) == dev.sm_clock_max_mhz * 1e6
        assert one(text, "mfu_gpu_ecc_errors_total", **g, type="corrected") == dev.ecc_corrected
        assert one(text, "mfu_gpu_ecc_errors_total", **g, type="uncorrected") == dev.ecc_uncorrected
        assert one(text, "mfu_gpu_remapped_rows_total", **g, type="corrected") == dev.remapped_rows[0]
        assert one(text, "mfu_gpu_remapped_rows_total", **g, type="uncorrected") == dev.remapped_rows[1]
        assert one(text, "mfu_gpu_remapped_rows_pending", **g) == dev.remapped_rows[2]
        assert one(text, "mfu_gpu_row_remap_failure", **g) == dev.remapped_rows[3]
        for metric_id, name in [
            (pynvml.NVML_GPM_METRIC_SM_UTIL, "sm_active"),
            (pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, "sm_occupancy"),
            (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, "tensor_active"),
            (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, "dram_active"),
            (pynvml.NVML_GPM_METRIC_FP16_UTIL, "fp16_active"),
            (pynvml.NVML_GPM_METRIC_FP32_UTIL, "fp32_active"),
            (pynvml.NVML_GPM_METRIC_FP64_UTIL, "fp64_active"),
        ]:
            assert one(text, f"mfu_gpu_{name}_ratio", **g) == pytest.approx(dev.gpm_percent[metric_id] / 100)
    reasons = {"gpu": "4"}
    assert one(text, "mfu_gpu_clock_event_active", **reasons, reason="sw_power_cap") == 1
    assert one(text, "mfu_gpu_clock_event_active", **reasons, reason="hw_thermal_slowdown") == 1
    assert one(text, "mfu_gpu_clock_event_active", **reasons, reason="sw_thermal_slowdown") == 0
    assert one(text, "mfu_gpu_clock_event_active", gpu="0", reason="sw_power_cap") == 0
    assert one(text, "mfu_gpu_process_memory_bytes", gpu="4", pid="4242") == 20 * 1024**3
    assert one(text, "mfu_gpu_process_memory_bytes", gpu="4", pid="4343") == 1024**3
    assert len(values(text, "mfu_gpu_process_info", gpu="4")) == 2
    assert values(text, "mfu_gpu_process_memory_bytes", gpu="0") == []
    assert (
        fake_nvml.calls["nvmlDeviceGetMemoryInfo_v2"] > 0 and fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == 0
    )
    agent.stop()
    backend.close()


def test_gpm_swaps_two_buffers_and_follows_the_device(fake_nvml: FakeNvml):
    backend, agent, clock = started()
    live_after_start = set(fake_nvml.live_gpm_samples)
    assert len(live_after_start) == 2 * 8
    dev = fake_nvml.devices[0]
    for percent in (10.0, 55.5, 90.0, 33.0):
        dev.gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = percent
        text = tick(agent, clock)
        assert one(text, "mfu_gpu_sm_active_ratio", gpu="0") == pytest.approx(percent / 100)
    assert set(fake_nvml.live_gpm_samples) == live_after_start, "the same two buffers are reused every tick"
    assert fake_nvml.calls["nvmlGpmSampleAlloc"] == 16
    backend.close()
    assert not fake_nvml.live_gpm_samples, "GPM buffers are freed on shutdown"


def test_gpm_pairs_closer_than_100ms_are_not_asked_for(fake_nvml: FakeNvml):
    backend, agent, clock = started()
    tick(agent, clock)
    gets = fake_nvml.calls["nvmlGpmMetricsGet"]
    text = tick(agent, clock, seconds=0.05)
    assert fake_nvml.calls["nvmlGpmMetricsGet"] == gets
    assert values(text, "mfu_gpu_sm_active_ratio", gpu="0"), "the last figures stand in"
    backend.close()


def test_gpm_unsupported_leaves_activity_absent_not_zero():
    fake = FakeNvml(
        [
            FakeDevice(
                name="NVIDIA A100-SXM4-80GB", architecture=pynvml.NVML_DEVICE_ARCH_AMPERE, gpm_supported=False
            ),
            FakeDevice(),
        ]
    )
    with fake.installed():
        backend, agent, clock = started()
        text = tick(agent, clock)
        assert one(text, "mfu_gpu_info", gpu="0", sm_activity_source="none", architecture="ampere") == 1
        assert one(text, "mfu_gpu_info", gpu="1", sm_activity_source="gpm") == 1
        for name in ("sm_active", "sm_occupancy", "tensor_active", "dram_active"):
            assert values(text, f"mfu_gpu_{name}_ratio", gpu="0") == []
            assert values(text, f"mfu_gpu_{name}_ratio", gpu="1")
        assert fake.calls["nvmlGpmSampleAlloc"] == 2
        backend.close()


def test_not_supported_is_absent_and_not_retried(fake_nvml: FakeNvml):
    fake_nvml.devices[1].not_supported = {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetRemappedRows"}
    backend, agent, clock = started()
    text = tick(agent, clock)
    assert values(text, "mfu_gpu_energy_joules_total", gpu="1") == []
    assert values(text, "mfu_gpu_row_remap_failure", gpu="1") == []
    assert values(text, "mfu_gpu_energy_joules_total", gpu="2")
    calls = fake_nvml.calls["nvmlDeviceGetTotalEnergyConsumption"]
    text = tick(agent, clock)
    assert fake_nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls + 7, "GPU 1 is not asked again"
    assert (
        one(
            text,
            "mfu_agent_nvml_errors_total",
            call="nvmlDeviceGetTotalEnergyConsumption",
            error="not_supported",
        )
        == 1
    )
    backend.close()


def test_one_gpu_lost_mid_run_leaves_the_others_reporting(fake_nvml: FakeNvml):
    backend, agent, clock = started()
    assert one(tick(agent, clock), "mfu_gpu_up", gpu="5") == 1
    fake_nvml.devices[5].lost = True
    text = tick(agent, clock)
    assert one(text, "mfu_gpu_up", gpu="5") == 0
    assert values(text, "mfu_gpu_power_watts", gpu="5") == []
    assert sorted(values(text, "mfu_gpu_up")) == [0] + [1] * 7
    assert len(values(text, "mfu_gpu_power_watts")) == 7
    assert values(text, "mfu_agent_nvml_errors_total", error="gpu_is_lost")
    fake_nvml.devices[5].lost = False
    assert one(tick(agent, clock), "mfu_gpu_up", gpu="5") == 1
    backend.close()


def test_unknown_error_marks_the_gpu_down(fake_nvml: FakeNvml):
    fake_nvml.devices[2].unknown_error = {"nvmlDeviceGetPowerUsage"}
    backend, agent, clock = started()
    text = tick(agent, clock)
    assert one(text, "mfu_gpu_up", gpu="2") == 0
    assert one(text, "mfu_agent_nvml_errors_total", call="nvmlDeviceGetPowerUsage", error="unknown") == 1
    backend.close()


def test_function_not_found_is_remembered():
    fake = FakeNvml.h100s(2, missing_symbols={"nvmlDeviceGetRemappedRows", "nvmlDeviceGetMemoryInfo_v2"})
    with fake.installed():
        backend, agent, clock = started()
        tick(agent, clock)
        text = tick(agent, clock)
        assert values(text, "mfu_gpu_remapped_rows_total") == []
        # Without the v2 symbol the v1 struct is used (its 'used' includes reserved memory).
        dev = fake.devices[0]
        assert one(text, "mfu_gpu_memory_used_bytes", gpu="0") == dev.memory_used + dev.memory_reserved
        assert (
            one(
                text,
                "mfu_agent_nvml_errors_total",
                call="nvmlDeviceGetRemappedRows",
                error="function_not_found",
            )
            == 1
        )
        backend.close()


def test_library_mismatch_error_is_caught(fake_nvml: FakeNvml, monkeypatch):
    def mismatch(handle):
        raise pynvml.NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match"
        )

    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", mismatch)
    backend, agent, clock = started()
    text = tick(agent, clock)
    assert len(values(text, "mfu_gpu_up")) == 8
    assert (
        one(
            text,
            "mfu_agent_nvml_errors_total",
            call="nvmlDeviceGetComputeRunningProcesses",
            error="library_mismatch",
        )
        == 1
    )
    backend.close()


def test_repeated_xids_are_all_counted(fake_nvml: FakeNvml):
    backend, agent, clock = started()
    agent.start()
    try:
        for _ in range(3):
            fake_nvml.queue_xid(2, 79)
        fake_nvml.queue_xid(6, 13)
        fake_nvml.queue_double_bit_ecc(1)
        deadline = time.monotonic() + 10
        while fake_nvml.pending_events() and time.monotonic() < deadline:
            time.sleep(0.01)
        text = generate_latest(agent.registry).decode()
        deadline = time.monotonic() + 10
        while not values(text, "mfu_gpu_double_bit_ecc_events_total") and time.monotonic() < deadline:
            time.sleep(0.01)
            text = generate_latest(agent.registry).decode()
        assert one(text, "mfu_gpu_xid_errors_total", gpu="2", xid="79", uuid=fake_nvml.devices[2].uuid) == 3
        assert one(text, "mfu_gpu_xid_errors_total", gpu="6", xid="13") == 1
        assert one(text, "mfu_gpu_double_bit_ecc_events_total", gpu="1") == 1
    finally:
        agent.stop()
    assert not fake_nvml.live_gpm_samples


def test_stop_does_not_wait_on_a_blocked_event_wait(fake_nvml: FakeNvml):
    backend, agent, _ = started()
    agent.start()
    agent.stop()
    assert not agent.watcher._thread.is_alive()
    assert fake_nvml.calls["nvmlShutdown"] == 1


def test_driver_not_loaded_is_a_clear_error():
    fake = FakeNvml.h100s(1, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with fake.installed(), pytest.raises(NvmlUnavailable, match="driver is not loaded"):
        NvmlBackend().start()


def test_run_without_a_driver_exits_with_one_line(no_nvml, capsys):
    # A free port: the address is bound before NVML is tried (a port in use is exit status 3).
    assert main(["run", "--backend", "auto", "--listen", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no NVIDIA driver found" in err and "mfu-agent demo" in err and "Traceback" not in err


def test_run_without_a_driver_from_the_shell():
    """The real command on this GPU-less machine (skipped where a driver happens to be installed)."""
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is installed here")
    except pynvml.NVMLError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", "run", "--backend", "auto"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no NVIDIA driver found" in result.stderr


def test_gpu_processes_are_attributed_to_pods_and_slurm_jobs(fake_nvml: FakeNvml):
    """NVML's process list joined with /proc/<pid>/cgroup (fixture trees of real layouts)."""
    fake_nvml.devices[0].processes = [(38810, 4 * 1024**3), (81234, 2 * 1024**3), (1337, 1024**2)]
    backend = NvmlBackend(clock=Clock())
    backend.start()
    agent = Agent(backend, AgentOptions(proc_root=str(Path(__file__).parent / "fixtures" / "proc")))
    agent.sampler.sample_once()
    text = generate_latest(agent.registry).decode()
    pod = one(text, "mfu_gpu_process_info", gpu="0", pid="38810")
    assert pod == 1
    assert values(
        text,
        "mfu_gpu_process_info",
        pid="38810",
        pod_uid="5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        container_id="fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
    )
    assert values(text, "mfu_gpu_process_info", pid="81234", slurm_job_id="4242", pod_uid="")
    assert values(text, "mfu_gpu_process_info", pid="1337", pod_uid="", container_id="", slurm_job_id="")
    backend.close()


def test_pid_attribution_through_nvml_gives_mfu_and_the_pod(fake_nvml: FakeNvml):
    """A rank found by its pid in NVML's process list: MFU within 1% of rate / peak, joined to its pod."""
    import json

    import httpx
    from conftest import serve

    peak = 989.4e12  # H100 SXM datasheet, dense bf16
    fake_nvml.devices[6].processes = [(38810, 30 * 1024**3)]
    backend = NvmlBackend()
    backend.start()
    agent = Agent(backend, AgentOptions(proc_root=str(Path(__file__).parent / "fixtures" / "proc")))
    with serve(agent) as url, httpx.Client(base_url=url) as client:
        start = time.time() - 40
        for t in range(0, 41, 5):
            report = {
                "job_id": "pid-job",
                "rank": 0,
                "pid": 38810,
                "model_flops_total": 0.35 * peak * t,
                "timestamp": start + t,
            }
            assert client.post("/v1/reports", content=json.dumps(report)).status_code == 202
        text = client.get("/metrics").text
    assert one(text, "mfu_job_mfu_ratio", job_id="pid-job", gpu="6", uuid=fake_nvml.devices[6].uuid) == (
        pytest.approx(0.35, rel=0.01)
    )
    assert (
        one(
            text,
            "mfu_job_info",
            job_id="pid-job",
            attributed_by="pid",
            pid="38810",
            pod_uid="5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        )
        == 1
    )


# -- per-process utilisation (time-slicing and MPS) -----------------------------------------------


def test_process_utilization_follows_the_fake_in_ratios_and_holds_then_drops(fake_nvml: FakeNvml):
    from mfu_agent.gpu.nvml_backend import PROCESS_UTILIZATION_HOLD_TICKS

    dev = fake_nvml.devices[3]
    dev.processes = [(4242, 20 * 1024**3), (4343, 1024**3)]
    dev.process_samples = [(4242, 61, 23, 1_000_000), (4343, 17, 4, 1_000_000)]
    backend, agent, clock = started()
    text = tick(agent, clock)
    g = {"gpu": "3", "uuid": dev.uuid}
    assert one(text, "mfu_gpu_process_sm_utilization_ratio", **g, pid="4242") == 0.61
    assert one(text, "mfu_gpu_process_memory_utilization_ratio", **g, pid="4242") == 0.23
    assert one(text, "mfu_gpu_process_sm_utilization_ratio", **g, pid="4343") == 0.17
    assert one(text, "mfu_gpu_process_memory_utilization_ratio", **g, pid="4343") == 0.04
    assert values(text, "mfu_gpu_process_sm_utilization_ratio", gpu="0") == []  # no samples: absent

    # Only 4242 has a new sample: NotFound is not asked for again with the old timestamp, 4343 is held.
    dev.process_samples.append((4242, 80, 30, 2_000_000))
    text = tick(agent, clock)
    assert one(text, "mfu_gpu_process_sm_utilization_ratio", **g, pid="4242") == 0.80
    assert one(text, "mfu_gpu_process_sm_utilization_ratio", **g, pid="4343") == 0.17

    # No new samples at all (NotFound): figures are held for a few ticks, then dropped, never stale.
    text = tick(agent, clock)
    assert one(text, "mfu_gpu_process_sm_utilization_ratio", **g, pid="4242") == 0.80
    assert values(text, "mfu_agent_nvml_errors_total", call="nvmlDeviceGetProcessUtilization") == []
    for _ in range(PROCESS_UTILIZATION_HOLD_TICKS):
        text = tick(agent, clock)
    assert values(text, "mfu_gpu_process_sm_utilization_ratio", gpu="3") == []
    assert values(text, "mfu_gpu_process_memory_bytes", gpu="3", pid="4343")  # the process itself stays

    # A new sample brings it back; an exited process loses its figure at once.
    dev.process_samples.append((4343, 9, 1, 9_000_000))
    dev.processes = [(4343, 1024**3)]
    text = tick(agent, clock)
    assert values(text, "mfu_gpu_process_sm_utilization_ratio", gpu="3") == [0.09]
    backend.close()


def test_process_utilization_not_supported_is_absent_and_not_retried(fake_nvml: FakeNvml):
    dev = fake_nvml.devices[2]
    dev.processes = [(4242, 1024**3)]
    dev.process_samples = [(4242, 50, 10, 1_000)]
    dev.not_supported = {"nvmlDeviceGetProcessUtilization"}
    backend, agent, clock = started()
    text = tick(agent, clock)
    assert values(text, "mfu_gpu_process_sm_utilization_ratio", gpu="2") == []
    assert values(text, "mfu_gpu_process_memory_bytes", gpu="2", pid="4242") == [1024**3]
    calls = fake_nvml.calls["nvmlDeviceGetProcessUtilization"]
    text = tick(agent, clock)
    assert fake_nvml.calls["nvmlDeviceGetProcessUtilization"] == calls + 7, "GPU 2 is not asked again"
    assert (
        one(
            text, "mfu_agent_nvml_errors_total", call="nvmlDeviceGetProcessUtilization", error="not_supported"
        )
        == 1
    )
    backend.close()


def test_two_pods_time_sharing_one_gpu_each_show_their_own_sm_utilization(fake_nvml: FakeNvml):
    """The done-when of time-slicing: two pods on GPU 5, each its own SM figure joined to its pod."""
    pods = {41235: "3f1c2a9e-8b7d-4c6e-9a2f-1d3b5c7e9f01", 52017: "b2e4d6f8-1a3c-4e5f-8a7b-9c0d1e2f3a4b"}
    dev = fake_nvml.devices[5]
    dev.processes = [(41235, 30 * 1024**3), (52017, 12 * 1024**3)]
    dev.process_samples = [(41235, 58, 31, 5_000), (52017, 24, 9, 5_000)]
    backend = NvmlBackend(clock=Clock())
    backend.start()
    agent = Agent(backend, AgentOptions(proc_root=str(Path(__file__).parent / "fixtures" / "proc")))
    agent.sampler.sample_once()
    text = generate_latest(agent.registry).decode()
    by_pod = {}
    for pid, pod_uid in pods.items():
        assert one(text, "mfu_gpu_process_info", gpu="5", pid=str(pid), pod_uid=pod_uid) == 1
        by_pod[pod_uid] = one(text, "mfu_gpu_process_sm_utilization_ratio", gpu="5", pid=str(pid))
    assert by_pod == {pods[41235]: 0.58, pods[52017]: 0.24}
    backend.close()
