"""The package as users install it: the wheel and sdist built once (`python -m build`, as `make dist`),
then the wheel installed into fresh virtual environments both ways.

- bare (`pip install mfu-agent`): the training-side client, standard library only; installed with
  --no-index, so a dependency it declared would fail the install. The agent commands say in one line
  which extra to install.
- `mfu-agent[agent]`: its dependencies resolved by pip from the index (pip's cache makes this quick
  where `make install-test` ran before); `mfu-agent demo` serves /metrics and takes a report from the
  bare client.

The environments are made with `venv --without-pip` and filled by this interpreter's pip
(`pip --python`), so no pip is installed into them. Cost: about 5 s for the build and the bare
environment, plus the [agent] install (about 5 s with a warm pip cache, 25-40 s resolving from the
index).
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
EXTRA_LINE = "pip install 'mfu-agent[agent]'"
AGENT_DEPENDENCIES = {"nvidia-ml-py", "prometheus-client", "fastapi", "pydantic", "uvicorn", "rich"}


def clean_env() -> dict[str, str]:
    """This environment less what would make a venv's python import the source tree or read our flags."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MFU_")
    }


def run(argv: list[str | Path], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    """`python -I -c` in the venvs: isolated, so the working directory (the source tree) is not on
    sys.path and the installed wheel is what gets imported."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=clean_env(), **kwargs
    )


def make_venv(path: Path) -> Path:
    result = run([sys.executable, "-m", "venv", "--without-pip", path])
    assert result.returncode == 0, result.stderr
    return path / "bin" / "python"


def pip_install(python: Path, *args: str | Path) -> None:
    result = run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--disable-pip-version-check", *args],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it, of what the Dockerfile copies: pyproject.toml, README.md
    and mfu_agent/ (build's default: the wheel is built from the unpacked sdist)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mfu_agent", source / "mfu_agent", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    result = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def the_wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("mfu_agent-*-py3-none-any.whl")
    return wheel


@pytest.fixture(scope="module")
def bare_python(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_venv(tmp_path_factory.mktemp("bare") / "venv")
    pip_install(python, "--no-index", the_wheel(dist))
    return python


@pytest.fixture(scope="module")
def agent_python(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_venv(tmp_path_factory.mktemp("agent") / "venv")
    pip_install(python, "--prefer-binary", f"{the_wheel(dist)}[agent]")
    return python


def test_the_wheel_depends_on_nothing_and_the_agent_extra_on_the_agents_packages(dist: Path) -> None:
    wheel = the_wheel(dist)
    with zipfile.ZipFile(wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
        names = archive.namelist()
    requires = metadata.get_all("Requires-Dist") or []
    unconditional = [r for r in requires if "extra ==" not in r]
    assert unconditional == [], "a bare install must pull nothing into a training image"
    agent = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if 'extra == "agent"' in r}
    assert agent >= AGENT_DEPENDENCIES, agent
    assert not any(r.startswith("psutil") for r in requires)
    assert "mfu-agent = mfu_agent.cli:main" in entry_points
    assert "mfu_agent/client/_reporter.py" in names and not any(n.startswith("tests/") for n in names)
    (sdist,) = dist.glob("mfu_agent-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "mfu_agent/cli/__init__.py", "PKG-INFO"} <= members


BARE_CLIENT = """
import json, sys
import mfu_agent, mfu_agent.client, mfu_agent.flops, mfu_agent.integrations
from mfu_agent.client import Reporter
from mfu_agent.client.testing import FakeAgent

with FakeAgent() as agent:
    reporter = Reporter(job_id="bare", flops_per_step=1e12, url=agent.url, rank=0, world_size=1)
    reporter.step()
    reporter.close(timeout=10)
    total = agent.latest()["model_flops_total"]
ours = {"mfu_agent", "__main__"}
outside = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - ours)
print(json.dumps({"file": mfu_agent.__file__, "version": mfu_agent.__version__, "total": total,
                  "outside": outside}))
"""


def test_a_bare_install_is_the_standard_library_client(bare_python: Path) -> None:
    result = run([bare_python, "-I", "-c", BARE_CLIENT])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["file"].startswith(str(bare_python.parent.parent)), "the installed wheel, not the source tree"
    assert out["version"] == the_version(bare_python)
    assert out["total"] == 1e12
    assert out["outside"] == [], "only the standard library is imported"


def the_version(python: Path) -> str:
    return run(
        [python, "-I", "-c", "import importlib.metadata as m; print(m.version('mfu-agent'))"]
    ).stdout.strip()


@pytest.mark.parametrize("args", [["run"], ["demo"], ["run", "--backend", "simulated", "--interval", "2"]])
def test_a_bare_install_names_the_extra_the_agent_needs_in_one_line(
    bare_python: Path, args: list[str]
) -> None:
    result = run([bare_python.parent / "mfu-agent", *args])
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"mfu-agent: error: `mfu-agent {args[0]}` needs the agent's dependencies, and ")
    assert line.endswith(f"not installed: {EXTRA_LINE}") and "fastapi" in line


def test_a_bare_install_answers_version_and_help(bare_python: Path) -> None:
    mfu_agent = bare_python.parent / "mfu-agent"
    result = run([mfu_agent, "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"mfu-agent {the_version(bare_python)}",
        f"NVML not checked: nvidia-ml-py is not installed ({EXTRA_LINE})",
    ]
    result = run([mfu_agent, "run", "--help"])
    assert result.returncode == 0 and "--log-format" in result.stdout, result.stderr


REPORT_TO_AGENT = """
import json, os, sys
from mfu_agent.client import Reporter
reporter = Reporter(job_id="from-a-bare-install", flops_per_step=1e12, tokens_per_step=1000, url=sys.argv[1],
                    rank=0, world_size=1, gpus=[0], interval=0.05)
for _ in range(3):
    reporter.step()
print(json.dumps({"flushed": reporter.flush(timeout=20)}), flush=True)
os._exit(0)  # no final report: it would drop the rank before the test reads it
"""


def test_the_agent_install_serves_metrics_and_takes_the_bare_clients_reports(
    agent_python: Path, bare_python: Path
) -> None:
    version = run([agent_python.parent / "mfu-agent", "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines()[0] == f"mfu-agent {the_version(agent_python)}"

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = subprocess.Popen(
        [agent_python.parent / "mfu-agent", "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while "mfu_gpu_up{" not in text:
            assert agent.poll() is None, agent.communicate()[0]
            assert time.monotonic() < deadline, "no /metrics within 60 s"
            try:
                text = httpx.get(url + "/metrics", timeout=2).text
            except httpx.TransportError:
                time.sleep(0.1)
        client = run([bare_python, "-I", "-c", REPORT_TO_AGENT, url], timeout=60)
        assert client.returncode == 0 and json.loads(client.stdout) == {"flushed": True}, client.stderr
        jobs = {j["job_id"]: j for j in httpx.get(url + "/v1/jobs", timeout=10).json()["jobs"]}
        assert [r["rank"] for r in jobs["from-a-bare-install"]["ranks"]] == [0]
    finally:
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, output
    assert "Traceback" not in output
