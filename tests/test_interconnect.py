"""PCIe and NVLink throughput (GPM) and NVLink error counters, through the real pynvml wrappers against
the fake libnvidia-ml: the fake's own semantics, the agent in process (a controlled clock), the real
agent process (tests/fake_nvml_agent.py), the simulated backend, and promtool on the page."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pynvml
import pytest
from agent_clock import Clock, started, tick
from agent_process import AgentProcess
from fakenvml import NVLINK_TOTAL_FIELDS, FakeDevice, FakeNvml
from metrics_text import one, values
from prometheus_client import generate_latest
from prometheus_server import find_binary

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.nvml_backend import NVLINK_READ_EVERY_TICKS
from mfu_agent.gpu.simulated import SimulatedBackend

MIB = 1024**2
TYPES = {  # the exported type -> NVML's per-link counter
    "replay": pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    "recovery": pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    "crc_flit": pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    "crc_data": pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA,
}
CRC_DATA_TOTAL = pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL


def link_errors(links: int, scale: int = 1) -> list[list[int]]:
    """Distinct counts per link and counter (and ECC data errors, which are not exported), so that a
    total shows which links and counters went into it."""
    return [[scale * (link + 1) * 10**kind for kind in range(4)] + [7] for link in range(links)]


def summed_per_link(index: int) -> dict[str, int]:
    """Each counter summed over the GPU's active links, read link by link through pynvml."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    links = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            if pynvml.nvmlDeviceGetNvLinkState(handle, link) == pynvml.NVML_FEATURE_ENABLED:
                links.append(link)
        except pynvml.NVMLError_InvalidArgument:
            break  # past the GPU's links
    return {
        name: sum(pynvml.nvmlDeviceGetNvLinkErrorCounter(handle, link, counter) for link in links)
        for name, counter in TYPES.items()
    }


def promtool_check(text: str) -> None:
    result = subprocess.run(
        [find_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_fake_answers_nvlink_calls_as_the_driver_does():
    fake = FakeNvml([FakeDevice(nvlink_errors=link_errors(18)), FakeDevice(nvlink_links=0)])
    with fake.installed():
        pynvml.nvmlInit()
        try:
            with_links, without = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in (0, 1))
            assert pynvml.nvmlDeviceGetNvLinkState(with_links, 17) == pynvml.NVML_FEATURE_ENABLED
            with pytest.raises(pynvml.NVMLError_InvalidArgument):
                pynvml.nvmlDeviceGetNvLinkState(with_links, 18)
            with pytest.raises(pynvml.NVMLError_InvalidArgument):
                pynvml.nvmlDeviceGetNvLinkErrorCounter(with_links, 0, pynvml.NVML_NVLINK_ERROR_COUNT)
            assert pynvml.nvmlDeviceGetNvLinkErrorCounter(with_links, 2, TYPES["crc_flit"]) == 300
            per_link = summed_per_link(0)
            assert per_link == {"replay": 171, "recovery": 1710, "crc_flit": 17100, "crc_data": 171000}
            fields = pynvml.nvmlDeviceGetFieldValues(
                with_links, [pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT, *NVLINK_TOTAL_FIELDS]
            )
            assert [v.nvmlReturn for v in fields] == [pynvml.NVML_SUCCESS] * 5
            assert fields[0].value.uiVal == 18
            totals = {f.fieldId: f.value.ullVal for f in fields[1:]}
            assert totals == {
                field: per_link[name]
                for field, counter in NVLINK_TOTAL_FIELDS.items()
                for name, c in TYPES.items()
                if c == counter
            }

            with pytest.raises(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceGetNvLinkState(without, 0)
            with pytest.raises(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceGetNvLinkErrorCounter(without, 0, TYPES["replay"])
            fields = pynvml.nvmlDeviceGetFieldValues(without, [pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT])
            assert fields[0].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED, "per field; the call succeeds"
        finally:
            pynvml.nvmlShutdown()


def test_throughput_and_errors_are_the_fakes_and_a_gpu_without_nvlink_has_none():
    fake = FakeNvml(
        [
            FakeDevice(nvlink_errors=link_errors(18)),
            FakeDevice(
                nvlink_links=0,
                pcie_rx_mib_per_second=812.5,
                pcie_tx_mib_per_second=96.25,
                nvlink_rx_mib_per_second=999.0,  # never given: the GPU has no NVLink
            ),
            FakeDevice(
                nvlink_links=4,
                nvlink_errors=link_errors(6, scale=3),  # links 4 and 5 are not the GPU's: not counted
                nvlink_rx_mib_per_second=20000.125,
                nvlink_tx_mib_per_second=0.0,
                unsupported_fields={CRC_DATA_TOTAL},
            ),
            # GPM answers NVLink throughput, but the driver does not say the GPU has links
            FakeDevice(
                nvlink_errors=link_errors(18), unsupported_fields={pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT}
            ),
        ]
    )
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        tick(agent, clock)
        text = tick(agent, clock)
        for index, dev in enumerate(fake.devices):
            gpu = str(index)
            assert one(text, "mfu_gpu_pcie_bytes_per_second", gpu=gpu, direction="rx") == (
                dev.pcie_rx_mib_per_second * MIB
            )
            assert one(text, "mfu_gpu_pcie_bytes_per_second", gpu=gpu, direction="tx") == (
                dev.pcie_tx_mib_per_second * MIB
            )
        for gpu in ("0", "2"):
            dev = fake.devices[int(gpu)]
            assert one(text, "mfu_gpu_nvlink_bytes_per_second", gpu=gpu, direction="rx") == (
                dev.nvlink_rx_mib_per_second * MIB
            )
            assert one(text, "mfu_gpu_nvlink_bytes_per_second", gpu=gpu, direction="tx") == (
                dev.nvlink_tx_mib_per_second * MIB
            ), "an idle link reads 0, not absent"
        for gpu in ("1", "3"):
            assert values(text, "mfu_gpu_nvlink_bytes_per_second", gpu=gpu) == []
            assert values(text, "mfu_gpu_nvlink_errors_total", gpu=gpu) == []

        with_links = summed_per_link(0)
        assert with_links["replay"] == 171
        for name, count in with_links.items():
            assert one(text, "mfu_gpu_nvlink_errors_total", gpu="0", type=name) == count
        on_four_links = summed_per_link(2)
        assert on_four_links["replay"] == 3 * (1 + 2 + 3 + 4)
        for name in ("replay", "recovery", "crc_flit"):
            assert one(text, "mfu_gpu_nvlink_errors_total", gpu="2", type=name) == on_four_links[name]
        assert values(text, "mfu_gpu_nvlink_errors_total", gpu="2", type="crc_data") == [], (
            "a counter the driver does not give is absent, never 0"
        )
        backend.close()
    promtool_check(text)


def test_error_counters_are_read_every_few_ticks_and_held_between():
    fake = FakeNvml.h100s(2, nvlink_errors=link_errors(18))
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        text = tick(agent, clock)
        assert one(text, "mfu_gpu_nvlink_errors_total", gpu="1", type="replay") == 171
        fake.devices[1].nvlink_errors[0][TYPES["replay"]] += 5
        for _ in range(NVLINK_READ_EVERY_TICKS - 1):
            text = tick(agent, clock)
            assert one(text, "mfu_gpu_nvlink_errors_total", gpu="1", type="replay") == 171
        assert fake.calls["nvmlDeviceGetFieldValues"] == 2, "one call per GPU, at the first read"
        text = tick(agent, clock)
        assert one(text, "mfu_gpu_nvlink_errors_total", gpu="1", type="replay") == 176
        assert fake.calls["nvmlDeviceGetFieldValues"] == 4
        backend.close()


def test_mig_devices_carry_no_throughput_and_the_parent_keeps_its_nvlink_errors():
    fake = FakeNvml.h100_mig(1, profiles=("3g.40gb", "3g.40gb"), nvlink_errors=link_errors(18))
    clock = Clock()
    with fake.installed():
        backend, agent = started(clock)
        tick(agent, clock)
        text = tick(agent, clock)
        backend.close()
    migs = [m.uuid for m in fake.devices[0].mig_devices]
    assert all(values(text, "mfu_gpu_sm_active_ratio", uuid=uuid) for uuid in migs), "GPM does answer"
    for name in ("mfu_gpu_pcie_bytes_per_second", "mfu_gpu_nvlink_bytes_per_second"):
        assert values(text, name) == [], "the links are the physical GPU's, and it takes no GPM samples"
    assert one(text, "mfu_gpu_nvlink_errors_total", uuid=fake.devices[0].uuid, type="replay") == 171
    for uuid in migs:
        assert values(text, "mfu_gpu_nvlink_errors_total", uuid=uuid) == []


def test_the_real_agent_exports_the_fakes_values(tmp_path: Path):
    devices = [
        {
            "nvlink_errors": link_errors(18),
            "pcie_rx_mib_per_second": 4096.5,
            "nvlink_tx_mib_per_second": 7.75,
        },
        {"nvlink_links": 0},
    ]
    with AgentProcess("--interval", "0.2", fake_nvml={"devices": devices}, tmp=tmp_path) as agent:
        deadline = time.monotonic() + 30
        while not agent.series("mfu_gpu_pcie_bytes_per_second", gpu="1") and time.monotonic() < deadline:
            time.sleep(0.1)
        text = agent.metrics()
        gpus = httpx.get(agent.url + "/v1/gpus", timeout=10).json()["gpus"]
    assert gpus[0]["nvlink_links"] == 18 and gpus[0]["nvlink_errors"]["replay"] == 171
    assert gpus[0]["activity"]["pcie_rx_bytes_per_second"] == 4096.5 * MIB
    assert gpus[1]["nvlink_links"] == 0 and gpus[1]["nvlink_errors"] is None
    assert gpus[1]["activity"]["nvlink_rx_bytes_per_second"] is None
    assert one(text, "mfu_gpu_pcie_bytes_per_second", gpu="0", direction="rx") == 4096.5 * MIB
    assert one(text, "mfu_gpu_pcie_bytes_per_second", gpu="1", direction="rx") == (
        FakeDevice().pcie_rx_mib_per_second * MIB
    )
    assert one(text, "mfu_gpu_nvlink_bytes_per_second", gpu="0", direction="tx") == 7.75 * MIB
    assert one(text, "mfu_gpu_nvlink_bytes_per_second", gpu="0", direction="rx") == (
        FakeDevice().nvlink_rx_mib_per_second * MIB
    )
    expected = {"replay": 171, "recovery": 1710, "crc_flit": 17100, "crc_data": 171000}
    for name, count in expected.items():
        assert one(text, "mfu_gpu_nvlink_errors_total", gpu="0", type=name) == count
    assert values(text, "mfu_gpu_nvlink_bytes_per_second", gpu="1") == []
    assert values(text, "mfu_gpu_nvlink_errors_total", gpu="1") == []
    promtool_check(text)


def test_the_simulator_shows_the_series_with_nvlink_only_where_the_board_has_it():
    backend = SimulatedBackend("1xNVIDIA H100 80GB HBM3,1xNVIDIA H100 PCIe")
    agent = Agent(backend, AgentOptions(interval=1.0))
    agent.sampler.sample_once()
    text = generate_latest(agent.registry).decode()
    backend.close()
    for gpu in ("0", "1"):
        for direction in ("rx", "tx"):
            assert one(text, "mfu_gpu_pcie_bytes_per_second", gpu=gpu, direction=direction) > 0
    assert one(text, "mfu_gpu_nvlink_bytes_per_second", gpu="0", direction="rx") > 0
    assert one(text, "mfu_gpu_nvlink_errors_total", gpu="0", type="replay") == 0
    assert values(text, "mfu_gpu_nvlink_bytes_per_second", gpu="1") == []
    assert values(text, "mfu_gpu_nvlink_errors_total", gpu="1") == []
