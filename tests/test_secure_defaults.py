"""Secure by default, through the real `mfu-agent` command (docs/reliability.md): no reports without a
token on an address other machines can reach unless the operator says so, and no page that loads code
from a CDN unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from agent_process import AgentProcess
from conftest import free_port

REPORT = {"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": 1.0}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MFU_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**full_env, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["run", "--backend", "simulated", "--listen", "0.0.0.0:{port}"], {}),
        (["run", "--backend", "simulated", "--listen", "[::]:{port}"], {}),
        (["run", "--backend", "simulated", "--listen", ":{port}"], {}),
        (["demo", "--listen", "0.0.0.0:{port}"], {}),
        # the container image's default: MFU_AGENT_LISTEN=0.0.0.0:8469
        (["run", "--backend", "simulated"], {"MFU_AGENT_LISTEN": "0.0.0.0:{port}"}),
    ],
)
def test_a_reachable_address_without_a_token_is_refused_in_one_line(args, env):
    port = str(free_port())
    result = run_cli(
        *(a.format(port=port) for a in args), env={k: v.format(port=port) for k, v in env.items()}
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    # A --listen the environment gave is named by its variable.
    source = "MFU_AGENT_LISTEN: " if "MFU_AGENT_LISTEN" in env else ""
    assert line.startswith(f"mfu-agent: error: {source}--listen ")
    assert "--report-token-file" in line and "--allow-unauthenticated-reports" in line


def test_a_bad_switch_value_in_the_environment_is_refused():
    result = run_cli(
        "run", "--backend", "simulated", env={"MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS": "maybe"}
    )
    assert result.returncode == 2
    assert "MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS='maybe'" in result.stderr
    assert "Traceback" not in result.stderr


def _on_all_addresses(*args: str) -> AgentProcess:
    agent = AgentProcess(*args)
    agent.args += ["--listen", f"0.0.0.0:{agent.port}"]  # the last --listen wins
    return agent


def test_a_token_opens_a_reachable_address_and_reports_need_it(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with _on_all_addresses("--report-token-file", str(token)) as agent:
        url = agent.url + "/v1/reports"
        assert httpx.post(url, json=REPORT, timeout=30).status_code == 401
        given = {"Authorization": "Bearer s3cret"}
        assert httpx.post(url, json=REPORT, headers=given, timeout=30).status_code == 202
    assert "WARNING" not in agent.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_explicit_opt_out_serves_without_a_token_and_says_so(how, monkeypatch):
    if how == "env":
        monkeypatch.setenv("MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS", "true")
    with _on_all_addresses(*(["--allow-unauthenticated-reports"] if how == "flag" else [])) as agent:
        assert httpx.post(agent.url + "/v1/reports", json=REPORT, timeout=30).status_code == 202
    warnings = [line for line in agent.output.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "without a token from anyone who can reach 0.0.0.0:" in warnings[0]


def test_loopback_needs_no_token_and_no_opt_out():
    with AgentProcess() as agent:  # 127.0.0.1
        assert httpx.post(agent.url + "/v1/reports", json=REPORT, timeout=30).status_code == 202
    assert "WARNING" not in agent.output


def test_interactive_api_pages_are_off_unless_asked_for():
    with AgentProcess() as agent:
        for path in ("/docs", "/redoc"):
            assert httpx.get(agent.url + path, timeout=30).status_code == 404
        assert httpx.get(agent.url + "/openapi.json", timeout=30).json()["info"]["title"] == "mfu-agent"
    with AgentProcess("--docs") as agent:
        page = httpx.get(agent.url + "/docs", timeout=30)
        assert page.status_code == 200 and "/openapi.json" in page.text
        assert httpx.get(agent.url + "/redoc", timeout=30).status_code == 200
