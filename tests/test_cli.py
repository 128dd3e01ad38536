"""The mfu-agent command as a user runs it: real processes, real ports, promtool on the real output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from conftest import free_port

from mfu_agent import __version__
from mfu_agent.cli import DEMO_FAULTS, DEMO_RANKS, DEMO_SPEC, build_parser, make_backend, parse_listen
from mfu_agent.demo import DEMO_JOB_ID, DEMO_MIG_JOB_ID, SyntheticJob
from mfu_agent.gpu.model import Snapshot
from mfu_agent.gpu.peaks import device_peaks
from mfu_agent.specs import PeakTable


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool is missing: `make test` installs Debian's prometheus package "
        "(scripts/install-prometheus.sh)"
    )
    return path


def start_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mfu_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_metrics(url: str, proc: subprocess.Popen, within: float) -> tuple[str, float]:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited early: {proc.stdout.read()}")
        try:
            response = httpx.get(url + "/metrics", timeout=1)
            if response.status_code == 200 and "mfu_gpu_up" in response.text:
                return response.text, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no /metrics within {within} s")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_demo_serves_eight_gpus_one_in_mig_mode_and_promtool_is_clean():
    port = free_port()
    proc = start_agent("demo", "--listen", f"127.0.0.1:{port}")
    try:
        # The issue asks for /metrics within 3 s of start; the bound here is generous because CI
        # machines are shared, and the measured time is reported in docs/performance.md instead.
        text, _ = wait_for_metrics(f"http://127.0.0.1:{port}", proc, within=30)
        # 8 GPUs, and the 4 MIG devices of GPU 7.
        ups = [line for line in text.splitlines() if line.startswith("mfu_gpu_up{")]
        assert sum('uuid="GPU-' in line for line in ups) == 8
        mig_ups = [line for line in ups if 'uuid="MIG-' in line]
        assert len(mig_ups) == 4 and all('gpu="7"' in line for line in mig_ups)
        deadline = time.monotonic() + 30

        def main_job_mfu(text: str) -> list[str]:
            return [
                line
                for line in text.splitlines()
                if line.startswith("mfu_job_mfu_ratio{") and f'job_id="{DEMO_JOB_ID}"' in line
            ]

        # Each rank's reporter posts on its own 2 s clock, so their MFU appears within a moment of each other.
        while len(main_job_mfu(text)) < DEMO_RANKS and time.monotonic() < deadline:
            time.sleep(0.5)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        main = main_job_mfu(text)
        assert len(main) == DEMO_RANKS, "the synthetic job reports MFU for its 6 ranks"
        assert {line.split('gpu="')[1].split('"')[0] for line in main} == {"0", "1", "2", "3", "4", "5"}
        # The small job reports on GPU 7's first MIG device, by its MIG UUID.
        jobs = {}
        while DEMO_MIG_JOB_ID not in jobs and time.monotonic() < deadline:
            jobs = {j["job_id"]: j for j in httpx.get(f"http://127.0.0.1:{port}/v1/jobs").json()["jobs"]}
            time.sleep(0.1)
        (rank,) = jobs[DEMO_MIG_JOB_ID]["ranks"]
        (gpu,) = rank["gpus"]
        assert gpu["index"] == 7 and gpu["uuid"].startswith("MIG-") and rank["attributed_by"] == "gpus"
        assert any(f'uuid="{gpu["uuid"]}"' in line for line in mig_ups), "the slice the job reports on"
        # GPU 6 is time-shared by two processes, each with its own SM utilisation.
        assert text.count('mfu_gpu_process_sm_utilization_ratio{gpu="6"') == 2
        check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout == "" and check.stderr == "", (
            check.stdout + check.stderr
        )
        om = httpx.get(
            f"http://127.0.0.1:{port}/metrics",
            headers={"accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
    finally:
        output = stop(proc)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status says so.
    assert proc.returncode in (0, -15), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output and "WARNING" not in output


def test_run_simulated_with_faults_and_env_flags():
    port = free_port()
    proc = start_agent(
        "run",
        env={
            "MFU_AGENT_LISTEN": f"127.0.0.1:{port}",
            "MFU_AGENT_BACKEND": "simulated",
            "MFU_AGENT_SIMULATE": "2xNVIDIA A100-SXM4-80GB",
            "MFU_AGENT_FAULT": "lost:1",
            "MFU_AGENT_NODE_NAME": "node-a",
        },
    )
    try:
        text, _ = wait_for_metrics(f"http://127.0.0.1:{port}", proc, within=30)
        assert 'mfu_gpu_up{gpu="1"' in text and 'mfu_gpu_up{gpu="0"' in text
        assert 'sm_activity_source="none"' in text and "mfu_gpu_sm_active_ratio{" not in text
        assert 'node="node-a"' in text
        gpus = httpx.get(f"http://127.0.0.1:{port}/v1/gpus").json()["gpus"]
        assert [g["up"] for g in gpus] == [True, False]
    finally:
        stop(proc)


def test_demo_wiring_puts_the_small_job_on_a_mig_device_and_the_main_job_on_whole_gpus():
    backend = make_backend("simulated", DEMO_SPEC, list(DEMO_FAULTS), seed=42)
    snapshot = Snapshot(0.0, backend.driver_version(), tuple(backend.read_all()), 0.0)
    whole = [g for g in snapshot.gpus if not g.is_mig]
    assert [g.index for g in whole] == list(range(8))
    assert [g.mig_mode for g in whole] == [False] * 7 + [True]
    slices = [g for g in snapshot.gpus if g.is_mig]
    assert [(g.index, g.identity.mig.profile) for g in slices] == [
        (7, "3g.40gb"),
        (7, "2g.20gb"),
        (7, "1g.10gb"),
        (7, "1g.10gb"),
    ]
    assert len(snapshot.gpus[6].processes) == 2, "GPU 6 is time-shared"
    assert snapshot.gpus[5].activity.sm_active < 0.2, "GPU 5 is busy doing nothing"

    job = SyntheticJob("http://127.0.0.1:1", backend.devices(), DEMO_RANKS, {5})
    main = [r for r in job.ranks if r.job_id == DEMO_JOB_ID]
    assert [r.gpu for r in main] == list(range(6)) and [r.slow for r in main] == [False] * 5 + [True]
    assert all(r.world_size == 6 and r.peak == 989.4e12 for r in main)
    (small,) = [r for r in job.ranks if r.job_id == DEMO_MIG_JOB_ID]
    device = snapshot.by_uuid[small.gpu]
    assert device is slices[0] and small.world_size == 1
    assert (
        small.peak == device_peaks(device.identity, PeakTable())["bf16"] == pytest.approx(989.4e12 * 60 / 132)
    )
    assert 0.2 < small.mfu < 0.5


def test_demo_job_refuses_gpus_in_mig_mode():
    backend = make_backend("simulated", DEMO_SPEC, [], seed=1)
    with pytest.raises(ValueError, match=r"GPU\(s\) \[7\]"):
        SyntheticJob("http://127.0.0.1:1", backend.devices(), 8, set())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--listen", "nope"], "HOST:PORT"),
        (["run", "--listen", "127.0.0.1:70000"], "HOST:PORT"),
        (["run", "--interval", "0.01"], ">= 0.2"),
        (["run", "--interval", "abc"], "expected a number"),
        (["run", "--backend", "cuda"], "invalid choice"),
        (["run", "--backend", "simulated", "--simulate", "eight H100s"], "COUNTxDEVICE NAME"),
        (
            ["run", "--backend", "simulated", "--simulate", "1xNVIDIA H100 80GB HBM3[mig=5g.50gb]"],
            "unknown MIG profile '5g.50gb'",
        ),
        (["run", "--backend", "simulated", "--simulate", "1xNVIDIA L4[mig=1g.5gb]"], "NVIDIA L4 has no MIG"),
        (["run", "--backend", "simulated", "--fault", "lost:9"], "no simulated GPU 9"),
        (["run", "--backend", "simulated", "--fault", "melt:1"], "bad --fault"),
        (
            ["run", "--backend", "simulated", "--report-token-file", "/nonexistent/token"],
            "--report-token-file",
        ),
        (["run", "--backend", "simulated", "--max-ranks", "0"], ">= 1"),
    ],
)
def test_bad_flags_exit_non_zero_with_a_message(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_peak_file_is_refused(tmp_path):
    bad = tmp_path / "peaks.json"
    bad.write_text('{"NVIDIA H100 80GB HBM3": {"bf16": -1}}')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfu_agent.cli",
            "run",
            "--backend",
            "simulated",
            "--peak-flops-file",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "peak-flops-file" in result.stderr


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == f"mfu-agent {__version__}"


def test_listen_forms():
    assert parse_listen("0.0.0.0:8469") == ("0.0.0.0", 8469)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":8469") == ("0.0.0.0", 8469)


def test_environment_supplies_every_default(monkeypatch):
    monkeypatch.setenv("MFU_AGENT_INTERVAL", "2.5")
    monkeypatch.setenv("MFU_AGENT_MFU_WINDOW", "120")
    monkeypatch.setenv("MFU_AGENT_RANK_TTL", "30")
    args = build_parser().parse_args(["run"])
    assert (args.interval, args.mfu_window, args.rank_ttl) == (2.5, 120.0, 30.0)
    assert build_parser().parse_args(["run", "--interval", "3"]).interval == 3.0
