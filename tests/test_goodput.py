"""Goodput per rank (docs/goodput.md): the accounting on a clock the test moves, the client's phases, and
end to end: a real agent, real client processes and a real Prometheus with the shipped rules, a job that
restarts from a checkpoint 20 steps behind its last step."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from agent_clock import Clock
from agent_process import AgentProcess, start_client
from metrics_text import samples
from prometheus_client import generate_latest
from prometheus_server import PrometheusServer
from test_rules import RULE_FILES

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.client import Reporter
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import JobRegistry, ReportData
from mfu_agent.jobs.state import StateStore

F = 3e15  # model FLOPs per step
T = 4096.0  # tokens per step


@pytest.fixture(scope="module")
def snapshot():
    from mfu_agent.sampler import Sampler

    return Sampler(SimulatedBackend("2xNVIDIA H100 80GB HBM3")).sample_once()


def report(step: int, instance: str = "a", start: int = 0, **kw) -> ReportData:
    """A report of a sender that resumed at step `start`: its own counters count from there."""
    return ReportData(
        job_id=kw.pop("job_id", "j"),
        rank=kw.pop("rank", 0),
        model_flops={"bf16": F * (step - start)},
        tokens_total=T * (step - start),
        gpus=(0,),
        instance=instance,
        interval=1.0,
        step=step,
        start_step=start if kw.pop("resumed", True) else None,
        **kw,
    )


def goodput(registry: JobRegistry, rank: int = 0):
    views = {v.rank: v for v in registry.views()}
    return views[rank].goodput


# --- the accounting ------------------------------------------------------------------------------


def test_each_interval_goes_to_one_place_and_they_add_up_to_the_wall_time(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0)], snapshot)
    for step in (10, 20):  # 10 s each, steps advancing
        clock.now += 10
        registry.apply([report(step)], snapshot)
    clock.now += 10  # steps advance, and 4 s of them were a checkpoint
    registry.apply([report(30, phase_seconds={"checkpoint": 4.0})], snapshot)
    clock.now += 10  # no step: 7 s of eval, 3 s of stall
    registry.apply([report(30, phase_seconds={"checkpoint": 4.0, "eval": 7.0})], snapshot)
    clock.now += 10  # no step, nothing marked: stalled
    registry.apply([report(30, phase_seconds={"checkpoint": 4.0, "eval": 7.0})], snapshot)
    g = goodput(registry)
    assert g.seconds == {"wall": 50.0, "productive": 26.0, "stall": 13.0, "restart_downtime": 0.0}
    assert g.phases == {"checkpoint": 4.0, "eval": 7.0}  # phases from the first time they are named
    assert sum(g.seconds.values()) - g.seconds["wall"] + sum(g.phases.values()) == g.seconds["wall"]
    assert g.restarts == {"new_process": 0, "counter_reset": 0}
    assert g.lost == {"steps": 0.0, "flops": 0.0, "tokens": 0.0, "seconds": 0.0}


def test_a_restore_behind_the_highest_step_counts_the_redone_steps_as_lost_work(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    for step in range(10, 61, 10):  # a: 1 step a second up to 60, 60 productive seconds
        clock.now += 10
        registry.apply([report(step, "a")], snapshot)
    clock.now += 15  # a dies; b restores the checkpoint of step 40, 15 s later
    registry.apply([report(40, "b", start=40)], snapshot)
    g = goodput(registry)
    assert g.restarts == {"new_process": 1, "counter_reset": 0}
    assert g.seconds["restart_downtime"] == 15.0 and g.seconds["productive"] == 60.0
    assert g.lost == {"steps": 20, "flops": 20 * F, "tokens": 20 * T, "seconds": 20.0}
    # b runs at half the pace (2 s a step) to 100, c restores step 90: 10 steps of b's pace lost.
    for step in range(50, 101, 10):
        clock.now += 20
        registry.apply([report(step, "b", start=40)], snapshot)
    clock.now += 5
    registry.apply([report(90, "c", start=90)], snapshot)
    g = goodput(registry)
    assert g.lost == {"steps": 30, "flops": 30 * F, "tokens": 30 * T, "seconds": 20.0 + 10 * 2.0}
    assert g.seconds["wall"] == 60 + 15 + 120 + 5
    assert g.seconds["productive"] == 60 + 120 and g.seconds["restart_downtime"] == 20


def test_a_restore_at_or_past_the_highest_step_loses_nothing(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 10
    registry.apply([report(50, "a")], snapshot)
    clock.now += 10
    registry.apply([report(50, "b", start=50)], snapshot)
    assert goodput(registry).lost["steps"] == 0
    assert goodput(registry).restarts["new_process"] == 1


def test_counters_going_down_under_the_same_sender_is_a_counter_reset(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 10
    registry.apply([report(50, "a")], snapshot)
    clock.now += 10
    registry.apply([report(45, "a", start=40)], snapshot)
    g = goodput(registry)
    assert g.restarts == {"new_process": 0, "counter_reset": 1}
    assert g.lost["steps"] == 10 and g.lost["flops"] == 10 * F


def test_a_restart_that_does_not_say_where_it_resumed_counts_no_lost_work_and_says_so(snapshot, caplog):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 10
    registry.apply([report(50, "a")], snapshot)
    clock.now += 10
    with caplog.at_level(logging.INFO, logger="mfu_agent.jobs.registry"):
        registry.apply([report(5, "b", start=0, resumed=False)], snapshot)
    g = goodput(registry)
    assert g.restarts["new_process"] == 1 and g.lost["steps"] == 0
    assert "without saying where it resumed (start_step)" in caplog.text


def test_the_accounting_outlives_a_final_report_for_the_next_sender(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 60
    registry.apply([report(60, "a", final=True)], snapshot)
    assert registry.views() == []
    clock.now += 30
    registry.apply([report(40, "b", start=40)], snapshot)
    g = goodput(registry)
    assert g.lost["steps"] == 20 and g.lost["seconds"] == 20.0
    assert g.seconds == {"wall": 90.0, "productive": 60.0, "stall": 0.0, "restart_downtime": 30.0}


def test_a_rank_marks_at_most_four_phase_names_of_its_own(snapshot, caplog):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0)], snapshot)
    clock.now += 10
    names = {f"mine_{i}": 1.0 for i in range(6)}
    with caplog.at_level(logging.WARNING, logger="mfu_agent.jobs.registry"):
        registry.apply([report(10, phase_seconds={"eval": 1.0, **names})], snapshot)
    g = goodput(registry)
    assert g.phases == {"eval": 1.0, "other": 2.0, **{f"mine_{i}": 1.0 for i in range(4)}}
    assert "counted as 'other'" in caplog.text
    assert g.seconds["productive"] == 3.0


def test_goodput_counters_never_go_down_across_an_agent_restart(snapshot, tmp_path):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 60
    registry.apply([report(60, "a", phase_seconds={"data_wait": 5.0})], snapshot)
    clock.now += 10
    registry.apply([report(40, "b", start=40)], snapshot)
    before = goodput(registry)
    assert StateStore(tmp_path, registry, "node-a").save()
    restarted = JobRegistry(clock=clock)
    assert StateStore(tmp_path, restarted, "node-a").load() == 1
    assert goodput(restarted) == before
    clock.now += 10
    restarted.apply([report(50, "b", start=40)], snapshot)
    after = goodput(restarted)
    assert after.seconds["productive"] == before.seconds["productive"] + 10
    assert after.lost == before.lost and after.phases == before.phases
    # b keeps its counters: no restart is seen, and the next restore uses b's pace.
    assert after.restarts == before.restarts


def test_a_bad_goodput_entry_in_the_state_file_is_set_aside(snapshot, tmp_path):
    registry = JobRegistry()
    registry.apply([report(0)], snapshot)
    StateStore(tmp_path, registry, "node-a").save()
    path = tmp_path / "ranks.json"
    document = json.loads(path.read_text())
    document["goodput"][0]["seconds"]["productive"] = -1
    path.write_text(json.dumps(document))
    empty = JobRegistry()
    assert StateStore(tmp_path, empty, "node-a").load() == 0 and len(empty) == 0
    assert any(p.name.startswith("ranks.json.bad-") for p in tmp_path.iterdir())


def test_every_rank_exports_its_goodput_series_and_a_phase_once_it_is_named(snapshot):
    agent = Agent(SimulatedBackend("2xNVIDIA H100 80GB HBM3"), AgentOptions())
    sample = agent.sampler.sample_once()
    agent.jobs.apply([report(0)], sample)
    found = samples(generate_latest(agent.registry).decode())
    labels = {("job_id", "j"), ("rank", "0")}
    assert found["mfu_job_wall_seconds_total", frozenset(labels)] == 0.0
    assert not [n for n, _ in found if n == "mfu_job_phase_seconds_total"]  # none marked: no series
    agent.jobs.apply([report(0, phase_seconds={"own_phase": 0.0, "eval": 0.0})], sample)
    found = samples(generate_latest(agent.registry).decode())
    phases = {dict(ls)["phase"] for n, ls in found if n == "mfu_job_phase_seconds_total"}
    assert phases == {"eval", "own_phase"}
    causes = {dict(ls)["cause"] for n, ls in found if n == "mfu_job_restarts_total"}
    assert causes == {"new_process", "counter_reset"}


# --- the client ----------------------------------------------------------------------------------


def test_phases_are_sent_as_cumulative_seconds_and_nested_ones_count_to_the_innermost(caplog):
    reporter = Reporter(job_id="j", flops_per_step=1.0, url="http://127.0.0.1:9", interval=3600)
    try:
        assert "phase_seconds_total" not in reporter.snapshot()
        with reporter.phase("checkpoint"):
            time.sleep(0.05)
            with reporter.phase("eval"):
                time.sleep(0.1)
            open_phase = reporter.snapshot()["phase_seconds_total"]
        phases = reporter.snapshot()["phase_seconds_total"]
        assert phases["eval"] >= 0.1 and 0.05 <= phases["checkpoint"] < phases["checkpoint"] + phases["eval"]
        assert open_phase["eval"] == phases["eval"] and open_phase["checkpoint"] <= phases["checkpoint"]
        # A phase still open counts up to the moment of the report.
        with reporter.phase("data_wait"):
            time.sleep(0.02)
            assert reporter.snapshot()["phase_seconds_total"]["data_wait"] >= 0.02
        with caplog.at_level(logging.WARNING, logger="mfu_agent.client"):
            with reporter.phase("Not A Name"):  # type: ignore[arg-type]
                pass
            with reporter.phase(42):  # type: ignore[arg-type]
                pass
            for i in range(5):
                with reporter.phase(f"mine_{i}"):
                    pass
        names = set(reporter.snapshot()["phase_seconds_total"])
        assert names == {"checkpoint", "eval", "data_wait", "other", *(f"mine_{i}" for i in range(4))}
        assert "'Not A Name'" in caplog.text and "at most 4 phase names" in caplog.text
        with pytest.raises(RuntimeError), reporter.phase("eval"):  # the training's own errors pass through
            raise RuntimeError("boom")
    finally:
        reporter.close(timeout=0)


def test_start_step_counts_the_reported_steps_on_from_the_restored_checkpoint():
    reporter = Reporter(
        job_id="j", flops_per_step=1.0, url="http://127.0.0.1:9", interval=3600, start_step=280
    )
    try:
        reporter.step()
        snap = reporter.snapshot()
        assert snap["step"] == 281 and snap["start_step"] == 280 and reporter.steps == 1
    finally:
        reporter.close(timeout=0)
    for bad in (-1, 1.5, "x", True):
        with pytest.raises(ValueError, match="start_step"):
            Reporter(job_id="j", flops_per_step=1.0, url="http://127.0.0.1:9", start_step=bad)


# --- end to end ------------------------------------------------------------------------------------

JOB = "goodput-e2e"
S_MAX = 300
RESTORED = S_MAX - 20
STEP_SECONDS = 0.01

# Every report is an explicit flush (the interval is an hour): at the start, around the checkpoint, at
# the end; so each interval between reports is known to the test, however a loaded machine schedules the
# steps. The first process ends with close() (its final report: the agent drops the rank but keeps its
# goodput accounting, as for a job whose reporter closes at exit); the second one resumes 20 steps back.
FIRST_RUN = f"""
r = Reporter(job_id="{JOB}", rank=0, world_size=1, url=AGENT, interval=3600, flops_per_step={F},
             tokens_per_step={T}, gpus=[0])
t0 = time.time()
assert r.flush()
checkpoint = 0.0
for i in range({S_MAX}):
    time.sleep({STEP_SECONDS})
    r.step()
    if i == {S_MAX} // 2:
        assert r.flush()  # the agent sees the steps before the checkpoint
        started = time.monotonic()
        with r.phase("checkpoint"):
            time.sleep(0.8)
        checkpoint = time.monotonic() - started
        assert r.flush()
step = r.snapshot()["step"]
r.close()
t1 = time.time()
assert r.stats["final_report"] == "delivered"
emit(t0=t0, t1=t1, checkpoint=checkpoint, step=step)
"""

SECOND_RUN = f"""
r = Reporter(job_id="{JOB}", rank=0, world_size=1, url=AGENT, interval=3600, flops_per_step={F},
             tokens_per_step={T}, gpus=[0], start_step={RESTORED})
t2 = time.time()
assert r.flush()
for i in range(200):
    time.sleep({STEP_SECONDS})
    r.step()
assert r.flush()
t3 = time.time()
emit(t2=t2, t3=t3, step=r.snapshot()["step"])
# ends without a final report: the rank and its series stay for the test to read
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3") as running:
        yield running


def run(script: str, agent: AgentProcess) -> dict:
    proc = start_client(script, agent)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[7:])


def test_a_restore_20_steps_behind_shows_as_lost_work_and_in_the_effective_training_time(
    agent, tmp_path_factory
):
    tmp = tmp_path_factory.mktemp("goodput-prom")
    with PrometheusServer(
        rule_files=RULE_FILES,
        scrape_targets=[agent.url.removeprefix("http://")],
        tmp_dir=tmp,
        scrape_interval="250ms",
        evaluation_interval="250ms",
    ) as prom:
        first = run(FIRST_RUN, agent)
        second = run(SECOND_RUN, agent)
        assert first["step"] == S_MAX and second["step"] == RESTORED + 200

        # By hand, from what the two processes did: the first stepped from t0 to t1 but for its
        # checkpoint, the second from t2 to t3; the first did S_MAX steps, 20 of them redone.
        productive_1 = first["t1"] - first["t0"] - first["checkpoint"]
        productive = productive_1 + second["t3"] - second["t2"]
        lost_seconds = 20 * productive_1 / S_MAX
        wall = second["t3"] - first["t0"]
        effective = (productive - lost_seconds) / wall

        def final(name: str) -> float:
            (value,) = agent.series(name, job_id=JOB).values()
            return value

        assert final("mfu_job_lost_work_steps_total") == 20
        assert final("mfu_job_lost_work_flops_total") == 20 * F, "exact: the reports' own FLOPs"
        assert final("mfu_job_lost_work_tokens_total") == 20 * T
        assert final("mfu_job_lost_work_seconds_total") == pytest.approx(lost_seconds, rel=0.02)
        assert agent.series("mfu_job_restarts_total", job_id=JOB, cause="new_process") == {
            frozenset({("job_id", JOB), ("rank", "0"), ("cause", "new_process")}): 1.0
        }
        assert agent.series("mfu_job_phase_seconds_total", job_id=JOB, phase="checkpoint").popitem()[
            1
        ] == pytest.approx(first["checkpoint"], rel=0.02)
        agent_wall = final("mfu_job_wall_seconds_total")
        assert agent_wall == pytest.approx(wall, rel=0.02)

        def settled():
            # The rules' result once Prometheus has scraped the final counters.
            got = prom.query(f'mfu:job_wall_seconds:sum{{job_id="{JOB}"}}')
            if not got or float(got[0]["value"][1]) != agent_wall:
                return None
            return prom.query(f'mfu:job_effective_training_time:ratio{{job_id="{JOB}"}}')

        (ratio,) = prom.wait_for(settled, timeout=30, what="the rules on the final counters")
        assert float(ratio["value"][1]) == pytest.approx(effective, rel=0.02)
        (flops,) = prom.query(f'mfu:job_lost_work_flops:sum{{job_id="{JOB}"}}')
        assert float(flops["value"][1]) == 20 * F


def test_the_agent_refuses_a_start_step_past_the_step_and_a_bad_phase_name(agent):
    body = {"job_id": "bad", "rank": 0, "model_flops_total": 1.0, "gpus": [0]}
    answer = httpx.post(agent.url + "/v1/reports", json={**body, "step": 5, "start_step": 6}, timeout=10)
    assert answer.status_code == 422 and answer.json()["field"] == "start_step"
    answer = httpx.post(agent.url + "/v1/reports", json={**body, "start_step": 0}, timeout=10)
    assert answer.status_code == 422 and answer.json()["field"] == "step"
    answer = httpx.post(
        agent.url + "/v1/reports", json={**body, "phase_seconds_total": {"Check Point": 1.0}}, timeout=10
    )
    assert answer.status_code == 422 and answer.json()["field"].startswith("phase_seconds_total")
    many = {f"p{i}": 1.0 for i in range(9)}
    answer = httpx.post(agent.url + "/v1/reports", json={**body, "phase_seconds_total": many}, timeout=10)
    assert answer.status_code == 422 and answer.json()["field"] == "phase_seconds_total"


def test_the_worked_example_of_docs_goodput_md(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0, "A")], snapshot)
    for step in range(10, 61, 10):
        clock.now += 10
        phases = {"checkpoint": 4.0} if step >= 30 else None
        registry.apply([report(step, "A", phase_seconds=phases)], snapshot)
    clock.now += 15
    registry.apply([report(40, "B", start=40)], snapshot)
    g = goodput(registry)
    assert g.seconds == {"wall": 75.0, "productive": 56.0, "stall": 0.0, "restart_downtime": 15.0}
    assert g.phases["checkpoint"] == 4.0 and g.restarts["new_process"] == 1
    assert g.lost == pytest.approx({"steps": 20, "flops": 6e16, "tokens": 81_920, "seconds": 18.67}, abs=0.01)
    effective = g.seconds["productive"] - g.lost["seconds"]
    assert effective / g.seconds["wall"] == pytest.approx(0.498, abs=0.001)


def test_a_closed_rank_s_accounting_expires_with_the_rank_ttl_and_makes_room_first(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock, rank_ttl_seconds=100, max_ranks=2)
    registry.apply([report(0, "a")], snapshot)
    clock.now += 10
    registry.apply([report(10, "a", final=True)], snapshot)
    clock.now += 101
    assert registry.views() == []
    registry.apply([report(40, "b", start=40)], snapshot)
    g = goodput(registry)
    assert g.restarts["new_process"] == 0 and g.seconds["wall"] == 0 and g.lost["steps"] == 0
    # At most 2 x --max-ranks entries: a new rank makes room by dropping the oldest closed one, never
    # the accounting of a rank still tracked.
    for rank in range(1, 5):
        registry.apply([report(0, "x", rank=rank, final=True)], snapshot)
        clock.now += 1
    assert set(registry.goodput.entries) == {("j", 0), ("j", 2), ("j", 3), ("j", 4)}


def test_a_sender_that_stops_sending_tokens_has_not_restarted(snapshot):
    clock = Clock(50_000.0)
    registry = JobRegistry(clock=clock)
    registry.apply([report(0)], snapshot)
    clock.now += 10
    registry.apply([report(10)], snapshot)
    clock.now += 10
    registry.apply(
        [ReportData(job_id="j", rank=0, model_flops={"bf16": 20 * F}, gpus=(0,), instance="a", step=20)],
        snapshot,
    )
    assert goodput(registry).restarts == {"new_process": 0, "counter_reset": 0}


def test_goodput_counters_survive_a_real_agent_restart_with_state_dir(tmp_path):
    body = {"job_id": "kept", "rank": 0, "gpus": [0], "interval": 0.1, "tokens_total": 0}

    def post(url: str, step: int, instance: str, start: int = 0, **extra) -> None:
        done = step - start
        report = {
            **body,
            "instance": instance,
            "step": step,
            "start_step": start,
            "model_flops_total": F * done,
        }
        answer = httpx.post(
            url + "/v1/reports", json={**report, "tokens_total": T * done, **extra}, timeout=10
        )
        assert answer.status_code == 202, answer.text

    def goodput_series(agent: AgentProcess) -> dict[tuple[str, str], float]:
        found = samples(agent.metrics())
        return {
            (name, dict(labels).get("phase", dict(labels).get("cause", ""))): value
            for (name, labels), value in found.items()
            if dict(labels).get("job_id") == "kept" and name in GOODPUT_FAMILIES
        }

    with AgentProcess("--state-dir", str(tmp_path)) as first:
        post(first.url, 0, "a")
        time.sleep(0.2)
        post(first.url, 10, "a", phase_seconds_total={"checkpoint": 0.05})
        time.sleep(0.5)  # a is silent past 3 of its intervals: b may take the rank over
        post(first.url, 5, "b", start=5)
        before = goodput_series(first)
    assert before[("mfu_job_lost_work_steps_total", "")] == 5
    assert before[("mfu_job_lost_work_flops_total", "")] == 5 * F
    assert before[("mfu_job_restarts_total", "new_process")] == 1
    assert before[("mfu_job_productive_seconds_total", "")] > 0
    with AgentProcess("--state-dir", str(tmp_path)) as second:
        assert goodput_series(second) == before, "restored as saved"
        time.sleep(0.1)
        post(second.url, 15, "b", start=5)
        after = goodput_series(second)
    assert after.keys() == before.keys()
    assert all(after[k] >= before[k] for k in before), "no counter went down"
    assert after[("mfu_job_productive_seconds_total", "")] > before[("mfu_job_productive_seconds_total", "")]
    assert after[("mfu_job_restarts_total", "new_process")] == 1, "the same sender after the agent's restart"


GOODPUT_FAMILIES = {
    "mfu_job_wall_seconds_total",
    "mfu_job_productive_seconds_total",
    "mfu_job_stall_seconds_total",
    "mfu_job_restart_downtime_seconds_total",
    "mfu_job_phase_seconds_total",
    "mfu_job_restarts_total",
    "mfu_job_lost_work_steps_total",
    "mfu_job_lost_work_flops_total",
    "mfu_job_lost_work_tokens_total",
    "mfu_job_lost_work_seconds_total",
}
