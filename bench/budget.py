"""7. At the series budget (issue 11): ranks fill --max-series (default 100,000 series on /metrics), and
two things are measured against bare prometheus_client serving the very same series:

* render time of /metrics in-process (both formats a scraper gets), interleaved with the baseline's;
* the memory of the agent process (RSS) while two scrapes run at once, against the DaemonSet's memory
  limit, and a process serving the same series with prometheus_client's own HTTP server.

The ranks are the costly kind the budget allows: each on all 8 GPUs of the node, FP8 and BF16 model and
hardware FLOPs, tokens, samples and a step (141 series a rank), job ids of 126 characters and label
values of 390 characters (pod 253, namespace 63, hostname 64, Slurm job id 10), 8 ranks a job; they are
added until the agent refuses one with 429.

    python -m bench.run --only budget [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.jobs.registry import ReportData, ReportRejected

from .common import ROOT, free_port, server, summary
from .fixtures import GPU_MODEL, plain_registry, series_count
from .scrape import FORMATS, PROMETHEUS_ACCEPT, _time_interleaved, renders_against_baseline

GPUS = 8
RANKS_PER_JOB = 8
LABELS = {"pod": "p" * 253, "namespace": "n" * 63, "hostname": "h" * 64, "slurm_job_id": "1234567_89"}
DAEMONSET = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"


def job_id(rank: int) -> str:
    return f"{'j' * 118}-{rank // RANKS_PER_JOB:07d}"  # 126 characters


def report_json(rank: int, t: float) -> dict:
    progress = t - 1_000.0
    return {
        "job_id": job_id(rank),
        "rank": rank,
        "gpus": list(range(GPUS)),
        "model_flops_total": {"fp8": 3e14 * progress, "bf16": 1e14 * progress},
        "hardware_flops_total": {"fp8": 4e14 * progress, "bf16": 1.5e14 * progress},
        "tokens_total": 4096.0 * progress,
        "samples_total": 2.0 * progress,
        "step": int(progress),
        "timestamp": t,
        "instance": f"bench-{rank}",
        "interval": 3600,  # alive all along: nothing is evicted while the bench runs
        "labels": LABELS,
    }


def _data(item: dict) -> ReportData:
    from mfu_agent.api.models import ONE, to_data

    return to_data(ONE.validate_python(item))


def filled_agent() -> tuple[Agent, int]:
    """An agent (threads not started) filled to the budget in-process; returns it and its ranks."""
    # A clock that stands still (the GPUs' reading age is computed at scrape time): every render is the
    # same page, which the bench compares byte for byte with the library's.
    now = time.time()
    agent = Agent(
        SimulatedBackend(f"{GPUS}x{GPU_MODEL}"), AgentOptions(node_name="bench-node"), clock=lambda: now
    )
    snapshot = agent.sampler.sample_once()
    ranks = 0
    while True:
        try:
            agent.jobs.apply([_data(report_json(ranks, now - 10.0))], snapshot)
        except ReportRejected as exc:
            assert exc.status == 429, exc.message
            break
        ranks += 1
    for rank in range(ranks):
        agent.jobs.apply([_data(report_json(rank, now))], snapshot)
    return agent, ranks


def render_times(quick: bool, log) -> dict:
    agent, ranks = filled_agent()
    text = generate_latest(agent.registry)
    baseline = plain_registry(text.decode())
    renders, identical = renders_against_baseline(agent, baseline, served=True)
    times = _time_interleaved(renders, 2.0 if quick else 20.0, 3 if quick else 10)
    stats = {name: summary(t) for name, t in times.items()}
    row = {
        "ranks": ranks,
        "series": series_count(text.decode()),
        "estimate": agent.jobs.series() + agent.other_series(),
        "bytes": len(text),
        "baseline_identical_output": identical,
        "ns": stats,
    }
    for fmt in FORMATS:
        row[f"ratio_{fmt}"] = stats[f"agent_{fmt}"]["median"] / stats[f"baseline_{fmt}"]["median"]
        row[f"ratio_{fmt}_p99"] = stats[f"agent_{fmt}"]["p99"] / stats[f"baseline_{fmt}"]["p99"]
    ms = {k: v["median"] / 1e6 for k, v in stats.items()}
    log(
        f"  {ranks} ranks, {row['series']:,} series ({row['bytes'] / 2**20:.1f} MiB), median ms: text "
        f"{ms['agent_text']:.0f} / baseline {ms['baseline_text']:.0f} (x{row['ratio_text']:.2f}); "
        f"OpenMetrics {ms['agent_openmetrics']:.0f} / {ms['baseline_openmetrics']:.0f} "
        f"(x{row['ratio_openmetrics']:.2f}); n={stats['baseline_text']['n']}"
    )
    return row


# -- memory of the processes --------------------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _reset_peak(pid: int) -> bool:
    """Resets VmHWM (the peak RSS) of the process: /proc/<pid>/clear_refs, Linux 4.0 and later."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _fetch(port: int) -> tuple[int, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": PROMETHEUS_ACCEPT})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        size = len(response.read())
    return size, time.perf_counter() - started


def _one_round(pid: int, port: int, scrapes: int) -> tuple[int, list[float]]:
    """`scrapes` scrapes at once; the highest RSS sampled meanwhile (every 2 ms) and their wall times."""
    sampled = [_status(pid)["VmRSS"]]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sampled.append(_status(pid)["VmRSS"])
            time.sleep(0.002)

    walls: list[float] = []
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=lambda: walls.append(_fetch(port)[1])) for _ in range(scrapes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    return max(sampled), walls


def concurrent_scrapes(pid: int, port: int, scrapes: int = 2, rounds: int = 3) -> dict:
    """Peak RSS while `scrapes` scrapes run at once, `rounds` times; RSS sampled every 2 ms as well as
    the kernel's own peak (VmHWM, reset before each round where the kernel allows)."""
    _fetch(port)  # warm: the first render allocates what later ones reuse
    idle = _status(pid)["VmRSS"]
    peaks, walls = [], []
    for _ in range(rounds):
        resettable = _reset_peak(pid)
        peak, wall = _one_round(pid, port, scrapes)
        hwm = _status(pid)["VmHWM"] if resettable else 0
        peaks.append(max(peak, hwm))
        walls.extend(wall)
        time.sleep(0.5)
    return {
        "idle_rss_bytes": idle,
        "peak_rss_bytes": max(peaks),
        "peak_rss_rounds": peaks,
        "scrape_wall_s": summary(walls),
        "kernel_peak": resettable,
    }


def _fill_over_http(port: int) -> int:
    """Posts ranks (batches of 50, then one at a time) until the agent answers 429; then a second report of
    each, 10 s later in the sender's time, so MFU, HFU and the rates are there."""
    now = time.time()

    def post(items: list[dict]) -> int:
        data = json.dumps(items).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/reports", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    ranks, step = 0, 50
    while step:
        status = post([report_json(r, now - 10.0) for r in range(ranks, ranks + step)])
        if status == 202:
            ranks += step
        elif status == 429:
            step = 1 if step > 1 else 0
        else:
            raise RuntimeError(f"unexpected status {status}")
    for first in range(0, ranks, 50):
        assert post([report_json(r, now) for r in range(first, min(ranks, first + 50))]) == 202
    return ranks


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            _fetch(port)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the baseline server on port {port} did not answer")


def memory_limit_bytes() -> int:
    """The largest container memory limit in the DaemonSet: the agent's (384Mi today; the init
    container's is smaller)."""
    units = {"Mi": 2**20, "Gi": 2**30}
    found, in_limits, indent = [], False, 0
    for line in DAEMONSET.read_text().splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip() == "limits:":
            in_limits, indent = True, depth
        elif in_limits and depth <= indent:
            in_limits = False
        elif in_limits and (m := re.fullmatch(r"\s*memory:\s*(\d+)(Mi|Gi)", line)):
            found.append(int(m.group(1)) * units[m.group(2)])
    return max(found)


def process_memory(quick: bool, log) -> dict:
    rounds = 2 if quick else 5
    with server("agent", gpus=GPUS) as (agent, port):
        ranks = _fill_over_http(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            text = response.read().decode()
        series = series_count(text)
        agent_mem = concurrent_scrapes(agent.pid, port, rounds=rounds)
    with tempfile.NamedTemporaryFile("w", suffix=".prom", delete=False) as f:
        f.write(text)
        path = f.name
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.budget", "--serve", path, "--port", str(bare_port)], cwd=ROOT
    )
    try:
        _wait_ready(bare, bare_port)
        bare_mem = concurrent_scrapes(bare.pid, bare_port, rounds=rounds)
    finally:
        bare.terminate()
        bare.wait(10)
        Path(path).unlink()
    limit = memory_limit_bytes()
    out = {
        "ranks": ranks,
        "series": series,
        "memory_limit_bytes": limit,
        "agent": agent_mem,
        "bare": bare_mem,
    }
    mib = 2**20
    log(
        f"  agent: {ranks} ranks, {series:,} series; RSS idle {agent_mem['idle_rss_bytes'] / mib:.0f} MiB, "
        f"peak with two scrapes {agent_mem['peak_rss_bytes'] / mib:.0f} MiB (limit {limit / mib:.0f} MiB), "
        f"scrape {agent_mem['scrape_wall_s']['median']:.2f} s; bare prometheus_client: idle "
        f"{bare_mem['idle_rss_bytes'] / mib:.0f} MiB, peak {bare_mem['peak_rss_bytes'] / mib:.0f} MiB, "
        f"scrape {bare_mem['scrape_wall_s']['median']:.2f} s"
    )
    return out


def run(quick: bool, log) -> dict:
    return {"render": render_times(quick, log), "memory": process_memory(quick, log)}


def serve_bare(path: str, port: int) -> None:
    """The baseline process: the series of `path` in a plain registry, served by prometheus_client's own
    HTTP server (a thread per request, the whole page rendered, then written)."""
    from prometheus_client import start_http_server

    registry = plain_registry(Path(path).read_text())
    server_, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    thread.join()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_bare(args.serve, args.port)
