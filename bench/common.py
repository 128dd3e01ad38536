"""Shared helpers: machine description, statistics, timers, subprocess servers, /proc readers."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    import fastapi
    import prometheus_client
    import pydantic
    import uvicorn

    versions = {
        "python": platform.python_version(),
        "prometheus_client": getattr(prometheus_client, "__version__", "") or _dist("prometheus_client"),
        "fastapi": fastapi.__version__,
        "pydantic": pydantic.VERSION,
        "uvicorn": uvicorn.__version__,
    }
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "versions": versions,
    }


def _dist(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


# -- statistics ---------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p99": pct(values, 99),
        "min": min(values) if values else float("nan"),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Waits until GET path on 127.0.0.1:port answers 200."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered 200 on 127.0.0.1:{port}{path} within {timeout}s")


@contextlib.contextmanager
def server(
    kind: str,
    gpus: int = 8,
    extra: Sequence[str] = (),
    spec: str | None = None,
    fake_nvml: dict | None = None,
) -> Iterator[tuple[subprocess.Popen, int]]:
    """Starts a server in its own process: "agent" (mfu-agent run, simulated GPUs: `gpus` H100s, or the
    --simulate `spec`), "agent-fake-nvml" (mfu-agent run --backend nvml with the tests' fake
    libnvidia-ml, tests/fake_nvml_agent.py, serving the devices of the `fake_nvml` config) or "bare"
    (the parse-only FastAPI app of bench.bare_server). All run uvicorn with the same settings."""
    port = free_port()
    env = None
    config = None
    common = ["--listen", f"127.0.0.1:{port}", "--log-level", "warning", *extra]
    if kind == "agent":
        simulate = spec or f"{gpus}xNVIDIA H100 80GB HBM3"
        cmd = [sys.executable, "-m", "mfu_agent.cli", "run", "--backend", "simulated", "--simulate", simulate]
        cmd += common
    elif kind == "agent-fake-nvml":
        fd, config = tempfile.mkstemp(prefix="mfu-bench-nvml-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(fake_nvml or {"devices": [{}] * gpus}, f)
        cmd = [sys.executable, str(ROOT / "tests" / "fake_nvml_agent.py"), config, "run", "--backend", "nvml"]
        cmd += common
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests")))}
    elif kind == "bare":
        cmd = [sys.executable, "-m", "bench.bare_server", "--port", str(port), *extra]
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_http(port)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if config is not None:
            os.unlink(config)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs"


def fmt_ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"
