"""The simulated backend: believable values and scriptable faults."""

from __future__ import annotations

import pytest
from agent_clock import Clock

from mfu_agent.events import EventCounter, EventWatcher
from mfu_agent.gpu.model import GpuProcess, Snapshot
from mfu_agent.gpu.peaks import device_peaks
from mfu_agent.gpu.simulated import SHARED_PIDS, GpuSpec, SimulatedBackend, parse_spec
from mfu_agent.specs import PeakTable

H100 = "NVIDIA H100 80GB HBM3"
MIG_H100 = f"1x{H100}[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb]"


def test_spec_parsing():
    assert parse_spec("8xNVIDIA H100 80GB HBM3") == [GpuSpec("NVIDIA H100 80GB HBM3")] * 8
    assert parse_spec("1xNVIDIA L4, 2x Tesla T4") == [
        GpuSpec(n) for n in ("NVIDIA L4", "Tesla T4", "Tesla T4")
    ]
    for bad in ("", "H100", "0xNVIDIA L4", "65xNVIDIA L4", "xNVIDIA L4"):
        with pytest.raises(ValueError, match="COUNT"):
            parse_spec(bad)


def test_mig_spec_parsing():
    slices = ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")
    assert parse_spec(MIG_H100) == [GpuSpec(H100, slices)]
    # The bracket applies to each of COUNT GPUs; commas inside it do not split the spec.
    assert parse_spec(f"1x{H100}, 2x{H100} [ mig = 7G.80GB ],1xNVIDIA L4") == [
        GpuSpec(H100),
        GpuSpec(H100, ("7g.80gb",)),
        GpuSpec(H100, ("7g.80gb",)),
        GpuSpec("NVIDIA L4"),
    ]
    assert parse_spec("1xNVIDIA H200[mig=3g.71gb,4g.71gb]")[0].mig == ("3g.71gb", "4g.71gb")
    assert parse_spec("1xNVIDIA A100-SXM4-40GB[mig=1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb]")
    assert parse_spec("1xNVIDIA A100-SXM4-80GB[mig=4g.40gb,3g.40gb]")
    assert parse_spec("1xNVIDIA A30[mig=2g.12gb,1g.6gb,1g.6gb]")
    assert parse_spec("1xNVIDIA H800 80GB HBM3[mig=1g.20gb,1g.20gb,1g.20gb,1g.20gb]")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"1x{H100}[mig=1g.5gb]", "unknown MIG profile '1g.5gb' for NVIDIA H100 80GB HBM3: expected one of"),
        ("1xNVIDIA A30[mig=1g.10gb]", "unknown MIG profile '1g.10gb' for NVIDIA A30"),
        (f"1x{H100}[mig=4g.40gb,4g.40gb]", "take 8 compute slices; a GPU has 7"),
        (f"1x{H100}[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb,1g.10gb]", "take 8 compute slices"),
        (
            f"1x{H100}[mig=1g.20gb,1g.20gb,1g.20gb,1g.20gb,1g.20gb]",
            "97.5 GiB of memory; NVIDIA H100 80GB HBM3 has 80",
        ),
        ("1xNVIDIA L4[mig=1g.10gb]", "NVIDIA L4 has no MIG"),
        ("1xNVIDIA Imaginary X9[mig=1g.10gb]", "NVIDIA Imaginary X9 has no MIG"),
        ("1xNVIDIA H100 PCIe[mig=1g.10gb]", "no MIG profiles for NVIDIA H100 PCIe"),
        (f"1x{H100}[mig=]", "the MIG list is empty"),
        (f"1x{H100}[mig= ]", "the MIG list is empty"),
        (f"1x{H100}[mig=1g.10gb,,1g.10gb]", "an empty entry in the MIG list"),
        (f"1x{H100}[mig=1g.10gb,]", "an empty entry in the MIG list"),
        (f"1x{H100}[]", "expected [mig=PROFILE,...]"),
        (f"1x{H100}[profile=1g.10gb]", "expected [mig=PROFILE,...]"),
        (f"1x{H100}[mig=1g.10gb", "malformed brackets"),
        (f"1x{H100}mig=1g.10gb]", "malformed brackets"),
        (f"1x{H100}[[mig=1g.10gb]]", "malformed brackets"),
        (f"1x{H100}[mig=1g.10gb]x", "malformed brackets"),
        (f"1x{H100}[mig=1g.10gb][mig=1g.10gb]", "malformed brackets"),
    ],
)
def test_bad_mig_specs_name_the_bad_part(spec, message):
    with pytest.raises(ValueError, match="bad --simulate spec") as error:
        parse_spec(f"2xNVIDIA L4,{spec}")
    assert message in str(error.value)
    assert repr(spec) in str(error.value), "the message quotes the bad part, not the whole spec"


def test_values_vary_over_time_and_stay_in_range():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3", clock=clock)
    seen = []
    for _ in range(30):
        clock.now += 5
        for g in backend.read_all():
            assert 0 <= g.utilization_ratio <= 1 and 0 <= g.activity.sm_active <= 1
            assert 0 < g.power_watts <= g.power_limit_watts
            assert g.sm_clock_hertz <= g.sm_clock_max_hertz
            seen.append(g.activity.sm_active)
    assert max(seen) - min(seen) > 0.05, "activity moves over time"


def test_energy_is_a_counter_consistent_with_power():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend("1xNVIDIA H100 80GB HBM3", clock=clock)
    first = backend.read_all()[0].energy_joules
    clock.now += 10
    second = backend.read_all()[0]
    assert second.energy_joules - first == pytest.approx(second.power_watts * 10, rel=1e-6)


def test_faults():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend("4xNVIDIA H100 80GB HBM3", clock=clock)
    backend.apply_fault("lost:0")
    backend.apply_fault("busy-idle:1")
    backend.apply_fault("throttle:2")
    gpus = backend.read_all()
    assert not gpus[0].up and gpus[0].power_watts is None
    assert gpus[1].utilization_ratio >= 0.95 and gpus[1].activity.sm_active < 0.2
    assert {"hw_thermal_slowdown"} <= gpus[2].clock_event_reasons and gpus[2].temperature_celsius > 85
    assert gpus[3].up and gpus[3].activity.sm_active > 0.5
    backend.set_lost(0, False)
    assert backend.read_all()[0].up


def test_shared_gpu_has_two_processes_with_their_own_utilization():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3", clock=clock)
    backend.apply_fault("shared:1")
    backend.set_processes(0, [(10, 1024, 0.5, 0.25), (11, 2048)])
    for _ in range(5):
        gpus = backend.read_all()
        procs = gpus[1].processes
        assert tuple(p.pid for p in procs) == SHARED_PIDS
        sm = [p.sm_utilization_ratio for p in procs]
        assert all(0 < x <= 1 for x in sm) and sm[0] != sm[1]
        assert sum(sm) <= gpus[1].utilization_ratio + 0.02
        assert all(0 <= p.memory_utilization_ratio <= 1 for p in procs)
        clock.now += 7
    assert [(p.sm_utilization_ratio, p.memory_utilization_ratio) for p in gpus[0].processes] == [
        (0.5, 0.25),
        (None, None),
    ]
    backend.set_shared(1, False)
    assert backend.read_all()[1].processes == ()


def test_gpm_only_on_hopper_and_newer():
    backend = SimulatedBackend("1xNVIDIA A100-SXM4-80GB,1xNVIDIA B200")
    a100, b200 = backend.read_all()
    assert a100.activity is None and a100.sm_activity_source == "none"
    assert b200.activity is not None and b200.sm_activity_source == "gpm"
    assert a100.memory_total_bytes == 80 * 1024**3


def test_injected_xids_reach_the_event_counter():
    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3")
    counter = EventCounter()
    watcher = EventWatcher(backend, counter)
    watcher.start()
    backend.inject_xid(1, 79, count=2)
    backend.apply_fault("xid:1:79")
    backend.apply_fault("ecc:0")
    import time

    deadline = time.monotonic() + 10
    while sum(counter.snapshot().values()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watcher.stop()
    counts = counter.snapshot()
    uuid1 = backend.read_all()[1].uuid
    assert counts[(1, uuid1, "xid", 79)] == 3
    assert sum(v for k, v in counts.items() if k[2] == "double_bit_ecc") == 1


@pytest.mark.parametrize("bad", ["lost", "lost:x", "xid:1", "throttle:99", "melt:1"])
def test_bad_fault_specs(bad):
    with pytest.raises(ValueError, match="--fault"):
        SimulatedBackend("2xNVIDIA L4").apply_fault(bad)


def test_mig_gpu_reads_like_the_driver():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend(f"1x{H100},{MIG_H100}", seed=3, clock=clock)
    for _ in range(20):
        clock.now += 5
        whole, parent, *slices = backend.read_all()
        assert whole.mig_mode is False and not whole.is_mig, "an H100 can do MIG; this one is not in MIG mode"
        assert parent.mig_mode is True and not parent.is_mig and parent.up
        # The parent answers for the board only: no utilisation, its processes and GPM are the slices'.
        assert parent.utilization_ratio is None and parent.memory_utilization_ratio is None
        assert parent.processes is None and parent.activity is None and parent.sm_activity_source == "none"
        assert 0 < parent.power_watts <= parent.power_limit_watts and parent.temperature_celsius > 30
        assert parent.sm_clock_hertz and parent.clock_event_reasons is not None
        assert parent.ecc_uncorrected_total == 0 and parent.remapped_rows is not None
        assert parent.memory_used_bytes == sum(s.memory_used_bytes for s in slices)
        assert parent.memory_total_bytes == 80 * 1024**3
        for s in slices:
            assert s.is_mig and s.up and s.index == parent.index and s.identity.name == H100
            assert s.mig_mode is None
            for absent in (
                "utilization_ratio",
                "memory_utilization_ratio",
                "power_watts",
                "power_limit_watts",
                "energy_joules",
                "temperature_celsius",
                "sm_clock_hertz",
                "sm_clock_max_hertz",
                "clock_event_reasons",
                "ecc_corrected_total",
                "ecc_uncorrected_total",
                "remapped_rows",
            ):
                assert getattr(s, absent) is None, absent
            assert s.sm_activity_source == "gpm" and 0 <= s.activity.sm_active <= 1
            assert 0 < s.memory_used_bytes < s.memory_total_bytes
            assert s.processes == ()
    assert [(s.identity.mig.profile, s.identity.mig.sm_count, s.memory_total_bytes) for s in slices] == [
        ("3g.40gb", 60, int(39.25 * 1024**3)),
        ("2g.20gb", 32, int(19.5 * 1024**3)),
        ("1g.10gb", 16, int(9.75 * 1024**3)),
        ("1g.10gb", 16, int(9.75 * 1024**3)),
    ]
    assert [(s.identity.mig.gpu_instance_id, s.identity.mig.compute_instance_id) for s in slices] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
    ]
    assert {s.identity.mig.parent_uuid for s in slices} == {parent.uuid}
    # A slice's peak is its SMs' share of the GPU's: 60 of the H100's 132 SMs.
    assert device_peaks(slices[0].identity, PeakTable())["bf16"] == pytest.approx(989.4e12 * 60 / 132)
    snapshot = Snapshot(0.0, "x", tuple(backend.read_all()), 0.0)
    assert snapshot.by_index[1] is snapshot.gpus[1] and snapshot.by_uuid[slices[2].uuid].is_mig


def test_slice_activity_moves_and_the_gpu_without_gpm_has_none():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend(MIG_H100 + ",1xNVIDIA A100-SXM4-80GB[mig=3g.40gb,3g.40gb]", clock=clock)
    seen, memory = [], []
    for _ in range(30):
        clock.now += 5
        _, first, *_, a100, a, b = backend.read_all()
        seen.append(first.activity.sm_active)
        memory.append(first.memory_used_bytes)
        assert a100.mig_mode and a100.activity is None and a100.power_watts > 0
        assert a.activity is None and a.sm_activity_source == "none" and a.identity.mig.sm_count == 42
        assert a100.memory_used_bytes == a.memory_used_bytes + b.memory_used_bytes
    assert max(seen) - min(seen) > 0.05 and len(set(memory)) > 1, "slices' work moves over time"


def test_mig_uuids_are_deterministic():
    def uuids(seed):
        return [g.uuid for g in SimulatedBackend(f"1x{H100},{MIG_H100},{MIG_H100}", seed=seed).read_all()]

    first = uuids(7)
    assert first == uuids(7) and first != uuids(8)
    assert len(set(first)) == len(first) == 11
    assert [u[:4] for u in first] == ["GPU-"] * 2 + ["MIG-"] * 4 + ["GPU-"] + ["MIG-"] * 4
    assert first[2] == "MIG-00000007-5157-4000-9000-000001000000"
    backend = SimulatedBackend(MIG_H100, seed=7)
    assert [d.uuid for d in backend.devices()] == [g.uuid for g in backend.read_all()]


def test_lost_parent_takes_its_slices_down_and_faults_reach_the_slices():
    clock = Clock(1_700_000_000.0)
    backend = SimulatedBackend(f"{MIG_H100},1x{H100}", clock=clock)
    backend.apply_fault("lost:0")
    parent, *slices, whole = backend.read_all()
    assert not parent.up and parent.power_watts is None and parent.mig_mode is True
    assert [s.up for s in slices] == [False] * 4 and all(s.activity is None for s in slices)
    assert whole.up
    backend.set_lost(0, False)
    assert all(g.up for g in backend.read_all())
    backend.apply_fault("busy-idle:0")
    backend.apply_fault("throttle:0")
    parent, *slices, _ = backend.read_all()
    assert all(s.activity.sm_active < 0.2 for s in slices)
    assert {"hw_thermal_slowdown"} <= parent.clock_event_reasons and parent.temperature_celsius > 85
    backend.apply_fault("ecc:0")
    assert backend.read_all()[0].ecc_uncorrected_total == 1
    with pytest.raises(ValueError, match="MIG mode"):
        backend.apply_fault("shared:0")
    with pytest.raises(ValueError, match="MIG mode"):
        backend.set_processes(0, [(10, 1024)])
    with pytest.raises(ValueError, match="no MIG device 4"):
        backend.set_processes(0, [(10, 1024)], gpu_instance_id=4)
    backend.set_processes(0, [(10, 1024)], gpu_instance_id=1)
    readings = backend.read_all()
    assert readings[2].processes == (GpuProcess(10, 1024),)
    assert readings[0].processes is None and readings[1].processes == ()
