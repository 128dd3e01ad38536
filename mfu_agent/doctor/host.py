"""Checks of the node outside NVML: cgroups, the kubelet socket, the port, the config files."""

from __future__ import annotations

import argparse
import errno
import http.client
import os
import socket
import stat

from ..cli.options import BackendError
from ..specs import PeakTable, load_overrides
from .report import Check

PROBE_TIMEOUT_SECONDS = 2.0


def cgroup_check(cgroup_root: str) -> Check:
    """Attribution reads /proc/<pid>/cgroup, which names pods and Slurm jobs under v1 and v2 alike."""
    if os.path.isfile(os.path.join(cgroup_root, "cgroup.controllers")):
        return Check("ok", "cgroup", f"cgroup v2 (unified hierarchy at {cgroup_root})")
    try:
        hierarchies = sorted(
            e for e in os.listdir(cgroup_root) if os.path.isdir(os.path.join(cgroup_root, e))
        )
    except OSError:
        hierarchies = []
    if hierarchies:
        return Check(
            "ok", "cgroup", f"cgroup v1 ({', '.join(hierarchies[:4])}{', ...' * (len(hierarchies) > 4)})"
        )
    return Check(
        "warn",
        "cgroup",
        f"no cgroup filesystem at {cgroup_root}: cannot tell the cgroup version",
        "attribution still reads /proc/<pid>/cgroup; mount /sys/fs/cgroup to check it here",
    )


def kubelet_check(path: str, on_kubernetes: bool) -> Check:
    if not path:
        return Check("skip", "kubelet-socket", "--kubelet-socket '': Kubernetes names are off")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if not on_kubernetes:
            return Check(
                "skip", "kubelet-socket", f"no {path}, and not on Kubernetes (no KUBERNETES_SERVICE_HOST)"
            )
        return Check(
            "warn",
            "kubelet-socket",
            f"no kubelet PodResources socket at {path}: GPUs cannot be matched to pods through the kubelet",
            "mount the host's /var/lib/kubelet/pod-resources into the agent "
            "(deploy/kubernetes/daemonset.yaml does), or point --kubelet-socket at it",
        )
    except OSError as exc:
        return Check("warn", "kubelet-socket", f"cannot stat {path}: {exc.strerror}", "run the agent as root")
    if not stat.S_ISSOCK(mode):
        return Check(
            "warn", "kubelet-socket", f"{path} is not a socket", "point --kubelet-socket at the socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_SECONDS)
        try:
            sock.connect(path)
        except OSError as exc:
            return Check(
                "warn",
                "kubelet-socket",
                f"cannot connect to {path}: {exc.strerror or exc}",
                "run the agent as root (the socket is root's) and check that the kubelet runs",
            )
    return Check("ok", "kubelet-socket", f"{path} accepts connections")


def listen_check(host: str, port: int) -> Check:
    """Binds the address as the server will (SO_REUSEADDR); a port taken by a running mfu-agent is fine
    when doctor runs beside it."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Check("fail", "listen", f"cannot resolve {host!r}: {exc}", "use an IP address of this host")
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return _bind_failed(exc, host, port, address)
    return Check("ok", "listen", f"{address} is free")


def _bind_failed(exc: OSError, host: str, port: int, address: str) -> Check:
    if exc.errno == errno.EADDRINUSE:
        if _mfu_agent_serves(host, port):
            return Check(
                "warn",
                "listen",
                f"an mfu-agent already serves on {address}: a second one cannot start there",
                "nothing, if doctor runs beside that agent; else stop it or choose another --listen",
            )
        return Check(
            "fail",
            "listen",
            f"{address} is taken by another program",
            "stop it, or choose another port with --listen (env MFU_AGENT_LISTEN)",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return Check(
            "fail", "listen", f"{host} is not an address of this host", "use 0.0.0.0 or one of its IPs"
        )
    if exc.errno == errno.EACCES:
        return Check(
            "fail", "listen", f"no permission to bind {address}", "use a port above 1023 (default 8469)"
        )
    return Check("fail", "listen", f"cannot bind {address}: {exc.strerror or exc}")


def _mfu_agent_serves(host: str, port: int) -> bool:
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    connection = http.client.HTTPConnection(local, port, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status == 200 and b"mfu_agent_build_info" in response.read(4 << 20)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def token_check(path: str | None, listen: tuple[str, int], allow_unauthenticated: bool) -> Check:
    """What `mfu-agent run` requires of --report-token-file (see cli/run.py: check_report_access)."""
    from ..cli.run import check_report_access

    token = None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            return Check(
                "fail",
                "report-token",
                f"cannot read --report-token-file {path}: {exc.strerror or exc}",
                "make it readable by the agent's user (Kubernetes: mount the Secret; see docs/deploy.md)",
            )
        if not token:
            return Check(
                "fail", "report-token", f"--report-token-file {path} is empty", "write the token into it"
            )
    try:
        check_report_access(
            argparse.Namespace(listen=listen, allow_unauthenticated_reports=allow_unauthenticated), token
        )
    except BackendError as exc:
        return Check("fail", "report-token", str(exc))
    if token:
        return Check("ok", "report-token", f"reports must carry the token in {path}")
    if allow_unauthenticated:
        return Check(
            "warn", "report-token", "reports are accepted without a token (--allow-unauthenticated-reports)"
        )
    return Check("ok", "report-token", f"no token needed: {listen[0]} is a loopback address")


def peaks_check(path: str | None) -> tuple[Check | None, PeakTable]:
    """The peak table with --peak-flops-file's overrides; a check only when a file is given."""
    if not path:
        return None, PeakTable()
    try:
        overrides = load_overrides(path)
    except (OSError, ValueError) as exc:
        return Check(
            "fail", "peak-flops-file", f"bad --peak-flops-file: {exc}", "see docs/peak-flops.md"
        ), PeakTable()
    return Check("ok", "peak-flops-file", f"{path}: {len(overrides)} override(s)"), PeakTable(overrides)
