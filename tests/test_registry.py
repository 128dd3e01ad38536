"""The job registry's window, expiry and restart handling, on a clock the test moves."""

from __future__ import annotations

import pytest
from agent_clock import Clock

from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import JobRegistry, ReportData, ReportRejected

H100_SXM_BF16 = 989.4e12  # datasheet, dense


@pytest.fixture
def snapshot():
    from mfu_agent.sampler import Sampler

    return Sampler(SimulatedBackend("2xNVIDIA H100 80GB HBM3")).sample_once()


def report(flops: float, **kw) -> ReportData:
    return ReportData(
        job_id=kw.pop("job_id", "j"),
        rank=kw.pop("rank", 0),
        model_flops={kw.pop("dtype", "bf16"): flops},
        gpus=kw.pop("gpus", (0,)),
        **kw,
    )


def test_window_uses_receive_time_without_sender_timestamps(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(window_seconds=60, clock=clock)
    rate = 0.3 * H100_SXM_BF16
    for t in range(0, 121, 10):
        clock.now = 50_000.0 + t
        registry.apply([report(rate * t)], snapshot)
    (view,) = registry.views()
    assert view.utilisation("model_flops") == pytest.approx(0.3)


def test_window_follows_a_change_of_pace(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(window_seconds=60, clock=clock)
    flops = 0.0
    for t in range(0, 301, 5):
        clock.now = 50_000.0 + t
        flops += (0.5 if t <= 180 else 0.1) * H100_SXM_BF16 * 5
        registry.apply([report(flops)], snapshot)
    assert registry.views()[0].utilisation("model_flops") == pytest.approx(0.1, rel=0.01)


def test_stale_rank_has_no_mfu_then_expires(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(window_seconds=60, rank_ttl_seconds=600, clock=clock)
    registry.apply([report(0)], snapshot)
    clock.now += 10
    registry.apply([report(1e16)], snapshot)
    assert registry.views()[0].rates is not None
    clock.now += 61
    assert registry.views()[0].rates is None, "no fresh reports: no MFU rather than a stale one"
    clock.now += 600
    assert registry.views() == [] and len(registry) == 0
    assert registry.expired_total == 1


def test_sender_clock_going_back_never_gives_a_negative_rate(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, timestamp=1000.0)], snapshot)
    registry.apply([report(1e15, timestamp=1010.0)], snapshot)
    registry.apply([report(2e15, timestamp=1005.0)], snapshot)
    rates = registry.views()[0].rates
    assert rates is not None and rates.get(("model_flops", "bf16")) > 0


def test_rejected_batch_changes_nothing(snapshot):
    registry = JobRegistry()
    registry.apply([report(1.0)], snapshot)
    before = registry.views()
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(5.0), report(1.0, rank=1, gpus=(9,))], snapshot)
    assert caught.value.field == "reports[1].gpus"
    assert registry.views() == before


def test_optional_counters_only_when_sent(snapshot):
    registry = JobRegistry()
    registry.apply([report(1.0)], snapshot)
    (view,) = registry.views()
    assert view.has("model_flops") and not view.has("hardware_flops") and not view.has("tokens")
    assert view.utilisation("hardware_flops") is None


def test_stalled_rank_reposting_the_same_step_time_loses_its_mfu(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(window_seconds=60, clock=clock)
    for t in range(0, 31, 5):
        clock.now = 50_000.0 + t
        registry.apply([report(1e14 * t, timestamp=1000.0 + t)], snapshot)
    assert registry.views()[0].rates is not None
    for _ in range(14):  # the client keeps posting the same totals and step time every 5 s
        clock.now += 5
        registry.apply([report(1e14 * 30, timestamp=1030.0)], snapshot)
    assert registry.views()[0].rates is None
    assert len(registry) == 1, "still reporting: the rank stays tracked"


# --- rank ownership ------------------------------------------------------------------------------


def test_a_second_sender_is_refused_until_the_owner_is_silent_for_three_intervals(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(1e15, instance="owner", interval=2.0)], snapshot)
    clock.now += 5.9  # under 3 x 2 s
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(9e20, instance="other", interval=2.0)], snapshot)
    assert caught.value.status == 409 and caught.value.field == "rank"
    assert "instance owner" in caught.value.message and "instance other" in caught.value.message
    assert registry.views()[0].totals == {("model_flops", "bf16"): 1e15}
    clock.now += 0.2
    registry.apply([report(2e14, instance="other", interval=2.0)], snapshot)
    (view,) = registry.views()
    assert view.totals == {("model_flops", "bf16"): 1e15 + 2e14}  # the newcomer's work added on
    assert view.instance == "other" and view.restarts == 1


def test_without_instance_ids_the_pid_tells_senders_apart(snapshot):
    registry = JobRegistry()
    registry.apply([report(1.0, pid=10)], snapshot)
    registry.apply([report(2.0, pid=10)], snapshot)
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(3.0, pid=11)], snapshot)
    assert caught.value.status == 409


def test_a_sender_found_by_pid_that_exited_is_replaced_at_once():
    from mfu_agent.sampler import Sampler

    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3")
    backend.set_processes(1, [(4242, 30 * 1024**3)])
    snapshot = Sampler(backend).sample_once()
    alive = {4242}
    registry = JobRegistry(pid_alive=lambda pid: pid in alive)
    registry.apply([report(1.0, pid=4242, instance="a", interval=60.0, gpus=None)], snapshot)
    assert registry.views()[0].attributed_by == "pid"
    with pytest.raises(ReportRejected):
        registry.apply(
            [report(1.0, pid=5151, instance="b", interval=60.0, local_rank=1, gpus=None)], snapshot
        )
    alive.clear()  # the owner's process is gone: a restarted rank need not wait three minutes
    registry.apply([report(1.0, pid=5151, instance="b", interval=60.0, local_rank=1, gpus=None)], snapshot)
    assert registry.views()[0].instance == "b"


# --- placement by pid ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ((512 * 1024**2, 38 * 1024**3), [1]),  # a stray context on GPU 0
        ((20 * 1024**3, 18 * 1024**3), [0, 1]),  # a process that really computes on both
        ((None, None), [0, 1]),  # no per-process memory: split evenly, and say so
    ],
)
def test_pid_attribution_follows_the_process_memory(memory, expected):
    from mfu_agent.sampler import Sampler

    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3")
    for gpu, used in enumerate(memory):
        backend.set_processes(gpu, [(777, used)])
    registry = JobRegistry()
    registry.apply([report(1.0, pid=777, gpus=None)], Sampler(backend).sample_once())
    (view,) = registry.views()
    assert [g.index for g in view.gpus] == expected
    if memory[0] is None:
        assert "no per-process memory" in view.attribution_detail


# --- persistence -----------------------------------------------------------------------------------


def test_state_round_trips_and_refuses_a_foreign_file(snapshot, tmp_path):
    from mfu_agent.jobs.state import StateStore, decode, encode

    registry = JobRegistry()
    registry.apply([report(5e15, instance="i", interval=1.0, tokens_total=4096.0)], snapshot)
    store = StateStore(tmp_path, registry, "node-a")
    assert store.save()
    restored = JobRegistry()
    assert StateStore(tmp_path, restored, "node-a").load() == 1
    (before,), (after,) = registry.views(), restored.views()
    assert after.totals == before.totals and after.gpu_totals == before.gpu_totals
    assert after.instance == "i" and after.first_received == before.first_received
    document = encode(registry.export_state()[1], "node-a")
    with pytest.raises(ValueError, match="node 'node-a'"):
        decode(document, "node-b")
    with pytest.raises(ValueError, match="version"):
        decode({**document, "version": 99}, "node-a")
    with pytest.raises(ValueError):
        decode(
            {**document, "ranks": [{"job_id": "j", "rank": 0, "totals": {"model_flops:bf16": -1}}]}, "node-a"
        )
    # a foreign file is set aside, not read, and the agent starts empty
    (tmp_path / "ranks.json").write_text('{"format": "something-else"}')
    empty = JobRegistry()
    assert StateStore(tmp_path, empty, "node-a").load() == 0 and len(empty) == 0
    assert any(p.name.startswith("ranks.json.bad-") for p in tmp_path.iterdir())


def test_one_batch_cannot_carry_a_rank_from_two_senders(snapshot):
    registry = JobRegistry()
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(1.0, instance="a"), report(2.0, instance="b")], snapshot)
    assert caught.value.status == 409 and caught.value.field == "reports[1].rank"
    assert len(registry) == 0
    registry.apply([report(1.0, instance="a"), report(2.0, instance="a")], snapshot)  # one sender: fine
    assert registry.views()[0].totals == {("model_flops", "bf16"): 2.0}
