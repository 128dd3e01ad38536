"""The simulated backend: believable values and scriptable faults."""

from __future__ import annotations

import pytest

from mfu_agent.events import EventCounter, EventWatcher
from mfu_agent.gpu.simulated import SHARED_PIDS, SimulatedBackend, parse_spec


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_spec_parsing():
    assert parse_spec("8xNVIDIA H100 80GB HBM3") == ["NVIDIA H100 80GB HBM3"] * 8
    assert parse_spec("1xNVIDIA L4, 2x Tesla T4") == ["NVIDIA L4", "Tesla T4", "Tesla T4"]
    for bad in ("", "H100", "0xNVIDIA L4", "65xNVIDIA L4", "xNVIDIA L4"):
        with pytest.raises(ValueError, match="COUNT"):
            parse_spec(bad)


def test_values_vary_over_time_and_stay_in_range():
    clock = Clock()
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
    clock = Clock()
    backend = SimulatedBackend("1xNVIDIA H100 80GB HBM3", clock=clock)
    first = backend.read_all()[0].energy_joules
    clock.now += 10
    second = backend.read_all()[0]
    assert second.energy_joules - first == pytest.approx(second.power_watts * 10, rel=1e-6)


def test_faults():
    clock = Clock()
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
    clock = Clock()
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
