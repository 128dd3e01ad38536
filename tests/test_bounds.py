"""Bounded everything, in-process and on a clock the test moves: the series budget, eviction of ranks
that stopped reporting before any new rank is refused, final reports, XID folding and rate-limited
logs. The same bounds through real agent processes: tests/test_bounds_process.py."""

from __future__ import annotations

import logging

import pytest
from agent_clock import Clock
from metrics_text import samples
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.cost.prices import PriceTable
from mfu_agent.events import XID_CATALOGUE, EventCounter
from mfu_agent.gpu.model import GpuEvent
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.budget import footprint, job_series
from mfu_agent.jobs.registry import STALLED_SECONDS, JobRegistry, ReportData, ReportRejected
from mfu_agent.logs import RepeatedLog
from mfu_agent.sampler import Sampler


@pytest.fixture
def snapshot():
    return Sampler(SimulatedBackend("8xNVIDIA H100 80GB HBM3")).sample_once()


def report(rank: int, flops: float = 1e15, job_id: str = "j", **kw) -> ReportData:
    return ReportData(
        job_id=job_id,
        rank=rank,
        model_flops=kw.pop("model_flops", {"bf16": flops}),
        gpus=kw.pop("gpus", (rank % 8,)),
        instance=kw.pop("instance", f"sender-{job_id}-{rank}"),
        interval=kw.pop("interval", 1.0),
        **kw,
    )


def full_report(rank: int, t: float, gpus: tuple[int, ...], job_id: str = "full") -> ReportData:
    """A rank with every series there is: mixed precision, hardware FLOPs, tokens, samples, a step,
    labels, two GPUs, every phase a rank may mark (the built-in ones and 4 of its own)."""
    return report(
        rank,
        job_id=job_id,
        model_flops={"fp8": 4e14 * t, "bf16": 1e14 * t},
        hardware_flops={"fp8": 5e14 * t, "bf16": 2e14 * t},
        tokens_total=1e3 * t,
        samples_total=2.0 * t,
        step=int(t),
        timestamp=t,
        gpus=gpus,
        labels=(("hostname", "node-1"), ("pod", f"trainer-{rank}")),
        phase_seconds={"checkpoint": t / 10, "eval": t / 20, **{f"mine_{i}": t / 40 for i in range(4)}},
    )


# --- --max-ranks: eviction before refusal ------------------------------------------------------------


def test_a_new_rank_is_refused_only_while_no_rank_has_stopped_and_the_longest_silent_goes_first(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(max_ranks=3, clock=clock)
    for rank in range(3):  # one report each, a second apart, every one saying it reports every second
        registry.apply([report(rank)], snapshot)
        clock.now += 1
    clock.now -= 0.5  # rank 0 silent 2.5 s: under 3 of its intervals; nobody may be evicted
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(0, job_id="new")], snapshot)
    assert caught.value.status == 429 and "--max-ranks" in caught.value.message
    assert "at most 3" in caught.value.message and len(registry) == 3
    clock.now += 1.0  # rank 0 silent 3.5 s, rank 1 2.5 s
    registry.apply([report(0, job_id="new")], snapshot)
    assert sorted((v.job_id, v.rank) for v in registry.views()) == [("j", 1), ("j", 2), ("new", 0)]
    assert registry.removed["silent"] == 1 and registry.removed["ttl"] == 0


def test_a_flood_that_stops_does_not_block_new_jobs_for_the_ttl(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(max_ranks=64, rank_ttl_seconds=600, clock=clock)
    refused = 0
    for batch in range(625):  # 10,000 distinct pairs in batches of 16
        try:
            registry.apply([report(r, job_id=f"flood-{batch}") for r in range(16)], snapshot)
        except ReportRejected as exc:
            assert exc.status == 429
            refused += 1
        clock.now += 0.01
    assert len(registry) <= 64 and refused > 0
    clock.now += 3.1  # the flood stopped: three of its intervals later, far short of the TTL
    registry.apply([report(r, job_id="real-job") for r in range(8)], snapshot)
    assert {v.job_id for v in registry.views()} >= {"real-job"} and len(registry) <= 64
    assert registry.removed["silent"] >= 8 and registry.removed["ttl"] == 0


def test_a_rank_stalled_for_minutes_can_be_evicted_but_a_progressing_one_cannot(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(max_ranks=2, rank_ttl_seconds=3600, clock=clock)
    for t in range(0, int(STALLED_SECONDS) + 30, 10):  # both report every 10 s; rank 0 at the same step
        clock.now = 80_000.0 + t
        registry.apply([report(0, timestamp=1000.0, interval=10.0)], snapshot)
        registry.apply([report(1, 1e15 + t, timestamp=1000.0 + t, interval=10.0)], snapshot)
    registry.apply([report(2, job_id="new", interval=10.0)], snapshot)
    assert {(v.job_id, v.rank) for v in registry.views()} == {("j", 1), ("new", 2)}
    assert registry.removed["stalled"] == 1


def test_a_rank_in_the_batch_is_never_evicted_to_make_room_for_it(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(max_ranks=1, clock=clock)
    registry.apply([report(0)], snapshot)
    clock.now += 10  # rank 0 silent: evictable, but it is in the batch
    with pytest.raises(ReportRejected):
        registry.apply([report(0, 2e15), report(1)], snapshot)
    assert [(v.rank, v.totals) for v in registry.views()] == [(0, {("model_flops", "bf16"): 1e15})]


def test_a_refused_report_evicts_nobody(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(max_ranks=2, clock=clock)
    registry.apply([report(0)], snapshot)
    clock.now += 10
    registry.apply([report(1)], snapshot)  # rank 0 silent, rank 1 not
    with pytest.raises(ReportRejected):  # two new ranks: evicting rank 0 would not be enough
        registry.apply([report(0, job_id="new"), report(1, job_id="new")], snapshot)
    assert sorted(v.rank for v in registry.views()) == [0, 1] and registry.removed["silent"] == 0
    registry.apply([report(0, job_id="new")], snapshot)  # one new rank: rank 0 makes room
    assert sorted((v.job_id, v.rank) for v in registry.views()) == [("j", 1), ("new", 0)]


def test_a_rank_with_two_heap_entries_at_the_same_time_is_counted_once(snapshot):
    """A rank whose interval shrank has an earlier heap entry; found too early, it is pushed again at
    its actual time, which can equal its older entry's. Both entries then come due together: the rank
    frees one place, not two (it was evicted twice: KeyError, a 500 on the endpoint)."""
    clock = Clock(80_000.0)
    start = clock.now
    registry = JobRegistry(max_ranks=1, clock=clock)
    registry.apply([report(0, 1e15, interval=100.0, timestamp=start)], snapshot)  # evictable at +300
    clock.now = start + 1
    registry.apply([report(0, 2e15, interval=10.0, timestamp=clock.now)], snapshot)  # and at +31
    clock.now = start + 270
    registry.apply([report(0, 3e15, interval=10.0, timestamp=clock.now)], snapshot)  # at +300 again
    clock.now = start + 280
    with pytest.raises(ReportRejected):  # rank 0 is not evictable yet: its entry is pushed to +300
        registry.apply([report(1)], snapshot)
    clock.now = start + 300
    with pytest.raises(ReportRejected) as refused:  # two new ranks: evicting rank 0 would not be enough
        registry.apply([report(1), report(2)], snapshot)
    assert refused.value.status == 429
    assert [v.rank for v in registry.views()] == [0] and registry.removed["stalled"] == 0
    registry.apply([report(1)], snapshot)  # one new rank: rank 0 makes room
    assert [v.rank for v in registry.views()] == [1] and registry.removed["stalled"] == 1


def test_the_eviction_heap_stays_bounded_while_ranks_come_and_go(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(rank_ttl_seconds=5, clock=clock)
    for job in range(2000):
        registry.apply([report(r, job_id=f"short-{job}") for r in range(4)], snapshot)
        clock.now += 0.5
    assert len(registry) <= 48
    assert len(registry._evictable) <= 2 * len(registry) + 64


# --- --max-series -------------------------------------------------------------------------------------


def test_the_series_budget_refuses_new_ranks_and_growth_naming_the_budget(snapshot):
    clock = Clock(80_000.0)
    one_rank = JobRegistry(clock=clock)
    one_rank.apply([report(0, gpus=tuple(range(8)))], snapshot)
    per_rank = one_rank.ledger.total  # a rank on 8 GPUs, with its job's series
    registry = JobRegistry(max_series=3 * per_rank + 50, other_series=lambda: 50, clock=clock)
    for rank in range(3):
        registry.apply([report(rank, job_id=f"j{rank}", gpus=tuple(range(8)))], snapshot)
    assert registry.ledger.total == 3 * per_rank
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(3, job_id="j3", gpus=tuple(range(8)))], snapshot)
    message = caught.value.message
    assert caught.value.status == 429 and f"at most {3 * per_rank + 50:,} (--max-series)" in message
    # Ranks already there keep reporting, but may not grow past the budget either.
    registry.apply([report(0, 2e15, job_id="j0", gpus=tuple(range(8)))], snapshot)
    mixed = {"bf16": 3e15, "fp8": 1.0}  # a new dtype: a peak, an MFU and a counter more on each GPU
    with pytest.raises(ReportRejected):
        registry.apply([report(0, job_id="j0", model_flops=mixed, gpus=tuple(range(8)))], snapshot)
    assert registry.ledger.total == 3 * per_rank


def test_the_series_estimate_matches_a_real_render():
    """The ranks' estimate is exact for ranks with every series; the rest is an upper bound of the
    node's series. A family added without its count in jobs/budget.py or metrics/cardinality.py fails."""
    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3,1xNVIDIA Imaginary X9")
    backend.set_processes(0, [(11, 1024), (12, 2048)])
    backend.set_shared(1)
    # with prices: the cost series of the H100s and the X9's price_unknown flag count too
    agent = Agent(backend, AgentOptions(prices=PriceTable({"NVIDIA H100 80GB HBM3": 2.0})))
    for code in (79, 79, 13, 99_999):
        agent.events.add(GpuEvent(0, "GPU-a", "xid", code))
    agent.events.add(GpuEvent(1, "GPU-b", "double_bit_ecc"))
    snapshot = agent.sampler.sample_once()
    for t in (100.0, 160.0):  # a whole window (60 s) of steps apart: the ranks have a step rate too
        agent.jobs.apply(
            [full_report(0, t, (0, 1)), full_report(1, t, (1,)), full_report(0, t, (0,), job_id="other")],
            snapshot,
        )
    agent.count_reports("accepted", 6)
    found = samples(generate_latest(agent.registry).decode())
    ranks = sum(1 for name, _ in found if name.startswith("mfu_job_"))
    assert ranks == agent.jobs.series(), "every series of a rank with everything is counted"
    rest = len(found) - ranks
    assert rest <= agent.other_series() <= rest * 1.25


def from_scratch(registry: JobRegistry) -> int:
    """The ranks' and jobs' series counted afresh from the registry's state."""
    states = registry._ranks.values()
    total = sum(
        footprint(
            s.gpus,
            sum(c == "model_flops" for c, _ in s.totals),
            sum(c == "hardware_flops" for c, _ in s.totals),
            len(s.gpu_totals),
            s.step is not None,
            ("tokens", "") in s.totals,
        ).series
        for s in states
    )
    models: dict[str, set[str]] = {}
    for s in states:
        models.setdefault(s.job_id, set()).update(g.model for g in s.gpus)
    return total + sum(job_series(len(m)) for m in models.values())


def test_the_estimate_is_never_below_the_render_whatever_ranks_send():
    """Random reports (GPUs that change, counters and dtypes that come and go, steps, final reports,
    evictions): the running count stays equal to a count from scratch, and never below what /metrics
    shows."""
    import random

    rng = random.Random(11)
    clock = Clock(80_000.0)
    agent = Agent(SimulatedBackend("4xNVIDIA H100 80GB HBM3"), AgentOptions(max_ranks=12))
    agent.jobs._clock = clock
    snapshot = agent.sampler.sample_once()
    for i in range(400):
        clock.now += rng.choice((0.5, 2.0, 5.0))
        kw = {}
        if rng.random() < 0.5:
            kw["hardware_flops"] = {rng.choice(("bf16", "fp8")): 1e14 * i}
        if rng.random() < 0.3:
            kw["tokens_total"] = 10.0 * i
        if rng.random() < 0.2:
            kw["samples_total"] = 1.0 * i
        if rng.random() < 0.3:
            kw["step"] = i
        dtypes = rng.sample(("bf16", "fp8", "fp16"), rng.randint(1, 2))
        gpus = tuple(rng.sample(range(4), rng.randint(1, 3)))
        rank = report(
            rng.randrange(16),
            job_id=rng.choice(("a", "b", "c")),
            model_flops={d: 1e15 * i for d in dtypes},
            gpus=gpus,
            timestamp=1000.0 + i,
            final=rng.random() < 0.05,
            **kw,
        )
        try:
            agent.jobs.apply([rank], snapshot)
        except ReportRejected as exc:
            assert exc.status in (409, 429)
        if i % 25 == 0:
            found = samples(generate_latest(agent.registry).decode())
            assert sum(1 for name, _ in found if name.startswith("mfu_job_")) <= agent.jobs.series()
            assert agent.jobs.series() == from_scratch(agent.jobs)


def test_the_estimate_follows_ranks_that_move_grow_and_go(snapshot):
    clock = Clock(80_000.0)
    registry = JobRegistry(clock=clock, rank_ttl_seconds=60)
    registry.apply([report(0, gpus=(0,)), report(1, gpus=(1,))], snapshot)
    two = registry.ledger.total
    registry.apply([report(0, 2e15, gpus=(2, 3))], snapshot)  # moves to two other GPUs
    registry.apply([report(0, 3e15, gpus=(2, 3), model_flops={"bf16": 3e15, "fp8": 1e12})], snapshot)
    assert registry.ledger.total > two
    assert registry.ledger.total == from_scratch(registry)
    # Tokens on GPU 0, then on GPU 1 without, then with again: a counter series more on GPU 1.
    registry.apply([report(1, 2.0, gpus=(0,), tokens_total=5.0)], snapshot)
    registry.apply([report(1, 3.0, gpus=(1,))], snapshot)
    registry.apply([report(1, 4.0, gpus=(1,), tokens_total=6.0)], snapshot)
    assert registry.ledger.total == from_scratch(registry)
    registry.apply([report(1, final=True)], snapshot)
    clock.now += 61
    assert registry.views() == [] and registry.ledger.total == 0


# --- final report -----------------------------------------------------------------------------------


def test_a_final_report_is_applied_then_its_rank_dropped(snapshot, tmp_path):
    from mfu_agent.jobs.state import StateStore

    registry = JobRegistry()
    registry.apply([report(0, 1e15), report(1, 1e15)], snapshot)
    assert registry.apply([report(0, 3e15, final=True)], snapshot) == 1
    ((key, view),) = [((v.job_id, v.rank), v) for v in registry.views()]
    assert key == ("j", 1) and registry.removed["final"] == 1
    store = StateStore(tmp_path, registry, "n")
    assert store.save()
    restored = JobRegistry()
    assert StateStore(tmp_path, restored, "n").load() == 1 and [v.rank for v in restored.views()] == [1]
    # A final report of a rank the agent does not track is accepted and leaves nothing behind.
    before = registry.ledger.total
    assert registry.apply([report(7, final=True)], snapshot) == 1
    assert len(registry) == 1 and registry.ledger.total == before


def test_a_final_report_from_another_sender_is_refused(snapshot):
    registry = JobRegistry()
    registry.apply([report(0, instance="owner")], snapshot)
    with pytest.raises(ReportRejected) as caught:
        registry.apply([report(0, instance="intruder", final=True)], snapshot)
    assert caught.value.status == 409 and len(registry) == 1


# --- XIDs and logs ----------------------------------------------------------------------------------


def test_xid_codes_outside_the_catalogue_share_one_series():
    counter = EventCounter()
    for code in range(1, 10_001):
        counter.add(GpuEvent(0, "GPU-a", "xid", code))
    for _ in range(10_000):
        counter.add(GpuEvent(0, "GPU-a", "xid", 79))
    counts = counter.snapshot()
    assert len(counts) == len(XID_CATALOGUE) + 1
    assert counts[(0, "GPU-a", "xid", 79)] == 10_001
    assert counts[(0, "GPU-a", "xid", "other")] == 10_000 - len(XID_CATALOGUE)
    assert sum(counts.values()) == 20_000, "every event counted"


def test_the_xid_storm_fault_delivers_twenty_thousand_events():
    from mfu_agent.gpu.simulated import SimulatedBackend

    backend = SimulatedBackend("2xNVIDIA H100 80GB HBM3")
    backend.apply_fault("xid-storm:1")
    events = backend.wait_for_events(0)
    assert len(events) == 20_000 and {e.gpu_index for e in events} == {1}
    assert sum(e.xid == 79 for e in events) == 10_001 and len({e.xid for e in events}) == 10_000


def test_repeated_lines_are_written_once_then_summarised(caplog):
    clock = Clock(80_000.0)
    logger = logging.getLogger("test.repeated")
    repeated = RepeatedLog(logger, period=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.repeated"):
        for _ in range(10_000):
            repeated.log(("gpu0", 79), logging.WARNING, "XID %d on GPU %d", 79, 0)
            clock.now += 0.001
        repeated.log(("gpu1", 79), logging.WARNING, "XID %d on GPU %d", 79, 1)
        clock.now += 45
        repeated.flush()
        assert [r.getMessage() for r in caplog.records] == ["XID 79 on GPU 0", "XID 79 on GPU 1"]
        clock.now += 10  # the first period has ended: its summary; GPU 1 had no repeats
        repeated.flush()
        assert caplog.records[-1].getMessage() == "XID 79 on GPU 0: 9,999 more in the last 65 s"
        assert caplog.records[-1].levelno == logging.WARNING
        clock.now += 120  # quiet for a whole period: the next line is written at once again
        repeated.flush()
        repeated.log(("gpu0", 79), logging.WARNING, "XID %d on GPU %d", 79, 0)
        assert [r.getMessage() for r in caplog.records][-1] == "XID 79 on GPU 0"
        assert len(caplog.records) == 4


def test_repeated_log_kinds_are_bounded(caplog):
    clock = Clock(80_000.0)
    logger = logging.getLogger("test.kinds")
    repeated = RepeatedLog(logger, period=60, max_kinds=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.kinds"):
        for peer in range(1000):
            repeated.log(peer, logging.WARNING, "socket error from peer %d", peer)
        clock.now += 60
        repeated.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 11
    assert messages[-1] == "lines of other kinds: 990 more in the last 60 s"
    assert len(repeated._kinds) <= 11


# --- /metrics at the budget: streamed -------------------------------------------------------------


def test_metrics_are_streamed_family_by_family_and_are_the_librarys_bytes():
    import httpx
    from conftest import serve
    from prometheus_client.exposition import choose_encoder

    from mfu_agent.metrics.exposition import CHUNK_BYTES, stream

    # No threads, and a clock that stands still (readings' ages are computed at scrape time): a still page.
    agent = Agent(SimulatedBackend("4xNVIDIA H100 80GB HBM3"), AgentOptions(), clock=lambda: 90_000.0)
    snapshot = agent.sampler.sample_once()
    for t in (100.0, 110.0):
        reports = [full_report(r, t, (r % 4, (r + 1) % 4), job_id=f"j{r // 8}") for r in range(256)]
        agent.jobs.apply(reports, snapshot)
    with serve(agent, manage_agent=False) as url, httpx.Client(base_url=url, timeout=30) as client:
        for accept in ("", "application/openmetrics-text;version=1.0.0"):
            library = choose_encoder(accept)[0](agent.registry)
            chunks, content_type = stream(agent.registry, accept)
            chunks = list(chunks)
            assert b"".join(chunks) == library
            assert len(chunks) > 1 and all(len(c) >= CHUNK_BYTES for c in chunks[:-1])
            with client.stream("GET", "/metrics", headers={"accept": accept}) as response:
                assert response.headers["transfer-encoding"] == "chunked"
                assert response.headers["content-type"] == content_type
                assert response.read() == library
