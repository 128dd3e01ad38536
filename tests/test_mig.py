"""MIG through the real pynvml wrappers and the fake libnvidia-ml (tests/fakenvml.py), which answers as the
driver does: the parent in MIG mode has no utilisation, MIG device handles answer their own memory,
processes and attributes, GPM is read per GPU instance."""

from __future__ import annotations

import pynvml
import pytest
from agent_clock import Clock
from agent_process import AgentProcess, finish_client, start_client
from fakenvml import FakeNvml, mig_devices
from metrics_text import one, values
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.mig import MIG_RESCAN_TICKS
from mfu_agent.gpu.nvml_backend import NvmlBackend
from mfu_agent.jobs.errors import ReportRejected
from mfu_agent.jobs.rank import ReportData

H100_SXM_BF16 = 989.4e12  # NVIDIA H100 whitepaper, SXM5 dense BF16
SLICE_1G_BF16 = H100_SXM_BF16 * 16 / 132  # a 1g.10gb slice: 16 of the H100 SXM's 132 SMs
GIB = 1024**3


@pytest.fixture
def seven_slices():
    fake = FakeNvml.h100_mig(1, profiles=("1g.10gb",) * 7)
    with fake.installed():
        yield fake


def started() -> tuple[NvmlBackend, Agent, Clock]:
    clock = Clock()
    backend = NvmlBackend(clock=clock)
    backend.start()
    return backend, Agent(backend, AgentOptions(interval=1.0)), clock


def tick(agent: Agent, clock: Clock) -> str:
    clock.now += 1.0
    agent.sampler.sample_once()
    return generate_latest(agent.registry).decode()


def test_seven_1g_slices_are_seven_devices_with_parent_profile_and_memory(seven_slices: FakeNvml):
    parent = seven_slices.devices[0]
    migs = parent.mig_devices
    for i, mig in enumerate(migs):  # GPM per GPU instance: each slice its own SM activity
        mig.gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 10.0 * (i + 1)
    backend, agent, clock = started()
    tick(agent, clock)
    text = tick(agent, clock)
    assert len(migs) == 7 and len({m.uuid for m in migs}) == 7
    info = values(text, "mfu_gpu_info", parent_uuid=parent.uuid, mig_profile="1g.10gb")
    assert len(info) == 7
    for mig in migs:
        labels = {
            "gpu": "0",
            "uuid": mig.uuid,
            "mig_profile": "1g.10gb",
            "gpu_instance_id": str(mig.gpu_instance_id),
            "compute_instance_id": str(mig.compute_instance_id),
        }
        assert one(text, "mfu_gpu_up", **labels) == 1
        assert one(text, "mfu_gpu_memory_total_bytes", **labels) == mig.memory_total
        assert one(text, "mfu_gpu_memory_used_bytes", **labels) == mig.memory_used
        assert one(text, "mfu_gpu_peak_flops", **labels, dtype="bf16") == pytest.approx(SLICE_1G_BF16)
        sm_util = mig.gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL]
        assert one(text, "mfu_gpu_sm_active_ratio", **labels) == pytest.approx(sm_util / 100)
    # the parent: MIG mode, no utilisation of its own (NOT_SUPPORTED in MIG mode), power still there
    assert one(text, "mfu_gpu_mig_mode", gpu="0", uuid=parent.uuid) == 1
    assert values(text, "mfu_gpu_utilization_ratio") == []
    assert one(text, "mfu_gpu_power_watts", gpu="0", uuid=parent.uuid) == parent.power_mw / 1000
    # whole GPUs carry no MIG labels; the parent has no SM activity or MFU series of its own
    assert values(text, "mfu_gpu_sm_active_ratio", uuid=parent.uuid) == []
    assert "mig_profile" not in str(values(text, "mfu_gpu_up", uuid=parent.uuid))
    # nothing was counted as an NVML error: empty MIG slots and skipped parent calls are normal
    assert values(text, "mfu_agent_nvml_errors_total", call="nvmlDeviceGetUtilizationRates") == []
    assert values(text, "mfu_agent_nvml_errors_total", call="nvmlDeviceGetMigDeviceHandleByIndex") == []
    backend.close()


def test_a_rank_on_a_slice_at_10_percent_of_its_peak_shows_mfu_0_10(seven_slices: FakeNvml):
    backend, agent, clock = started()
    tick(agent, clock)
    slice_uuid = seven_slices.devices[0].mig_devices[3].uuid
    for second in range(0, 11):
        report = ReportData(
            job_id="small",
            rank=0,
            model_flops={"bf16": 0.10 * SLICE_1G_BF16 * second},
            dtype="bf16",
            gpus=(slice_uuid,),
            timestamp=1_700_000_000.0 + second,
        )
        agent.jobs.apply([report], agent.sampler.latest)
    text = tick(agent, clock)
    assert one(text, "mfu_job_rank_mfu_ratio", job_id="small", rank="0") == pytest.approx(0.10, abs=0.002)
    assert one(text, "mfu_gpu_mfu_ratio", uuid=slice_uuid) == pytest.approx(0.10, abs=0.002)
    assert one(text, "mfu_job_node_peak_flops", job_id="small") == pytest.approx(SLICE_1G_BF16)
    backend.close()


def test_a_gpu_in_mig_mode_and_a_bare_local_rank_are_refused_with_the_mig_devices(seven_slices: FakeNvml):
    backend, agent, clock = started()
    tick(agent, clock)
    snapshot = agent.sampler.latest
    parent = seven_slices.devices[0]
    for gpus in ((0,), (parent.uuid,)):
        with pytest.raises(ReportRejected) as refused:
            agent.jobs.apply([ReportData("j", 0, {"bf16": 1.0}, "bf16", gpus=gpus)], snapshot)
        assert refused.value.status == 422
        assert "MIG mode" in str(refused.value) and parent.mig_devices[0].uuid in str(refused.value)
    with pytest.raises(ReportRejected) as refused:
        agent.jobs.apply([ReportData("j", 0, {"bf16": 1.0}, "bf16", local_rank=0)], snapshot)
    assert "CUDA_VISIBLE_DEVICES" in str(refused.value)
    assert len(agent.jobs) == 0
    backend.close()


def test_mig_mode_and_mig_devices_are_followed_while_the_agent_runs():
    fake = FakeNvml.h100s(1)
    with fake.installed():
        backend, agent, clock = started()
        text = tick(agent, clock)
        assert one(text, "mfu_gpu_mig_mode", gpu="0") == 0
        assert one(text, "mfu_gpu_utilization_ratio", gpu="0") == fake.devices[0].utilization_gpu / 100
        # MIG mode on, with a 3g.40gb and a 1g.10gb
        fake.devices[0].mig_mode = 1
        fake.devices[0].mig_devices = mig_devices(["3g.40gb", "1g.10gb"])
        text = tick(agent, clock)
        assert sorted(
            values(text, "mfu_gpu_info", mig_profile="3g.40gb")
            + values(text, "mfu_gpu_info", mig_profile="1g.10gb")
        ) == [1, 1]
        assert values(text, "mfu_gpu_utilization_ratio") == []
        big = fake.devices[0].mig_devices[0]
        assert one(text, "mfu_gpu_peak_flops", mig_profile="3g.40gb", dtype="bf16") == pytest.approx(
            H100_SXM_BF16 * big.sm_count / 132
        )
        # the 1g.10gb instance is destroyed: gone at the next tick, since its handle stops answering
        fake.devices[0].mig_devices = [big]
        text = tick(agent, clock)
        assert {dict(k).get("mig_profile") for k in _info_labels(text)} == {None, "3g.40gb"}
        # a 2g.20gb is created: seen within MIG_RESCAN_TICKS ticks (the slots are not read every tick)
        fake.devices[0].mig_devices = [big, *mig_devices(["2g.20gb"])]
        fake.devices[0].mig_devices[1].gpu_instance_id = 5
        seen_after = None
        for ticks in range(1, MIG_RESCAN_TICKS + 1):
            text = tick(agent, clock)
            if {dict(k).get("mig_profile") for k in _info_labels(text)} == {None, "3g.40gb", "2g.20gb"}:
                seen_after = ticks
                break
        assert seen_after is not None
        # MIG mode off: the devices go, the GPU's own utilisation comes back
        fake.devices[0].mig_mode = 0
        fake.devices[0].mig_devices = []
        text = tick(agent, clock)
        assert {dict(k).get("mig_profile") for k in _info_labels(text)} == {None}
        assert one(text, "mfu_gpu_mig_mode", gpu="0") == 0
        assert one(text, "mfu_gpu_utilization_ratio", gpu="0") == fake.devices[0].utilization_gpu / 100
        backend.close()
        assert fake.live_gpm_samples == set()


def test_a_lost_parent_takes_its_mig_devices_down_and_brings_them_back(seven_slices: FakeNvml):
    backend, agent, clock = started()
    tick(agent, clock)
    seven_slices.devices[0].lost = True
    text = tick(agent, clock)
    assert values(text, "mfu_gpu_up") == [0.0] * 8
    seven_slices.devices[0].lost = False
    text = tick(agent, clock)
    assert values(text, "mfu_gpu_up") == [1.0] * 8
    backend.close()


def _info_labels(text: str) -> list[frozenset[tuple[str, str]]]:
    from metrics_text import samples

    return [labels for (name, labels) in samples(text) if name == "mfu_gpu_info"]


def test_a_process_on_a_slice_is_attributed_to_the_slice_by_pid(tmp_path):
    """Through a real agent process and a real client process: the trainer's pid is on MIG device 2 of
    GPU 0, and it sends neither gpus nor local_rank (as in a container whose CUDA_VISIBLE_DEVICES the
    client cannot map): the agent finds it on the slice, and its MFU is against the slice's peak."""
    agent = AgentProcess(fake_nvml={"devices": []}, tmp=tmp_path)
    trainer = start_client(
        f"""
        rep = Reporter(job_id="mig-pid", rank=0, world_size=1, flops_per_step=0.25 * {SLICE_1G_BF16!r},
                       url=AGENT, interval=0.1, max_backoff=0.2)
        start = time.time()
        while time.time() - start < 60 and rep.stats["posts_ok"] < 30:  # the agent may start slowly
            time.sleep(0.02)
            while rep.steps < (time.time() - start):
                rep.step()
        rep.flush()
        emit(stats=rep.stats)
        os._exit(0)  # no final report at exit: the test reads the rank after this process ends
        """,
        agent,
        env={"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": ""},
    )
    slices = [
        {
            "profile": "1g.10gb",
            "gpu_instance_id": gi,
            "sm_count": 16,
            "memory_total": 10 * GIB,
            "memory_used": 0,
        }
        for gi in (7, 8, 9)
    ]
    slices[2]["processes"] = [[trainer.pid, 8 * GIB]]
    slices[2]["memory_used"] = 8 * GIB
    agent.fake_nvml = {"devices": [{"mig_mode": 1, "mig_devices": slices}, {}]}
    with agent:
        result, _ = finish_client(trainer)
        assert result["stats"]["posts_ok"] > 0
        (rank,) = agent.jobs()["mig-pid"]["ranks"]
        assert rank["attributed_by"] == "pid"
        (gpu,) = rank["gpus"]
        assert gpu["uuid"].startswith("MIG-") and gpu["index"] == 0
        assert rank["mfu"] == pytest.approx(0.25, rel=0.02)
        series = agent.series("mfu_gpu_mfu_ratio", uuid=gpu["uuid"])
        (labels,) = series
        assert dict(labels)["gpu_instance_id"] == "9"
        assert next(iter(series.values())) == pytest.approx(0.25, rel=0.02)
