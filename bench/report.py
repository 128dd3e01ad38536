"""Markdown tables from a `python -m bench.run --json PATH` result, as used in docs/performance.md:

python -m bench.report PATH
"""

from __future__ import annotations

import json
import sys


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _cpu_cell(mode: dict) -> str:
    if "cpu_ratio" not in mode:  # a result from before the CPU time was measured
        return "-"
    return (
        f"{mode['agent_cpu_us_per_report']:.1f} / {mode['bare_cpu_us_per_report']:.1f} "
        f"({mode['cpu_ratio']:.2f})"
    )


def tables(r: dict) -> str:
    out: list[str] = []
    m = r["machine"]
    out.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['implementation']} {m['python']}, "
        f"{m['platform']}; load average at start {m['loadavg_at_start']}. "
        f"Command: `{r['command']}` ({r['total_seconds']:.0f} s)."
    )
    out.append("")
    out.append("| target | measured | goal | met |")
    out.append("|---|---|---|---|")
    for t in r["targets"]:
        v = t["value"]
        shown = f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"
        out.append(
            f"| {t['target']} | {shown} {t['unit']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
        )
    if "scrape" in r:
        s = r["scrape"]
        out.append("")
        out.append(
            "Scrape, median (p99) ms of one render in-process. text: no Accept header (format 0.0.4); "
            "OpenMetrics: Prometheus 3's Accept header. /metrics renders with prometheus_client's encoders. "
            "Baseline: the same encoder over a plain registry of the same series. Ratio: /metrics over "
            "baseline."
        )
        out.append("")
        out.append(
            "| GPUs | ranks | series | text /metrics | text baseline | ratio "
            "| OpenMetrics /metrics | OpenMetrics baseline | ratio | render peak MiB | KiB/rank |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in s["rows"]:
            ns = row["ns"]

            def cell(name: str, ns=ns) -> str:
                return f"{_ms(ns[name]['median'])} ({_ms(ns[name]['p99'])})" if name in ns else "-"

            state = f"{row['state_bytes'] / row['ranks'] / 1024:.1f}" if row.get("state_bytes") else "-"
            out.append(
                f"| {row['gpus']} | {row['ranks']} | {row['series']:,} | {cell('agent_text_library')} | "
                f"{cell('baseline_text')} | {row['ratio_text_endpoint']:.2f} | "
                f"{cell('agent_openmetrics_library')} | "
                f"{cell('baseline_openmetrics')} | {row['ratio_openmetrics_endpoint']:.2f} | "
                f"{row['render_peak_bytes'] / 2**20:.1f} | {state} |"
            )
        out.append("")
        out.append("Fit of median render time against series count (time = a + b x series):")
        out.append("")
        out.append("| renderer | µs per series | intercept ms | R² |")
        out.append("|---|---|---|---|")
        for name, fit in s["growth"].items():
            per, at0 = fit["ns_per_series"] / 1000, fit["intercept_ns"] / 1e6
            out.append(f"| {name} | {per:.2f} | {at0:.2f} | {fit['r2']:.3f} |")
        out.append("")
        out.append("| 1024 ranks on 8 GPUs as | series | generate_latest median ms |")
        out.append("|---|---|---|")
        for row in s["jobs_vs_ranks"]:
            out.append(f"| {row['jobs']} job(s) | {row['series']:,} | {_ms(row['ns']['median'])} |")
        out.append("")
        out.append(
            "| reporting interval | points in the 60 s window | KiB per rank | MiB at --max-ranks 4096 |"
        )
        out.append("|---|---|---|---|")
        for row in s["rank_memory"]:
            out.append(
                f"| {row['interval_s']:g} s | {row['history_points']} | {row['bytes_per_rank'] / 1024:.1f} | "
                f"{row['bytes_per_rank'] * 4096 / 2**20:.0f} |"
            )
    if "ingest" in r:
        i = r["ingest"]
        out.append("")
        out.append(
            f"Ingestion ({i['concurrency']} keep-alive connections, {i['rounds']} interleaved rounds of "
            f"{i['seconds_per_run']:g} s per server; medians):"
        )
        out.append("")
        out.append(
            "| load | agent reports/s | bare reports/s | ratio (per round) | server CPU µs per report, "
            "agent / bare (ratio) | agent p99 ms | bare p99 ms | agent non-2xx / errors |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for mode in i["modes"]:
            paired = ", ".join(f"{p:.2f}" for p in mode["paired_ratios"])
            out.append(
                f"| {mode['label']} | {mode['agent_reports_per_s']:,.0f} | "
                f"{mode['bare_reports_per_s']:,.0f} | "
                f"{mode['ratio']:.2f} ({paired}) | {_cpu_cell(mode)} | {mode['agent_latency_p99_ms']:.1f} | "
                f"{mode['bare_latency_p99_ms']:.1f} | {mode['agent_non2xx']} / {mode['agent_errors']} |"
            )
        out.append("")
        out.append("| ranks tracked | apply() µs per single report | µs per report in batches of 50 |")
        out.append("|---|---|---|")
        for row in i["apply_scaling"]:
            out.append(
                f"| {row['tracked']} | {row['ns_per_report_batch_1'] / 1000:.1f} | "
                f"{row['ns_per_report_batch_50'] / 1000:.1f} |"
            )
    if "client" in r:
        c = r["client"]
        out.append("")
        out.append(
            "| Reporter | step() median ns | p99 ns | empty call median ns | ratio "
            "| step(model_flops=, tokens=) ns |"
        )
        out.append("|---|---|---|---|---|---|")
        for state in ("agent_up", "agent_down"):
            x = c[state]
            out.append(
                f"| {state.replace('_', ' ')} | {x['step']['median']:.0f} | {x['step']['p99']:.0f} | "
                f"{x['empty_call']['median']:.0f} | {x['ratio_to_empty']:.1f} | "
                f"{x['step_args']['median']:.0f} |"
            )
        loop = c.get("torch_loop")
        if loop:
            med = {k: v / 1e3 for k, v in loop["median_step_ns"].items()}
            (plo, phi), (alo, ahi) = loop["paired_ratio_median_ci95"], loop["a_a_ratio_median_ci95"]
            in_loop = loop["in_loop_ns"]
            out.append("")
            out.append(
                f"Torch loop ({loop['torch']}, {loop['threads']} thread, {loop['rounds']} rounds x "
                f"{loop['steps_per_block']} steps per arm): without {med['without']:.1f} µs/step, "
                f"with reporter {med['with']:.1f} µs/step, again without {med['without_again']:.1f} "
                f"µs/step; median of the paired ratios with/without {loop['paired_ratio_median']:.4f} "
                f"(95% CI {plo:.4f}-{phi:.4f}); A/A (without again / without) "
                f"{loop['a_a_ratio_median']:.4f} (95% CI {alo:.4f}-{ahi:.4f}). step() timed inside the loop: "
                f"median {in_loop['step']['median']:.0f} ns (p99 {in_loop['step']['p99']:.0f}); "
                f"an empty call timed the same way: {in_loop['empty_call']['median']:.0f} ns."
            )
        post = c.get("post")
        if post:
            out.append("")
            cpu, wall = post["cpu_ns"], post["wall_ns"]
            out.append(
                f"One post (`Reporter.flush()`, agent up): {cpu['median'] / 1e6:.2f} ms CPU in the posting "
                f"thread (p99 {cpu['p99'] / 1e6:.2f}), {wall['median'] / 1e6:.2f} ms wall; "
                f"{post['accepted']}/{post['posts']} accepted."
            )
        mem = c["memory_agent_down"]
        cps = mem["checkpoints"]
        out.append("")
        traced = ", ".join(f"{cp['traced_bytes']:,}" for cp in cps)
        out.append(
            f"Agent down, {mem['steps']:,} steps in {mem['seconds']:.1f} s, {mem['posts_failed']} failed "
            f"posts: traced memory {traced} bytes at each tenth."
        )
    if "standing" in r:
        s = r["standing"]
        out.append("")
        out.append(
            f"Standing cost ({s['seconds']:.0f} s after {s['warmup_seconds']:.0f} s warm-up, {s['gpus']} "
            f"simulated GPUs, {s['ranks']} ranks posting every 1 s, a scrape every "
            f"{s['scrape_every_seconds']:.0f} s):"
        )
        out.append("")
        out.append(
            "| process | CPU % of a core (thirds) | RSS MiB first / last third | RSS max MiB "
            "| scrape ms (median) |"
        )
        out.append("|---|---|---|---|---|")
        for name in ("agent", "bare"):
            p = s[name]
            thirds = ", ".join(f"{p['thirds'][k]['cpu_percent']:.2f}" for k in ("first", "middle", "last"))
            scrapes = sorted(p["scrape_seconds"])
            scrape = f"{scrapes[len(scrapes) // 2] * 1000:.1f}" if scrapes else "-"
            first = p["thirds"]["first"]["rss_mean_bytes"] / 2**20
            last = p["thirds"]["last"]["rss_mean_bytes"] / 2**20
            out.append(
                f"| {name} | {p['cpu_percent']:.2f} ({thirds}) | {first:.1f} / {last:.1f} | "
                f"{p['rss_max_bytes'] / 2**20:.1f} | {scrape} |"
            )
        out.append("")
        out.append(
            f"Agent / bare: CPU x{s['cpu_ratio']:.2f} ({s['cpu_difference_percent']:+.2f} points), "
            f"RSS x{s['rss_ratio']:.2f}. Posts delivered: {s['posts']}."
        )
    if "million" in r:
        m = r["million"]
        out.append("")
        out.append(
            f"{m['reports']:,} reports over {m['pairs']:,} (job, rank) pairs ({m['jobs']:,} jobs of 10 "
            f"ranks, {m['reports_per_rank']} reports each, TTL {m['ttl_seconds']:g} s, fake clock) in "
            f"{m['seconds']:.1f} s; at most {m['max_tracked']:,} tracked; {m['expired_total']:,} expired."
        )
        out.append("")
        out.append("| reports so far | tracked | live blocks (above start) | RSS MiB |")
        out.append("|---|---|---|---|")
        for cp in m["checkpoints"]:
            rss = cp["rss_bytes"] / 2**20
            out.append(f"| {cp['reports']:,} | {cp['tracked']:,} | {cp['blocks']:,} | {rss:.1f} |")
        out.append(
            f"| all expired | {m['tracked_after_all_expired']} | {m['after_all_expired_blocks']:,} | |"
        )
    if "sampler" in r:
        out.append("")
        out.append("| sampler tick | median ms | p99 ms | NVML calls |")
        out.append("|---|---|---|---|")
        for name, st in r["sampler"].items():
            if "median" in st:
                calls = f"{st['nvml_calls_per_tick']:.0f}" if "nvml_calls_per_tick" in st else "-"
                out.append(f"| {name} | {_ms(st['median'])} | {_ms(st['p99'])} | {calls} |")
    if "mig" in r:
        out.append("")
        out.append(mig_tables(r["mig"]))
    if "budget" in r:
        out.append("")
        out.append(budget_tables(r["budget"]))
    if "rules" in r:
        out.append("")
        out.append(rules_tables(r["rules"]))
    return "\n".join(out) + "\n"


def mig_tables(x: dict) -> str:
    """The MIG section: 8 GPUs x 7 MIG devices against 8 whole GPUs (bench/mig.py)."""
    out: list[str] = []
    out.append("| sampler tick | whole GPUs median (p99) ms | MIG median (p99) ms | devices | MIG / whole "
               "| per device | NVML calls per tick |")  # fmt: skip
    out.append("|---|---|---|---|---|---|---|")
    for name, row in x["sampler"].items():
        if "ratio_median" not in row:
            continue
        w, m, d = row["whole"], row["mig"], row["devices"]
        calls = row.get("nvml_calls_per_tick")
        shown = f"{calls['whole']:.0f} / {calls['mig']:.0f}" if calls else "-"
        out.append(
            f"| {name} | {_ms(w['median'])} ({_ms(w['p99'])}) | {_ms(m['median'])} ({_ms(m['p99'])}) | "
            f"{d['whole']} / {d['mig']} | {row['ratio_median']:.2f} | {row['ratio_per_device']:.2f} | "
            f"{shown} |"
        )
    nvml = x["sampler"].get("nvml_fake", {})
    if "outside_fake" in nvml:
        o = nvml["outside_fake"]
        w, m, d = o["whole"], o["mig"], o["devices"]
        out.append(
            f"| nvml_fake without the fake's own time | {_ms(w['median'])} ({_ms(w['p99'])}) | "
            f"{_ms(m['median'])} ({_ms(m['p99'])}) | {d['whole']} / {d['mig']} | {o['ratio_median']:.2f} | "
            f"{o['ratio_per_device']:.2f} | - |"
        )
    if "nvml_calls_per_tick_by_symbol" in nvml:
        by = nvml["nvml_calls_per_tick_by_symbol"]
        out.append("")
        out.append("| NVML symbol | calls per tick, whole GPUs | calls per tick, MIG |")
        out.append("|---|---|---|")
        for name in sorted(set(by["whole"]) | set(by["mig"]), key=lambda n: -by["mig"].get(n, 0)):
            out.append(f"| `{name}` | {by['whole'].get(name, 0):g} | {by['mig'].get(name, 0):g} |")
    out.append("")
    out.append("| ranks | series (whole GPUs) | text /metrics | text baseline | ratio | OpenMetrics /metrics "
               "| OpenMetrics baseline | ratio | per series vs whole GPUs (text) |")  # fmt: skip
    out.append("|---|---|---|---|---|---|---|---|---|")
    for row in x["scrape"]:
        ns = row["ns"]

        def cell(name: str, ns=ns) -> str:
            return f"{_ms(ns[name]['median'])} ({_ms(ns[name]['p99'])})"

        out.append(
            f"| {row['ranks']} | {row['series']:,} ({row['whole_series']:,}) | {cell('agent_text')} | "
            f"{cell('baseline_text')} | {row['ratio_text']:.2f} | {cell('agent_openmetrics')} | "
            f"{cell('baseline_openmetrics')} | {row['ratio_openmetrics']:.2f} | "
            f"{row['per_series_vs_whole_text']:.2f} |"
        )
    s = x["standing"]
    out.append("")
    out.append(
        f"Standing ({s['seconds']:.0f} s after {s['warmup_seconds']:.0f} s warm-up, all processes side by "
        f"side, {s['ranks']} ranks each posting every 1 s, a scrape every {s['scrape_every_seconds']:.0f} s):"
    )
    out.append("")
    out.append("| process | CPU % of a core (thirds) | RSS max MiB | scrape ms (median) | scrape KiB |")
    out.append("|---|---|---|---|---|")
    for name in s["processes"]:
        p = s[name]
        thirds = ", ".join(f"{p['thirds'][k]['cpu_percent']:.2f}" for k in ("first", "middle", "last"))
        scrapes = sorted(p["scrape_seconds"])
        scrape = f"{scrapes[len(scrapes) // 2] * 1000:.1f}" if scrapes else "-"
        out.append(
            f"| {name} | {p['cpu_percent']:.2f} ({thirds}) | {p['rss_max_bytes'] / 2**20:.1f} | {scrape} | "
            f"{p['scrape_bytes'] / 1024:.0f} |"
        )
    ratios = [f"{k}: x{v:.2f}" for k, v in s.items() if k.endswith("_cpu_ratio")]
    out.append("")
    out.append(f"CPU, MIG over whole GPUs: {', '.join(ratios)}. Posts delivered: {s['posts']}.")
    return "\n".join(out)


def budget_tables(b: dict) -> str:
    """The series-budget section (bench/budget.py) as Markdown."""
    rd, mem = b["render"], b["memory"]
    mib = 2**20
    out = [
        f"Render at the budget, in-process: {rd['ranks']} ranks, {rd['series']:,} series "
        f"(the agent's estimate {rd['estimate']:,}), {rd['bytes'] / mib:.1f} MiB of text; median (p99) "
        f"ms over {rd['ns']['baseline_text']['n']} interleaved renders.",
        "",
        "| format | /metrics | bare prometheus_client | ratio (p99 ratio) |",
        "|---|---|---|---|",
    ]
    for fmt in ("text", "openmetrics"):
        a, base = rd["ns"][f"agent_{fmt}"], rd["ns"][f"baseline_{fmt}"]
        out.append(
            f"| {fmt} | {_ms(a['median'])} ({_ms(a['p99'])}) | {_ms(base['median'])} ({_ms(base['p99'])}) | "
            f"{rd[f'ratio_{fmt}']:.2f} ({rd[f'ratio_{fmt}_p99']:.2f}) |"
        )
    out += [
        "",
        f"Memory, two concurrent scrapes (Prometheus' Accept header), {mem['ranks']} ranks, "
        f"{mem['series']:,} series; the DaemonSet's limit {mem['memory_limit_bytes'] / mib:.0f} MiB:",
        "",
        "| process | RSS idle MiB | RSS peak MiB (rounds) | scrape wall s (median, p99) |",
        "|---|---|---|---|",
    ]
    for name, label in (("agent", "mfu-agent"), ("bare", "bare prometheus_client (its own HTTP server)")):
        m = mem[name]
        rounds = ", ".join(f"{p / mib:.0f}" for p in m["peak_rss_rounds"])
        out.append(
            f"| {label} | {m['idle_rss_bytes'] / mib:.0f} | {m['peak_rss_bytes'] / mib:.0f} ({rounds}) | "
            f"{m['scrape_wall_s']['median']:.2f}, {m['scrape_wall_s']['p99']:.2f} |"
        )
    return "\n".join(out)


def rules_tables(x: dict) -> str:
    """The rules section (bench/rules_scale.py) as Markdown."""
    s, p, c = x["scale"], x["prepare"], x["checks"]
    files = ", ".join(f"`{f['file']}` (blob {f['blob']})" for f in x["rule_files"])
    n = len(x["groups"][0]["evaluations"]) if x["groups"] else 0
    lo, hi = x["data_age_seconds"] or (float("nan"), float("nan"))
    out = [
        f"Fleet: {s['nodes']:,} nodes, {s['gpus']:,} GPUs, {s['jobs']:,} jobs, {s['ranks']:,} ranks "
        f"({s['busy_gpus']:,} GPUs busy, {s['gpus_with_two_ranks']} with two ranks, "
        f"{s['mixed_precision_jobs']} fp8 + bf16 jobs, {s['gpus_without_peak']} GPUs without a known peak); "
        f"{s['series']:,} series, {p['samples']:,} samples ({s['history_seconds']} s every "
        f"{s['step_seconds']} s) written in {p['write_seconds']:.0f} s "
        f"({p['openmetrics_bytes'] / 2**30:.1f} GiB of OpenMetrics) and "
        f"backfilled in {p['backfill_seconds']:.0f} s by {p['promtool_processes']} promtool processes "
        f"({p['block_bytes'] / 2**20:.0f} MiB of blocks). {x['prometheus']['version']}, evaluation every "
        f"{x['evaluation_interval_seconds']} s; median and max of {n} evaluations per group after a warm-up "
        f"one, {lo:.0f}-{hi:.0f} s after the last sample. Prometheus used "
        f"{x['prometheus']['cpu_percent']:.0f}% of a core and at most "
        f"{x['prometheus']['rss_max_bytes'] / 2**30:.2f} GiB RSS meanwhile. Rule files: {files}.",
        "",
        "| group | rules | median s | max s | samples | x baseline | slowest rule (last evaluation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in x["groups"]:
        slow = g["slowest_rules"][0] if g["slowest_rules"] else None
        slowest = f"`{slow['name']}` {slow['seconds']:.3f} s" if slow else "-"
        samples = "-" if g["samples"] is None else f"{g['samples']:,.0f}"
        out.append(
            f"| `{g['file']}` {g['name']} | {g['records'] + g['alerts']} | {g['median_seconds']:.3f} | "
            f"{g['max_seconds']:.3f} | {samples} | {g['ratio']:.1f} | {slowest} |"
        )
    rel = c.get("job_mfu_median_relative_error")
    out.append("")
    out.append(
        f"Results: `mfu:job_mfu:ratio` {c['job_mfu_series']:,} series for "
        f"{c['jobs_with_mfu_expected']:,} jobs with a known peak ({c['job_mfu_within_1pct']:,} within 1% "
        "of the contract's peak-weighted MFU"
        + (f", median deviation {rel:.1%}" if rel is not None else "")
        + f"); `mfu:fleet_mfu:ratio` {c['fleet_mfu_series']} series"
        + (f" ({c['fleet_mfu']:.4f}; peak-weighted {c['fleet_mfu_expected']:.4f})" if c["fleet_mfu"] else "")
        + f"; recording rules without output: {', '.join(c['empty_recording_rules']) or 'none'}."
    )
    return "\n".join(out)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        print(tables(json.load(f)), end="")


if __name__ == "__main__":
    main()
