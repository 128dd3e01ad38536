"""`mfu-agent run` and `mfu-agent demo`: the agent itself."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import zlib

from .. import __version__
from ..logs import configure_logging
from .options import (
    DEFAULT_LISTEN,
    BackendError,
    ListenError,
    add_agent_flags,
    format_listen,
    is_loopback,
    require_modules,
)

SIMULATE_DEFAULT = "8xNVIDIA H100 80GB HBM3"
# The demo node: 8 H100s, GPU 7 in MIG mode (a small job reports on its 3g.40gb slice); the main
# job's 6 ranks on GPUs 0..5, the one on GPU 5 crawling on a GPU busy doing nothing; two processes
# time-share GPU 6.
DEMO_SPEC = "7xNVIDIA H100 80GB HBM3,1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb]"
DEMO_FAULTS = ["busy-idle:5", "shared:6"]
DEMO_RANKS = 6

log = logging.getLogger("mfu_agent")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run the agent on this node")
    run.set_defaults(handler=main)
    add_agent_flags(run, DEFAULT_LISTEN)
    run.add_argument(
        "--backend",
        choices=["auto", "nvml", "simulated"],
        default="auto",
        help="where GPU readings come from (default auto: NVML; env MFU_AGENT_BACKEND)",
    )
    run.add_argument(
        "--simulate",
        default=SIMULATE_DEFAULT,
        help="simulated GPUs as COUNTxDEVICE NAME[,...], each a GPU model the peak table or "
        "--peak-flops-file knows; COUNTxDEVICE NAME[mig=PROFILE,...] puts each in MIG mode, e.g. "
        "1xNVIDIA H100 80GB HBM3[mig=3g.40gb,2g.20gb,1g.10gb,1g.10gb] "
        f"(default {SIMULATE_DEFAULT!r}; env MFU_AGENT_SIMULATE)",
    )
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        help="simulated fault, repeatable: lost:GPU, busy-idle:GPU, throttle:GPU, ecc:GPU, "
        "shared:GPU, xid:GPU:CODE, xid-storm:GPU (10,000 XID 79s and 10,000 distinct codes) "
        "(env MFU_AGENT_FAULT, comma-separated)",
    )

    demo = commands.add_parser(
        "demo",
        help="run with 8 simulated H100s (GPU 6 time-shared, GPU 7 in MIG mode) and synthetic training jobs",
    )
    demo.set_defaults(handler=main)
    add_agent_flags(demo, DEFAULT_LISTEN)


def main(args: argparse.Namespace) -> int:
    """Raises CommandError (one line, its exit status) for what stops the agent from starting: checked
    in the order that costs least, so a busy port is found before NVML is initialised."""
    require_modules(args.command)
    configure_logging(args.log_level, args.log_format)
    if args.command == "demo":
        args.backend, args.simulate, args.fault = "simulated", DEMO_SPEC, list(DEMO_FAULTS)
    token, overrides = read_config_files(args)
    prices = read_price_file(args)
    check_report_access(args, token)
    args.node_name = args.node_name or socket.gethostname()
    from ..server import listen_sockets

    host, port = args.listen
    try:
        sockets = listen_sockets(host, port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {format_listen(host, port)}: {reason}") from None
    try:
        backend = make_backend(
            args.backend,
            args.simulate,
            args.fault,
            seed=zlib.crc32(args.node_name.encode()),
            overrides=overrides,
        )
        return serve(args, backend, token, overrides, sockets, prices)
    finally:
        for sock in sockets:
            sock.close()


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
        from ..specs import load_overrides

        try:
            overrides = load_overrides(args.peak_flops_file)
        except (OSError, ValueError) as exc:
            raise BackendError(f"bad --peak-flops-file: {exc}") from None
    return token, overrides


def read_price_file(args: argparse.Namespace):
    """The --gpu-price-file's PriceTable; None without one (no cost series)."""
    if not args.gpu_price_file:
        return None
    from ..cost.prices import load_prices

    try:
        return load_prices(args.gpu_price_file)
    except (OSError, ValueError) as exc:
        raise BackendError(f"bad --gpu-price-file: {exc}") from None


def check_report_access(args: argparse.Namespace, token: str | None) -> None:
    """Refuses a non-loopback --listen without a report token, unless explicitly allowed."""
    host, port = args.listen
    if token is not None or is_loopback(host):
        return
    address = format_listen(host, port)
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


def make_backend(
    kind: str,
    simulate: str,
    faults: list[str],
    seed: int = 0,
    overrides: dict[str, dict[str, float]] | None = None,
):
    """`overrides`: the --peak-flops-file entries, whose device names may be simulated too."""
    if kind == "simulated":
        from ..gpu.simulated import SimulatedBackend
        from ..specs import PeakTable

        try:
            # The seed gives each node its own UUIDs; a model no peak is known for is refused.
            backend = SimulatedBackend(simulate, seed=seed, peaks=PeakTable(overrides))
            for fault in faults:
                backend.apply_fault(fault)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        return backend
    if faults:
        raise BackendError("--fault applies only to --backend simulated")
    from ..gpu.nvml import NvmlUnavailable
    from ..gpu.nvml_backend import NvmlBackend

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
    args: argparse.Namespace,
    backend,
    token: str | None,
    overrides: dict[str, dict[str, float]],
    sockets: list[socket.socket],
    prices=None,
) -> int:
    from ..agent import Agent, AgentOptions
    from ..app import create_app
    from ..server import limits_for, make_server, raise_open_file_limit

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
        kubelet_socket=args.kubelet_socket,
        prices=prices,
        mfu_target=args.mfu_target,
        idle_sm_active=args.idle_sm_active,
    )
    agent = Agent(backend, options)
    host, port = args.listen
    job = None
    if args.command == "demo":
        from ..demo import SyntheticJob

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
    log.info(
        "mfu-agent %s serving on http://%s (backend %s)", __version__, format_listen(host, port), backend.name
    )
    server = make_server(app, host, port, args.log_level, limits)
    server.run(sockets=sockets)
    return 0 if server.started else 1
