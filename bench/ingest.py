"""2. Report ingestion: reports/s one agent process sustains from a loopback load generator, against a
bare FastAPI endpoint that parses the same JSON and does nothing, served the same way.

Beside the rates, each server's CPU time per report (utime + stime from /proc over the run, warm-up
included): on a shared machine the rates move with whatever else runs, while the CPU a server spends
per report moves much less, so the CPU ratio is the steadier reading of the same cost."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from mfu_agent.jobs.registry import JobRegistry

from .common import ROOT, cpu_seconds, server
from .fixtures import make_agent, report

MODES = ((1, "single report per request"), (50, "batches of 50 reports"))
CONCURRENCY = 16


def _load(port: int, batch: int, seconds: float, warmup: float) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--batch",
            str(batch),
            "--concurrency",
            str(CONCURRENCY),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + warmup + 60,
        check=True,
    )
    return json.loads(out.stdout)


def apply_scaling(quick: bool) -> list[dict]:
    """In-process JobRegistry.apply() cost per report as the number of tracked ranks grows (single
    reports and batches of 50), each rank already known: the steady state of a busy agent."""
    snapshot = make_agent(8, 0).sampler.latest
    out = []
    for tracked in (128, 1024, 4096):
        reports = [[report(r, 8, 1000.0 + k, 100.0 + k) for r in range(tracked)] for k in range(3)]
        row: dict = {"tracked": tracked}
        for batch in (1, 50):
            best = float("inf")
            for _ in range(2 if quick else 3):
                # The series budget is bench/budget.py's subject: here it only has to hold 4,096 ranks.
                registry = JobRegistry(max_ranks=4096, max_series=10_000_000, clock=lambda: 1002.0)
                for i in range(0, tracked, 256):
                    registry.apply(reports[0][i : i + 256], snapshot)
                items = reports[1] + reports[2]
                started = time.perf_counter_ns()
                for i in range(0, len(items), batch):
                    registry.apply(items[i : i + batch], snapshot)
                best = min(best, (time.perf_counter_ns() - started) / len(items))
            row[f"ns_per_report_batch_{batch}"] = best
        out.append(row)
    return out


def run(quick: bool, log) -> dict:
    rounds = 2 if quick else 3
    seconds = 2.0 if quick else 5.0
    warmup = 0.5 if quick else 1.0
    results: dict = {"concurrency": CONCURRENCY, "seconds_per_run": seconds, "rounds": rounds, "modes": []}
    with server("agent", gpus=8) as (agent_proc, agent_port), server("bare") as (bare_proc, bare_port):
        results["agent_pid"], results["bare_pid"] = agent_proc.pid, bare_proc.pid
        for batch, label in MODES:
            runs: dict[str, list[dict]] = {"agent": [], "bare": []}
            for i in range(rounds):
                # Alternate which server goes first, so drift in the machine's load favours neither.
                order = (("bare", bare_port), ("agent", agent_port))
                for name, port in order if i % 2 == 0 else order[::-1]:
                    pid = agent_proc.pid if name == "agent" else bare_proc.pid
                    cpu_before = cpu_seconds(pid)
                    result = _load(port, batch, seconds, warmup)
                    served = result["reports"] + result["warmup_requests"] * batch
                    result["server_cpu_us_per_report"] = (cpu_seconds(pid) - cpu_before) / served * 1e6
                    runs[name].append(result)
            agent_rate = statistics.median(r["reports_per_s"] for r in runs["agent"])
            bare_rate = statistics.median(r["reports_per_s"] for r in runs["bare"])
            agent_cpu = statistics.median(r["server_cpu_us_per_report"] for r in runs["agent"])
            bare_cpu = statistics.median(r["server_cpu_us_per_report"] for r in runs["bare"])
            paired = [
                a["reports_per_s"] / b["reports_per_s"]
                for a, b in zip(runs["agent"], runs["bare"], strict=True)
            ]
            mode = {
                "batch": batch,
                "label": label,
                "agent_reports_per_s": agent_rate,
                "bare_reports_per_s": bare_rate,
                "ratio": agent_rate / bare_rate,
                "paired_ratios": paired,
                "agent_cpu_us_per_report": agent_cpu,
                "bare_cpu_us_per_report": bare_cpu,
                "cpu_ratio": bare_cpu / agent_cpu,
                "agent_non2xx": sum(r["non2xx"] for r in runs["agent"]),
                "agent_errors": sum(r["errors"] for r in runs["agent"]),
                "bare_non2xx": sum(r["non2xx"] for r in runs["bare"]),
                "bare_errors": sum(r["errors"] for r in runs["bare"]),
                "agent_requests": sum(r["requests"] for r in runs["agent"]),
                "agent_latency_p99_ms": statistics.median(r["latency_ns"]["p99"] for r in runs["agent"])
                / 1e6,
                "bare_latency_p99_ms": statistics.median(r["latency_ns"]["p99"] for r in runs["bare"]) / 1e6,
                "runs": runs,
            }
            log(
                f"  {label}: agent {agent_rate:,.0f} reports/s, bare {bare_rate:,.0f} reports/s, "
                f"ratio {mode['ratio']:.2f} (paired {', '.join(f'{p:.2f}' for p in paired)}); "
                f"server CPU per report: agent {agent_cpu:.1f} µs, bare {bare_cpu:.1f} µs, "
                f"ratio {mode['cpu_ratio']:.2f}; "
                f"agent non-2xx {mode['agent_non2xx']}, errors {mode['agent_errors']}"
            )
            results["modes"].append(mode)
    results["apply_scaling"] = apply_scaling(quick)
    for row in results["apply_scaling"]:
        log(
            f"  JobRegistry.apply, {row['tracked']:>4} ranks tracked: "
            f"{row['ns_per_report_batch_1'] / 1000:.1f} µs per single report, "
            f"{row['ns_per_report_batch_50'] / 1000:.1f} µs per report in batches of 50"
        )
    return results
