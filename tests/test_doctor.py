"""`mfu-agent doctor` as a real subprocess, with tests/fakenvml.py as libnvidia-ml in several driver
states (tests/fake_nvml_agent.py), against real sockets, files and processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
A100 = {
    "name": "NVIDIA A100-SXM4-80GB",
    "architecture": pynvml.NVML_DEVICE_ARCH_AMPERE,
    "gpm_supported": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A node the host checks pass on: a cgroup v2 root, a listening kubelet socket, a free port."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cgroup.controllers").write_text("cpu memory pids\n")
    kubelet = tmp_path / "kubelet.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(kubelet))
    server.listen(8)
    try:
        yield {"tmp": tmp_path, "cgroup": cgroup, "kubelet": kubelet, "port": free_port()}
    finally:
        server.close()


def doctor(
    node: dict[str, Any], config: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    """Runs doctor --json; (exit status, the checks, stderr)."""
    path = node["tmp"] / "nvml.json"
    path.write_text(json.dumps(config))
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MFU_AGENT_") and k != "KUBERNETES_SERVICE_HOST"
    }
    flags = [
        "--listen",
        f"127.0.0.1:{node['port']}",
        "--cgroup-root",
        str(node["cgroup"]),
        "--kubelet-socket",
        str(node["kubelet"]),
        *args,
    ]
    proc = subprocess.run(
        [sys.executable, str(TESTS / "fake_nvml_agent.py"), str(path), "doctor", "--json", *flags],
        env={**base, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(proc.stdout)
    assert report["exit_status"] == proc.returncode
    return proc.returncode, report["checks"], proc.stderr


def check(checks: list[dict[str, Any]], name: str, gpu: int | None = None) -> dict[str, Any]:
    found = [c for c in checks if c["name"] == name and c["gpu"] == gpu]
    assert len(found) == 1, (name, gpu, checks)
    return found[0]


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_healthy_h100s_pass_every_check(node: dict[str, Any], sleeper: int):
    config = {"devices": [{"processes": [[sleeper, 1 << 30]]}, {}], "driver_version": "555.42.06"}
    code, checks, stderr = doctor(node, config)
    assert code == 0, checks
    assert {c["status"] for c in checks} == {"ok"}, [c for c in checks if c["status"] != "ok"]
    assert "driver 555.42.06" in check(checks, "nvml")["message"]
    for gpu in (0, 1):
        assert "H100" in check(checks, "peak", gpu)["message"]
        assert check(checks, "gpm", gpu)["message"].startswith("GPM answers")
    assert "1 of 1 GPU process(es) visible" in check(checks, "processes")["message"]
    assert "cgroup v2" in check(checks, "cgroup")["message"]
    assert "accepts connections" in check(checks, "kubelet-socket")["message"]
    assert check(checks, "listen")["message"] == f"127.0.0.1:{node['port']} is free"
    assert stderr == "", "the checks say everything; no log lines besides them"


def test_each_gpm_state_gets_its_own_line_and_fix(node: dict[str, Any]):
    config = {
        "devices": [
            {},
            {"gpm_error": pynvml.NVML_ERROR_NO_PERMISSION},
            {"gpm_error": pynvml.NVML_ERROR_IN_USE},
            A100,
            {"name": "NVIDIA Imaginary X9"},
        ]
    }
    code, checks, stderr = doctor(node, config)
    assert code == 0, "GPM and unknown models take features away, they do not block the agent"
    assert stderr == "", "the agent's GPM warnings would repeat the lines"
    assert check(checks, "gpm", 0)["status"] == "ok"
    refused = check(checks, "gpm", 1)
    assert refused["status"] == "warn"
    assert "NO_PERMISSION" in refused["message"] and "no_permission" in refused["message"]
    assert "CAP_SYS_ADMIN" in refused["fix"] and "NVreg_RestrictProfilingToAdminUsers" in refused["fix"]
    in_use = check(checks, "gpm", 2)
    assert in_use["status"] == "warn" and "another tool holds the performance counters" in in_use["message"]
    assert "DCGM" in in_use["fix"]
    unsupported = check(checks, "gpm", 3)
    assert unsupported["status"] == "warn" and "not_supported" in unsupported["message"]
    assert "Hopper" in unsupported["fix"]
    assert check(checks, "peak", 3)["status"] == "ok", "the A100 is in the peak table"
    unknown = check(checks, "peak", 4)
    assert unknown["status"] == "warn" and "NVIDIA Imaginary X9" in unknown["message"]
    assert "--peak-flops-file" in unknown["fix"]
    # Per GPU, its lines stay together: identity, peak, GPM.
    order = [(c["gpu"], c["name"]) for c in checks if c["gpu"] is not None]
    assert order == [(i, n) for i in range(5) for n in ("gpu", "peak", "gpm")]


def test_a_gpu_in_mig_mode_is_checked_on_a_gpu_instance(node: dict[str, Any]):
    mig = [{"profile": "3g.40gb", "gpu_instance_id": 2, "sm_count": 60}]
    config = {
        "devices": [
            {"mig_mode": 1, "mig_devices": mig},
            {"mig_mode": 1, "mig_devices": mig, "gpm_error": pynvml.NVML_ERROR_NO_PERMISSION},
            {"mig_mode": 1},
        ]
    }
    code, checks, _ = doctor(node, config)
    assert code == 0
    assert check(checks, "gpu", 0)["message"].endswith("MIG mode")
    ok = check(checks, "gpm", 0)
    assert ok["status"] == "ok" and "on GPU instance 2 (MIG mode)" in ok["message"]
    refused = check(checks, "gpm", 1)
    assert refused["status"] == "warn"
    assert "samples on GPU instance 2 (MIG mode): NO_PERMISSION" in refused["message"]
    assert check(checks, "gpm", 2)["status"] == "skip", "no MIG device: nothing to sample"


def test_a_peak_flops_file_makes_an_unknown_model_known(node: dict[str, Any]):
    peaks = node["tmp"] / "peaks.json"
    peaks.write_text(json.dumps({"NVIDIA Imaginary X9": {"bf16": 500e12}}))
    code, checks, _ = doctor(
        node, {"devices": [{"name": "NVIDIA Imaginary X9"}]}, "--peak-flops-file", str(peaks)
    )
    assert code == 0
    assert check(checks, "peak", 0)["status"] == "ok"
    assert check(checks, "peak-flops-file")["status"] == "ok"


def test_a_bad_peak_flops_file_fails(node: dict[str, Any]):
    peaks = node["tmp"] / "peaks.json"
    peaks.write_text("{not json")
    code, checks, _ = doctor(node, {"devices": [{}]}, "--peak-flops-file", str(peaks))
    assert code == 1
    assert "not valid JSON" in check(checks, "peak-flops-file")["message"]


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"library": False, "devices": []}, "libnvidia-ml.so.1"),
        ({"init_error": pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "devices": [{}]}, "kernel driver is not loaded"),
    ],
    ids=["no-library", "driver-not-loaded"],
)
def test_no_driver_fails_and_says_why(node: dict[str, Any], config: dict[str, Any], said: str):
    code, checks, _ = doctor(node, config)
    assert code == 1
    nvml = check(checks, "nvml")
    assert nvml["status"] == "fail" and said in nvml["message"]
    assert "NVIDIA runtime" in nvml["fix"]
    assert [c["name"] for c in checks] == ["nvml", "cgroup", "kubelet-socket", "listen", "report-token"], (
        "the host checks still run"
    )


def test_no_gpu_fails(node: dict[str, Any]):
    code, checks, _ = doctor(node, {"devices": []})
    assert code == 1
    assert check(checks, "gpus")["status"] == "fail"


def test_processes_outside_the_pid_namespace_are_named(node: dict[str, Any], sleeper: int):
    proc = node["tmp"] / "proc"
    (proc / "driver" / "nvidia").mkdir(parents=True)
    (proc / "driver" / "nvidia" / "params").write_text(
        "ResmanDebugLevel: 4294967295\nRmProfilingAdminOnly: 1\n"
    )
    config = {
        "devices": [
            {
                "processes": [[sleeper, 1 << 30], [sleeper + 100000, None]],
                "gpm_error": pynvml.NVML_ERROR_NO_PERMISSION,
            }
        ]
    }
    code, checks, _ = doctor(node, config, "--proc-root", str(proc))
    assert code == 0
    assert (
        "NO_PERMISSION, the nvidia module has RmProfilingAdminOnly: 1" in check(checks, "gpm", 0)["message"]
    )
    processes = check(checks, "processes")
    assert processes["status"] == "warn"
    assert (
        f"none of the 2 GPU process(es) NVML lists (PIDs {sleeper}, {sleeper + 100000})"
        in processes["message"]
    )
    assert "hostPID: true" in processes["fix"]


def test_no_gpu_process_skips_the_visibility_check(node: dict[str, Any]):
    code, checks, _ = doctor(node, {"devices": [{}]})
    assert code == 0
    assert check(checks, "processes")["status"] == "skip"


def test_a_taken_port_and_an_unreadable_token_block_the_agent(node: dict[str, Any]):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node["port"]))
        taken.listen(1)
        code, checks, _ = doctor(node, {"devices": [{}]}, "--report-token-file", str(node["tmp"] / "missing"))
    assert code == 1
    listen = check(checks, "listen")
    assert listen["status"] == "fail" and "taken by another program" in listen["message"]
    token = check(checks, "report-token")
    assert token["status"] == "fail" and "cannot read --report-token-file" in token["message"]


def test_an_empty_token_file_fails(node: dict[str, Any]):
    token = node["tmp"] / "token"
    token.write_text("\n")
    code, checks, _ = doctor(node, {"devices": [{}]}, "--report-token-file", str(token))
    assert code == 1
    assert "is empty" in check(checks, "report-token")["message"]


def test_a_reachable_listen_address_needs_a_token(node: dict[str, Any]):
    code, checks, _ = doctor(node, {"devices": [{}]}, "--listen", f"0.0.0.0:{node['port']}")
    assert code == 1
    token = check(checks, "report-token")
    assert token["status"] == "fail" and "set --report-token-file" in token["message"]
    token_file = node["tmp"] / "token"
    token_file.write_text("s3cret\n")
    code, checks, _ = doctor(
        node, {"devices": [{}]}, "--listen", f"0.0.0.0:{node['port']}", "--report-token-file", str(token_file)
    )
    assert code == 0
    assert check(checks, "report-token")["status"] == "ok"


def test_kubelet_socket_missing_on_kubernetes_warns_and_a_plain_file_is_no_socket(node: dict[str, Any]):
    missing = str(node["tmp"] / "no.sock")
    code, checks, _ = doctor(node, {"devices": [{}]}, "--kubelet-socket", missing)
    assert check(checks, "kubelet-socket")["status"] == "skip", "off Kubernetes a missing socket is normal"
    code, checks, _ = doctor(
        node, {"devices": [{}]}, "--kubelet-socket", missing, env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    )
    kubelet = check(checks, "kubelet-socket")
    assert code == 0 and kubelet["status"] == "warn"
    assert "pod-resources" in kubelet["fix"]
    plain = node["tmp"] / "plain"
    plain.write_text("")
    _, checks, _ = doctor(node, {"devices": [{}]}, "--kubelet-socket", str(plain))
    assert "is not a socket" in check(checks, "kubelet-socket")["message"]


def test_text_output_is_one_line_per_check_with_the_fix(node: dict[str, Any], tmp_path: Path):
    config = tmp_path / "nvml.json"
    config.write_text(json.dumps({"devices": [{"gpm_error": pynvml.NVML_ERROR_NO_PERMISSION}]}))
    proc = subprocess.run(
        [
            sys.executable,
            str(TESTS / "fake_nvml_agent.py"),
            str(config),
            "doctor",
            "--listen",
            f"127.0.0.1:{node['port']}",
            "--cgroup-root",
            str(node["cgroup"]),
            "--kubelet-socket",
            str(node["kubelet"]),
        ],
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    gpm = [line for line in lines if line.split()[1:2] == ["gpm[0]"]]
    assert len(gpm) == 1 and gpm[0].startswith("warn ") and " -- fix: " in gpm[0]
    assert lines[-1] == "doctor: 0 failed, 1 warning(s); exit status 0"
