"""`mfu-agent top`: a live view of one node's GPUs and jobs, from the agent's JSON API."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from .options import positive_float, require_modules

RESIZE_CHECK_SECONDS = 0.25  # how soon a resized terminal is redrawn (between refreshes)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from ..top.fetch import DEFAULT_URL
    from ..top.view import SORT_KEYS

    top = commands.add_parser(
        "top",
        help="live terminal view of a node: per GPU utilisation, SM and tensor activity, MFU, power, "
        "memory, clocks and throttling, processes; per job MFU, tokens/s, step, ranks",
    )
    top.set_defaults(handler=main)
    top.add_argument(
        "--url",
        default=None,
        help=f"the agent to read (default {DEFAULT_URL}; env MFU_AGENT_URL, else the agent's "
        "MFU_AGENT_LISTEN address)",
    )
    top.add_argument(
        "--interval",
        type=positive_float(0.2),
        default="1",
        help="seconds between refreshes, at least 0.2 (default 1; env MFU_AGENT_INTERVAL)",
    )
    top.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="gpu",
        help="the column GPUs are sorted by (default gpu); metrics sort biggest first, unknowns last",
    )
    top.add_argument("--reverse", action="store_true", help="reverse the sort order")
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (for scripts, and over ssh without a terminal); exits 1 with one "
        "line on stderr when the agent cannot be read",
    )


def main(args: argparse.Namespace) -> int:
    require_modules("top", ("rich",))
    from rich.console import Console

    from ..top.fetch import default_url

    try:
        url = args.url or default_url()
    except argparse.ArgumentTypeError as exc:
        print(f"mfu-agent: error: MFU_AGENT_LISTEN: {exc}", file=sys.stderr)
        return 2
    console = Console(highlight=False)
    if args.once:
        try:
            return _once(console, url, args)
        except KeyboardInterrupt:
            return 130
    return _live(console, url, args)


def _refresh(screen: Any, timeout: float) -> None:
    from ..top.fetch import FetchError, fetch_node
    from ..top.view import ShapeError, build_view

    try:
        data = fetch_node(screen.url, timeout)
        screen.view = build_view(data.gpus, data.jobs)
        screen.error = ""
    except (FetchError, ShapeError) as exc:
        screen.error = str(exc)


def _once(console: Any, url: str, args: argparse.Namespace) -> int:
    from ..top.render import Screen

    screen = Screen(url, sort_key=args.sort, reverse=args.reverse, interval=args.interval, live=False)
    _refresh(screen, timeout=max(5.0, args.interval))
    if screen.error:
        print(f"mfu-agent top: {screen.error}", file=sys.stderr)
        return 1
    console.print(screen)
    return 0


def _live(console: Any, url: str, args: argparse.Namespace) -> int:
    from rich.live import Live

    from ..top.keys import KeyReader
    from ..top.render import Screen

    screen = Screen(url, sort_key=args.sort, reverse=args.reverse, interval=args.interval)
    signal.signal(signal.SIGTERM, _interrupt)  # so the terminal is restored on SIGTERM too
    try:
        if not console.is_terminal:  # output to a file or pipe: one frame after another, like top -b
            screen.live = False
            while True:
                _refresh(screen, timeout=max(2.0, args.interval))
                console.print(screen)
                time.sleep(args.interval)
        with KeyReader() as keys, Live(screen, console=console, screen=True, auto_refresh=False) as live:
            while True:
                _refresh(screen, timeout=max(2.0, args.interval))
                live.refresh()
                deadline = time.monotonic() + args.interval
                size = console.size
                while (left := deadline - time.monotonic()) > 0:
                    pressed = keys.wait(min(left, RESIZE_CHECK_SECONDS))
                    if pressed and not _apply_keys(screen, pressed):
                        return 0
                    if pressed or console.size != size:  # a key, or the terminal (or tmux pane) resized
                        size = console.size
                        live.refresh()
    except KeyboardInterrupt:  # Ctrl-C: the usual way out of a top
        return 0


def _apply_keys(screen: Any, pressed: str) -> bool:
    """Applies the keys to the screen; False on q (quit)."""
    from ..top.view import SORT_KEYS

    for key in pressed:
        if key == "\x1b":  # an escape sequence (arrows and such): not ours
            break
        if key in "qQ":
            return False
        if key in "sS":
            step = 1 if key == "s" else -1
            screen.sort_key = SORT_KEYS[(SORT_KEYS.index(screen.sort_key) + step) % len(SORT_KEYS)]
        elif key == "r":
            screen.reverse = not screen.reverse
    return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
