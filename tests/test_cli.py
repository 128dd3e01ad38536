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
from mfu_agent.cli import build_parser, parse_listen


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


def test_demo_serves_eight_gpus_and_promtool_is_clean():
    port = free_port()
    proc = start_agent("demo", "--listen", f"127.0.0.1:{port}")
    try:
        # The issue asks for /metrics within 3 s of start; the bound here is generous because CI
        # machines are shared, and the measured time is reported in docs/performance.md instead.
        text, _ = wait_for_metrics(f"http://127.0.0.1:{port}", proc, within=30)
        assert text.count("mfu_gpu_up{") == 8
        deadline = time.monotonic() + 30
        # Each rank's reporter posts on its own 2 s clock, so their MFU appears within a moment of each other.
        while text.count("mfu_job_mfu_ratio{") < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert text.count("mfu_job_mfu_ratio{") == 8, "the synthetic job reports MFU for its 8 ranks"
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--listen", "nope"], "HOST:PORT"),
        (["run", "--listen", "127.0.0.1:70000"], "HOST:PORT"),
        (["run", "--interval", "0.01"], ">= 0.2"),
        (["run", "--interval", "abc"], "expected a number"),
        (["run", "--backend", "cuda"], "invalid choice"),
        (["run", "--backend", "simulated", "--simulate", "eight H100s"], "COUNTxDEVICE NAME"),
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
