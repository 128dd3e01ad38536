"""A real headless Chromium (Debian's `chromium`, installed by `make test` through
scripts/apt-install.sh chromium): the DOM of a page after its scripts ran, or a screenshot.

Each call starts a fresh browser with its own profile. The flags keep it off the network except for the
page it is given: without the background-networking ones it dials Google's services, which a closed
network refuses (and it waits on them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

INSTALL_HINT = "chromium is missing: `make test` installs Debian's chromium (scripts/apt-install.sh chromium)"

FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(INSTALL_HINT)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="mfu-chromium-") as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": profile},  # nothing written to the real home
        )
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-3000:]}"
    return result


def dump_dom(url: str, budget_ms: int = 3000, timeout: float = 120) -> str:
    """The serialized DOM once the page's scripts have run for `budget_ms` of virtual time (timers run
    ahead of the clock; fetches in flight hold it)."""
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout).stdout


def screenshot(url: str, path: str, width: int = 1280, height: int = 900, budget_ms: int = 3000) -> None:
    """A PNG of the first `width` x `height` pixels of the page."""
    size = f"--window-size={width},{height}"
    _run([f"--virtual-time-budget={budget_ms}", size, f"--screenshot={path}", url], timeout=120)
