"""Cost and energy (mfu_agent/cost): the price file, and the counters checked against hand calculations.

In-process on a clock the test moves (the real simulated backend, job registry and sampler; every
figure exact), then the CLI's handling of the price file through real processes, then the done-when of
issue 13 point 4: a real agent and a real Prometheus with the shipped rules, whose idle and
below-target dollars match a hand calculation within 2%.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from agent_clock import Clock
from agent_process import ROOT, AgentProcess
from metrics_text import samples
from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.cost.prices import PriceTable, load_prices
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import ReportData

H100 = "NVIDIA H100 80GB HBM3"
H100_BF16 = 989.4e12  # dense BF16 peak, H100 SXM datasheet
PRICE = 3.6  # dollars per GPU-hour: a dollar per 1000 seconds
TARGET = 0.4
JOB_MFU = 0.2  # half the target: half of the price is below target


def make_agent(
    spec: str, prices: dict[str, float] | None, **options
) -> tuple[Agent, SimulatedBackend, Clock]:
    clock = Clock(1_000_000.0)
    backend = SimulatedBackend(spec, clock=clock)
    table = PriceTable(prices) if prices is not None else None
    agent = Agent(backend, AgentOptions(prices=table, mfu_target=TARGET, **options), clock=clock)
    agent.jobs._clock = clock
    return agent, backend, clock


def report(rank: int, t: float, gpu: int | str, job_id: str = "j", mfu: float = JOB_MFU) -> ReportData:
    """The rank's cumulative totals at Unix time t: FLOPs for `mfu` of an H100, 1000 tokens a second."""
    return ReportData(
        job_id=job_id,
        rank=rank,
        model_flops={"bf16": mfu * H100_BF16 * t},
        tokens_total=1000.0 * t,
        timestamp=t,
        gpus=(gpu,),
        instance=f"{job_id}-{rank}",
        interval=1.0,
    )


def run(agent: Agent, clock: Clock, seconds: int, ranks: list[tuple[int, int | str, str]] = ()) -> None:
    """One sample a second for `seconds`, each rank reporting before each sample."""
    for _ in range(seconds):
        clock.now += 1.0
        if ranks:
            agent.jobs.apply([report(r, clock.now, g, job) for r, g, job in ranks], agent.sampler.latest)
        agent.sampler.sample_once()


def metric(agent: Agent, name: str) -> dict[str, float]:
    """{uuid or job_id: value} of the samples called `name` on /metrics."""
    found = samples(generate_latest(agent.registry).decode())
    out = {}
    for (n, labels), value in found.items():
        if n == name:
            d = dict(labels)
            out[d.get("uuid") or d.get("job_id", "")] = value
    return out


def test_idle_below_target_and_total_cost_by_hand():
    """GPU 0 has processes and SMs that do next to nothing (idle); GPU 1 runs a rank at MFU 0.2 against
    the target 0.4; GPU 2 has nothing on it; GPU 3 is a model the price file does not know."""
    agent, backend, clock = make_agent(f"3x{H100},1xNVIDIA L40S", {H100: PRICE})
    backend.apply_fault("busy-idle:0")
    backend.set_processes(0, [(101, 1 << 30)])
    uuids = [g.uuid for g in agent.sampler.sample_once().gpus]
    ranks = [(0, 1, "j")]
    run(agent, clock, 2, ranks)  # two reports: the rank has an MFU from the next sample on
    start = {
        name: metric(agent, name)
        for name in (
            "mfu_gpu_cost_dollars_total",
            "mfu_gpu_idle_cost_dollars_total",
            "mfu_gpu_below_target_cost_dollars_total",
            "mfu_gpu_idle_allocated_seconds_total",
        )
    }
    run(agent, clock, 100, ranks)
    end = {name: metric(agent, name) for name in start}

    def grew(name: str) -> dict[str, float]:
        return {u: end[name][u] - start[name].get(u, 0.0) for u in end[name]}

    dollars = PRICE * 100 / 3600  # $0.10: 100 s at $3.60 an hour
    assert grew("mfu_gpu_cost_dollars_total") == pytest.approx(dict.fromkeys(uuids[:3], dollars))
    assert grew("mfu_gpu_idle_allocated_seconds_total") == pytest.approx(
        {uuids[0]: 100.0, uuids[1]: 0.0, uuids[2]: 0.0}
    ), "L40S: no GPM, no idle counter"
    assert grew("mfu_gpu_idle_cost_dollars_total") == pytest.approx(
        {uuids[0]: dollars, uuids[1]: 0, uuids[2]: 0}
    )
    below = dollars * (TARGET - JOB_MFU) / TARGET  # $0.05
    assert grew("mfu_gpu_below_target_cost_dollars_total") == pytest.approx(
        {uuids[0]: 0.0, uuids[1]: below, uuids[2]: 0.0}, rel=1e-6
    )
    assert metric(agent, "mfu_gpu_price_unknown") == {uuids[3]: 1.0}
    assert metric(agent, "mfu_agent_mfu_target_ratio") == {"": TARGET}


def test_an_idle_second_is_idle_cost_only_and_the_threshold_is_a_flag():
    """A rank reports MFU 0.2 on GPU 0, whose SMs are nearly idle (SM active 0.07..0.13) with processes
    on it: its time is idle cost, not below-target cost (the two never count the same second). With
    --idle-sm-active 0.05 the same GPU is not idle, and its time is below-target cost."""
    for threshold, idle in ((0.2, True), (0.05, False)):
        agent, backend, clock = make_agent(f"1x{H100}", {H100: PRICE}, idle_sm_active=threshold)
        backend.apply_fault("busy-idle:0")
        backend.set_processes(0, [(101, 1 << 30)])
        (uuid,) = [g.uuid for g in agent.sampler.sample_once().gpus]
        run(agent, clock, 2, [(0, 0, "j")])
        before = metric(agent, "mfu_gpu_idle_cost_dollars_total")[uuid]
        below_before = metric(agent, "mfu_gpu_below_target_cost_dollars_total")[uuid]
        run(agent, clock, 50, [(0, 0, "j")])
        idle_cost = metric(agent, "mfu_gpu_idle_cost_dollars_total")[uuid] - before
        below = metric(agent, "mfu_gpu_below_target_cost_dollars_total")[uuid] - below_before
        dollars = PRICE * 50 / 3600
        if idle:
            assert (idle_cost, below) == pytest.approx((dollars, 0.0))
        else:
            assert (idle_cost, below) == pytest.approx((0.0, dollars * 0.5))


def test_without_a_price_file_there_are_no_cost_series():
    agent, backend, clock = make_agent(f"2x{H100}", None)
    backend.apply_fault("busy-idle:0")
    backend.set_processes(0, [(101, 1 << 30)])
    uuids = [g.uuid for g in agent.sampler.sample_once().gpus]
    run(agent, clock, 10)
    names = {n for n, _ in samples(generate_latest(agent.registry).decode())}
    assert not {n for n in names if "dollars" in n or "price" in n}
    assert metric(agent, "mfu_gpu_idle_allocated_seconds_total") == {uuids[0]: 10.0, uuids[1]: 0.0}


def test_a_mig_device_costs_its_share_and_its_gpu_the_whole_price():
    """An H100 (132 SMs) in MIG mode with a 3g.40gb (60 SMs) and a 2g.20gb (32 SMs) device, the first
    busy doing nothing with a process: the board's price is the GPU's cost; idle time is charged at
    the slice's share, 60/132 of the price."""
    agent, backend, clock = make_agent(f"1x{H100}[mig=3g.40gb,2g.20gb]", {H100: PRICE})
    backend.apply_fault("busy-idle:0")
    backend.set_processes(0, [(101, 1 << 30)], gpu_instance_id=0)
    parent, big, small = (g.uuid for g in agent.sampler.sample_once().gpus)
    run(agent, clock, 100)
    dollars = PRICE * 100 / 3600
    assert metric(agent, "mfu_gpu_cost_dollars_total") == pytest.approx({parent: dollars})
    assert metric(agent, "mfu_gpu_idle_cost_dollars_total") == pytest.approx(
        {big: dollars * 60 / 132, small: 0.0}
    )
    assert set(metric(agent, "mfu_gpu_below_target_cost_dollars_total")) == {big, small}
    assert metric(agent, "mfu_gpu_idle_allocated_seconds_total") == pytest.approx({big: 100.0, small: 0.0})


def test_time_the_sampler_was_stuck_is_not_counted():
    """Samples further apart than the staleness limit (10 s here): the time between them is unknown."""
    agent, backend, clock = make_agent(f"1x{H100}", {H100: PRICE})
    (uuid,) = [g.uuid for g in agent.sampler.sample_once().gpus]
    run(agent, clock, 5)
    clock.now += 60
    agent.sampler.sample_once()
    run(agent, clock, 5)
    assert metric(agent, "mfu_gpu_cost_dollars_total") == pytest.approx({uuid: PRICE * 10 / 3600})


def test_job_energy_is_split_equally_among_the_ranks_on_each_gpu():
    """GPU 0: job a's ranks 0 and 1 and job b's rank 0 (a gets two thirds of its energy, b one
    third); GPU 1: job a's rank 2 alone. Job c has a rank on a MIG device: no energy counter."""
    agent, backend, clock = make_agent(f"2x{H100},1x{H100}[mig=3g.40gb]", {H100: PRICE})
    snapshot = agent.sampler.sample_once()
    mig = snapshot.gpus[3].uuid
    ranks = [(0, 0, "a"), (1, 0, "a"), (2, 1, "a"), (0, 0, "b"), (0, mig, "c")]
    run(agent, clock, 2, ranks)
    gpu_energy = {g.uuid: g.energy_joules for g in agent.sampler.latest.gpus}
    before = metric(agent, "mfu_job_node_energy_joules_total")
    run(agent, clock, 30, ranks)
    after = metric(agent, "mfu_job_node_energy_joules_total")
    used = {g.uuid: g.energy_joules - gpu_energy[g.uuid] for g in agent.sampler.latest.gpus[:2]}
    gpu0, gpu1 = snapshot.gpus[0].uuid, snapshot.gpus[1].uuid
    assert used[gpu0] > 0 and used[gpu1] > 0
    assert set(after) == {"a", "b"}, "job c has a rank on a MIG device"
    assert after["a"] - before["a"] == pytest.approx(used[gpu0] * 2 / 3 + used[gpu1])
    assert after["b"] - before["b"] == pytest.approx(used[gpu0] / 3)


def test_a_model_without_a_price_is_flagged_and_logged_once_never_guessed(caplog):
    """Two L40S and an H100, a price for the H100 only: the L40S have no cost series (not a guess, not
    0), a flag each, and one warning for the model however many GPUs and samples."""
    agent, _, clock = make_agent(f"2xNVIDIA L40S,1x{H100}", {H100: PRICE})
    with caplog.at_level("WARNING", logger="mfu_agent.cost.meter"):
        uuids = [g.uuid for g in agent.sampler.sample_once().gpus]
        run(agent, clock, 5)
    assert set(metric(agent, "mfu_gpu_price_unknown")) == set(uuids[:2])
    for name in ("mfu_gpu_cost_dollars_total", "mfu_gpu_idle_cost_dollars_total"):
        assert set(metric(agent, name)) == {uuids[2]}, name
    warnings = [r.getMessage() for r in caplog.records if "no price" in r.getMessage()]
    assert warnings == [
        "no price for GPU model 'NVIDIA L40S' in --gpu-price-file and no default: no cost series for its GPUs"
    ]


# --- the price file ----------------------------------------------------------------------------------


def test_prices_by_nvml_name_case_and_spaces_aside_with_a_default(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"nvidia  h100 80gb HBM3": 2.5, "default": 1.25}))
    table = load_prices(path)
    assert table.model_price(H100) == 2.5
    assert table.model_price("NVIDIA L40S") == 1.25
    assert PriceTable({H100: 2.5}).model_price("NVIDIA L40S") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected an object mapping GPU device names"),
        ("{}", "no prices"),
        ('{"NVIDIA H100 80GB HBM3": "2.5"}', "key 'NVIDIA H100 80GB HBM3': expected US dollars per GPU-hour"),
        ('{"NVIDIA H100 80GB HBM3": true}', "key 'NVIDIA H100 80GB HBM3': expected US dollars per GPU-hour"),
        ('{"NVIDIA H100 80GB HBM3": -1}', "key 'NVIDIA H100 80GB HBM3': a price must be above 0"),
        ('{"NVIDIA H100 80GB HBM3": 0}', "key 'NVIDIA H100 80GB HBM3': a price must be above 0"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"Default": 1, "default": 2}', "key 'default' duplicates 'Default'"),
        ('{" ": 1}', "keys must be non-empty"),
    ],
)
def test_a_bad_price_file_stops_the_agent_naming_the_file_and_the_key(tmp_path, content, message):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=None) as caught:
        load_prices(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    if content == "{}":  # and through the CLI, from the environment as well: exit 2, one line
        r = subprocess.run(
            [sys.executable, "-m", "mfu_agent.cli", "run", "--backend", "simulated"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "MFU_AGENT_GPU_PRICE_FILE": str(path), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 2, r.stderr
        assert f"MFU_AGENT_GPU_PRICE_FILE: bad --gpu-price-file: {path}: no prices" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_mfu_target_and_idle_threshold_flags_refuse_nonsense():
    for flag, value in (("--mfu-target", "0"), ("--mfu-target", "1.5"), ("--idle-sm-active", "x")):
        r = subprocess.run(
            [sys.executable, "-m", "mfu_agent.cli", "run", "--backend", "simulated", flag, value],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 2 and flag in r.stderr, (flag, value, r.stderr)


# --- the done-when: a real agent and a real Prometheus with the shipped rules -------------------------

RATE_WINDOW_SECONDS = 20
SETTLE_SECONDS = 8
TOKENS_PER_SECOND = 5000.0


class SteadyRank:
    """One rank through the real client, on GPU 1 (local_rank 1), at JOB_MFU of an H100's dense bf16 peak."""

    def __init__(self, url: str) -> None:
        from mfu_agent.client import Reporter

        self.reporter = Reporter(
            job_id="cost-job", rank=0, local_rank=1, world_size=1, url=url, interval=0.1, dtype="bf16"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            elapsed, last = now - last, now
            self.reporter.step(model_flops=JOB_MFU * H100_BF16 * elapsed, tokens=TOKENS_PER_SECOND * elapsed)

    def __enter__(self) -> SteadyRank:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.reporter.close(timeout=1)


@pytest.fixture(scope="module")
def priced_node(tmp_path_factory):
    """An agent with 3 H100s at $3.60/h: GPU 0 busy doing nothing with two processes on it (idle), GPU 1
    running the rank at MFU 0.2 (below the target 0.4), GPU 2 unused; Prometheus scraping it every
    0.5 s with the shipped rules, their 5-minute windows shortened to 20 s."""
    from prometheus_server import PrometheusServer, rules_with_short_for
    from test_dashboards import RULE_FILES

    tmp = tmp_path_factory.mktemp("cost")
    prices = tmp / "prices.json"
    prices.write_text(json.dumps({H100: PRICE}))
    args = ["--simulate", f"3x{H100}", "--fault", "busy-idle:0", "--fault", "shared:0", "--interval", "0.25"]
    rules = rules_with_short_for(RULE_FILES, tmp / "rules", for_="2s", rate_window=f"{RATE_WINDOW_SECONDS}s")
    with (
        AgentProcess(*args, "--gpu-price-file", str(prices), "--mfu-target", str(TARGET)) as agent,
        SteadyRank(agent.url),
        PrometheusServer(
            rule_files=rules,
            scrape_targets=[f"127.0.0.1:{agent.port}"],
            tmp_dir=tmp,
            scrape_interval="500ms",
            evaluation_interval="500ms",
        ) as prom,
    ):
        prom.wait_for(lambda: prom.query("mfu_agent_mfu_target_ratio"), timeout=30, what="a first scrape")
        yield prom, time.monotonic()  # the rate windows fill from the first scrape


def at(prom, expr: str, when: float) -> tuple[float, float]:
    """(value, Unix time of the sample) of the one series `expr` selects, as Prometheus had it at `when`."""
    (value,) = prom.query(expr, when)
    (stamp,) = prom.query(f"timestamp({expr})", when)
    return float(value["value"][1]), float(stamp["value"][1])


def test_idle_and_below_target_dollars_in_prometheus_match_a_hand_calculation(priced_node):
    prom, started = priced_node
    prom.wait_for(lambda: prom.query('mfu_gpu_mfu_ratio{gpu="1"}'), timeout=30, what="GPU 1's MFU")
    time.sleep(1)  # the MFU settles (the agent's window holds a few reports)
    start = time.time()
    prom.wait_for(
        lambda: time.monotonic() - started > RATE_WINDOW_SECONDS + SETTLE_SECONDS + 2,
        timeout=RATE_WINDOW_SECONDS + SETTLE_SECONDS + 30,
        what="a full rate window",
    )
    end = time.time()

    # The counters as Prometheus scraped them, against price x elapsed time between their samples.
    idle_before, t0 = at(prom, 'mfu_gpu_idle_cost_dollars_total{gpu="0"}', start)
    idle_after, t1 = at(prom, 'mfu_gpu_idle_cost_dollars_total{gpu="0"}', end)
    assert t1 - t0 > 20
    assert idle_after - idle_before == pytest.approx(PRICE * (t1 - t0) / 3600, rel=0.02)
    seconds_before, _ = at(prom, 'mfu_gpu_idle_allocated_seconds_total{gpu="0"}', start)
    seconds_after, _ = at(prom, 'mfu_gpu_idle_allocated_seconds_total{gpu="0"}', end)
    assert seconds_after - seconds_before == pytest.approx(t1 - t0, rel=0.02)
    below_before, t0 = at(prom, 'mfu_gpu_below_target_cost_dollars_total{gpu="1"}', start)
    below_after, t1 = at(prom, 'mfu_gpu_below_target_cost_dollars_total{gpu="1"}', end)
    hand = PRICE * (t1 - t0) / 3600 * (TARGET - JOB_MFU) / TARGET
    assert below_after - below_before == pytest.approx(hand, rel=0.02)
    for gpu in ("0", "2"):  # the idle GPU's time is idle cost only; the unused GPU is neither
        before, _ = at(prom, f'mfu_gpu_below_target_cost_dollars_total{{gpu="{gpu}"}}', start)
        after, _ = at(prom, f'mfu_gpu_below_target_cost_dollars_total{{gpu="{gpu}"}}', end)
        assert after == before
    unused_before, _ = at(prom, 'mfu_gpu_idle_cost_dollars_total{gpu="2"}', start)
    assert at(prom, 'mfu_gpu_idle_cost_dollars_total{gpu="2"}', end)[0] == unused_before

    # The shipped rules: dollars per second, as an hourly figure (the mean of the last evaluations).
    def hourly(rule: str) -> float:
        (series,) = prom.query(f"avg_over_time({rule}[{SETTLE_SECONDS}s]) * 3600", end)
        return float(series["value"][1])

    assert hourly("mfu:fleet_idle_cost_dollars:rate5m") == pytest.approx(PRICE, rel=0.02)
    assert hourly("mfu:fleet_below_target_cost_dollars:rate5m") == pytest.approx(PRICE / 2, rel=0.02)
    assert hourly("mfu:fleet_cost_dollars:rate5m") == pytest.approx(3 * PRICE, rel=0.02)
    assert hourly("mfu:fleet_idle_allocated_gpus:rate5m") == pytest.approx(3600, rel=0.02)
    (target,) = prom.query("mfu:target_mfu:ratio", end)
    assert float(target["value"][1]) == TARGET


def test_job_energy_per_token_in_prometheus(priced_node):
    """The rank is alone on GPU 1: the job's power is GPU 1's, over the tokens the rank makes."""
    prom, started = priced_node
    # The rate windows full and settled, whichever test of the module ran first (or alone).
    prom.wait_for(
        lambda: time.monotonic() - started > RATE_WINDOW_SECONDS + SETTLE_SECONDS + 2,
        timeout=RATE_WINDOW_SECONDS + SETTLE_SECONDS + 30,
        what="full rate windows",
    )
    window = f"[{SETTLE_SECONDS}s]"
    (power,) = prom.query(f"avg_over_time(mfu:job_power_watts:rate5m{window})")
    (gpu,) = prom.query(
        f'avg_over_time(rate(mfu_gpu_energy_joules_total{{gpu="1"}}[{RATE_WINDOW_SECONDS}s])[{SETTLE_SECONDS}s:])'
    )
    assert float(power["value"][1]) == pytest.approx(float(gpu["value"][1]), rel=0.02)
    (per_token,) = prom.query(f"avg_over_time(mfu:job_energy_joules_per_token:ratio{window})")
    assert float(per_token["value"][1]) == pytest.approx(float(gpu["value"][1]) / TOKENS_PER_SECOND, rel=0.03)
    (per_pflop,) = prom.query(f"avg_over_time(mfu:job_energy_joules_per_pflop:ratio{window})")
    pflops = JOB_MFU * H100_BF16 / 1e15
    assert float(per_pflop["value"][1]) == pytest.approx(float(gpu["value"][1]) / pflops, rel=0.03)
