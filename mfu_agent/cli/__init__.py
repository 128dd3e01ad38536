"""`mfu-agent run | demo | top | doctor | --version`. Every flag can also be set as MFU_AGENT_<FLAG>.

One module per command; each adds its parser with `add_parsers` and sets `handler`. A command module
imports only the standard library at its top, and third-party packages inside its handler, after
`options.require_modules`: `mfu-agent --help` and `--version` work where only the client is installed.
A handler raises `options.CommandError` for a reason not to start; `main` prints it as one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .. import __version__
from . import doctor, run, top
from .options import (
    AGENT_EXTRA,
    DEFAULT_LISTEN,
    DEFAULT_PORT,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    BackendError,
    CommandError,
    EnvArgumentParser,
    is_loopback,
    missing_extra_message,
    name_sources,
    parse_listen,
)
from .run import DEMO_FAULTS, DEMO_RANKS, DEMO_SPEC, SIMULATE_DEFAULT, make_backend

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "DEMO_FAULTS",
    "DEMO_RANKS",
    "DEMO_SPEC",
    "SIMULATE_DEFAULT",
    "BackendError",
    "build_parser",
    "is_loopback",
    "main",
    "make_backend",
    "parse_listen",
    "version_text",
]


def version_text() -> str:
    """This version, and the NVIDIA driver's and NVML's where a driver is present (through the NVML
    gateway); says why not where there is none. Without a driver NVML fails at once (no library)."""
    try:
        from ..gpu.nvml import NvmlGateway, NvmlUnavailable
    except ImportError:
        return f"mfu-agent {__version__}\nNVML not checked: nvidia-ml-py is not installed ({AGENT_EXTRA})"
    gateway = NvmlGateway()
    try:
        gateway.init()
    except NvmlUnavailable as exc:
        return f"mfu-agent {__version__}\nNVML unavailable: {exc}"
    try:
        driver, nvml = gateway.driver_version() or "unknown", gateway.nvml_version() or "unknown"
    finally:
        gateway.shutdown()
    return f"mfu-agent {__version__}\nNVIDIA driver {driver}, NVML {nvml}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = EnvArgumentParser(
        prog="mfu-agent",
        description="GPU telemetry and live model FLOPs utilisation (MFU), as Prometheus metrics.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show the version, and the NVIDIA driver's and NVML's"
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,top,doctor}", required=True)
    run.add_parsers(commands)
    top.add_parsers(commands)
    doctor.add_parsers(commands)
    return parser


class _Stopped(BaseException):
    """SIGTERM before the server takes over the signals (and after it gives them back)."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Ctrl-C and SIGTERM stop a command quietly with status 0, whenever they come."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        return args.handler(args)
    except CommandError as exc:
        print(f"mfu-agent: error: {name_sources(str(exc), args.from_env)}", file=sys.stderr)
        return exc.status
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "mfu_agent":
            raise
        print(f"mfu-agent: error: {missing_extra_message(args.command, [exc.name])}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except (KeyboardInterrupt, _Stopped):
        return EXIT_OK
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
