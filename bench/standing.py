"""4. Standing cost: agent CPU and RSS over a run (8 simulated GPUs, 8 ranks reporting every second,
a Prometheus-like scrape every 15 s), against a bare FastAPI process given the same traffic; and memory
after a million reports over many short-lived jobs (in-process, fake clock)."""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
import urllib.request

from mfu_agent.client import Reporter
from mfu_agent.jobs.registry import JobRegistry, ReportData
from mfu_agent.sampler import Sampler

from .common import cpu_seconds, rss_bytes, server
from .fixtures import GPU_MODEL
from .scrape import PROMETHEUS_ACCEPT

RANKS = 8
SCRAPE_EVERY = 15.0
WARMUP = 10.0  # seconds after start-up not counted: imports, first requests, allocator growth


def _scrape(port: int) -> tuple[int, float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return len(body), time.perf_counter() - started


def _reporters(port: int, job: str, gpus: list[int | str] | None = None) -> list[Reporter]:
    """RANKS reporters, rank r on GPU r, or on gpus[r] (a MIG device's UUID, say)."""
    return [
        Reporter(
            job_id=job,
            flops_per_step=6.0 * 7e9 * 4096,
            tokens_per_step=4096,
            url=f"http://127.0.0.1:{port}",
            rank=r,
            local_rank=r,
            world_size=RANKS,
            gpus=[r if gpus is None else gpus[r]],
            interval=1.0,
        )
        for r in range(RANKS)
    ]


def _thirds(samples: list[tuple[float, float, int]]) -> dict:
    """CPU % of one core and mean RSS in the first, middle and last third of the measured window."""
    n = len(samples)
    out = {}
    for name, part in (("first", samples[: n // 3 + 1]), ("middle", samples[n // 3 : 2 * n // 3 + 1]),
                       ("last", samples[2 * n // 3 :])):  # fmt: skip
        (t0, c0, _), (t1, c1, _) = part[0], part[-1]
        out[name] = {
            "cpu_percent": 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan"),
            "rss_mean_bytes": statistics.mean(r for _, _, r in part),
            "rss_max_bytes": max(r for _, _, r in part),
        }
    return out


def run_process(seconds: float, log) -> dict:
    with server("agent", gpus=8) as (agent, agent_port), server("bare") as (bare, bare_port):
        out = measure({"agent": (agent.pid, agent_port, None), "bare": (bare.pid, bare_port, None)}, seconds)
    out["gpus"] = 8
    out["cpu_ratio"] = (
        out["agent"]["cpu_percent"] / out["bare"]["cpu_percent"] if out["bare"]["cpu_percent"] else None
    )
    out["cpu_difference_percent"] = out["agent"]["cpu_percent"] - out["bare"]["cpu_percent"]
    out["rss_ratio"] = out["agent"]["rss_max_bytes"] / out["bare"]["rss_max_bytes"]
    a, b = out["agent"], out["bare"]
    mib = 2**20
    first, last = a["thirds"]["first"]["rss_mean_bytes"] / mib, a["thirds"]["last"]["rss_mean_bytes"] / mib
    log(
        f"  {seconds:.0f} s: agent {a['cpu_percent']:.2f}% of a core, RSS {a['rss_max_bytes'] / mib:.1f} MiB "
        f"(first third {first:.1f}, last {last:.1f}); "
        f"bare {b['cpu_percent']:.2f}%, {b['rss_max_bytes'] / mib:.1f} MiB; posts {out['posts']}"
    )
    return out


def measure(
    procs: dict[str, tuple[int, int, list[int | str] | None]], seconds: float, warmup: float = WARMUP
) -> dict:
    """Runs RANKS reporters against each server {name: (pid, port, GPUs the ranks name or None)} and a
    scrape of each every SCRAPE_EVERY seconds, all at once, so that they share the machine's noise;
    reads each process's CPU time and RSS every second after `warmup` for `seconds`."""
    reporters = {name: _reporters(port, "standing", gpus) for name, (_, port, gpus) in procs.items()}
    everyone = [r for group in reporters.values() for r in group]
    stop = threading.Event()

    def train() -> None:  # every rank steps 10 times a second
        while not stop.wait(0.1):
            for reporter in everyone:
                reporter.step()

    stepper = threading.Thread(target=train, daemon=True)
    stepper.start()
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in procs}
    scrapes: dict[str, list[float]] = {name: [] for name in procs}
    scrape_bytes: dict[str, int] = {}
    started = time.monotonic()
    next_scrape = started + warmup / 2
    try:
        time.sleep(warmup)
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for name, (pid, _, _) in procs.items():
                samples[name].append((now, cpu_seconds(pid), rss_bytes(pid)))
            if now >= end:
                break
            if now >= next_scrape:
                for name, (_, port, _) in procs.items():
                    size, took = _scrape(port)
                    scrapes[name].append(took)
                    scrape_bytes[name] = size
                next_scrape += SCRAPE_EVERY
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    finally:
        stop.set()
        stepper.join(5)
        delivered = {name: sum(r.stats["posts_ok"] for r in group) for name, group in reporters.items()}
        delivered["failed"] = sum(r.stats["posts_failed"] for r in everyone)
        for reporter in everyone:
            reporter.close(timeout=0.5)
    out: dict = {"seconds": seconds, "warmup_seconds": warmup, "ranks": RANKS,
                 "scrape_every_seconds": SCRAPE_EVERY, "posts": delivered}  # fmt: skip
    for name, rows in samples.items():
        (t0, c0, _), (t1, c1, _) = rows[0], rows[-1]
        thirds = _thirds(rows)
        out[name] = {
            "cpu_percent": 100.0 * (c1 - c0) / (t1 - t0),
            "rss_start_bytes": rows[0][2],
            "rss_end_bytes": rows[-1][2],
            "rss_max_bytes": max(r for _, _, r in rows),
            "thirds": thirds,
            "rss_growth_last_vs_first_third_bytes": thirds["last"]["rss_mean_bytes"]
            - thirds["first"]["rss_mean_bytes"],
            "scrape_seconds": scrapes[name],
            "scrape_bytes": scrape_bytes.get(name, 0),
        }
    return out


def run_million(total: int, log) -> dict:
    """`total` reports from short-lived jobs of 10 ranks, each rank reporting once a (fake) second for
    100 s (10 s for fewer than a million reports); a new job starts every fake second; ranks expire 30 s
    after their last report.

    Memory is read 20 times as Python's count of live memory blocks (sys.getallocatedblocks: every
    live object, free to read, where tracemalloc would make this run 6x slower) and as RSS. In the steady
    state (as many jobs running and expiring as ever) it must stay flat, and once every rank expired it
    must fall back."""
    ranks_per_job, ttl = 10, 30.0
    reports_per_rank = 100 if total >= 1_000_000 else 10
    jobs = total // (ranks_per_job * reports_per_rank)
    clock = [0.0]
    registry = JobRegistry(window_seconds=60.0, rank_ttl_seconds=ttl, clock=lambda: clock[0])
    snapshot = Sampler(_simulated()).sample_once()
    gc.collect()
    base = sys.getallocatedblocks()
    checkpoints = []
    applied = 0
    max_tracked = 0
    last_t = jobs + reports_per_rank
    step = max(1, last_t // 20)
    started = time.perf_counter()
    for t in range(last_t):
        clock[0] = 1_000_000.0 + t
        for job in range(max(0, t - reports_per_rank + 1), min(t + 1, jobs)):
            progress = t - job + 1
            batch = [
                ReportData(
                    job_id=f"short-{job}",
                    rank=rank,
                    model_flops={"bf16": 4e14 * progress},
                    gpus=(rank % 8,),
                    tokens_total=4096.0 * progress,
                    step=progress,
                    timestamp=clock[0],
                )
                for rank in range(ranks_per_job)
            ]
            applied += registry.apply(batch, snapshot)
        if t % 15 == 0:  # a scrape
            registry.views()
        max_tracked = max(max_tracked, len(registry))
        if (t + 1) % step == 0:
            gc.collect()
            checkpoints.append(
                {
                    "t": t,
                    "reports": applied,
                    "tracked": len(registry),
                    "blocks": sys.getallocatedblocks() - base,
                    "rss_bytes": rss_bytes(),
                }
            )
    elapsed = time.perf_counter() - started
    clock[0] += ttl + 1  # every job has ended: once their ranks expire, what is left?
    registry.views()
    gc.collect()
    after_expiry = sys.getallocatedblocks() - base
    # Steady state: from when the first jobs' ranks expire until the last job starts.
    steady = [c for c in checkpoints if reports_per_rank + ttl <= c["t"] < jobs] or checkpoints
    result = {
        "reports": applied,
        "pairs": jobs * ranks_per_job,
        "jobs": jobs,
        "reports_per_rank": reports_per_rank,
        "ttl_seconds": ttl,
        "seconds": elapsed,
        "max_tracked": max_tracked,
        "expired_total": registry.expired_total,
        "checkpoints": checkpoints,
        "steady_blocks_min": min(c["blocks"] for c in steady),
        "steady_blocks_max": max(c["blocks"] for c in steady),
        "steady_first_blocks": steady[0]["blocks"],
        "steady_last_blocks": steady[-1]["blocks"],
        "steady_first_rss_bytes": steady[0]["rss_bytes"],
        "steady_last_rss_bytes": steady[-1]["rss_bytes"],
        "peak_blocks": max(c["blocks"] for c in checkpoints),
        "after_all_expired_blocks": after_expiry,
        "tracked_after_all_expired": len(registry),
    }
    log(
        f"  {applied:,} reports over {jobs * ranks_per_job:,} (job, rank) pairs in {elapsed:.1f} s: at most "
        f"{max_tracked} tracked; live blocks in steady state {result['steady_blocks_min']:,}-"
        f"{result['steady_blocks_max']:,} (first {result['steady_first_blocks']:,}, last "
        f"{result['steady_last_blocks']:,}), {after_expiry:,} once all expired; RSS "
        f"{steady[0]['rss_bytes'] / 2**20:.1f} -> {steady[-1]['rss_bytes'] / 2**20:.1f} MiB "
        f"(expired {registry.expired_total:,})"
    )
    return result


def _simulated():
    from mfu_agent.gpu.simulated import SimulatedBackend

    return SimulatedBackend(f"8x{GPU_MODEL}")
