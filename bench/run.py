"""mfu-agent performance benchmarks, each against a baseline measured in the same run.

    .venv/bin/python -m bench.run                  # full run, about 18 minutes on 2 cores
    .venv/bin/python -m bench.run --quick          # about 4 minutes, for a smoke check
    .venv/bin/python -m bench.run --json out.json  # raw numbers as JSON too
    .venv/bin/python -m bench.run --only scrape client --standing-seconds 300
    .venv/bin/python -m bench.run --only mig       # 8 GPUs x 7 MIG devices against 8 whole GPUs
    .venv/bin/python -m bench.rules_scale [--quick]  # the rules section alone (with more options)

Results and how to read them: docs/performance.md. Nothing here is a test: timings are reported,
never asserted; the targets are checked and printed as met or missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

import signal  # noqa: E402

from bench import budget, client, ingest, mig, rules_scale, sampler, scrape, standing  # noqa: E402
from bench.common import machine  # noqa: E402

SECTIONS = ("scrape", "ingest", "client", "standing", "million", "sampler", "mig", "budget", "rules")


def log(message: str) -> None:
    print(message, flush=True)


def targets(results: dict) -> list[dict]:
    """Every target of the issue: the measured figure, the target and whether it is met."""
    rows: list[dict] = []

    def add(name: str, value: float | None, target: str, ok: bool | None, unit: str = "") -> None:
        rows.append({"target": name, "value": value, "unit": unit, "goal": target, "met": ok})

    if "scrape" in results:
        kind = results["scrape"]["endpoint"]
        for row in results["scrape"]["rows"]:
            where = f"{row['gpus']} GPUs x {row['ranks']} ranks"
            for stat, suffix in (("median", ""), ("p99", "_p99")):
                worst = max(row[f"ratio_{fmt}_endpoint{suffix}"] for fmt in ("text", "openmetrics"))
                add(f"/metrics {where} / baseline, {stat} (worse of text, OpenMetrics)",
                    worst, "<= 1.5", worst <= 1.5, "x")  # fmt: skip
        for row in results["scrape"]["rows"]:
            if row["gpus"] == 8 and row["ranks"] == 64:
                for fmt in ("text", "openmetrics"):
                    ms = row["ns"][f"agent_{fmt}_{kind}"]["median"] / 1e6
                    add(f"/metrics, {fmt}, 8 GPUs x 64 ranks, median", ms, "< 10", ms < 10, "ms")
    if "ingest" in results:
        for mode in results["ingest"]["modes"]:
            add(
                f"ingestion, {mode['label']} / bare FastAPI",
                mode["ratio"],
                ">= 0.6",
                mode["ratio"] >= 0.6,
                "x",
            )
            if "cpu_ratio" in mode:
                add(
                    f"ingestion, {mode['label']} / bare FastAPI, server CPU per report",
                    mode["cpu_ratio"],
                    ">= 0.6",
                    mode["cpu_ratio"] >= 0.6,
                    "x",
                )
            errors = mode["agent_non2xx"] + mode["agent_errors"]
            add(f"ingestion, {mode['label']}: non-2xx + errors", errors, "0", errors == 0)
    if "client" in results:
        c = results["client"]
        for state in ("agent_up", "agent_down"):
            ns = c[state]["step"]["median"]
            add(f"Reporter.step() median, {state.replace('_', ' ')}", ns / 1000, "< 5", ns < 5000, "µs")
        loop = c.get("torch_loop")
        if loop:
            ns = loop["in_loop_ns"]["step"]["median"]
            add(
                "Reporter.step() median inside the torch loop (cold caches)",
                ns / 1000,
                "< 5",
                ns < 5000,
                "µs",
            )
        if loop:
            lo, hi = loop["paired_ratio_median_ci95"]
            ratio = loop["paired_ratio_median"]
            # "No measurable slowdown": the 95% confidence interval of the median with/without ratio
            # reaches 1.0 (no slowdown can be told from noise), or the slowdown is under 1%.
            ok = lo <= 1.0 or ratio <= 1.01
            add("torch loop step time with / without reporter (median of paired rounds)", ratio,
                f"95% CI {lo:.4f}-{hi:.4f} reaches 1, or <= 1.01", ok, "x")  # fmt: skip
        mem = c["memory_agent_down"]
        growth = mem["traced_growth_bytes"]
        # A leak of one byte per step, or 100 bytes per failed post, would exceed this.
        add(f"client memory growth, {mem['steps']:,} steps with the agent down (tracemalloc)",
            growth, "flat (< 16 KiB)", growth < 16384, "bytes")  # fmt: skip
    if "standing" in results:
        s = results["standing"]
        cpu = s["agent"]["cpu_percent"]
        add("agent CPU, 8 GPUs, 8 ranks, 1 s interval", cpu, "< 2", cpu < 2, "% of a core")
        rss = s["agent"]["rss_max_bytes"] / 2**20
        add("agent RSS", rss, "< 100", rss < 100, "MiB")
        growth = s["agent"]["rss_growth_last_vs_first_third_bytes"] / 2**20
        add("agent RSS growth, last third vs first third", growth, "no growth (< 1 MiB)", growth < 1, "MiB")
    if "million" in results:
        m = results["million"]
        growth = m["steady_last_blocks"] - m["steady_first_blocks"]
        steady = m["steady_first_blocks"]
        add(f"live memory blocks, growth in steady state, {m['reports']:,} reports", growth,
            f"flat (< 5% of {steady:,})", growth < 0.05 * steady, "")  # fmt: skip
        left = m["after_all_expired_blocks"]
        add("live memory blocks once every rank expired", left,
            f"< 5% of the peak {m['peak_blocks']:,}", left < 0.05 * m["peak_blocks"], "")  # fmt: skip
    if "mig" in results:
        for name, value, goal, ok, unit in mig.targets(results["mig"]):
            add(name, value, goal, ok, unit)
    if "budget" in results:
        render, memory = results["budget"]["render"], results["budget"]["memory"]
        where = f"at the series budget ({render['series']:,} series)"
        for stat, suffix in (("median", ""), ("p99", "_p99")):
            worst = max(render[f"ratio_{fmt}{suffix}"] for fmt in ("text", "openmetrics"))
            add(f"/metrics {where} / bare prometheus_client, {stat} (worse of text, OpenMetrics)",
                worst, "<= 1.5", worst <= 1.5, "x")  # fmt: skip
        peak = memory["agent"]["peak_rss_bytes"] / 2**20
        half = memory["memory_limit_bytes"] / 2 / 2**20
        add(f"agent RSS {where}, two concurrent scrapes", peak, f"< {half:.0f} (half the DaemonSet's limit)",
            peak < half, "MiB")  # fmt: skip
    if "rules" in results:
        for name, value, goal, ok, unit in rules_scale.targets(results["rules"]):
            add(name, value, goal, ok, unit)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 4 minutes in all)")
    parser.add_argument("--json", metavar="PATH", help="write every raw number to PATH as JSON")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--standing-seconds",
        type=float,
        default=None,
        help="length of each standing-cost run, whole GPUs and MIG (default 180; 30 with --quick; "
        "the issue's 5 minutes is 300)",
    )
    parser.add_argument(
        "--million",
        type=int,
        default=None,
        metavar="N",
        help="reports fed to the registry in the memory test (default 1,000,000; 100,000 with --quick)",
    )
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers this started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sections = args.only or list(SECTIONS)
    standing_seconds = args.standing_seconds or (30.0 if args.quick else 180.0)
    million = args.million or (100_000 if args.quick else 1_000_000)

    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {"machine": machine(), "command": command.strip(), "quick": args.quick}
    m = results["machine"]
    log(f"mfu-agent bench: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"load average {m['loadavg_at_start']}")  # fmt: skip
    started = time.monotonic()
    durations: dict[str, float] = {}
    for section in sections:
        log(f"[{section}]")
        t0 = time.monotonic()
        if section == "scrape":
            results["scrape"] = scrape.run(args.quick, log)
        elif section == "ingest":
            results["ingest"] = ingest.run(args.quick, log)
        elif section == "client":
            results["client"] = client.run(args.quick, log)
        elif section == "standing":
            results["standing"] = standing.run_process(standing_seconds, log)
        elif section == "million":
            results["million"] = standing.run_million(million, log)
        elif section == "sampler":
            results["sampler"] = sampler.run(args.quick, log)
        elif section == "mig":
            results["mig"] = mig.run(args.quick, standing_seconds, log)
        elif section == "budget":
            results["budget"] = budget.run(args.quick, log)
        elif section == "rules":
            results["rules"] = rules_scale.run(args.quick, log)
        durations[section] = time.monotonic() - t0
    results["durations_seconds"] = durations
    results["total_seconds"] = time.monotonic() - started
    results["targets"] = targets(results)

    log("")
    log(f"{'target':<78} {'value':>12}  {'goal':<28} met")
    for row in results["targets"]:
        value = row["value"]
        shown = f"{value:,.3f}" if isinstance(value, float) and not math.isnan(value) else f"{value}"
        met = "yes" if row["met"] else "NO"
        log(f"{row['target']:<78} {shown:>12} {row['unit']:<3} {row['goal']:<28} {met}")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in durations.items())
    log(f"total {results['total_seconds']:.0f} s ({parts})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
