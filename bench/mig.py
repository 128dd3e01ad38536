"""MIG (issue 10): 8 H100s, each in MIG mode with seven 1g.10gb MIG devices (56 MIG devices + 8 parents),
against 8 whole H100s measured in the same run.

* sampler: one tick of the simulated backend, and of the real NVML code path (pynvml + NvmlBackend)
  over the tests' fake libnvidia-ml, with the number of NVML calls per tick (and per symbol);
* scrape: /metrics of an agent on the MIG GPUs with ranks on MIG devices, against a plain
  prometheus_client registry holding the same series (and, for scale, the whole-GPU agent);
* standing: agent processes on the MIG GPUs (simulated, and NVML over the fake) side by side with the
  same agents on whole GPUs and the bare FastAPI server, 8 ranks each posting every second.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack

from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder as library_choose_encoder

from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.sampler import Sampler

from . import standing
from .common import ROOT, server, summary, wait_http
from .fixtures import make_agent, mig_spec, mixed_families, plain_registry, series_count
from .scrape import FORMATS, _time_interleaved, renders_against_baseline

GPUS = 8
PROFILES = ("1g.10gb",) * 7  # seven 1g.10gb MIG devices per H100 80GB: the most an H100 splits into
SCRAPE_RANKS = (0, 8, 56)  # none; one per GPU (on its first MIG device); one per MIG device
KINDS = ("whole", "mig")


def _fake_nvml():
    """The tests' fake libnvidia-ml (tests/fakenvml.py) and the agent's NVML backend."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fakenvml import FakeNvml, mig_devices

    from mfu_agent.gpu.nvml_backend import NvmlBackend

    return FakeNvml, mig_devices, NvmlBackend


# -- sampler ------------------------------------------------------------------------------------
class _Clock:
    """The NVML backend's clock, one second on per tick: GPM needs samples 100 ms apart, so back-to-back
    ticks on the real clock would skip most GPM reads that an agent ticking every second makes."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _nvml_block(kind: str, ticks: int) -> tuple[list[int], list[int], Counter, int]:
    """`ticks` timed ticks of a fresh NvmlBackend over a fresh fake (8 whole H100s, or the MIG layout),
    after two untimed ones: (tick times in ns, the part of each spent inside the fake's own symbol
    implementations, NVML calls made during the timed ticks, devices)."""
    FakeNvml, _, NvmlBackend = _fake_nvml()
    fake = FakeNvml.h100s(GPUS) if kind == "whole" else FakeNvml.h100_mig(GPUS, profiles=PROFILES)
    inside = [0]
    dispatch = fake._dispatch  # every symbol of the fake goes through it

    def timed(name, impl, args):
        started = time.perf_counter_ns()
        try:
            return dispatch(name, impl, args)
        finally:
            inside[0] += time.perf_counter_ns() - started

    fake._dispatch = timed
    times: list[int] = []
    in_fake: list[int] = []
    with fake.installed():
        clock = _Clock()
        backend = NvmlBackend(clock=clock)
        backend.start()
        try:
            sampler = Sampler(backend)
            for _ in range(2):  # MIG devices found, GPM started: the steady state
                clock.now += 1.0
                sampler.sample_once()
            before = Counter(fake.calls)
            for _ in range(ticks):
                clock.now += 1.0
                inside[0] = 0
                started = time.perf_counter_ns()
                snapshot = sampler.sample_once()
                times.append(time.perf_counter_ns() - started)
                in_fake.append(inside[0])
            calls = Counter(fake.calls)
            calls.subtract(before)
        finally:
            backend.close()
    return times, in_fake, +calls, len(snapshot.gpus)


def _pair(stats: dict[str, dict], devices: dict[str, int]) -> dict:
    whole, mig = stats["whole"], stats["mig"]
    ratio = mig["median"] / whole["median"]
    return {
        **stats,
        "devices": devices,
        "ratio_median": ratio,
        "ratio_p99": mig["p99"] / whole["p99"],
        # Per device read: 1.0 is flat (a MIG device costs what a whole GPU does).
        "ratio_per_device": ratio * devices["whole"] / devices["mig"],
    }


def run_sampler(quick: bool, log) -> dict:
    n = 30 if quick else 100
    out: dict = {}
    # Simulated: the two backends tick in turn, so that the machine's noise falls on both.
    samplers = {
        "whole": Sampler(SimulatedBackend(mig_spec(GPUS))),
        "mig": Sampler(SimulatedBackend(mig_spec(GPUS, PROFILES))),
    }
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    devices = {kind: len(s.sample_once().gpus) for kind, s in samplers.items()}
    for _ in range(n):
        for kind, sampler in samplers.items():
            started = time.perf_counter_ns()
            sampler.sample_once()
            times[kind].append(time.perf_counter_ns() - started)
    out["simulated"] = _pair({kind: summary(t) for kind, t in times.items()}, devices)
    # NVML over the fake: one fake is installed at a time (it replaces pynvml's library), so the two
    # alternate in blocks of ticks, each block on a fresh backend.
    try:
        _fake_nvml()
    except ImportError as exc:  # pragma: no cover - tests/ or pytest absent
        out["nvml_fake"] = {"skipped": repr(exc)}
    else:
        rounds, per_block = (3, 10) if quick else (10, 10)
        times = {kind: [] for kind in KINDS}
        outside: dict[str, list[int]] = {kind: [] for kind in KINDS}
        calls: dict[str, Counter] = {kind: Counter() for kind in KINDS}
        for _ in range(rounds):
            for kind in KINDS:
                block, in_fake, made, devices[kind] = _nvml_block(kind, per_block)
                times[kind] += block
                outside[kind] += [t - f for t, f in zip(block, in_fake, strict=True)]
                calls[kind] += made
        ticks = rounds * per_block
        row = _pair({kind: summary(t) for kind, t in times.items()}, devices)
        # What is left of a tick without the fake's own Python: the agent's backend and pynvml, which
        # a real node runs as well (plus the driver's own time for each call, which the fake replaces).
        row["outside_fake"] = _pair({kind: summary(t) for kind, t in outside.items()}, devices)
        row["nvml_calls_per_tick"] = {kind: sum(c.values()) / ticks for kind, c in calls.items()}
        row["nvml_calls_per_tick_by_symbol"] = {
            kind: {name: count / ticks for name, count in c.most_common()} for kind, c in calls.items()
        }
        row["nvml_calls_ratio"] = row["nvml_calls_per_tick"]["mig"] / row["nvml_calls_per_tick"]["whole"]
        out["nvml_fake"] = row
    for name, row in out.items():
        if "ratio_median" not in row:
            continue
        ms = {kind: row[kind]["median"] / 1e6 for kind in KINDS}
        calls_text = ""
        if "nvml_calls_per_tick" in row:
            c, o = row["nvml_calls_per_tick"], row["outside_fake"]
            calls_text = (
                f"; NVML calls per tick {c['whole']:.0f} / {c['mig']:.0f}; without the fake's own time "
                f"{o['whole']['median'] / 1e6:.2f} / {o['mig']['median'] / 1e6:.2f} ms "
                f"(x{o['ratio_median']:.2f})"
            )
        log(
            f"  sampler {name}: tick median {ms['whole']:.2f} ms ({row['devices']['whole']} devices) / "
            f"{ms['mig']:.2f} ms ({row['devices']['mig']} devices): MIG x{row['ratio_median']:.2f}, "
            f"x{row['ratio_per_device']:.2f} per device{calls_text}"
        )
    return out


# -- scrape -------------------------------------------------------------------------------------
def run_scrape(quick: bool, log, ranks: tuple[int, ...] = SCRAPE_RANKS) -> list[dict]:
    budget = 0.5 if quick else 5.0
    # A round (six renders of 2,000-3,000 series) takes about 0.3-0.5 s here, over the 0.25 s under which
    # _time_interleaved raises the count for a p99; 60 rounds anyway, so that the p99 is not the slowest
    # render of ten (a garbage collection, or another process taking the core).
    min_rounds = 4 if quick else 60
    rows = []
    for n_ranks in ranks:
        agent = make_agent(GPUS, n_ranks, mig=PROFILES)
        whole = make_agent(GPUS, n_ranks)
        text = generate_latest(agent.registry)
        baseline = plain_registry(text.decode())
        renders, identical = renders_against_baseline(agent, baseline)
        for fmt, accept in FORMATS.items():
            library = library_choose_encoder(accept)[0]
            renders[f"agent_{fmt}"] = renders.pop(f"agent_{fmt}_library")
            renders[f"whole_{fmt}"] = lambda w=whole, e=library: e(w.registry)
        times = _time_interleaved(renders, budget, min_rounds, 20 if quick else 60)
        stats = {name: summary(t) for name, t in times.items()}
        whole_series = series_count(generate_latest(whole.registry).decode())
        row: dict = {
            "gpus": GPUS,
            "mig_devices": GPUS * len(PROFILES),
            "ranks": n_ranks,
            "series": series_count(text.decode()),
            "whole_series": whole_series,
            "bytes": len(text),
            "baseline_identical_output": identical,
            "baseline_mixed_families": mixed_families(baseline),
            "ns": stats,
        }
        for fmt in FORMATS:
            a, b, w = stats[f"agent_{fmt}"], stats[f"baseline_{fmt}"], stats[f"whole_{fmt}"]
            row[f"ratio_{fmt}"] = a["median"] / b["median"]
            row[f"ratio_{fmt}_p99"] = a["p99"] / b["p99"]
            # Render time per series, MIG agent over whole-GPU agent: 1.0 is flat.
            row[f"per_series_vs_whole_{fmt}"] = (a["median"] / row["series"]) / (w["median"] / whole_series)
        ms = {name: s["median"] / 1e6 for name, s in stats.items()}
        log(
            f"  scrape {GPUS} GPUs x {len(PROFILES)} MIG, {n_ranks:>2} ranks, {row['series']:,} series "
            f"(whole GPUs {whole_series:,}): median ms text {ms['agent_text']:.2f} / baseline "
            f"{ms['baseline_text']:.2f} (x{row['ratio_text']:.2f}); OpenMetrics "
            f"{ms['agent_openmetrics']:.2f} / {ms['baseline_openmetrics']:.2f} "
            f"(x{row['ratio_openmetrics']:.2f}); per series vs whole GPUs "
            f"x{row['per_series_vs_whole_text']:.2f}; n={stats['baseline_text']['n']}"
        )
        rows.append(row)
        del agent, whole, baseline
    return rows


# -- standing -----------------------------------------------------------------------------------
def fake_nvml_config(mig: bool) -> dict:
    """tests/fake_nvml_agent.py's config: 8 default H100s, whole or each with the MIG layout."""
    if not mig:
        return {"devices": [{} for _ in range(GPUS)]}
    _, mig_devices, _ = _fake_nvml()
    slices = [
        {
            "profile": m.profile,
            "gpu_instance_id": m.gpu_instance_id,
            "sm_count": m.sm_count,
            "memory_total": m.memory_total,
            "memory_used": m.memory_used,
        }
        for m in mig_devices(PROFILES)
    ]
    return {"devices": [{"mig_mode": 1, "mig_devices": slices} for _ in range(GPUS)]}


def _rank_gpus(port: int) -> list[int | str] | None:
    """Where the standing ranks run on an agent: None (GPU r for rank r) on whole GPUs; on MIG GPUs the
    first MIG device of each GPU, by UUID, from the agent's /v1/gpus."""
    wait_http(port, "/readyz")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/gpus", timeout=10) as response:
        devices = json.load(response)["gpus"]
    migs = [d for d in devices if d.get("mig")]
    migs.sort(key=lambda d: (d["mig"]["gpu_instance_id"], d["index"]))
    return [d["uuid"] for d in migs[: standing.RANKS]] or None


STANDING: dict[str, tuple[str, Callable[[], dict]]] = {  # name: (server kind, its keyword arguments)
    "agent_whole": ("agent", lambda: {"spec": mig_spec(GPUS)}),
    "agent_mig": ("agent", lambda: {"spec": mig_spec(GPUS, PROFILES)}),
    "agent_nvml_whole": ("agent-fake-nvml", lambda: {"fake_nvml": fake_nvml_config(False)}),
    "agent_nvml_mig": ("agent-fake-nvml", lambda: {"fake_nvml": fake_nvml_config(True)}),
    "bare": ("bare", dict),
}


def run_standing(
    seconds: float, log, names: tuple[str, ...] = tuple(STANDING), warmup: float | None = None
) -> dict:
    with ExitStack() as stack:
        procs = {}
        for name in names:
            kind, kwargs = STANDING[name]
            proc, port = stack.enter_context(server(kind, **kwargs()))
            procs[name] = (proc.pid, port, _rank_gpus(port) if kind != "bare" else None)
        out = standing.measure(procs, seconds, standing.WARMUP if warmup is None else warmup)
    out["processes"] = list(names)
    out["rank_gpus"] = {name: gpus for name, (_, _, gpus) in procs.items()}
    for mig, whole in (("agent_mig", "agent_whole"), ("agent_nvml_mig", "agent_nvml_whole")):
        if mig in out and whole in out and out[whole]["cpu_percent"]:
            out[f"{mig}_cpu_ratio"] = out[mig]["cpu_percent"] / out[whole]["cpu_percent"]
    mib = 2**20
    parts = ", ".join(
        f"{name} {out[name]['cpu_percent']:.2f}% ({out[name]['rss_max_bytes'] / mib:.0f} MiB)"
        for name in names
    )
    log(f"  standing {seconds:.0f} s, CPU % of a core (RSS max): {parts}; posts {out['posts']}")
    return out


def run(quick: bool, standing_seconds: float, log) -> dict:
    return {
        "gpus": GPUS,
        "profiles": list(PROFILES),
        "sampler": run_sampler(quick, log),
        "scrape": run_scrape(quick, log),
        "standing": run_standing(standing_seconds, log),
    }


def targets(r: dict) -> list[tuple[str, float, str, bool, str]]:
    """(name, value, goal, met, unit) for the MIG targets."""
    rows = []
    where = f"{r['gpus']} GPUs x {len(r['profiles'])} MIG"
    for row in r["scrape"]:
        for stat, suffix in (("median", ""), ("p99", "_p99")):
            worst = max(row[f"ratio_{fmt}{suffix}"] for fmt in FORMATS)
            rows.append((f"MIG /metrics {where}, {row['ranks']} ranks / baseline, {stat} (worse of the two)",
                         worst, "<= 1.5", worst <= 1.5, "x"))  # fmt: skip
    s = r["standing"]
    for name, label in (("agent_mig", "simulated"), ("agent_nvml_mig", "NVML over the fake")):
        if name in s:
            cpu = s[name]["cpu_percent"]
            rows.append((f"MIG agent CPU, {where}, {label}, 8 ranks, 1 s interval", cpu, "< 2", cpu < 2,
                         "% of a core"))  # fmt: skip
    return rows
