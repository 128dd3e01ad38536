"""A real mfu-agent process (simulated GPUs, or NVML served by tests/fakenvml.py) and training-side
client processes, for tests that must go through real processes and real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import free_port
from metrics_text import samples

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class AgentProcess:
    def __init__(
        self,
        *args: str,
        fake_nvml: dict[str, Any] | None = None,
        tmp: Path | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        """`nofile`: the (soft, hard) RLIMIT_NOFILE the agent starts with."""
        self.args = list(args)
        self.fake_nvml = fake_nvml
        self.tmp = tmp
        self.nofile = nofile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.output: str | None = None  # everything it printed, once stopped
        self.control_path: Path | None = None  # the fake NVML's control file (tests/fake_nvml_agent.py)
        self._seq = 0

    def start(self) -> AgentProcess:
        common = ["--listen", f"127.0.0.1:{self.port}", "--log-level", "info", *self.args]
        if self.fake_nvml is not None:
            assert self.tmp is not None
            config = self.tmp / f"fake-nvml-{self.port}.json"
            self.control_path = self.tmp / f"fake-nvml-{self.port}.control"
            config.write_text(json.dumps({**self.fake_nvml, "control": str(self.control_path)}))
            cmd = [sys.executable, str(TESTS / "fake_nvml_agent.py"), str(config), "run", "--backend", "nvml"]
        else:
            cmd = [sys.executable, "-m", "mfu_agent.cli", "run", "--backend", "simulated"]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
        nofile = self.nofile

        def limit_open_files() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [*cmd, *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=limit_open_files if nofile is not None else None,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("agent not ready")

    def kill9(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate(timeout=10)
        return out

    def stop(self) -> str:
        """SIGTERM (unless it exited), then the process's whole output; again on later calls."""
        if self.proc is None:
            return ""
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.output = out
        return self.output

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.output = self.stop()  # everything the agent wrote

    def nvml(self, action: str, timeout: float = 15, **args: Any) -> dict[str, Any]:
        """Drives the agent's fake NVML (unload, reload, hang, release, add_device, remove_device; see
        tests/fake_nvml_agent.py) and waits until the command is applied; returns the fake's status."""
        assert self.control_path is not None, "only for an agent started with fake_nvml"
        self._seq += 1
        with self.control_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"seq": self._seq, "action": action, **args}) + "\n")
        seq = self._seq
        status = self.nvml_status(lambda s: s["applied"] >= seq, timeout)
        assert not status["errors"], status["errors"]
        return status

    def nvml_status(self, until: Any = None, timeout: float = 15) -> dict[str, Any]:
        """The fake NVML's status file, once `until(status)` holds (waiting at most `timeout` s)."""
        assert self.control_path is not None, "only for an agent started with fake_nvml"
        path = self.control_path.with_name(self.control_path.name + ".status")
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                status = None
            if status is not None and (until is None or until(status)):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"fake NVML status not reached within {timeout} s: {status}")
            time.sleep(0.02)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {j["job_id"]: j for j in httpx.get(self.url + "/v1/jobs", timeout=10).json()["jobs"]}

    def series(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """{labels: value} of every sample called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {ls: v for (n, ls), v in samples(self.metrics()).items() if n == name and wanted <= ls}


# Prepended to every client script: the real client, with a sender clock that can run faster than the
# wall clock, so a 60-second training step takes half a second of test time. The agent computes rates
# on the sender's timestamps, so the MFU it derives is the one of the simulated pace.
CLIENT_PRELUDE = """
import json, os, sys, time, logging
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
import mfu_agent.client._reporter as _reporter
from mfu_agent.client import Reporter
SPEED = float(os.environ.get("SENDER_CLOCK_SPEED", "1"))
class _SenderClock:
    def __init__(self):
        self.t0, self.m0 = time.time(), time.monotonic()
    def time(self):
        return self.t0 + (time.monotonic() - self.m0) * SPEED
    def __getattr__(self, name):
        return getattr(time, name)
_reporter.time = _SenderClock()
AGENT = os.environ["AGENT_URL"]
def emit(**result):
    print("RESULT " + json.dumps(result), flush=True)
"""


# Appended to every client script: the process ends without the exit hook, whose final report would make
# the agent drop the rank at once (tests read a rank after its client ended; a script that wants the
# final report calls close() itself).
CLIENT_EPILOGUE = """
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def run_client(
    script: str,
    agent: AgentProcess,
    *,
    speed: float = 1.0,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[dict[str, Any], str]:
    proc = start_client(script, agent, speed=speed, env=env)
    return finish_client(proc, timeout)


def start_client(
    script: str, agent: AgentProcess, *, speed: float = 1.0, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    base = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MFU_JOB_ID")
    }
    full_env = {
        **base,
        "PYTHONPATH": str(ROOT),
        "AGENT_URL": agent.url,
        "SENDER_CLOCK_SPEED": str(speed),
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT_PRELUDE + textwrap.dedent(script) + CLIENT_EPILOGUE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def finish_client(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{out}\n{err}"
    results = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    return (results[-1] if results else {}), err
