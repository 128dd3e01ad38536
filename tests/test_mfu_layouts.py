"""MFU in the training layouts real jobs use (issue 9), each through a real agent process and real client
processes: tensor x pipeline parallel, two senders on one rank, a hijacked rank, sparse reports, agent
and job restarts, GPU-set changes, a stray CUDA context, and FP8 mixed precision."""

from __future__ import annotations

import time

import httpx
import pytest
from agent_process import AgentProcess, finish_client, run_client, start_client

A100_BF16 = 312e12  # NVIDIA A100 datasheet, dense BF16
H100_SXM_BF16 = 989.4e12  # NVIDIA H100 whitepaper, SXM5 dense BF16
H100_SXM_FP8 = 1979e12  # H100 SXM datasheet 3,958 "with sparsity", halved


def wait_until(predicate, timeout: float = 15.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def rank_of(agent: AgentProcess, job_id: str, rank: int = 0) -> dict | None:
    job = agent.jobs().get(job_id)
    if job is None:
        return None
    return next((r for r in job["ranks"] if r["rank"] == rank), None)


# --- row 1: tensor + pipeline parallel -------------------------------------------------------------

# MT-NLG 530B (Smith et al. 2022): 105 layers, hidden 20480, 128 heads, sequence 2048, global batch 1920
# sequences, TP 8 x PP 35 x DP 8 = 2240 A100s, 60.1 s per iteration. PaLM (Chowdhery et al. 2022) Table 3
# gives it 30.2% MFU, counting 6N + 12·L·H·Q·T FLOPs per token (Appendix B).
MTNLG_PARAMS, MTNLG_LAYERS, MTNLG_HEADS, MTNLG_HEAD_DIM, MTNLG_SEQ = 530e9, 105, 128, 160, 2048
MTNLG_BATCH, MTNLG_GPUS, MTNLG_STEP_SECONDS = 1920, 2240, 60.1
MTNLG_FLOPS_PER_TOKEN = 6 * MTNLG_PARAMS + 12 * MTNLG_LAYERS * MTNLG_HEADS * MTNLG_HEAD_DIM * MTNLG_SEQ
MTNLG_JOB_FLOPS_PER_STEP = MTNLG_FLOPS_PER_TOKEN * MTNLG_BATCH * MTNLG_SEQ
SPEED = 40.0  # sender seconds per wall second: a 60.1 s step takes 1.5 s here


def test_tensor_x_pipeline_parallel_ranks_read_the_papers_mfu():
    """Eight ranks of one TP-8 group of MT-NLG on one simulated DGX A100, each following docs/client.md."""
    with AgentProcess("--simulate", "8xNVIDIA A100-SXM4-80GB", "--interval", "0.2") as agent:
        result, _ = run_client(
            f"""
            reporters = [
                Reporter(job_id="mt-nlg", job_flops_per_step={MTNLG_JOB_FLOPS_PER_STEP!r},
                         job_tokens_per_step={MTNLG_BATCH * MTNLG_SEQ}, world_size={MTNLG_GPUS},
                         rank=r, local_rank=r, url=AGENT, interval=0.1)
                for r in range(8)
            ]
            start = time.monotonic()
            for i in range(1, 4):   # on a steady beat: a late wake-up does not stretch the next step
                time.sleep(max(0.0, start + i * {MTNLG_STEP_SECONDS} / SPEED - time.monotonic()))
                for rep in reporters:
                    rep.step()
            for rep in reporters:
                rep.flush()
            emit(ok=[rep.stats["posts_ok"] > 0 for rep in reporters])
            """,
            agent,
            speed=SPEED,
        )
        assert all(result["ok"])
        job = agent.jobs()["mt-nlg"]
        expected = MTNLG_JOB_FLOPS_PER_STEP / MTNLG_STEP_SECONDS / MTNLG_GPUS / A100_BF16
        assert expected == pytest.approx(0.302, abs=0.01)  # the paper's figure, from its own inputs
        assert len(job["ranks"]) == 8
        for r in job["ranks"]:
            assert r["mfu"] == pytest.approx(0.302, abs=0.01), r
            assert r["mfu"] == pytest.approx(expected, rel=0.02), r
            assert r["rate_basis"] == "last_two_reports"  # 60 s steps against a 60 s window
        assert job["mfu"] == pytest.approx(expected, rel=0.02)


# --- rows 2 and 3: one rank, two senders -----------------------------------------------------------

TWO_SENDERS = """
rep = Reporter(job_id="dup", flops_per_step=1e15, url=AGENT, interval=0.1, gpus=[0], world_size=None)
# Both senders start together, however long each took to start (a loaded machine can take seconds).
barrier = os.environ["BARRIER"]
open(os.path.join(barrier, str(os.getpid())), "w").close()
while len(os.listdir(barrier)) < 2:
    time.sleep(0.01)
deadline = time.time() + 3
while time.time() < deadline:
    rep.step()
    time.sleep(0.01)
rep.flush()
emit(total=rep.snapshot()["model_flops_total"], stats=rep.stats, pid=os.getpid())
"""


def test_two_processes_on_one_rank_are_never_merged(tmp_path):
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3", "--interval", "0.2") as agent:
        procs = [start_client(TWO_SENDERS, agent, env={"BARRIER": str(tmp_path)}) for _ in range(2)]
        (a, err_a), (b, err_b) = (finish_client(p) for p in procs)
        owner, refused = (a, b) if a["stats"]["posts_ok"] > b["stats"]["posts_ok"] else (b, a)
        assert refused["stats"]["last_status"] == 409 and refused["stats"]["posts_ok"] == 0
        assert "no rank given" in err_a and "no rank given" in err_b  # neither claims rank 0 silently
        assert "another process reports the same job_id and rank" in (err_a + err_b)
        (counted,) = agent.series("mfu_job_model_flops_total", job_id="dup").values()
        assert counted == pytest.approx(owner["total"], rel=1e-9)  # the owner's work, once
        (rank,) = agent.jobs()["dup"]["ranks"]
        assert rank["restarts"] == 0 and rank["pid"] == owner["pid"]


def test_a_process_cannot_write_into_another_jobs_rank():
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3", "--interval", "0.2") as agent:
        owner = start_client(
            """
            rep = Reporter(job_id="victim", rank=3, world_size=8, flops_per_step=3e13, url=AGENT,
                           interval=0.1, gpus=[1])
            for _ in range(10):
                rep.step()
            rep.flush()
            time.sleep(2.5)   # keeps reporting (and owning the rank) while the other process tries
            rep.flush()
            emit(total=rep.snapshot()["model_flops_total"])
            """,
            agent,
        )
        wait_until(lambda: rank_of(agent, "victim", 3))
        before = agent.series("mfu_job_model_flops_total", job_id="victim")
        result, _ = run_client(
            """
            rep = Reporter(job_id="victim", rank=3, world_size=8, url=AGENT, interval=0.1, gpus=[1])
            rep.step(model_flops=2e21)
            ok = rep.flush()
            emit(ok=ok, status=rep.stats["last_status"], error=rep.stats["last_error"])
            """,
            agent,
        )
        assert result["ok"] is False and result["status"] == 409
        assert "already reported by" in result["error"]
        assert agent.series("mfu_job_model_flops_total", job_id="victim") == before
        owner_result, _ = finish_client(owner)
        (counted,) = agent.series("mfu_job_model_flops_total", job_id="victim").values()
        assert counted == pytest.approx(owner_result["total"]) == pytest.approx(3e14)
        reports = agent.series("mfu_agent_reports_total", outcome="conflict")
        assert list(reports.values()) and list(reports.values())[0] >= 1


def test_a_restarted_job_takes_its_ranks_back_within_a_few_intervals():
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3", "--interval", "0.2") as agent:
        first, _ = run_client(
            """
            rep = Reporter(job_id="elastic", rank=0, world_size=1, flops_per_step=1e14, url=AGENT,
                           interval=0.2, gpus=[0])
            for _ in range(5):
                rep.step()
            rep.flush()
            emit(total=rep.snapshot()["model_flops_total"])
            os._exit(0)   # dies without close(), like a crashed rank
            """,
            agent,
        )
        second, _ = run_client(
            """
            rep = Reporter(job_id="elastic", rank=0, world_size=1, flops_per_step=1e14, url=AGENT,
                           interval=0.2, gpus=[0])
            start = time.monotonic()
            for _ in range(3):
                rep.step()
            while not rep.flush() and time.monotonic() - start < 10:
                time.sleep(0.1)
            emit(total=rep.snapshot()["model_flops_total"], seconds=time.monotonic() - start)
            """,
            agent,
        )
        assert second["seconds"] < 3.0  # three 0.2 s intervals of silence, plus a post
        (counted,) = agent.series("mfu_job_model_flops_total", job_id="elastic").values()
        assert counted == pytest.approx(first["total"] + second["total"])
        assert rank_of(agent, "elastic")["restarts"] == 1


# --- row 4: steps further apart than the window ----------------------------------------------------


@pytest.mark.parametrize("gaps", [(70.0,), (59.0, 61.0)], ids=["70s-steps", "59-61s-steps"])
def test_sparse_steps_get_an_mfu_over_the_newest_two_reports(gaps):
    flops_per_step = 0.35 * H100_SXM_BF16 * 60  # 35% of the peak at a 60 s pace
    speed = 140.0
    with AgentProcess(
        "--simulate", "1xNVIDIA H100 80GB HBM3", "--interval", "0.2", "--mfu-window", "60"
    ) as agent:
        proc = start_client(
            f"""
            rep = Reporter(job_id="sparse", rank=0, world_size=1, flops_per_step={flops_per_step!r},
                           url=AGENT, interval=0.05, gpus=[0])
            gaps = {list(gaps)!r}
            for i in range(8):
                time.sleep(gaps[i % len(gaps)] / SPEED)
                rep.step()
                rep.flush()
                print("STEP", i, flush=True)
            rep.close()
            """,
            agent,
            speed=speed,
        )
        seen = []
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            rank = rank_of(agent, "sparse")
            if rank is not None and rank["step"] is not None and rank["step"] >= 2:
                seen.append((rank["step"], rank["mfu"], rank["rate_span_seconds"]))
            time.sleep(0.05)
        finish_client(proc)
        # Read between several pairs of steps (how often depends on the machine's load, not the count).
        assert len({step for step, _, _ in seen}) >= 3, seen
        assert all(mfu is not None for _, mfu, _ in seen), "MFU must not flicker away between sparse steps"
        for _, mfu, span in seen:
            # One step's span (sleeps overrun a little on a busy machine, and the sender's clock is 140x).
            assert any(0.98 * gap <= span <= 1.3 * gap for gap in gaps), span
            assert mfu == pytest.approx(0.35 * 60 / span, rel=0.02)


# --- row 5: counters never go down --------------------------------------------------------------------


def _job_counters(agent: AgentProcess, job_id: str) -> dict:
    return agent.series("mfu_job_model_flops_total", job_id=job_id)


def test_counters_survive_agent_kill_and_a_job_restart_while_it_was_down(tmp_path):
    state = tmp_path / "state"
    args = ("--simulate", "2xNVIDIA H100 80GB HBM3", "--interval", "0.2", "--state-dir", str(state))
    agent = AgentProcess(*args).start()
    port = agent.port
    try:
        first, _ = run_client(
            """
            rep = Reporter(job_id="durable", rank=0, world_size=1, flops_per_step=1e15, tokens_per_step=4096,
                           url=AGENT, interval=0.1, gpus=[1])
            for _ in range(20):
                rep.step()
            rep.flush()
            emit(total=rep.snapshot()["model_flops_total"])
            os._exit(0)
            """,
            agent,
        )
        time.sleep(2.5)  # the state file is written every 2 s
        before_model = _job_counters(agent, "durable")
        before_tokens = agent.series("mfu_job_tokens_total", job_id="durable")
        assert list(before_model.values()) == [pytest.approx(2e16)]
        agent.kill9()
        # The job restarts (from zero) while the agent is down; the agent comes back on the same port.
        agent = AgentProcess(*args)
        agent.port, agent.url = port, f"http://127.0.0.1:{port}"
        agent.start()
        assert _job_counters(agent, "durable") == before_model  # restored before any report
        second, _ = run_client(
            """
            rep = Reporter(job_id="durable", rank=0, world_size=1, flops_per_step=1e15, tokens_per_step=4096,
                           url=AGENT, interval=0.2, gpus=[1])
            for _ in range(3):
                rep.step()
            start = time.monotonic()
            while not rep.flush() and time.monotonic() - start < 10:
                time.sleep(0.1)
            emit(total=rep.snapshot()["model_flops_total"])
            """,
            agent,
        )
        after = _job_counters(agent, "durable")
        for labels, value in before_model.items():
            assert after[labels] >= value
        assert sum(after.values()) == pytest.approx(first["total"] + second["total"])
        tokens = agent.series("mfu_job_tokens_total", job_id="durable")
        for labels, value in before_tokens.items():
            assert tokens[labels] >= value
    finally:
        agent.stop()


def test_a_corrupt_state_file_is_set_aside_with_one_warning(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ranks.json").write_text('{"format": "mfu-agent-state", "version": 1, "ranks": [{"job_id"')
    agent = AgentProcess("--simulate", "1xNVIDIA H100 80GB HBM3", "--state-dir", str(state)).start()
    assert httpx.get(agent.url + "/metrics").status_code == 200
    log = agent.stop()
    assert log.count("is unusable") == 1, log
    assert [p.name.startswith("ranks.json.bad-") for p in state.iterdir()].count(True) == 1


def test_a_rank_moving_to_more_gpus_never_lowers_a_counter():
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3", "--interval", "0.2") as agent:
        script = """
            rep = Reporter(job_id="moving", rank=0, world_size=1, flops_per_step=1e15, url=AGENT,
                           interval=0.1, gpus={gpus})
            for _ in range(10):
                rep.step()
            start = time.monotonic()
            while not rep.flush() and time.monotonic() - start < 10:
                time.sleep(0.1)
            emit(total=rep.snapshot()["model_flops_total"])
            os._exit(0)
            """
        first, _ = run_client(script.format(gpus=[0]), agent)
        before = _job_counters(agent, "moving")
        second, _ = run_client(script.format(gpus=[0, 1]), agent)
        after = _job_counters(agent, "moving")
        for labels, value in before.items():
            assert after[labels] >= value
        by_gpu = {dict(labels)["gpu"]: v for labels, v in after.items()}
        assert by_gpu == {"0": pytest.approx(1e16 + 5e15), "1": pytest.approx(5e15)}
        assert sum(after.values()) == pytest.approx(first["total"] + second["total"])


# --- row 6: a stray CUDA context ---------------------------------------------------------------------


def test_pid_attribution_picks_the_gpu_the_process_computes_on(tmp_path):
    gib = 1024**3
    agent = AgentProcess(fake_nvml={"devices": []}, tmp=tmp_path)
    # The trainer's pid must be in the fake's process list before the agent starts: start it first,
    # pointed at the port the agent is about to take.
    trainer = start_client(
        """
        rep = Reporter(job_id="stray", rank=0, world_size=1, flops_per_step=0.40 * 989.4e12, url=AGENT,
                       interval=0.1, max_backoff=0.2)
        start = time.time()
        while time.time() - start < 5:
            time.sleep(0.02)
            while rep.steps < (time.time() - start):
                rep.step()
        rep.flush()
        emit(stats=rep.stats)
        """,
        agent,
    )
    agent.fake_nvml = {
        "devices": [
            {"processes": [[trainer.pid, gib // 2]]},  # a stray context: torch.cuda on device 0
            {"processes": [[trainer.pid, 38 * gib]]},  # where it trains
        ]
    }
    with agent:
        result, _ = finish_client(trainer)
        assert result["stats"]["posts_ok"] > 0
        (rank,) = agent.jobs()["stray"]["ranks"]
        assert rank["attributed_by"] == "pid"
        assert [g["index"] for g in rank["gpus"]] == [1]
        assert "stray" in rank["attribution"] and "GPU 0" in rank["attribution"]
        assert rank["mfu"] == pytest.approx(0.40, rel=0.02)
        assert agent.jobs()["stray"]["mfu"] == pytest.approx(0.40, rel=0.02)
        gpus = {dict(k)["gpu"] for k in agent.series("mfu_job_model_flops_total", job_id="stray")}
        assert gpus == {"1"}


# --- row 7: FP8 mixed precision --------------------------------------------------------------------


def test_fp8_and_bf16_flops_are_each_measured_against_their_own_peak():
    fp8_rate, bf16_rate = 0.30 * H100_SXM_FP8, 0.10 * H100_SXM_BF16  # per second of training
    with AgentProcess("--simulate", "1xNVIDIA H100 80GB HBM3", "--interval", "0.2") as agent:
        result, _ = run_client(
            f"""
            rep = Reporter(job_id="te", rank=0, world_size=1, url=AGENT, interval=0.1, gpus=[0],
                           flops_per_step={{"fp8": {fp8_rate!r}, "bf16": {bf16_rate!r}}})
            start = time.monotonic()
            for i in range(1, 4):   # one step a second, on a steady beat
                time.sleep(max(0.0, start + i - time.monotonic()))
                rep.step()
            rep.flush()
            emit(snapshot=rep.snapshot())
            """,
            agent,
        )
        assert result["snapshot"]["dtype"] == "fp8"  # the precision: the fastest dtype it computes in
        (rank,) = agent.jobs()["te"]["ranks"]
        assert rank["mfu"] == pytest.approx(0.30 + 0.10, rel=0.02)
        assert rank["mfu"] != pytest.approx((fp8_rate + bf16_rate) / H100_SXM_FP8, rel=0.02)
        parts = agent.series("mfu_job_mfu_ratio", job_id="te")
        assert {dict(k)["dtype"]: v for k, v in parts.items()} == {
            "fp8": pytest.approx(0.30, rel=0.02),
            "bf16": pytest.approx(0.10, rel=0.02),
        }
        peaks = {dict(k)["dtype"]: v for k, v in agent.series("mfu_job_peak_flops", job_id="te").items()}
        assert peaks == {"fp8": H100_SXM_FP8, "bf16": H100_SXM_BF16}


# --- rows 10 and 11: the devices the table lacked, and throttled clocks -----------------------------

ROW_10 = [
    ("NVIDIA A800-SXM4-80GB", "bf16"),
    ("NVIDIA H800", "bf16"),
    ("NVIDIA H800 PCIe", "bf16"),
    ("NVIDIA H20", "bf16"),
    ("NVIDIA L20", "bf16"),
    ("NVIDIA RTX A6000", "bf16"),
    ("NVIDIA GeForce RTX 5090", "bf16"),
    ("NVIDIA B300 SXM6 AC", "bf16"),
    ("NVIDIA GB300", "bf16"),
    ("NVIDIA A2", "bf16"),
    ("Tesla V100-SXM3-32GB", "fp16"),
]


def test_new_devices_get_an_mfu_against_their_datasheet_peak():
    from test_specs import NEW_DEVICE_DENSE_TFLOPS  # the datasheet figures, each with its sheet

    datasheet = {(name, dtype): tflops * 1e12 for name, dtype, tflops in NEW_DEVICE_DENSE_TFLOPS}
    spec = ",".join(f"1x{name}" for name, _ in ROW_10)
    with AgentProcess("--simulate", spec, "--interval", "0.2") as agent:
        script = "reporters = []\n"
        for gpu, (name, dtype) in enumerate(ROW_10):
            flops = 0.40 * datasheet[(name, dtype)]  # 40% of the peak, one step a second
            script += (
                f"reporters.append(Reporter(job_id='row10-{gpu}', rank=0, world_size=1, url=AGENT, "
                f"interval=0.1, gpus=[{gpu}], dtype={dtype!r}, flops_per_step={flops!r}))\n"
            )
        script += """
start = time.time()
for i in range(1, 4):
    time.sleep(max(0.0, start + i - time.time()))   # steps on a steady 1 s beat, whatever each takes
    for rep in reporters:
        rep.step()
for rep in reporters:
    rep.flush()
"""
        run_client(script, agent)
        jobs = agent.jobs()
        for gpu, (name, dtype) in enumerate(ROW_10):
            (rank,) = jobs[f"row10-{gpu}"]["ranks"]
            assert rank["gpus"][0]["model"] == name
            assert rank["gpus"][0]["peak_flops"] == {dtype: pytest.approx(datasheet[(name, dtype)])}
            assert rank["mfu"] == pytest.approx(0.40, rel=0.02), name
        assert not agent.series("mfu_gpu_peak_flops_unknown")


def test_a_throttled_gpu_exports_the_peak_at_its_clock():
    h100_tensor_clock_hz = 1830e6  # NVIDIA H100 whitepaper: the SXM5 BF16 figure's boost clock
    with AgentProcess("--simulate", "2xNVIDIA H100 80GB HBM3", "--fault", "throttle:0") as agent:
        text_clock = agent.series("mfu_gpu_sm_clock_hertz")
        clocks = {dict(k)["gpu"]: v for k, v in text_clock.items()}
        peaks = {dict(k)["gpu"]: v for k, v in agent.series("mfu_gpu_clock_peak_flops", dtype="bf16").items()}
        datasheet = {dict(k)["gpu"]: v for k, v in agent.series("mfu_gpu_peak_flops", dtype="bf16").items()}
        assert datasheet == {"0": H100_SXM_BF16, "1": H100_SXM_BF16}
        for gpu in ("0", "1"):
            assert peaks[gpu] == pytest.approx(H100_SXM_BF16 * clocks[gpu] / h100_tensor_clock_hz, rel=1e-3)
        assert clocks["0"] < clocks["1"] and peaks["0"] < H100_SXM_BF16 * 0.9  # throttled: lost to clocks
