"""`mfu-agent run | demo | top | doctor | --version`. Every flag can also be set as MFU_AGENT_<FLAG>.

One module per command; each adds its parser with `add_parsers` and sets `handler`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import doctor, run, top
from .options import DEFAULT_LISTEN, DEFAULT_PORT, BackendError, is_loopback, parse_listen
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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfu-agent",
        description="GPU telemetry and live model FLOPs utilisation (MFU), as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"mfu-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,top,doctor}", required=True)
    run.add_parsers(commands)
    top.add_parsers(commands)
    doctor.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
