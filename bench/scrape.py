"""1 + 5. Scrape cost: /metrics render time for GPUs x ranks, against a plain prometheus_client registry
holding the same series; and how render time and memory grow."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder as library_choose_encoder

from mfu_agent.metrics.exposition import stream

from .common import summary
from .fixtures import make_agent, plain_registry, report, series_count

GPUS = (1, 8, 64)
RANKS = (0, 64, 1024)
# What a scraper sends: nothing (curl, the text format 0.0.4), or Prometheus 3's default Accept
# header, which gets OpenMetrics 1.0 (Prometheus 2's default gets OpenMetrics too).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
FORMATS = {"text": "", "openmetrics": PROMETHEUS_ACCEPT}


def _time_interleaved(
    renders: dict[str, Callable[[], object]], budget_s: float, min_rounds: int, p99_rounds: int = 0
) -> dict[str, list[int]]:
    """Calls each render in turn, round after round, until the budget is spent (at least min_rounds):
    interleaving spreads the machine's noise evenly over the agent and the baseline. Where a round
    costs under 0.25 s, at least p99_rounds rounds, so that a p99 is not simply the slowest render
    (a generation-2 garbage collection, which walks every object in the process, lands on one render
    or another at random)."""
    gc.collect()
    times: dict[str, list[int]] = {name: [] for name in renders}
    began = time.perf_counter()
    deadline = began + budget_s
    rounds = 0
    while rounds < min_rounds or time.perf_counter() < deadline:
        if rounds == 1 and time.perf_counter() - began < 0.25:
            min_rounds = max(min_rounds, p99_rounds)
        for name, render in renders.items():
            started = time.perf_counter_ns()
            render()
            times[name].append(time.perf_counter_ns() - started)
        rounds += 1
        if rounds >= 20_000:
            break
    return times


def endpoint_render(agent, accept: str = "") -> Callable[[], bytes]:
    """GET /metrics as the endpoint serves it (mfu_agent.api.system.metrics streams the chunks of
    mfu_agent.metrics.exposition.stream: content negotiation, the library's encoder per family), joined,
    without the HTTP server around it."""

    def render() -> bytes:
        chunks, _ = stream(agent.registry, accept)
        return b"".join(chunks)

    return render


def renders_against_baseline(
    agent, baseline, served: bool = False
) -> tuple[dict[str, Callable[[], object]], dict]:
    """For each format: the agent's render and the baseline's, after checking that /metrics serves
    exactly what the library encodes, and whether the baseline's page is the same bytes. `served`:
    time the endpoint (`agent_<fmt>`) rather than the library over the agent's registry
    (`agent_<fmt>_library`)."""
    renders: dict[str, Callable[[], object]] = {}
    identical = {}
    for fmt, accept in FORMATS.items():
        library = library_choose_encoder(accept)[0]
        expected = library(agent.registry)
        endpoint = endpoint_render(agent, accept)
        assert endpoint() == expected, f"/metrics ({fmt}) differs from the library"
        if served:
            renders[f"agent_{fmt}"] = endpoint
        else:
            renders[f"agent_{fmt}_library"] = lambda a=agent, e=library: e(a.registry)
        renders[f"baseline_{fmt}"] = lambda b=baseline, e=library: e(b)
        identical[fmt] = library(baseline) == expected  # OpenMetrics: the info family's name may differ
    return renders, identical


def _render_peak_bytes(render) -> int:
    """Peak Python memory allocated while rendering once (tracemalloc), beyond what was held before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        render()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _state_bytes(n_gpus: int, n_ranks: int) -> int:
    """Python memory the agent holds for n_ranks reporting ranks (tracemalloc, minus a 0-rank agent)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        empty = make_agent(n_gpus, 0)
        gc.collect()
        mid = tracemalloc.get_traced_memory()[0]
        full = make_agent(n_gpus, n_ranks)
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
        del empty, full
        return (end - mid) - (mid - base)
    finally:
        tracemalloc.stop()


def run(quick: bool, log) -> dict:
    budget = 0.5 if quick else 5.0
    min_rounds = 4 if quick else 10
    rows = []
    endpoint_kind = "library"  # /metrics renders with prometheus_client's own encoders
    for n_gpus in GPUS:
        for n_ranks in RANKS:
            agent = make_agent(n_gpus, n_ranks)
            text = generate_latest(agent.registry)
            baseline = plain_registry(text.decode())
            renders, identical = renders_against_baseline(agent, baseline)
            times = _time_interleaved(renders, budget, min_rounds, 20 if quick else 60)
            stats = {name: summary(t) for name, t in times.items()}
            row: dict = {
                "gpus": n_gpus,
                "ranks": n_ranks,
                "jobs": (n_ranks + 7) // 8,
                "series": series_count(text.decode()),
                "bytes": len(text),
                "baseline_identical_output": identical,
                "endpoint": endpoint_kind,
                "ns": stats,
                "render_peak_bytes": _render_peak_bytes(lambda a=agent: generate_latest(a.registry)),
            }
            for fmt in FORMATS:
                base = stats[f"baseline_{fmt}"]
                agent_stats = stats[f"agent_{fmt}_library"]
                row[f"ratio_{fmt}_library"] = agent_stats["median"] / base["median"]
                row[f"ratio_{fmt}_library_p99"] = agent_stats["p99"] / base["p99"]
                row[f"ratio_{fmt}_endpoint"] = row[f"ratio_{fmt}_{endpoint_kind}"]
                row[f"ratio_{fmt}_endpoint_p99"] = row[f"ratio_{fmt}_{endpoint_kind}_p99"]
                row["ns"][f"endpoint_{fmt}"] = stats[f"agent_{fmt}_{endpoint_kind}"]
            if n_ranks:
                row["state_bytes"] = _state_bytes(n_gpus, n_ranks)
            ms = {name: s["median"] / 1e6 for name, s in stats.items()}
            log(
                f"  {n_gpus:>2} GPUs {n_ranks:>4} ranks {row['series']:>6} series, median ms: "
                f"text {ms['agent_text_library']:.2f} / "
                f"baseline {ms['baseline_text']:.2f}; OpenMetrics {ms['agent_openmetrics_library']:.2f} / "
                f"baseline {ms['baseline_openmetrics']:.2f}; "
                f"/metrics/baseline x{row['ratio_text_endpoint']:.2f} (text), "
                f"x{row['ratio_openmetrics_endpoint']:.2f} (OpenMetrics); n={stats['baseline_text']['n']}"
            )
            rows.append(row)
            del agent, baseline
    per_rank = rank_memory()
    for row in per_rank:
        log(
            f"  memory per rank reporting every {row['interval_s']:g} s: {row['history_points']} points in "
            f"its window, {row['bytes_per_rank'] / 1024:.1f} KiB; at --max-ranks 4096: "
            f"{row['bytes_per_rank'] * 4096 / 2**20:.0f} MiB"
        )
    return {
        "endpoint": endpoint_kind,
        "rows": rows,
        "growth": _growth(rows),
        "jobs_vs_ranks": _jobs_vs_ranks(quick),
        "rank_memory": per_rank,
    }


def rank_memory(ranks: int = 256) -> list[dict]:
    """Registry memory per rank once its MFU window (60 s) is full, by reporting interval: the
    Reporter's default 5 s, 1 s, and 0.25 s (closer reports are merged: at most 128 points)."""
    from mfu_agent.jobs.registry import JobRegistry

    out = []
    for interval in (5.0, 1.0, 0.25):
        snapshot = make_agent(8, 0).sampler.latest
        clock = [1000.0]
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            registry = JobRegistry(clock=lambda c=clock: c[0])
            for k in range(int(90 / interval)):
                clock[0] = 1000.0 + k * interval
                reports = [report(r, 8, clock[0], 100.0 + k * interval) for r in range(ranks)]
                registry.apply(reports, snapshot)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        points = len(registry._ranks[("bench-job-0", 0)].history)
        out.append({"interval_s": interval, "history_points": points, "bytes_per_rank": used / ranks})
    return out


def _growth(rows: list[dict]) -> dict:
    """Least-squares fit of render time against series count: time = a + b * series."""
    out = {}
    for key in (
        "agent_text_library",
        "baseline_text",
        "agent_openmetrics_library",
        "baseline_openmetrics",
    ):
        points = [(r["series"], r["ns"][key]["median"]) for r in rows if key in r["ns"]]
        if len(points) < 2:
            continue
        n = len(points)
        mx = sum(x for x, _ in points) / n
        my = sum(y for _, y in points) / n
        sxx = sum((x - mx) ** 2 for x, _ in points)
        slope = sum((x - mx) * (y - my) for x, y in points) / sxx
        intercept = my - slope * mx
        ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
        ss_tot = sum((y - my) ** 2 for _, y in points)
        out[key] = {
            "ns_per_series": slope,
            "intercept_ns": intercept,
            "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
        }
    return out


def _jobs_vs_ranks(quick: bool) -> list[dict]:
    """The same 1024 ranks on 8 GPUs as 1 job, 128 jobs of 8 and 1024 jobs of 1: does the job count matter?"""
    out = []
    agents = {per_job: make_agent(8, 1024, ranks_per_job=per_job) for per_job in (1024, 8, 1)}
    renders = {f"ranks_per_job_{k}": (lambda a=a: generate_latest(a.registry)) for k, a in agents.items()}
    times = _time_interleaved(renders, 0.5 if quick else 2.0, 3 if quick else 8)
    for per_job, agent in agents.items():
        stats = summary(times[f"ranks_per_job_{per_job}"])
        out.append(
            {
                "gpus": 8,
                "ranks": 1024,
                "jobs": 1024 // per_job,
                "series": series_count(generate_latest(agent.registry).decode()),
                "ns": stats,
            }
        )
    return out
