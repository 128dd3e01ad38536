"""Takes docs/landing.png: the page at / in headless Chromium (1280x900), once every job shows its MFU.

    python scripts/landing_screenshot.py [OUT.png]          # starts `mfu-agent demo`; make landing-screenshot
    python scripts/landing_screenshot.py OUT.png --url URL  # an agent already running

The browser and its flags are tests/chromium.py's, the ones the tests use."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from chromium import screenshot  # noqa: E402  (tests/chromium.py)

DEMO_NODE = "gpu-node-01"


def every_rank_has_mfu(url: str, jobs: int) -> bool:
    with urllib.request.urlopen(url + "/v1/jobs", timeout=5) as response:
        listed = json.load(response)["jobs"]
    return len(listed) >= jobs and all(rank["mfu"] is not None for job in listed for rank in job["ranks"])


def wait_for_jobs(url: str, jobs: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if every_rank_has_mfu(url, jobs):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"landing_screenshot: {url}: {jobs} job(s) without MFU after {within:g} s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "landing.png"))
    parser.add_argument("--url", help="an agent already running (default: start `mfu-agent demo`)")
    args = parser.parse_args()
    if args.url:
        wait_for_jobs(args.url, 1)
        screenshot(args.url + "/", args.out)
        return 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = subprocess.Popen(
        [sys.executable, "-m", "mfu_agent.cli", "demo", "--listen", f"127.0.0.1:{port}"]
        + ["--node-name", DEMO_NODE, "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        wait_for_jobs(url, 2)  # the main job and the one on a MIG device
        screenshot(url + "/", args.out)
    finally:
        demo.terminate()
        demo.wait(15)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
