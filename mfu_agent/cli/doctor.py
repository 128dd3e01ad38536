"""`mfu-agent doctor`: checks this node for what the agent needs, one line per check with the fix.

It loads NVML itself (the agent need not run). Exit status: 0 when every check is ok, skipped or only
warns (a feature will be missing); 1 when one fails (the agent cannot do its main job: NVML does not
load, no GPU, the port is taken, the report token cannot be read, a bad --peak-flops-file); 2 for bad
arguments."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .options import (
    DEFAULT_KUBELET_SOCKET,
    DEFAULT_LISTEN,
    parse_listen,
    require_modules,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check this node for what the agent needs and say how to fix what is missing",
        description=__doc__,
    )
    doctor.set_defaults(handler=main)
    doctor.add_argument(
        "--listen",
        type=parse_listen,
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT the agent will serve on, checked free (default {DEFAULT_LISTEN}; "
        "env MFU_AGENT_LISTEN)",
    )
    doctor.add_argument(
        "--report-token-file",
        default=None,
        help="the agent's report token file, checked readable and non-empty "
        "(env MFU_AGENT_REPORT_TOKEN_FILE)",
    )
    doctor.add_argument(
        "--allow-unauthenticated-reports",
        action="store_true",
        default=None,
        help="as for `run` (env MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS=1)",
    )
    doctor.add_argument(
        "--peak-flops-file",
        default=None,
        help="the agent's peak FLOP/s overrides, checked and used for the model check "
        "(env MFU_AGENT_PEAK_FLOPS_FILE)",
    )
    doctor.add_argument(
        "--kubelet-socket",
        default=DEFAULT_KUBELET_SOCKET,
        help=f"the kubelet PodResources socket (default {DEFAULT_KUBELET_SOCKET}; "
        "env MFU_AGENT_KUBELET_SOCKET)",
    )
    doctor.add_argument(
        "--proc-root",
        default="/proc",
        help="where the host's processes are seen (default /proc; env MFU_AGENT_PROC_ROOT)",
    )
    doctor.add_argument(
        "--cgroup-root",
        default="/sys/fs/cgroup",
        help="the cgroup filesystem (default /sys/fs/cgroup)",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")


def main(args: argparse.Namespace) -> int:
    require_modules("doctor", ("pynvml",))
    from ..doctor import render_json, render_text
    from ..doctor.gpus import nvml_checks
    from ..doctor.host import cgroup_check, kubelet_check, listen_check, peaks_check, token_check

    # The checks say everything; the GPU readers' own log lines (GPM warnings) would repeat them.
    logging.getLogger("mfu_agent").addHandler(logging.NullHandler())
    allow = bool(args.allow_unauthenticated_reports)
    peak_file, peaks = peaks_check(args.peak_flops_file)
    checks = nvml_checks(args.proc_root, peaks)
    checks += [
        cgroup_check(args.cgroup_root),
        kubelet_check(args.kubelet_socket, on_kubernetes="KUBERNETES_SERVICE_HOST" in os.environ),
        listen_check(*args.listen),
        token_check(args.report_token_file, args.listen, allow),
    ]
    if peak_file is not None:
        checks.append(peak_file)
    sys.stdout.write(render_json(checks) if args.json else render_text(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
