"""NVML faults while the agent runs: the driver unloaded and back, a call that hangs, shutdown during a
hang, GPUs that vanish and appear. In process through NvmlBackend and Agent (the real pynvml wrappers on
tests/fakenvml.py, with clocks the test moves), then through real agent processes whose fake NVML the
test drives through its control file (tests/fake_nvml_agent.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

import httpx
import pynvml
import pytest
from agent_process import AgentProcess
from fakenvml import FakeDevice, FakeNvml
from metrics_text import one, samples, values
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.app import create_app
from mfu_agent.gpu.nvml_backend import (
    RESCAN_EVERY_TICKS,
    RETRY_MAX_SECONDS,
    VANISHED_HOLD_SECONDS,
    NvmlBackend,
)
from mfu_agent.jobs.rank import ReportData

WAIT = 30  # seconds: bound on every wait for a real process; never an assertion on speed


class Clock:
    """Time the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    """An NvmlBackend and an Agent on a monotonic and a wall clock that move together, by hand."""

    def __init__(self, interval: float = 1.0) -> None:
        self.mono = Clock(1000.0)
        self.wall = Clock(1.7e9)
        self.backend = NvmlBackend(clock=self.mono)
        self.backend.start()
        self.agent = Agent(self.backend, AgentOptions(interval=interval), clock=self.wall)

    def advance(self, seconds: float) -> None:
        self.mono.now += seconds
        self.wall.now += seconds

    def tick(self, seconds: float = 1.0) -> str:
        self.advance(seconds)
        self.agent.sampler.sample_once()
        return self.text()

    def text(self) -> str:
        return generate_latest(self.agent.registry).decode()


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


# ---------------------------------------------------------------- in process: NVML as a whole


@pytest.mark.parametrize(
    "error, reason",
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
        (pynvml.NVML_ERROR_UNINITIALIZED, "Uninitialized"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "version mismatch"),
    ],
)
def test_nvml_gone_marks_every_gpu_down_and_recovers_without_a_restart(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture, error: int, reason: str
):
    caplog.set_level(logging.INFO)
    rig = Rig()
    text = rig.tick()
    assert values(text, "mfu_gpu_up") == [1.0] * 8 and one(text, "mfu_agent_nvml_up") == 1
    fake_nvml.unload(error)
    rig.tick()
    assert reason in rig.agent.readiness(), "the failure that made NVML unavailable"
    for _ in range(3):  # ticks during the backoff and re-initialisations failing
        text = rig.tick()
        assert values(text, "mfu_gpu_up") == [0.0] * 8
        assert len(values(text, "mfu_gpu_info")) == 8
        assert values(text, "mfu_gpu_power_watts") == [] and values(text, "mfu_gpu_sm_active_ratio") == []
        assert values(text, "mfu_gpu_peak_flops") == [], "a GPU down exports its identity and up only"
        assert one(text, "mfu_agent_nvml_up") == 0
        assert rig.agent.readiness().startswith("NVML is unavailable: ")
    assert rig.agent.sampler.failures_total == 0
    assert len(messages(caplog, "NVML is unavailable")) == 1
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    fake_nvml.reload()
    text = rig.tick(RETRY_MAX_SECONDS)  # past any backoff
    assert values(text, "mfu_gpu_up") == [1.0] * 8
    assert one(text, "mfu_agent_nvml_up") == 1 and rig.agent.readiness() == ""
    dev = fake_nvml.devices[3]
    assert one(text, "mfu_gpu_power_watts", gpu="3", uuid=dev.uuid) == dev.power_mw / 1000
    assert len(messages(caplog, "NVML answers again")) == 1
    assert fake_nvml.init_count == 1, "initialised afresh, once"
    text = rig.tick()
    assert len(values(text, "mfu_gpu_sm_active_ratio")) == 8, "GPM restarted on the new handles"
    rig.backend.close()
    assert not fake_nvml.live_gpm_samples and fake_nvml.init_count == 0


def test_reinitialisation_backs_off_from_1_s_doubling_to_30_s(fake_nvml: FakeNvml):
    rig = Rig()
    rig.tick()
    fake_nvml.unload()
    rig.tick()
    went = rig.mono.now
    attempts = []
    inits = fake_nvml.calls["nvmlInitWithFlags"]
    while rig.mono.now - went < 100:
        rig.tick(0.5)
        if fake_nvml.calls["nvmlInitWithFlags"] > inits:
            inits = fake_nvml.calls["nvmlInitWithFlags"]
            attempts.append(rig.mono.now - went)
    assert attempts == [1, 3, 7, 15, 31, 61, 91]  # gaps 1, 2, 4, 8, 16, 30, 30


def test_every_gpu_lost_counts_as_nvml_unavailable_one_lost_gpu_does_not(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture
):
    rig = Rig()
    rig.tick()
    fake_nvml.devices[0].lost = True
    text = rig.tick()
    assert one(text, "mfu_agent_nvml_up") == 1 and sorted(values(text, "mfu_gpu_up")) == [0] + [1] * 7
    for dev in fake_nvml.devices:
        dev.lost = True
    for _ in range(40):  # several re-initialisations that find every GPU still lost
        text = rig.tick()
        assert one(text, "mfu_agent_nvml_up") == 0 and values(text, "mfu_gpu_up") == [0.0] * 8
        labels = [dict(ls) for (name, ls) in samples(text) if name == "mfu_gpu_up"]
        assert {ls["uuid"] for ls in labels} == {d.uuid for d in fake_nvml.devices}, "known identities"
    assert rig.backend.unavailable_reason == "every GPU is lost"
    assert len(messages(caplog, "NVML is unavailable")) == 1
    for dev in fake_nvml.devices:
        dev.lost = False
    text = rig.tick(RETRY_MAX_SECONDS)
    assert values(text, "mfu_gpu_up") == [1.0] * 8 and one(text, "mfu_agent_nvml_up") == 1
    rig.backend.close()
    assert not fake_nvml.live_gpm_samples


def test_events_resume_on_the_event_set_of_the_new_initialisation(fake_nvml: FakeNvml):
    rig = Rig()
    rig.tick()
    fake_nvml.unload()
    rig.tick()
    assert rig.backend.wait_for_events(0.01) == []  # no event set meanwhile: waits, no error
    fake_nvml.reload()
    rig.tick(RETRY_MAX_SECONDS)
    fake_nvml.queue_xid(4, 79)
    (event,) = rig.backend.wait_for_events(5)
    assert (event.gpu_index, event.uuid, event.xid) == (4, fake_nvml.devices[4].uuid, 79)
    rig.backend.close()


# ---------------------------------------------------------------- in process: GPUs that come and go


def test_a_gpu_removed_is_down_at_once_then_dropped_and_the_next_one_moves_down(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture
):
    rig = Rig()
    rig.tick()
    uuids = [d.uuid for d in fake_nvml.devices]
    fake_nvml.remove_device(2)
    text = rig.tick()
    assert one(text, "mfu_gpu_up", uuid=uuids[2], gpu="2") == 0, "GpuDown fires on it"
    assert one(text, "mfu_gpu_info", uuid=uuids[2]) == 1
    assert values(text, "mfu_gpu_power_watts", uuid=uuids[2]) == []
    # The GPU after it answers at NVML's new index; every other GPU is read as before.
    assert one(text, "mfu_gpu_up", uuid=uuids[3], gpu="2") == 1
    assert one(text, "mfu_gpu_power_watts", uuid=uuids[3], gpu="2") == 612.0
    assert values(text, "mfu_gpu_up", uuid=uuids[3], gpu="3") == []
    assert len(values(text, "mfu_gpu_power_watts")) == 7
    assert one(text, "mfu_agent_nvml_up") == 1
    assert len(messages(caplog, "is gone from NVML's device list")) == 1
    assert len(fake_nvml.live_gpm_samples) == 2 * 7, "the gone and moved GPUs' buffers are freed"
    snapshot = rig.agent.sampler.latest
    assert snapshot.by_index[2].uuid == uuids[3] and uuids[2] not in snapshot.by_uuid
    # Reports naming the index go to the GPU now there.
    rig.agent.jobs.apply([ReportData(job_id="j", rank=0, model_flops={"bf16": 1.0}, gpus=(2,))], snapshot)
    assert [g.uuid for g in rig.agent.jobs.views()[0].gpus] == [uuids[3]]
    rig.tick(VANISHED_HOLD_SECONDS / 2)
    text = rig.tick(VANISHED_HOLD_SECONDS / 2)
    assert values(text, "mfu_gpu_info", uuid=uuids[2]) == [], "dropped after the hold"
    assert len(values(text, "mfu_gpu_info")) == 7 and values(text, "mfu_gpu_up") == [1.0] * 7
    rig.backend.close()
    assert not fake_nvml.live_gpm_samples


def test_a_gpu_added_is_read_within_a_few_ticks_and_reports_its_events(fake_nvml: FakeNvml):
    rig = Rig()
    rig.tick()
    index = fake_nvml.add_device(FakeDevice(power_mw=300_000))
    uuid = fake_nvml.devices[index].uuid
    for _ in range(RESCAN_EVERY_TICKS):
        text = rig.tick()
        if values(text, "mfu_gpu_up", uuid=uuid):
            break
    assert one(text, "mfu_gpu_up", uuid=uuid, gpu="8") == 1
    assert one(text, "mfu_gpu_power_watts", uuid=uuid) == 300.0
    snapshot = rig.agent.sampler.latest
    assert snapshot.by_index[8].uuid == uuid and snapshot.by_uuid[uuid].index == 8
    rig.agent.jobs.apply([ReportData(job_id="j", rank=0, model_flops={"bf16": 1.0}, gpus=(uuid,))], snapshot)
    fake_nvml.queue_xid(8, 48)
    (event,) = rig.backend.wait_for_events(5)
    assert (event.gpu_index, event.uuid) == (8, uuid)
    rig.backend.close()


# ---------------------------------------------------------------- in process: staleness


def test_a_stale_snapshot_is_exported_down_with_the_age_of_its_readings(fake_nvml: FakeNvml):
    rig = Rig(interval=1.0)
    assert rig.agent.stale_after == 10.0  # max(3 x 1 s, 10 s)
    assert Agent(rig.backend, AgentOptions(interval=5.0)).stale_after == 15.0
    rig.tick()
    rig.tick()
    text = rig.text()
    assert values(text, "mfu_gpu_reading_age_seconds") == [0.0] * 8
    rig.advance(4)  # no tick: the sampler is stuck
    text = rig.text()
    assert values(text, "mfu_gpu_reading_age_seconds") == [4.0] * 8
    assert values(text, "mfu_gpu_up") == [1.0] * 8 and rig.agent.readiness() == ""
    rig.advance(7)
    text = rig.text()
    assert values(text, "mfu_gpu_reading_age_seconds") == [11.0] * 8
    assert values(text, "mfu_gpu_up") == [0.0] * 8 and len(values(text, "mfu_gpu_info")) == 8
    for family in ("mfu_gpu_power_watts", "mfu_gpu_sm_active_ratio", "mfu_gpu_peak_flops"):
        assert values(text, family) == [], family
    assert one(text, "mfu_agent_nvml_up") == 0
    assert "no GPU sample completed for 11 s" in rig.agent.readiness()

    async def ask(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(rig.agent, manage_agent=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.get(path)

    ready = asyncio.run(ask("/readyz"))
    assert ready.status_code == 503 and ready.text.count("\n") == 1 and "stuck" in ready.text
    assert asyncio.run(ask("/healthz")).status_code == 200
    body = asyncio.run(ask("/v1/gpus")).json()
    assert body["nvml_up"] is False and "stuck" in body["unavailable_reason"]
    assert [(g["up"], g["power_watts"]) for g in body["gpus"]] == [(False, None)] * 8
    text = rig.tick(0)
    assert values(text, "mfu_gpu_up") == [1.0] * 8
    assert values(text, "mfu_gpu_reading_age_seconds") == [0.0] * 8
    assert asyncio.run(ask("/readyz")).status_code == 200
    rig.backend.close()


def test_the_age_of_a_gpu_down_grows_from_its_last_good_reading(fake_nvml: FakeNvml):
    rig = Rig()
    rig.tick()
    fake_nvml.devices[6].lost = True
    rig.tick()
    text = rig.tick()
    assert one(text, "mfu_gpu_reading_age_seconds", gpu="6") == 2.0
    assert one(text, "mfu_gpu_reading_age_seconds", gpu="5") == 0.0
    rig.backend.close()


# ---------------------------------------------------------------- in process: shutdown during a hang


def test_close_does_not_wait_for_a_read_stuck_in_nvml(fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture):
    backend = NvmlBackend()
    backend.start()
    fake_nvml.hang("nvmlDeviceGetPowerUsage")
    reader = threading.Thread(target=backend.read_all, daemon=True)
    reader.start()
    assert fake_nvml.wait_until_blocked(1, timeout=WAIT)
    closer = threading.Thread(target=backend.close, kwargs={"timeout": 0.1}, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "close() returned while the read is stuck"
    assert len(messages(caplog, "skipping NVML clean-up")) == 1
    assert fake_nvml.calls["nvmlShutdown"] == 0, "NVML clean-up skipped, not raced"
    fake_nvml.release()
    reader.join(WAIT)
    assert backend.read_all() == [], "closed"


def test_agent_stop_during_a_hung_call_returns_and_skips_clean_up(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture
):
    backend = NvmlBackend()
    backend.start()
    agent = Agent(backend, AgentOptions(interval=0.2))
    agent.start()
    fake_nvml.hang("nvmlDeviceGetTemperature")
    assert fake_nvml.wait_until_blocked(1, timeout=WAIT)
    stopper = threading.Thread(target=agent.stop, daemon=True)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert len(messages(caplog, "the sampler is stuck in an NVML call; skipping NVML clean-up")) == 1
    assert fake_nvml.calls["nvmlShutdown"] == 0
    fake_nvml.release()


# ---------------------------------------------------------------- real agent processes


def poll(agent: AgentProcess, what: str, check, timeout: float = WAIT):
    """Scrapes until `check(metrics text)` is truthy; returns that value. Fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        text = agent.metrics()
        found = check(text)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{text}")
        time.sleep(0.1)


def readyz(agent: AgentProcess) -> httpx.Response:
    return httpx.get(agent.url + "/readyz", timeout=10)


def three_gpus(tmp_path) -> AgentProcess:
    return AgentProcess("--interval", "0.2", fake_nvml={"devices": [{}, {}, {}]}, tmp=tmp_path)


def test_process_driver_unloaded_then_back(tmp_path):
    with three_gpus(tmp_path) as agent:
        assert values(agent.metrics(), "mfu_gpu_up") == [1.0] * 3
        agent.nvml("unload")
        text = poll(agent, "NVML down", lambda t: values(t, "mfu_agent_nvml_up") == [0.0] and t)
        assert values(text, "mfu_gpu_up") == [0.0] * 3 and len(values(text, "mfu_gpu_info")) == 3
        assert values(text, "mfu_gpu_power_watts") == [] and values(text, "mfu_gpu_memory_used_bytes") == []
        ready = readyz(agent)
        assert ready.status_code == 503 and "NVML is unavailable" in ready.text
        assert ready.text.count("\n") == 1
        assert httpx.get(agent.url + "/healthz", timeout=10).status_code == 200
        agent.nvml("reload")
        text = poll(agent, "NVML back", lambda t: values(t, "mfu_agent_nvml_up") == [1.0] and t)
        assert values(text, "mfu_gpu_up") == [1.0] * 3 and values(text, "mfu_gpu_power_watts") == [612.0] * 3
        assert readyz(agent).status_code == 200
    out = agent.stop()
    assert out.count("NVML is unavailable") == 1, out
    assert out.count("NVML answers again") == 1, out
    assert "Traceback" not in out, out


def test_process_hung_call_is_stale_then_recovers(tmp_path):
    with three_gpus(tmp_path) as agent:
        agent.nvml("hang", symbol="nvmlDeviceGetPowerUsage")
        agent.nvml_status(lambda s: s["blocked"] >= 1)

        def stale(text: str):
            ages = values(text, "mfu_gpu_reading_age_seconds")
            return text if ages and min(ages) > 10 else None

        text = poll(agent, "readings older than the staleness limit", stale)
        assert values(text, "mfu_gpu_up") == [0.0] * 3 and len(values(text, "mfu_gpu_info")) == 3
        assert values(text, "mfu_gpu_temperature_celsius") == [] and values(text, "mfu_gpu_power_watts") == []
        assert values(text, "mfu_agent_nvml_up") == [0.0]
        ready = readyz(agent)
        assert ready.status_code == 503 and "no GPU sample completed" in ready.text
        agent.nvml("release")
        text = poll(agent, "fresh again", lambda t: values(t, "mfu_gpu_up") == [1.0] * 3 and t)
        assert max(values(text, "mfu_gpu_reading_age_seconds")) < 10
        assert values(text, "mfu_gpu_power_watts") == [612.0] * 3
        assert readyz(agent).status_code == 200


def test_process_sigterm_during_a_hung_call_exits_cleanly(tmp_path):
    agent = three_gpus(tmp_path).start()
    try:
        agent.nvml("hang", symbol="nvmlDeviceGetPowerUsage")
        agent.nvml_status(lambda s: s["blocked"] >= 1)
        agent.proc.send_signal(signal.SIGTERM)
        out, _ = agent.proc.communicate(timeout=15)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.communicate()
    # A graceful shutdown and a clean exit (as without a hang, tests/test_cli.py): status 0, never a
    # kill after the 15 s above.
    assert agent.proc.returncode == 0, out
    assert "Application shutdown complete" in out and "Finished server process" in out, out
    assert "skipping NVML clean-up" in out, out
    assert "Traceback" not in out, out


def test_process_gpu_removed_then_another_added(tmp_path):
    with three_gpus(tmp_path) as agent:
        uuids = agent.nvml_status()["devices"]
        agent.nvml("remove_device", index=1)
        text = poll(agent, "GPU 1 down", lambda t: values(t, "mfu_gpu_up", uuid=uuids[1]) == [0.0] and t)
        assert one(text, "mfu_gpu_up", uuid=uuids[1], gpu="1") == 0  # what GpuDown selects
        assert one(text, "mfu_gpu_up", uuid=uuids[2], gpu="1") == 1  # NVML's index now
        assert values(text, "mfu_gpu_power_watts", uuid=uuids[1]) == []
        status = agent.nvml("add_device", device={"power_mw": 250_000})
        new = status["devices"][-1]
        text = poll(agent, "the new GPU read", lambda t: values(t, "mfu_gpu_power_watts", uuid=new) and t)
        assert one(text, "mfu_gpu_up", uuid=new, gpu="2") == 1
        assert one(text, "mfu_gpu_power_watts", uuid=new) == 250.0
        for rank, gpus in enumerate(([2], [new])):
            r = httpx.post(
                agent.url + "/v1/reports",
                json={"job_id": "added", "rank": rank, "model_flops_total": 1e12, "gpus": gpus},
                timeout=10,
            )
            assert r.status_code == 202, r.text
        ranks = agent.jobs()["added"]["ranks"]
        assert [[g["uuid"] for g in rank["gpus"]] for rank in ranks] == [[new], [new]]
    out = agent.stop()
    assert "Traceback" not in out, out
