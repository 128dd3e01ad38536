"""Argument types, the MFU_AGENT_<FLAG> environment fallback, exit statuses and the flags every agent
command shares. Standard library only: `mfu-agent --help` and `--version` work without the agent's
dependencies."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import re
from collections.abc import Sequence
from typing import Any

DEFAULT_PORT = 8469  # outside 9100-9999, the Prometheus exporter range, which is fully allocated
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
# The MFU target (--mfu-target): the agents export it, the rules read it (mfu:target_mfu:ratio), and the
# dashboards' threshold colours are drawn at this default (mfu_dashboards/common.py).
DEFAULT_MFU_TARGET = 0.4
DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LOG_FORMATS = ("text", "json")

# Exit statuses (README, "Exit status").
EXIT_OK = 0  # stopped by Ctrl-C or SIGTERM, or --help / --version
EXIT_FAILED = 1  # failed while running
EXIT_USAGE = 2  # a bad flag, MFU_AGENT_* variable or setting; no NVIDIA driver for --backend nvml/auto
EXIT_LISTEN = 3  # cannot listen on --listen (address in use, permission denied, unknown host)
EXIT_MISSING_EXTRA = 4  # the agent's dependencies are not installed: pip install 'mfu-agent[agent]'

AGENT_EXTRA = "pip install 'mfu-agent[agent]'"
# The modules of the `agent` extra that `run` and `demo` import (pyproject.toml).
AGENT_MODULES = ("pynvml", "prometheus_client", "fastapi", "pydantic", "uvicorn", "grpc", "google.protobuf")


class CommandError(Exception):
    """A reason not to start, which `main` prints as one line `mfu-agent: error: ...`; exits `status`."""

    status = EXIT_USAGE


class BackendError(CommandError):
    """A setting the agent cannot start with (exit 2)."""


class ListenError(CommandError):
    """--listen cannot be bound (exit 3)."""

    status = EXIT_LISTEN


class MissingExtra(CommandError):
    """A command's third-party dependencies are not installed (exit 4)."""

    status = EXIT_MISSING_EXTRA


def require_modules(command: str, modules: Sequence[str] = AGENT_MODULES) -> None:
    """Raises MissingExtra naming the extra to install when any of `modules` cannot be imported."""
    missing = [name for name in modules if not _importable(name)]
    if missing:
        raise MissingExtra(missing_extra_message(command, missing))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def missing_extra_message(command: str, missing: Sequence[str]) -> str:
    return (
        f"`mfu-agent {command}` needs the agent's dependencies, and {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: {AGENT_EXTRA}"
    )


# -- the environment fallback ----------------------------------------------------------------------


def env_name(option: str) -> str:
    """`--report-token-file` -> `MFU_AGENT_REPORT_TOKEN_FILE`."""
    return "MFU_AGENT_" + option.lstrip("-").upper().replace("-", "_")


_UNSET: Any = object()  # the argparse default of every flag: "not on the command line"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose every long option falls back to MFU_AGENT_<OPTION>, then to its default.

    The command line wins over the environment; an empty variable counts as unset. A variable's value
    is checked by the flag's own type and choices, and an error names the variable, not the flag. A
    switch (store_true) takes 1/true/yes/on or 0/false/no/off; a repeatable flag (append) takes a
    comma-separated list. Subparsers made by `add_subparsers` are of this class too, so each command
    reads only its own flags.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._env_actions: list[tuple[argparse.Action, Any]] = []  # (action, its real default)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help", "version") and action.default is not argparse.SUPPRESS:
            self._env_actions.append((action, action.default))
            # append copies its default before adding to it: None (an empty list) is what it can take.
            action.default = None if _is_append(action) else _UNSET
        return action

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        from_env = dict(getattr(namespace, "from_env", {}))  # a subparser's, when this is its parent
        for action, default in self._env_actions:
            if getattr(namespace, action.dest, None) is action.default:  # not on the command line
                setattr(namespace, action.dest, self._fallback(action, default))
                name = env_name(_long_option(action))
                if os.environ.get(name, "").strip():
                    from_env[_long_option(action)] = name
        namespace.from_env = from_env  # {--flag: MFU_AGENT_FLAG} for the values the environment gave
        return namespace, extras

    def _fallback(self, action: argparse.Action, default: Any) -> Any:
        name = env_name(_long_option(action))
        value = os.environ.get(name, "")
        if not value.strip():
            if isinstance(default, str) and action.type is not None:
                return action.type(default)  # as argparse would: string defaults go through `type`
            return default
        try:
            if action.nargs == 0:  # a switch
                folded = value.strip().lower()
                if folded not in _TRUE + _FALSE:
                    raise argparse.ArgumentTypeError(f"expected one of {', '.join(_TRUE + _FALSE)}")
                return folded in _TRUE
            if _is_append(action):
                return [self._convert(action, item.strip()) for item in value.split(",") if item.strip()]
            return self._convert(action, value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            self.error(f"{name}={value!r}: {exc}")

    @staticmethod
    def _convert(action: argparse.Action, value: str) -> Any:
        result = action.type(value) if action.type is not None else value
        if action.choices is not None and result not in action.choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, action.choices))}")
        return result


def _is_append(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction)


def _long_option(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def name_sources(message: str, from_env: dict[str, str]) -> str:
    """`message`, led by the MFU_AGENT_* variables that gave the flags it names: an error about
    `--simulate` set through MFU_AGENT_SIMULATE says so."""
    names = [
        name
        for flag, name in from_env.items()
        if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message)
    ]
    return f"{', '.join(names)}: {message}" if names else message


# -- argument types --------------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", value.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {value!r}")
    return match.group(1) or "0.0.0.0", int(match.group(2))


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def ratio_above_zero(value: str) -> float:
    """A number in (0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value!r}")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value!r}")
    return number


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- shared flags ----------------------------------------------------------------------------------


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="env MFU_AGENT_LOG_LEVEL",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text, or json: one JSON object a line with time, level, logger and message "
        "(default text; env MFU_AGENT_LOG_FORMAT)",
    )


def add_agent_flags(parser: argparse.ArgumentParser, listen_default: str) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=listen_default,
        help=f"HOST:PORT to serve on (default {listen_default}; env MFU_AGENT_LISTEN)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float(0.2),
        default="1",
        help="seconds between GPU samples, at least 0.2 (default 1; env MFU_AGENT_INTERVAL)",
    )
    parser.add_argument(
        "--node-name",
        default="",
        help="node name for mfu_agent_build_info (default: the host name; env MFU_AGENT_NODE_NAME)",
    )
    add_log_flags(parser)
    parser.add_argument(
        "--kubelet-socket",
        default=DEFAULT_KUBELET_SOCKET,
        help="the kubelet's PodResources socket, for the namespace, pod and container of GPU processes "
        f"and ranks (default {DEFAULT_KUBELET_SOCKET}; absent: names are off; '' to never ask; "
        "env MFU_AGENT_KUBELET_SOCKET)",
    )
    parser.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-token-file",
        help="file holding a bearer token that reports must carry (env MFU_AGENT_REPORT_TOKEN_FILE); "
        "required when --listen is not a loopback address",
    )
    parser.add_argument(
        "--allow-unauthenticated-reports",
        action="store_true",
        help="accept reports without a token on a non-loopback --listen address: anyone who can reach "
        "the port can write reports (env MFU_AGENT_ALLOW_UNAUTHENTICATED_REPORTS=1)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="serve the interactive API pages /docs and /redoc; they load their JavaScript from a CDN "
        "(/openapi.json is always served; env MFU_AGENT_DOCS=1)",
    )
    parser.add_argument(
        "--peak-flops-file",
        help="JSON file adding or overriding peak FLOP/s by GPU model and dtype "
        "(env MFU_AGENT_PEAK_FLOPS_FILE; see docs/peak-flops.md)",
    )
    parser.add_argument(
        "--gpu-price-file",
        help='JSON file of US dollars per GPU-hour by GPU model (NVML device name, or "default"): '
        "turns on the cost counters (env MFU_AGENT_GPU_PRICE_FILE; see docs/deploy.md; default: none)",
    )
    parser.add_argument(
        "--mfu-target",
        type=ratio_above_zero,
        default=str(DEFAULT_MFU_TARGET),
        help="the MFU target: GPU time under it counts in mfu_gpu_below_target_cost_dollars_total, and "
        "the recording rules read it from mfu_agent_mfu_target_ratio (default 0.4; env MFU_AGENT_MFU_TARGET)",
    )
    parser.add_argument(
        "--idle-sm-active",
        type=ratio_above_zero,
        default="0.2",
        help="a GPU with compute processes whose GPM SM active ratio is below this counts as idle while "
        "allocated (default 0.2; env MFU_AGENT_IDLE_SM_ACTIVE)",
    )
    parser.add_argument(
        "--mfu-window",
        type=positive_float(1),
        default="60",
        help="seconds of reports MFU is computed over (default 60; env MFU_AGENT_MFU_WINDOW)",
    )
    parser.add_argument(
        "--max-ranks",
        type=positive_int,
        default="4096",
        help="most (job_id, rank) pairs tracked; more get HTTP 429 once no rank has stopped reporting "
        "(default 4096; env MFU_AGENT_MAX_RANKS)",
    )
    parser.add_argument(
        "--max-series",
        type=positive_int,
        default="100000",
        help="most series /metrics may carry, whatever clients send; a report that would add more gets "
        "HTTP 429 once no rank has stopped reporting (default 100000; env MFU_AGENT_MAX_SERIES)",
    )
    parser.add_argument(
        "--state-dir",
        help="directory where each rank's accumulated totals are kept, so exported counters never go "
        "down when the agent restarts (env MFU_AGENT_STATE_DIR; default: not kept)",
    )
    parser.add_argument(
        "--rank-ttl",
        type=positive_float(1),
        default="600",
        help="seconds after its last report that a rank is dropped (default 600; env MFU_AGENT_RANK_TTL)",
    )
