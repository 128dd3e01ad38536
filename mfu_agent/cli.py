"""`mfu-agent run | demo | --version`. Every flag can also be set as MFU_AGENT_<FLAG>."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import socket
import sys
import zlib
from collections.abc import Sequence

from . import __version__

DEFAULT_PORT = 8469  # outside 9100-9999, the Prometheus exporter range, which is fully allocated
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
SIMULATE_DEFAULT = "8xNVIDIA H100 80GB HBM3"
# The demo node: 8 H100s, GPU 7 in MIG mode (a small job reports on its 3g.40gb slice); the main
# job's 6 ranks on GPUs 0..5, the one on GPU 5 crawling on a GPU busy doing nothing; two processes
# time-share GPU 6.
DEMO_SPEC = "7xNVIDIA H100 80GB HBM3,1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb]"
DEMO_FAULTS = ["busy-idle:5", "shared:6"]
DEMO_RANKS = 6

log = logging.getLogger("mfu_agent")


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


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("MFU_AGENT_" + flag.upper().replace("-", "_"), default)


def _env_switch(flag: str) -> bool:
    """A switch's MFU_AGENT_<FLAG>: 1/true/yes/on or 0/false/no/off (or unset)."""
    value = (_env(flag) or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    name = "MFU_AGENT_" + flag.upper().replace("-", "_")
    raise BackendError(f"{name}={_env(flag)!r}: expected 1, true, yes, on, 0, false, no or off")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_list(flag: str, default: list[str]) -> list[str]:
    value = _env(flag)
    return [item for item in value.split(",") if item.strip()] if value else default


def _add_common(parser: argparse.ArgumentParser, listen_default: str) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=_env("listen", listen_default),
        help=f"HOST:PORT to serve on (default {listen_default}; env MFU_AGENT_LISTEN)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float(0.2),
        default=_env("interval", "1"),
        help="seconds between GPU samples, at least 0.2 (default 1; env MFU_AGENT_INTERVAL)",
    )
    parser.add_argument(
        "--node-name",
        default=_env("node-name", ""),
        help="node name for mfu_agent_build_info (default: the host name; env MFU_AGENT_NODE_NAME)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("log-level", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env MFU_AGENT_LOG_LEVEL",
    )
    parser.add_argument("--proc-root", default=_env("proc-root", "/proc"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-token-file",
        default=_env("report-token-file"),
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
        default=_env("peak-flops-file"),
        help="JSON file adding or overriding peak FLOP/s by GPU model and dtype "
        "(env MFU_AGENT_PEAK_FLOPS_FILE; see docs/peak-flops.md)",
    )
    parser.add_argument(
        "--mfu-window",
        type=positive_float(1),
        default=_env("mfu-window", "60"),
        help="seconds of reports MFU is computed over (default 60; env MFU_AGENT_MFU_WINDOW)",
    )
    parser.add_argument(
        "--max-ranks",
        type=positive_int,
        default=_env("max-ranks", "4096"),
        help="most (job_id, rank) pairs tracked; more get HTTP 429 once no rank has stopped reporting "
        "(default 4096)",
    )
    parser.add_argument(
        "--max-series",
        type=positive_int,
        default=_env("max-series", "100000"),
        help="most series /metrics may carry, whatever clients send; a report that would add more gets "
        "HTTP 429 once no rank has stopped reporting (default 100000; env MFU_AGENT_MAX_SERIES)",
    )
    parser.add_argument(
        "--state-dir",
        default=_env("state-dir"),
        help="directory where each rank's accumulated totals are kept, so exported counters never go "
        "down when the agent restarts (env MFU_AGENT_STATE_DIR; default: not kept)",
    )
    parser.add_argument(
        "--rank-ttl",
        type=positive_float(1),
        default=_env("rank-ttl", "600"),
        help="seconds after its last report that a rank is dropped (default 600)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfu-agent",
        description="GPU telemetry and live model FLOPs utilisation (MFU), as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"mfu-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,demo}", required=True)

    run = commands.add_parser("run", help="run the agent on this node")
    _add_common(run, DEFAULT_LISTEN)
    run.add_argument(
        "--backend",
        choices=["auto", "nvml", "simulated"],
        default=_env("backend", "auto"),
        help="where GPU readings come from (default auto: NVML; env MFU_AGENT_BACKEND)",
    )
    run.add_argument(
        "--simulate",
        default=_env("simulate", SIMULATE_DEFAULT),
        help="simulated GPUs as COUNTxDEVICE NAME[,...]; COUNTxDEVICE NAME[mig=PROFILE,...] puts each "
        "in MIG mode, e.g. 1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb] "
        f"(default {SIMULATE_DEFAULT!r}; env MFU_AGENT_SIMULATE)",
    )
    run.add_argument(
        "--fault",
        action="append",
        default=_env_list("fault", []),
        help="simulated fault, repeatable: lost:GPU, busy-idle:GPU, throttle:GPU, ecc:GPU, "
        "shared:GPU, xid:GPU:CODE, xid-storm:GPU (10,000 XID 79s and 10,000 distinct codes) "
        "(env MFU_AGENT_FAULT, comma-separated)",
    )

    demo = commands.add_parser(
        "demo",
        help="run with 8 simulated H100s (GPU 6 time-shared, GPU 7 in MIG mode) and synthetic training jobs",
    )
    _add_common(demo, DEFAULT_LISTEN)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        args.backend, args.simulate, args.fault = "simulated", DEMO_SPEC, list(DEMO_FAULTS)
    try:
        for switch in ("allow_unauthenticated_reports", "docs"):
            if getattr(args, switch) is None:
                setattr(args, switch, _env_switch(switch))
        token, overrides = read_config_files(args)
        check_report_access(args, token)
        args.node_name = args.node_name or socket.gethostname()
        backend = make_backend(
            args.backend, args.simulate, args.fault, seed=zlib.crc32(args.node_name.encode())
        )
    except BackendError as exc:
        print(f"mfu-agent: error: {exc}", file=sys.stderr)
        return 2
    return serve(args, backend, token, overrides)


def read_config_files(args: argparse.Namespace) -> tuple[str | None, dict[str, dict[str, float]]]:
    token = None
    if args.report_token_file:
        try:
            with open(args.report_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise BackendError(f"cannot read --report-token-file: {exc}") from None
        if not token:
            raise BackendError(f"--report-token-file {args.report_token_file} is empty")
    overrides: dict[str, dict[str, float]] = {}
    if args.peak_flops_file:
        from .specs import load_overrides

        try:
            overrides = load_overrides(args.peak_flops_file)
        except (OSError, ValueError) as exc:
            raise BackendError(f"bad --peak-flops-file: {exc}") from None
    return token, overrides


def check_report_access(args: argparse.Namespace, token: str | None) -> None:
    """Refuses a non-loopback --listen without a report token, unless explicitly allowed."""
    host, port = args.listen
    if token is not None or is_loopback(host):
        return
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if args.allow_unauthenticated_reports:
        log.warning(
            "reports are accepted without a token from anyone who can reach %s "
            "(--allow-unauthenticated-reports)",
            address,
        )
        return
    raise BackendError(
        f"--listen {address} is reachable from other machines and no --report-token-file is set, so "
        "anyone could post reports: set --report-token-file (see docs/deploy.md), listen on 127.0.0.1, "
        "or pass --allow-unauthenticated-reports"
    )


class BackendError(Exception):
    pass


def make_backend(kind: str, simulate: str, faults: list[str], seed: int = 0):
    if kind == "simulated":
        from .gpu.simulated import SimulatedBackend

        try:
            backend = SimulatedBackend(simulate, seed=seed)  # the seed gives each node its own UUIDs
            for fault in faults:
                backend.apply_fault(fault)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        return backend
    if faults:
        raise BackendError("--fault applies only to --backend simulated")
    from .gpu.nvml import NvmlUnavailable
    from .gpu.nvml_backend import NvmlBackend

    backend = NvmlBackend()
    try:
        backend.start()
    except NvmlUnavailable as exc:
        raise BackendError(
            f"{exc}. On a machine without NVIDIA GPUs, try `mfu-agent demo` "
            "or `mfu-agent run --backend simulated`."
        ) from None
    return backend


def serve(
    args: argparse.Namespace, backend, token: str | None, overrides: dict[str, dict[str, float]]
) -> int:
    from .agent import Agent, AgentOptions
    from .app import create_app
    from .server import limits_for, make_server, raise_open_file_limit

    options = AgentOptions(
        interval=args.interval,
        node_name=args.node_name,
        proc_root=args.proc_root,
        mfu_window_seconds=args.mfu_window,
        max_ranks=args.max_ranks,
        max_series=args.max_series,
        rank_ttl_seconds=args.rank_ttl,
        report_token=token,
        peak_overrides=overrides,
        state_dir=args.state_dir,
    )
    agent = Agent(backend, options)
    host, port = args.listen
    job = None
    if args.command == "demo":
        from .demo import SyntheticJob

        local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        url = f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"
        job = SyntheticJob(url, backend.devices(), DEMO_RANKS, {5})
        if token:
            os.environ.setdefault("MFU_AGENT_TOKEN", token)
    app = create_app(
        agent,
        on_started=job.start if job else None,
        on_stopping=job.stop if job else None,
        docs=args.docs,
    )
    limits = limits_for(raise_open_file_limit())
    log.debug("at most %d connections", limits.max_connections)
    log.info("mfu-agent %s serving on http://%s:%d (backend %s)", __version__, host, port, backend.name)
    server = make_server(app, host, port, args.log_level, limits)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
