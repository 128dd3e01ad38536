"""The mfu-agent command as a user runs it: real processes, real ports, promtool on the real output."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from agent_process import TESTS
from conftest import free_port
from fakenvml import FakeNvml

from mfu_agent import __version__
from mfu_agent.cli import (
    DEMO_FAULTS,
    DEMO_RANKS,
    DEMO_SPEC,
    build_parser,
    make_backend,
    parse_listen,
    version_text,
)
from mfu_agent.cli.options import EXIT_LISTEN, EXIT_OK, EXIT_USAGE, BackendError
from mfu_agent.demo import DEMO_JOB_ID, DEMO_MIG_JOB_ID, SyntheticJob
from mfu_agent.gpu.model import Snapshot
from mfu_agent.gpu.peaks import device_peaks
from mfu_agent.specs import PeakTable


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool is missing: `make test` installs Debian's prometheus package "
        "(scripts/apt-install.sh prometheus)"
    )
    return path


TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .")


def default_sigint() -> None:
    # A shell running tests in the background ignores SIGINT, and children inherit that: the agent
    # must meet Ctrl-C as it does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mfu_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=default_sigint,
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


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
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
    # A graceful shutdown on SIGTERM, and a clean exit: uvicorn's own re-raising of the signal is off.
    assert proc.returncode == EXIT_OK, output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output and "WARNING" not in output
    # One format for the agent's lines and uvicorn's.
    lines = output.splitlines()
    assert all(TEXT_LINE.match(line) for line in lines), output
    assert any(" mfu_agent: " in line for line in lines) and any(" uvicorn.error: " in line for line in lines)


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
            "MFU_AGENT_LOG_FORMAT": "json",
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
        # Ctrl-C: a graceful stop, no KeyboardInterrupt traceback, status 0.
        output = stop(proc, signal.SIGINT)
    assert proc.returncode == EXIT_OK, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    # --log-format json: every line one JSON object, the agent's and uvicorn's alike.
    records = [json.loads(line) for line in output.splitlines()]
    assert all(set(r) == {"time", "level", "logger", "message"} for r in records), records
    assert {"mfu_agent", "uvicorn.error"} <= {r["logger"] for r in records}
    assert any(r["message"] == "Application shutdown complete." for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["time"]) for r in records)


def test_a_busy_port_is_one_line_and_its_own_exit_status():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mfu_agent.cli",
                "run",
                "--backend",
                "simulated",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == EXIT_LISTEN, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mfu-agent: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


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
        (
            ["run", "--backend", "simulated", "--simulate", "4xFoo"],
            "unknown GPU model 'Foo': expected a name NVML reports, e.g. 'NVIDIA H100 80GB HBM3', for one of "
            "H100 NVL, H100 PCIe, H100 SXM,",
        ),
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MFU_AGENT_INTERVAL": "abc"}, "mfu-agent run: error: MFU_AGENT_INTERVAL='abc': expected a number"),
        ({"MFU_AGENT_MAX_RANKS": "0"}, "mfu-agent run: error: MFU_AGENT_MAX_RANKS='0': must be >= 1"),
        (
            {"MFU_AGENT_BACKEND": "cuda"},
            "error: MFU_AGENT_BACKEND='cuda': expected one of auto, nvml, simulated",
        ),
        ({"MFU_AGENT_LOG_FORMAT": "xml"}, "error: MFU_AGENT_LOG_FORMAT='xml': expected one of text, json"),
        ({"MFU_AGENT_DOCS": "maybe"}, "error: MFU_AGENT_DOCS='maybe': expected one of 1, true, yes, on, 0,"),
        ({"MFU_AGENT_LISTEN": "nope"}, "error: MFU_AGENT_LISTEN='nope': expected HOST:PORT"),
        # Checked after parsing, and still named: the message leads with the variable.
        (
            {"MFU_AGENT_BACKEND": "simulated", "MFU_AGENT_SIMULATE": "4xFoo"},
            "mfu-agent: error: MFU_AGENT_SIMULATE: bad --simulate spec '4xFoo': unknown GPU model 'Foo'",
        ),
        (
            {"MFU_AGENT_BACKEND": "simulated", "MFU_AGENT_FAULT": "lost:1,melt:1"},
            "mfu-agent: error: MFU_AGENT_FAULT: bad --fault 'melt:1'",
        ),
        (
            {"MFU_AGENT_BACKEND": "simulated", "MFU_AGENT_REPORT_TOKEN_FILE": "/nonexistent/token"},
            "mfu-agent: error: MFU_AGENT_REPORT_TOKEN_FILE: cannot read --report-token-file",
        ),
    ],
)
def test_bad_environment_variables_are_named(env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MFU_AGENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "argument --" not in result.stderr, "the variable is named, not the flag it stands for"


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


def test_version_names_the_driver_or_its_absence():
    result = subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"mfu-agent {__version__}"
    # This machine's driver, or why there is none (most test machines have no GPU).
    assert re.fullmatch(r"NVIDIA driver \S+, NVML \S+|NVML unavailable: .+", second), second


def test_version_reads_driver_and_nvml_versions_through_nvml(tmp_path):
    config = tmp_path / "nvml.json"
    config.write_text(json.dumps({"devices": [{}]}))
    result = subprocess.run(
        [sys.executable, str(TESTS / "fake_nvml_agent.py"), str(config), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"mfu-agent {__version__}",
        "NVIDIA driver 550.54.15, NVML 12.550.54.15",
    ]


def test_version_without_a_loaded_driver_says_so():
    import pynvml

    with FakeNvml.h100s(1, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).installed():
        text = version_text()
    assert text.splitlines()[1] == (
        "NVML unavailable: the NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded)"
    )


def test_listen_forms():
    assert parse_listen("0.0.0.0:8469") == ("0.0.0.0", 8469)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":8469") == ("0.0.0.0", 8469)


def test_environment_supplies_every_default(monkeypatch):
    for name in [k for k in os.environ if k.startswith("MFU_AGENT_")]:
        monkeypatch.delenv(name)
    args = build_parser().parse_args(["run"])
    assert (args.interval, args.listen, args.fault, args.docs, args.state_dir) == (
        1.0,
        ("127.0.0.1", 8469),
        [],
        False,
        None,
    )
    assert args.from_env == {}
    monkeypatch.setenv("MFU_AGENT_INTERVAL", "2.5")
    monkeypatch.setenv("MFU_AGENT_MFU_WINDOW", "120")
    monkeypatch.setenv("MFU_AGENT_RANK_TTL", "30")
    monkeypatch.setenv("MFU_AGENT_FAULT", "lost:1, ecc:0")
    monkeypatch.setenv("MFU_AGENT_DOCS", "Yes")
    monkeypatch.setenv("MFU_AGENT_STATE_DIR", "")  # empty: as if unset
    args = build_parser().parse_args(["run"])
    assert (args.interval, args.mfu_window, args.rank_ttl) == (2.5, 120.0, 30.0)
    assert (args.fault, args.docs, args.state_dir) == (["lost:1", "ecc:0"], True, None)
    assert args.from_env["--interval"] == "MFU_AGENT_INTERVAL" and "--state-dir" not in args.from_env
    # The command line wins, also over a repeatable flag's list.
    args = build_parser().parse_args(["run", "--interval", "3", "--fault", "throttle:0"])
    assert (args.interval, args.fault) == (3.0, ["throttle:0"])
    assert "--interval" not in args.from_env and "--fault" not in args.from_env


def test_a_simulated_gpu_model_must_have_a_known_peak():
    with pytest.raises(BackendError, match=r"unknown GPU model 'NVIDIA Imaginary X9'.* H100 SXM, "):
        make_backend("simulated", "1xNVIDIA Imaginary X9", [])
    # A device name --peak-flops-file adds can be simulated.
    backend = make_backend(
        "simulated", "2xNVIDIA Imaginary X9", [], overrides={"NVIDIA Imaginary X9": {"bf16": 1e15}}
    )
    assert [gpu.name for gpu in backend.devices()] == ["NVIDIA Imaginary X9"] * 2
