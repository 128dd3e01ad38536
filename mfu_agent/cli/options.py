"""Argument types, the MFU_AGENT_<FLAG> environment fallback and the flags every agent command shares."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re

DEFAULT_PORT = 8469  # outside 9100-9999, the Prometheus exporter range, which is fully allocated
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


def parse_listen(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", value.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {value!r}")
    return match.group(1) or "0.0.0.0", int(match.group(2))


def positive_float(minimum: float):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not number >= minimum or number == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum}, got {value!r}")
        return number

    return parse


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value!r}")
    return number


class BackendError(Exception):
    """A setting the agent cannot start with; `main` prints it on one line and exits 2."""


def env_default(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("MFU_AGENT_" + flag.upper().replace("-", "_"), default)


def env_switch(flag: str) -> bool:
    """A switch's MFU_AGENT_<FLAG>: 1/true/yes/on or 0/false/no/off (or unset)."""
    value = (env_default(flag) or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    name = "MFU_AGENT_" + flag.upper().replace("-", "_")
    raise BackendError(f"{name}={env_default(flag)!r}: expected 1, true, yes, on, 0, false, no or off")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_list(flag: str, default: list[str]) -> list[str]:
    value = env_default(flag)
    return [item for item in value.split(",") if item.strip()] if value else default


def add_agent_flags(parser: argparse.ArgumentParser, listen_default: str) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=env_default("listen", listen_default),
        help=f"HOST:PORT to serve on (default {listen_default}; env MFU_AGENT_LISTEN)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float(0.2),
        default=env_default("interval", "1"),
        help="seconds between GPU samples, at least 0.2 (default 1; env MFU_AGENT_INTERVAL)",
    )
    parser.add_argument(
        "--node-name",
        default=env_default("node-name", ""),
        help="node name for mfu_agent_build_info (default: the host name; env MFU_AGENT_NODE_NAME)",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("log-level", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env MFU_AGENT_LOG_LEVEL",
    )
    parser.add_argument(
        "--kubelet-socket",
        default=env_default("kubelet-socket", DEFAULT_KUBELET_SOCKET),
        help="the kubelet's PodResources socket, for the namespace, pod and container of GPU processes "
        f"and ranks (default {DEFAULT_KUBELET_SOCKET}; absent: names are off; '' to never ask; "
        "env MFU_AGENT_KUBELET_SOCKET)",
    )
    parser.add_argument("--proc-root", default=env_default("proc-root", "/proc"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-token-file",
        default=env_default("report-token-file"),
        help="file holding a bearer token that reports must carry (env MFU_AGENT_REPORT_TOKEN_FILE); "
        "required when --listen is not a loopback address",
    )
    parser.add_argument(
        "--allow-unauthenticated-reports",
        action="store_true",
        default=None,
        help="accept reports without a token on a non-loopback --listen address: anyone who can reach "
        "the port can write reports (env MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS=1)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        default=None,
        help="serve the interactive API pages /docs and /redoc; they load their JavaScript from a CDN "
        "(/openapi.json is always served; env MFU_AGENT_DOCS=1)",
    )
    parser.add_argument(
        "--peak-flops-file",
        default=env_default("peak-flops-file"),
        help="JSON file adding or overriding peak FLOP/s by GPU model and dtype "
        "(env MFU_AGENT_PEAK_FLOPS_FILE; see docs/peak-flops.md)",
    )
    parser.add_argument(
        "--mfu-window",
        type=positive_float(1),
        default=env_default("mfu-window", "60"),
        help="seconds of reports MFU is computed over (default 60; env MFU_AGENT_MFU_WINDOW)",
    )
    parser.add_argument(
        "--max-ranks",
        type=positive_int,
        default=env_default("max-ranks", "4096"),
        help="most (job_id, rank) pairs tracked; more get HTTP 429 once no rank has stopped reporting "
        "(default 4096)",
    )
    parser.add_argument(
        "--max-series",
        type=positive_int,
        default=env_default("max-series", "100000"),
        help="most series /metrics may carry, whatever clients send; a report that would add more gets "
        "HTTP 429 once no rank has stopped reporting (default 100000; env MFU_AGENT_MAX_SERIES)",
    )
    parser.add_argument(
        "--state-dir",
        default=env_default("state-dir"),
        help="directory where each rank's accumulated totals are kept, so exported counters never go "
        "down when the agent restarts (env MFU_AGENT_STATE_DIR; default: not kept)",
    )
    parser.add_argument(
        "--rank-ttl",
        type=positive_float(1),
        default=env_default("rank-ttl", "600"),
        help="seconds after its last report that a rank is dropped (default 600)",
    )
