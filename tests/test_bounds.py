"""Bounded everything: XID folding and rate-limited logs, in-process and on a clock the test moves."""

from __future__ import annotations

import logging

from mfu_agent.events import XID_CATALOGUE, EventCounter
from mfu_agent.gpu.model import GpuEvent
from mfu_agent.logs import RepeatedLog


class Clock:
    def __init__(self) -> None:
        self.now = 80_000.0

    def __call__(self) -> float:
        return self.now


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
    clock = Clock()
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
    clock = Clock()
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
