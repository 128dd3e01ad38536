"""The job registry's window, expiry and restart handling, on a clock the test moves."""

from __future__ import annotations

import pytest

from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import JobRegistry, ReportData, ReportRejected

H100_SXM_BF16 = 989.4e12  # datasheet, dense


class Clock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


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
    clock = Clock()
    registry = JobRegistry(window_seconds=60, clock=clock)
    rate = 0.3 * H100_SXM_BF16
    for t in range(0, 121, 10):
        clock.now = 50_000.0 + t
        registry.apply([report(rate * t)], snapshot)
    (view,) = registry.views()
    assert view.utilisation("model_flops") == pytest.approx(0.3)


def test_window_follows_a_change_of_pace(snapshot):
    clock = Clock()
    registry = JobRegistry(window_seconds=60, clock=clock)
    flops = 0.0
    for t in range(0, 301, 5):
        clock.now = 50_000.0 + t
        flops += (0.5 if t <= 180 else 0.1) * H100_SXM_BF16 * 5
        registry.apply([report(flops)], snapshot)
    assert registry.views()[0].utilisation("model_flops") == pytest.approx(0.1, rel=0.01)


def test_stale_rank_has_no_mfu_then_expires(snapshot):
    clock = Clock()
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
    clock = Clock()
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
    clock = Clock()
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
