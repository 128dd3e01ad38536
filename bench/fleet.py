"""A synthetic GPU fleet as Prometheus would hold it after scraping one mfu-agent per node.

`Fleet.build(nodes, jobs)` places jobs of 1 to 512 GPUs on `nodes` nodes of 8 GPUs (deterministic for
a seed); `Fleet.write_openmetrics(...)` writes every series the agents would export (labels as in
docs/metrics.md and the issue 9 contract, plus the `instance` and `job` labels a scrape adds) as
OpenMetrics text with timestamps, ready for `promtool tsdb create-blocks-from openmetrics`.

What the fleet holds, so that recording rules meet the cases they must handle:

* GPU models in pools: H100 (60% of nodes), H200 (15%), A100 (23%: no fp8 peak, no GPM, so no SM or
  tensor activity), and a model without any known peak (2%: `mfu_gpu_peak_flops_unknown`, and
  `mfu_job_peak_flops_unknown` for the ranks on it).
* Jobs of 8 GPUs or more take whole nodes (the largest ones span 64 nodes, one spans two GPU models);
  smaller jobs share nodes. One rank per GPU, except a few GPUs shared by two ranks (of one job, or
  of two jobs).
* About one job in eight on Hopper GPUs reports mixed fp8 + bf16 FLOPs (precision fp8); a few fp16.
* A few stragglers (half the job's MFU), a few jobs started inside the history window (their series
  begin there), a few ranks with a constant counter series left on a GPU they no longer use, a few
  busy-but-idle and throttled GPUs, sparse XID counters, a few GPUs with uncorrected ECC errors from
  before the history, a few GPUs down (only info and up).

Values are exact and linear in time: every counter's rate equals what the rank's MFU gauge says
(rate(mfu_job_model_flops_total) = mfu_job_mfu_ratio x mfu_job_peak_flops per GPU and dtype), so
`expected_job_mfu()` is what a correct peak-weighted job MFU rule returns.

The pre-aggregated families of the issue 9 contract ("Round 2": `mfu_gpu_mfu_ratio`,
`mfu_gpu_reporting_ranks`, `mfu_job_rank_*`, `mfu_job_node_*`) are computed from the same ranks, exactly
as the contract defines them, so a rule built on them must also return `expected_job_mfu()`.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mfu_agent.gpu.model import GPM_STATUSES
from mfu_agent.gpu.nvml import CLOCK_EVENT_REASONS
from mfu_agent.health.catalogue import SEVERITY, load_catalogue
from mfu_agent.specs import peaks_for

SCRAPE_JOB = "mfu-agent"
PORT = 8469
GPUS_PER_NODE = 8
DRIVER = "550.54.15"
REASONS = tuple(CLOCK_EVENT_REASONS.values())  # the agent's names, one series per reason and GPU
UNKNOWN_MODEL = "NVIDIA Unlisted Accelerator"
# (share of nodes, NVML device name, architecture, has GPM, memory bytes, max SM clock Hz,
#  the SM clock the datasheet peak assumes)
POOLS = (
    (0.60, "NVIDIA H100 80GB HBM3", "hopper", True, 80e9, 1.98e9, 1.83e9),
    (0.15, "NVIDIA H200", "hopper", True, 141e9, 1.98e9, 1.83e9),
    (0.23, "NVIDIA A100-SXM4-80GB", "ampere", False, 80e9, 1.41e9, 1.41e9),
    (0.02, UNKNOWN_MODEL, "blackwell", True, 180e9, 2.1e9, 2.1e9),
)
# US dollars per GPU-hour by model (--gpu-price-file); the unlisted model has none (mfu_gpu_price_unknown).
PRICES = {"NVIDIA H100 80GB HBM3": 2.5, "NVIDIA H200": 3.5, "NVIDIA A100-SXM4-80GB": 1.3}
MFU_TARGET = 0.4
# Jobs per 2,000 by size: 15,398 GPUs for 2,000 jobs (94% of 2,048 nodes x 8).
SIZE_MIX = ((512, 4), (256, 6), (128, 12), (64, 20), (32, 40), (16, 80), (8, 420), (4, 420), (2, 400))

# The families the issue asks for, always written; `families=None` writes every family below.
CORE_FAMILIES = frozenset(
    {
        "up",
        "mfu_agent_build_info",
        "mfu_gpu_info",
        "mfu_gpu_up",
        "mfu_gpu_utilization_ratio",
        "mfu_gpu_sm_active_ratio",
        "mfu_gpu_tensor_active_ratio",
        "mfu_gpu_peak_flops",
        "mfu_gpu_clock_peak_flops",
        "mfu_gpu_peak_flops_unknown",
        "mfu_gpu_clock_event_active",
        "mfu_gpu_xid_errors_total",
        "mfu_job_info",
        "mfu_job_model_flops_total",
        "mfu_job_hardware_flops_total",
        "mfu_job_tokens_total",
        "mfu_job_peak_flops",
        "mfu_job_peak_flops_unknown",
        "mfu_job_mfu_ratio",
        "mfu_job_hfu_ratio",
        "mfu_job_step",
        "mfu_job_last_report_timestamp_seconds",
        "mfu_job_first_report_timestamp_seconds",
        # Round 2 of the contract: pre-aggregated by the agent, for rules at fleet scale
        "mfu_gpu_mfu_ratio",
        "mfu_gpu_reporting_ranks",
        "mfu_job_rank_mfu_ratio",
        "mfu_job_rank_hfu_ratio",
        "mfu_job_rank_last_progress_timestamp_seconds",
        "mfu_job_rank_last_report_timestamp_seconds",
        "mfu_job_rank_steps_per_second",
        "mfu_job_node_peak_flops",
        "mfu_job_node_mfu_ratio",
        "mfu_job_node_hfu_ratio",
        "mfu_job_node_gpus",
        "mfu_job_node_model_flops_per_second",
        "mfu_job_node_tokens_per_second",
        "mfu_job_node_first_report_timestamp_seconds",
    }
)

NEVER = float("-inf")
HOT = "hw_thermal_slowdown"
Series = tuple[str, float, float, float]  # label text, base, slope, born (see Fleet.series)


@dataclass
class Gpu:
    node: int
    index: int
    instance: str
    uuid: str
    model: str
    architecture: str
    gpm: bool
    memory_bytes: float
    clock_max_hz: float
    clock_datasheet_hz: float
    peaks: dict[str, float]
    up: bool = True
    clock_hz: float = 0.0
    reasons: frozenset[str] = frozenset()
    xids: dict[str, float] = field(default_factory=dict)
    ecc_uncorrected: float = 0.0  # uncorrected ECC errors (and as many double-bit events) so far
    busy_but_idle: bool = False
    ranks: list[Rank] = field(default_factory=list)


@dataclass
class Rank:
    job: Job
    rank: int
    local_rank: int
    gpu: Gpu
    mfu: dict[str, float]  # dtype -> this rank's MFU part on its GPU in that dtype
    pid: int
    stale_gpu: Gpu | None = None  # a GPU it used before: constant counter series are left there

    @property
    def flops(self) -> dict[str, float]:
        """Model FLOP/s per dtype (for a GPU without a known peak: as if its peak were 400 TFLOP/s)."""
        return {dt: m * self.gpu.peaks.get(dt, 400e12) for dt, m in self.mfu.items()}

    @property
    def known(self) -> dict[str, float]:
        """MFU parts in the dtypes its GPU has a peak for (the `mfu_job_mfu_ratio` series)."""
        return {dt: m for dt, m in self.mfu.items() if dt in self.gpu.peaks}

    def hfu_parts(self) -> dict[str, float]:
        """The `mfu_job_hfu_ratio` values, per known dtype."""
        return {dt: round(m * self.job.hfu_factor, 6) for dt, m in self.known.items()}

    def weight(self) -> float:
        """W on its GPU: the highest peak among the dtypes it reports there (0 without a known one)."""
        return max((self.gpu.peaks[dt] for dt in self.known), default=0.0)


@dataclass
class Job:
    job_id: str
    size: int
    precision: str
    mfu: float
    hfu_factor: float
    start: float  # seconds before the end of the history (positive: started before it)
    tokens: float  # tokens/s of each rank
    step_seconds: float
    ranks: list[Rank] = field(default_factory=list)


def _sizes(n_jobs: int, capacity: int, rng: random.Random) -> list[int]:
    """Job sizes in GPUs: SIZE_MIX scaled to n_jobs (the rest single-GPU), shrunk to 95% of capacity."""
    sizes: list[int] = []
    for size, per_2000 in SIZE_MIX:
        sizes += [size] * round(n_jobs * per_2000 / 2000)
    sizes = sizes[:n_jobs]
    sizes += [1] * (n_jobs - len(sizes))
    while sum(sizes) > 0.95 * capacity and max(sizes) > 1:
        i = sizes.index(max(sizes))
        sizes[i] //= 2
    rng.shuffle(sizes)
    return sizes


class Fleet:
    def __init__(self, gpus: list[Gpu], jobs: list[Job], nodes: int):
        self.gpus = gpus
        self.jobs = jobs
        self.nodes = nodes

    @property
    def ranks(self) -> list[Rank]:
        return [r for j in self.jobs for r in j.ranks]

    @classmethod
    def build(cls, nodes: int, jobs: int, seed: int = 9) -> Fleet:
        rng = random.Random(seed)
        gpus: list[Gpu] = []
        bounds, acc = [], 0.0
        for share, *pool in POOLS:
            acc += share
            bounds.append((round(acc * nodes), pool))
        for node in range(nodes):
            model, arch, gpm, mem, clock_max, clock_ds = next(
                (p for limit, p in bounds if node < limit), bounds[-1][1]
            )
            for index in range(GPUS_PER_NODE):
                n = node * GPUS_PER_NODE + index
                uuid = f"GPU-{rng.getrandbits(32):08x}-{n % 65536:04x}-4{n // 65536:03x}-8000-"
                gpus.append(
                    Gpu(
                        node=node,
                        index=index,
                        instance=_instance(node),
                        uuid=f"{uuid}{rng.getrandbits(48):012x}",
                        model=model,
                        architecture=arch,
                        gpm=gpm,
                        memory_bytes=mem,
                        clock_max_hz=clock_max,
                        clock_datasheet_hz=clock_ds,
                        peaks=peaks_for(model),
                        clock_hz=clock_max,
                    )
                )
        by_node = [gpus[n * GPUS_PER_NODE : (n + 1) * GPUS_PER_NODE] for n in range(nodes)]
        free = {n: list(range(GPUS_PER_NODE)) for n in range(nodes)}
        front = 0  # whole-node jobs from the front, small jobs packed from the back
        job_list: list[Job] = []
        sizes = _sizes(jobs, nodes * GPUS_PER_NODE, rng)
        order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
        placed: dict[int, list[Gpu]] = {}
        shared_candidates: list[Gpu] = []
        for k in order:
            size = sizes[k]
            if size >= GPUS_PER_NODE:
                need = size // GPUS_PER_NODE
                take = [n for n in range(front, nodes) if len(free[n]) == GPUS_PER_NODE][:need]
                if len(take) < need:
                    continue
                front = take[-1] + 1
                chosen = [g for n in take for g in by_node[n]]
                for n in take:
                    free[n] = []
            else:
                want = 1 if (size == 2 and k % 25 == 0) else size  # both ranks on one GPU
                if size == 1 and k % 40 == 0 and shared_candidates:
                    chosen = [shared_candidates.pop()]  # a GPU another job's rank already uses
                else:
                    node = next((n for n in reversed(range(nodes)) if len(free[n]) >= want), None)
                    if node is None:
                        continue
                    idx, free[node] = free[node][:want], free[node][want:]
                    chosen = [by_node[node][i] for i in idx]
                    if size == 1:
                        shared_candidates.append(chosen[0])
                if want == 1 and size == 2:
                    chosen = chosen * 2
            placed[k] = chosen
        for k in sorted(placed):
            chosen = placed[k]
            size = sizes[k]
            hopper = all("fp8" in g.peaks for g in chosen)
            if hopper and k % 8 == 1:
                precision, split = "fp8", {"fp8": 0.7, "bf16": 0.3}
            elif k % 50 == 7:
                precision, split = "fp16", {"fp16": 1.0}
            else:
                precision, split = "bf16", {"bf16": 1.0}
            job = Job(
                job_id=f"train-{k:04d}-{'llm' if size >= GPUS_PER_NODE else 'ft'}",
                size=size,
                precision=precision,
                mfu=round(rng.uniform(0.18, 0.62), 4),
                hfu_factor=round(rng.uniform(1.0, 1.33), 3),
                # a few started 4.5 minutes before the end of the history, the rest hours or days before
                start=270.0 if k % 30 == 2 else round(rng.uniform(3600, 5 * 86400)),
                tokens=round(rng.uniform(800, 12000), 1),
                step_seconds=round(rng.uniform(0.5, 12.0), 2),
            )
            for r, gpu in enumerate(chosen):
                m = job.mfu * rng.uniform(0.96, 1.04)
                if k % 97 == 5 and r == size - 1:
                    m *= 0.5  # a straggler
                rank = Rank(
                    job=job,
                    rank=r,
                    local_rank=r % GPUS_PER_NODE if size >= GPUS_PER_NODE else r,
                    gpu=gpu,
                    mfu={dt: m * s for dt, s in split.items()},
                    pid=100000 + (k * 17 + r * 7919) % 4_000_000,
                )
                if k % 200 == 5 and r == 0 and size >= GPUS_PER_NODE:
                    rank.stale_gpu = by_node[gpu.node][(gpu.index + 1) % GPUS_PER_NODE]
                gpu.ranks.append(rank)
                job.ranks.append(rank)
            job_list.append(job)
        for n, gpu in enumerate(gpus):
            for rank in gpu.ranks:  # ranks sharing a GPU share its throughput
                rank.mfu = {dt: round(m / len(gpu.ranks), 5) for dt, m in rank.mfu.items()}
            if gpu.ranks:
                gpu.busy_but_idle = gpu.gpm and n % 211 == 3
                if n % 173 == 11:
                    gpu.reasons = frozenset({HOT})
                    gpu.clock_hz = round(gpu.clock_max_hz * 0.7, -6)
                elif n % 5 == 0:
                    gpu.reasons = frozenset({"sw_power_cap"})
                    gpu.clock_hz = round(gpu.clock_max_hz * 0.93, -6)
            else:
                gpu.reasons = frozenset({"gpu_idle"})
                gpu.clock_hz = 345e6
                if n % 331 == 7:
                    gpu.up = False
            if n % 149 == 23:
                gpu.xids = {"79": 1.0} if n % 2 else {"13": 2.0, "31": 1.0}
            if n % 997 == 500:
                gpu.ecc_uncorrected = 2.0
        return cls(gpus, job_list, nodes)

    # -- what a correct rule returns -----------------------------------------------------------------
    def job_gpu_mfu(self) -> dict[tuple[str, str, str], tuple[float, float]]:
        """(job_id, instance, gpu) -> (the job's MFU on that GPU, W = its highest known peak there),
        over GPUs where the job has a known peak: the contract's peak-weighted inputs."""
        out: dict[tuple[str, str, str], tuple[float, float]] = {}
        for rank in self.ranks:
            g = rank.gpu
            known = {dt: m for dt, m in rank.mfu.items() if dt in g.peaks}
            if not known:
                continue
            key = (rank.job.job_id, g.instance, str(g.index))
            mfu, w = out.get(key, (0.0, 0.0))
            out[key] = (mfu + sum(known.values()), max(w, *(g.peaks[dt] for dt in known)))
        return out

    def job_node(self) -> dict[tuple[str, str, str], dict]:
        """(job_id, instance, GPU model) -> what the agent on that node exports for the job
        (the contract's `mfu_job_node_*` with labels job_id and model): `gpus` (distinct GPUs of the
        job there, known peak or not), and over its GPUs with an MFU, `peak` (sum of W), `mfu` and
        `hfu` (peak-weighted; a GPU shared by two of the job's ranks counts once)."""
        per_gpu: dict[tuple[str, str, str], dict[int, list[float]]] = {}
        for rank in self.ranks:
            g = rank.gpu
            key = (rank.job.job_id, g.instance, g.model)
            slot = per_gpu.setdefault(key, {}).setdefault(g.index, [0.0, 0.0, 0.0, 0.0])
            known = rank.known
            if known:
                slot[0] += sum(known.values())
                slot[1] += sum(rank.hfu_parts().values())
                slot[2] = max(slot[2], rank.weight())
                slot[3] = 1.0
        out: dict[tuple[str, str, str], dict] = {}
        for key, gpus in per_gpu.items():
            with_mfu = [v for v in gpus.values() if v[3]]
            row: dict = {"gpus": len(gpus)}
            if with_mfu:
                peak = sum(v[2] for v in with_mfu)
                row["peak"] = peak
                row["mfu"] = sum(v[0] * v[2] for v in with_mfu) / peak
                row["hfu"] = sum(v[1] * v[2] for v in with_mfu) / peak
            out[key] = row
        return out

    def expected_job_mfu(self) -> dict[str, float]:
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for (job_id, _, _), (mfu, w) in self.job_gpu_mfu().items():
            num[job_id] = num.get(job_id, 0.0) + mfu * w
            den[job_id] = den.get(job_id, 0.0) + w
        return {j: num[j] / den[j] for j in num}

    def expected_fleet_mfu(self) -> float:
        pairs = self.job_gpu_mfu().values()
        return sum(m * w for m, w in pairs) / sum(w for _, w in pairs)

    def summary(self) -> dict:
        ranks = self.ranks
        per_gpu = [len(g.ranks) for g in self.gpus]
        return {
            "nodes": self.nodes,
            "gpus": len(self.gpus),
            "jobs": len(self.jobs),
            "ranks": len(ranks),
            "busy_gpus": sum(1 for n in per_gpu if n),
            "gpus_with_two_ranks": sum(1 for n in per_gpu if n > 1),
            "gpus_down": sum(1 for g in self.gpus if not g.up),
            "mixed_precision_jobs": sum(1 for j in self.jobs if j.precision == "fp8"),
            "largest_job_gpus": max((j.size for j in self.jobs), default=0),
            "jobs_with_mfu": len(self.expected_job_mfu()),
            "gpus_without_peak": sum(1 for g in self.gpus if not g.peaks),
        }

    # -- series ----------------------------------------------------------------------------------------
    def series(self, end: float) -> Iterator[tuple[str, str, str, Iterator[Series]]]:
        """Per family: (family name, OpenMetrics type, sample name, its series), each series being
        (label text, base, slope, born): the value is base + slope x t at sample times t >= born.
        `end` is the last sample time (jobs' start times are relative to it)."""
        nodes = sorted({g.node for g in self.gpus})
        for name, kind, rows in self._node_families(nodes):
            yield _family(name), kind, name, rows
        for name, kind, rows in self._gpu_families():
            yield _family(name), kind, name, rows
        for name, kind, rows in self._job_families(end):
            yield _family(name), kind, name, rows

    def _node_families(self, nodes: list[int]) -> Iterator[tuple[str, str, Iterator[Series]]]:
        ranks_on = {n: 0 for n in nodes}
        for g in self.gpus:
            ranks_on[g.node] += len(g.ranks)

        def per_node(value: Callable[[int], tuple[float, float]], *extra: tuple[str, object]):
            return ((_labels(_instance(n), *extra), *value(n), NEVER) for n in nodes)

        yield "up", "gauge", per_node(lambda n: (1.0, 0.0))
        build = (("version", "0.9.0"), ("backend", "nvml"))
        yield (
            "mfu_agent_build_info",
            "gauge",
            ((_labels(_instance(n), *build, ("node", _host(n))), 1.0, 0.0, NEVER) for n in nodes),
        )
        yield "mfu_agent_samples_total", "counter", per_node(lambda n: (0.0, 1.0))
        yield "mfu_agent_sample_failures_total", "counter", per_node(lambda n: (0.0, 0.0))
        yield "mfu_agent_sample_duration_seconds", "gauge", per_node(lambda n: (0.012, 0.0))
        yield "mfu_agent_last_sample_timestamp_seconds", "gauge", per_node(lambda n: (-0.4, 1.0))
        yield "mfu_agent_nvml_up", "gauge", per_node(lambda n: (1.0, 0.0))
        yield "mfu_agent_tracked_ranks", "gauge", per_node(lambda n: (float(ranks_on[n]), 0.0))
        yield (
            "mfu_agent_reports_total",
            "counter",
            (
                (_labels(_instance(n), ("outcome", outcome)), 0.0, rate * ranks_on[n], NEVER)
                for n in nodes
                for outcome, rate in (("accepted", 0.2), ("invalid", 0.0))
            ),
        )
        yield (
            "mfu_agent_rank_evictions_total",
            "counter",
            (
                (_labels(_instance(n), ("reason", reason)), 0.0, 0.0, NEVER)
                for n in nodes
                for reason in ("final", "silent", "stalled", "ttl")
            ),
        )
        yield "mfu_agent_series_budget", "gauge", per_node(lambda n: (100_000.0, 0.0))
        yield "mfu_agent_mfu_target_ratio", "gauge", per_node(lambda n: (MFU_TARGET, 0.0))
        # every node runs on Kubernetes: the kubelet's PodResources List answers every 30 s
        yield "mfu_agent_kubelet_up", "gauge", per_node(lambda n: (1.0, 0.0))
        yield "mfu_agent_kubelet_last_success_timestamp_seconds", "gauge", per_node(lambda n: (-12.0, 1.0))
        yield (
            "mfu_agent_kubelet_errors_total",
            "counter",
            (
                (_labels(_instance(n), ("error", "deadline_exceeded")), 1.0, 0.0, NEVER)
                for n in nodes
                if n % 50 == 7
            ),
        )
        yield "mfu_agent_series_estimate", "gauge", per_node(lambda n: (600.0 + 20.0 * ranks_on[n], 0.0))
        error = (("call", "nvmlDeviceGetPowerUsage"), ("error", "not_supported"))
        yield (
            "mfu_agent_nvml_errors_total",
            "counter",
            ((_labels(_instance(n), *error), 3.0, 0.0, NEVER) for n in nodes if n % 50 == 0),
        )

    def _gpu_families(self) -> Iterator[tuple[str, str, Iterator[Series]]]:
        up = [g for g in self.gpus if g.up]

        def gl(g: Gpu, *extra: tuple[str, object]) -> str:
            return _labels(g.instance, ("gpu", g.index), ("uuid", g.uuid), *extra)

        def per_gpu(value: Callable[[Gpu], float | None], gpus: list[Gpu] = up) -> Iterator[Series]:
            return ((gl(g), v, 0.0, NEVER) for g in gpus if (v := value(g)) is not None)

        def gpm(value: Callable[[Gpu], float]) -> Callable[[Gpu], float | None]:
            return lambda g: value(g) if g.gpm else None  # GPM readings: absent without GPM

        def sm_active(g: Gpu) -> float:
            return 0.3 if g.busy_but_idle else round(min(1.0, 0.35 + load(g)), 3)

        def tensor_active(g: Gpu) -> float:
            return 0.05 if g.busy_but_idle else round(min(1.0, 1.1 * load(g)), 3)

        load, power = _load, gpu_power

        yield (
            "mfu_gpu_info",
            "gauge",
            (
                (
                    gl(
                        g,
                        ("model", g.model),
                        ("driver_version", DRIVER),
                        ("pci_bus_id", f"00000000:{0x18 + 0x10 * g.index:02X}:00.0"),
                        ("architecture", g.architecture),
                        ("sm_activity_source", "gpm" if g.gpm else "none"),
                    ),
                    1.0,
                    0.0,
                    NEVER,
                )
                for g in self.gpus
            ),
        )
        yield "mfu_gpu_up", "gauge", per_gpu(lambda g: 1.0 if g.up else 0.0, self.gpus)
        # GPM answers on Hopper and newer, NOT_SUPPORTED on the A100s: one series per status
        yield (
            "mfu_gpu_gpm_status",
            "gauge",
            (
                (gl(g, ("status", status)), 1.0 if status == ("ok" if g.gpm else "not_supported") else 0.0)
                + (0.0, NEVER)
                for g in up
                for status in GPM_STATUSES
            ),
        )
        # no GPU of the fleet is in MIG mode: the A100s and H100s say 0, the others have no MIG
        yield (
            "mfu_gpu_mig_mode",
            "gauge",
            per_gpu(lambda g: 0.0 if g.up and ("A100" in g.model or "H100" in g.model) else None, self.gpus),
        )
        # a GPU down was last read an hour ago
        yield "mfu_gpu_reading_age_seconds", "gauge", per_gpu(lambda g: 0.4 if g.up else 3600.0, self.gpus)

        def gpu_mfu(g: Gpu) -> float | None:
            """Every rank's and dtype's part on the GPU; absent when no rank on it has an MFU."""
            parts = [m for r in g.ranks for m in r.known.values()]
            return sum(parts) if parts else None

        yield "mfu_gpu_mfu_ratio", "gauge", per_gpu(gpu_mfu)
        yield "mfu_gpu_reporting_ranks", "gauge", per_gpu(lambda g: float(len(g.ranks)))
        gauges: dict[str, Callable[[Gpu], float | None]] = {
            "mfu_gpu_utilization_ratio": lambda g: 0.98 if g.ranks else 0.0,
            "mfu_gpu_memory_utilization_ratio": lambda g: round(0.2 + 0.5 * load(g), 3) if g.ranks else 0.0,
            "mfu_gpu_sm_active_ratio": gpm(sm_active),
            "mfu_gpu_sm_occupancy_ratio": gpm(lambda g: round(min(1.0, 0.2 + 0.6 * load(g)), 3)),
            "mfu_gpu_tensor_active_ratio": gpm(tensor_active),
            "mfu_gpu_dram_active_ratio": gpm(lambda g: round(min(1.0, 0.1 + 0.5 * load(g)), 3)),
            "mfu_gpu_fp16_active_ratio": gpm(lambda g: round(0.05 * load(g), 4)),
            "mfu_gpu_fp32_active_ratio": gpm(lambda g: round(0.02 * load(g), 4)),
            "mfu_gpu_fp64_active_ratio": gpm(lambda g: 0.0),
            "mfu_gpu_memory_used_bytes": lambda g: round(g.memory_bytes * (0.85 if g.ranks else 0.001)),
            "mfu_gpu_memory_total_bytes": lambda g: g.memory_bytes,
            "mfu_gpu_power_watts": power,
            "mfu_gpu_power_limit_watts": lambda g: 700.0,
            "mfu_gpu_temperature_celsius": lambda g: 40.0 + 35.0 * bool(g.ranks) + 15.0 * (HOT in g.reasons),
            "mfu_gpu_sm_clock_hertz": lambda g: g.clock_hz,
            "mfu_gpu_sm_clock_max_hertz": lambda g: g.clock_max_hz,
            "mfu_gpu_remapped_rows_pending": lambda g: 0.0,
            "mfu_gpu_row_remap_failure": lambda g: 0.0,
        }
        for name, value in gauges.items():
            yield name, "gauge", per_gpu(value)

        def nvlink(g: Gpu) -> float:
            """NVLink bytes/s into the GPU: busiest where its job's MFU is lowest (communication-bound)."""
            if not g.ranks or g.busy_but_idle:
                return 0.0
            return round(4e10 + 3.6e11 * max(0.0, 1.0 - load(g) / 0.5))

        # GPM throughput (absent without GPM); every board of the fleet has NVLink
        traffic = {
            "mfu_gpu_pcie_bytes_per_second": lambda g, d: 3.2e9 if d == "rx" and g.ranks else 6.4e8,
            "mfu_gpu_nvlink_bytes_per_second": lambda g, d: (
                nvlink(g) if d == "rx" else round(0.98 * nvlink(g))
            ),
        }
        for name, rate in traffic.items():
            yield (
                name,
                "gauge",
                [
                    (gl(g, ("direction", d)), rate(g, d), 0.0, NEVER)
                    for g in up
                    if g.gpm
                    for d in ("rx", "tx")
                ],
            )
        # NVLink errors: a few GPUs replay (a marginal link), the rest count none
        yield (
            "mfu_gpu_nvlink_errors_total",
            "counter",
            (
                (
                    gl(g, ("type", t)),
                    0.0,
                    0.5 if t == "replay" and g.node % 25 == 3 and g.index == 5 else 0.0,
                    NEVER,
                )
                for g in up
                for t in ("replay", "recovery", "crc_flit", "crc_data")
            ),
        )
        yield "mfu_gpu_energy_joules_total", "counter", ((gl(g), 0.0, power(g), NEVER) for g in up)
        # Cost (every GPU is priced but the unlisted model). No GPU is idle while allocated (the
        # busy-but-idle ones have SM active 0.3, above --idle-sm-active 0.2); GPUs with an MFU below the
        # target spend price x (target - MFU) / target below it.
        priced = [g for g in up if g.model in PRICES]

        def below_target(g: Gpu) -> float:
            mfu = gpu_mfu(g)
            return 0.0 if mfu is None else PRICES[g.model] / 3600 * max(0.0, MFU_TARGET - mfu) / MFU_TARGET

        yield (
            "mfu_gpu_idle_allocated_seconds_total",
            "counter",
            ((gl(g), 0.0, 0.0, NEVER) for g in up if g.gpm),
        )
        yield (
            "mfu_gpu_cost_dollars_total",
            "counter",
            ((gl(g), 0.0, PRICES[g.model] / 3600, NEVER) for g in priced),
        )
        yield "mfu_gpu_idle_cost_dollars_total", "counter", ((gl(g), 0.0, 0.0, NEVER) for g in priced)
        yield (
            "mfu_gpu_below_target_cost_dollars_total",
            "counter",
            ((gl(g), 0.0, below_target(g), NEVER) for g in priced),
        )
        yield (
            "mfu_gpu_price_unknown",
            "gauge",
            ((gl(g, ("model", g.model)), 1.0, 0.0, NEVER) for g in up if g.model not in PRICES),
        )
        yield (
            "mfu_gpu_clock_event_active",
            "gauge",
            ((gl(g, ("reason", r)), float(r in g.reasons), 0.0, NEVER) for g in up for r in REASONS),
        )
        for name in ("mfu_gpu_ecc_errors_total", "mfu_gpu_remapped_rows_total"):
            yield (
                name,
                "counter",
                (
                    (gl(g, ("type", t)), g.ecc_uncorrected if t == "uncorrected" else 0.0, 0.0, NEVER)
                    for g in up
                    for t in ("corrected", "uncorrected")
                ),
            )
        yield "mfu_gpu_double_bit_ecc_events_total", "counter", per_gpu(lambda g: g.ecc_uncorrected / 2)
        yield (
            "mfu_gpu_xid_errors_total",
            "counter",
            ((gl(g, ("xid", x)), n, 0.0, NEVER) for g in up for x, n in g.xids.items()),
        )

        def health(g: Gpu) -> tuple[str, str]:
            """The agent's health state: the most severe of the GPU's XIDs and uncorrectable ECC."""
            causes = [(load_catalogue().action(int(x)), f"xid_{x}") for x in g.xids]
            causes += [("reset_gpu", "ecc_uncorrectable")] if g.ecc_uncorrected else []
            return max(causes, key=lambda c: SEVERITY[c[0]], default=("none", "none"))

        yield (
            "mfu_gpu_health_action",
            "gauge",
            ((gl(g, ("action", a), ("reason", r)), 1.0, 0.0, NEVER) for g in up for a, r in [health(g)]),
        )
        yield "mfu_gpu_health_severity", "gauge", per_gpu(lambda g: float(SEVERITY[health(g)[0]]))
        yield (
            "mfu_gpu_process_memory_bytes",
            "gauge",
            (
                (gl(g, ("pid", r.pid)), round(g.memory_bytes * 0.8 / len(g.ranks)), 0.0, NEVER)
                for g in up
                for r in g.ranks
            ),
        )
        for family, busy in (
            ("mfu_gpu_process_sm_utilization_ratio", 0.9),
            ("mfu_gpu_process_memory_utilization_ratio", 0.4),
        ):
            yield (
                family,
                "gauge",
                [  # a list, not a generator: `busy` changes with the loop
                    (gl(g, ("pid", r.pid)), round(busy / len(g.ranks), 4), 0.0, NEVER)
                    for g in up
                    for r in g.ranks
                ],
            )
        yield (
            "mfu_gpu_process_info",
            "gauge",
            (
                (gl(g, ("pid", r.pid), *_pod(r), ("slurm_job_id", ""), *_names(r)), 1.0, 0.0, NEVER)
                for g in up
                for r in g.ranks
            ),
        )
        yield (
            "mfu_gpu_peak_flops",
            "gauge",
            ((gl(g, ("dtype", dt)), p, 0.0, NEVER) for g in up for dt, p in g.peaks.items()),
        )
        yield (
            "mfu_gpu_clock_peak_flops",
            "gauge",
            (
                (gl(g, ("dtype", dt)), round(p * g.clock_hz / g.clock_datasheet_hz), 0.0, NEVER)
                for g in up
                for dt, p in g.peaks.items()
            ),
        )
        yield (
            "mfu_gpu_peak_flops_unknown",
            "gauge",
            ((gl(g, ("model", g.model)), 1.0, 0.0, NEVER) for g in up if not g.peaks),
        )

    def _job_families(self, end: float) -> Iterator[tuple[str, str, Iterator[Series]]]:
        ranks = self.ranks

        def jl(r: Rank, dtype: str, *extra: tuple[str, object], gpu: Gpu | None = None) -> str:
            g = gpu or r.gpu
            job = (("job_id", r.job.job_id), ("rank", r.rank), ("gpu", g.index), ("uuid", g.uuid))
            return _labels(g.instance, *job, ("dtype", dtype), *extra)

        def born(r: Rank) -> float:
            return end - r.job.start

        def per_rank(value: Callable[[Rank], tuple[float, float]]) -> Iterator[Series]:
            """One series per rank (on its GPU, dtype = its precision): (base, slope) from `value`."""
            return ((jl(r, r.job.precision), *value(r), born(r)) for r in ranks)

        def known(r: Rank) -> list[tuple[str, float]]:
            return list(r.known.items())

        yield (
            "mfu_job_info",
            "gauge",
            (
                (
                    jl(
                        r,
                        r.job.precision,
                        ("pid", r.pid),
                        ("local_rank", r.local_rank),
                        ("world_size", r.job.size),
                        ("attributed_by", "gpus"),
                        ("pod", f"{r.job.job_id}-worker-{r.rank // GPUS_PER_NODE}"),
                        ("namespace", "training"),
                        ("slurm_job_id", ""),
                        ("hostname", _host(r.gpu.node)),
                        *_pod(r),
                        ("container", "trainer"),
                    ),
                    1.0,
                    0.0,
                    born(r),
                )
                for r in ranks
            ),
        )

        def flops(factor: Callable[[Rank], float]) -> Iterator[Series]:
            for r in ranks:
                for dt, f in r.flops.items():
                    f *= factor(r)
                    yield jl(r, dt), -f * born(r), f, born(r)
                    if r.stale_gpu is not None:  # what it did on the GPU it left: constant
                        yield jl(r, dt, gpu=r.stale_gpu), f * 3600.0, 0.0, born(r)

        yield "mfu_job_model_flops_total", "counter", flops(lambda r: 1.0)
        yield "mfu_job_hardware_flops_total", "counter", flops(lambda r: r.job.hfu_factor)
        yield "mfu_job_tokens_total", "counter", per_rank(lambda r: (-r.job.tokens * born(r), r.job.tokens))
        yield (
            "mfu_job_samples_total",
            "counter",
            per_rank(lambda r: (-r.job.tokens / 4096 * born(r), r.job.tokens / 4096)),
        )
        yield (
            "mfu_job_step",
            "gauge",
            per_rank(lambda r: (-born(r) / r.job.step_seconds, 1 / r.job.step_seconds)),
        )
        yield (
            "mfu_job_peak_flops",
            "gauge",
            ((jl(r, dt), r.gpu.peaks[dt], 0.0, born(r)) for r in ranks for dt, _ in known(r)),
        )
        yield (
            "mfu_job_peak_flops_unknown",
            "gauge",
            (
                (jl(r, dt, ("model", r.gpu.model)), 1.0, 0.0, born(r))
                for r in ranks
                for dt in r.mfu
                if dt not in r.gpu.peaks
            ),
        )
        yield (
            "mfu_job_mfu_ratio",
            "gauge",
            ((jl(r, dt), m, 0.0, born(r)) for r in ranks for dt, m in known(r)),
        )
        yield (
            "mfu_job_hfu_ratio",
            "gauge",
            ((jl(r, dt), h, 0.0, born(r)) for r in ranks for dt, h in r.hfu_parts().items()),
        )
        yield "mfu_job_tokens_per_second", "gauge", per_rank(lambda r: (r.job.tokens, 0.0))
        yield "mfu_job_last_report_timestamp_seconds", "gauge", per_rank(lambda r: (-2.5, 1.0))
        yield "mfu_job_first_report_timestamp_seconds", "gauge", per_rank(lambda r: (born(r), 0.0))

        # Per rank (labels job_id, rank): its peak-weighted MFU / HFU over its GPUs (one GPU here),
        # absent without a known peak; when its work last moved on (the last report with a newer
        # step: on average half a step before its last report) and its last report.
        def rl(r: Rank) -> str:
            return _labels(r.gpu.instance, ("job_id", r.job.job_id), ("rank", r.rank))

        yield (
            "mfu_job_rank_mfu_ratio",
            "gauge",
            ((rl(r), sum(r.known.values()), 0.0, born(r)) for r in ranks if r.known),
        )
        yield (
            "mfu_job_rank_hfu_ratio",
            "gauge",
            ((rl(r), sum(r.hfu_parts().values()), 0.0, born(r)) for r in ranks if r.known),
        )
        yield (
            "mfu_job_rank_last_progress_timestamp_seconds",
            "gauge",
            ((rl(r), -2.5 - r.job.step_seconds / 2, 1.0, born(r)) for r in ranks),
        )
        yield (
            "mfu_job_rank_last_report_timestamp_seconds",
            "gauge",
            ((rl(r), -2.5, 1.0, born(r)) for r in ranks),
        )
        yield (
            "mfu_job_rank_steps_per_second",
            "gauge",
            ((rl(r), 1 / r.job.step_seconds, 0.0, born(r)) for r in ranks),
        )

        # Goodput per rank (labels job_id, rank): wall time since its first report, 95% of it
        # productive, 1% stalled, the rest marked phases (3% checkpoint, 1% eval); no restarts.
        def share(part: float) -> Iterator[Series]:
            return ((rl(r), -part * born(r), part, born(r)) for r in ranks)

        def zero() -> Iterator[Series]:
            return ((rl(r), 0.0, 0.0, born(r)) for r in ranks)

        yield "mfu_job_wall_seconds_total", "counter", share(1.0)
        yield "mfu_job_productive_seconds_total", "counter", share(0.95)
        yield "mfu_job_stall_seconds_total", "counter", share(0.01)
        yield "mfu_job_restart_downtime_seconds_total", "counter", zero()
        yield (
            "mfu_job_phase_seconds_total",
            "counter",
            (
                (
                    _labels(r.gpu.instance, ("job_id", r.job.job_id), ("rank", r.rank), ("phase", phase)),
                    -part * born(r),
                    part,
                    born(r),
                )
                for r in ranks
                for phase, part in (("checkpoint", 0.03), ("eval", 0.01), ("data_wait", 0.0), ("other", 0.0))
            ),
        )
        yield (
            "mfu_job_restarts_total",
            "counter",
            (
                (
                    _labels(r.gpu.instance, ("job_id", r.job.job_id), ("rank", r.rank), ("cause", cause)),
                    0.0,
                    0.0,
                    born(r),
                )
                for r in ranks
                for cause in ("new_process", "counter_reset")
            ),
        )
        for lost in ("steps", "flops", "tokens", "seconds"):
            yield f"mfu_job_lost_work_{lost}_total", "counter", zero()

        # Per job on a node and GPU model (labels job_id, model), and per job on a node (job_id).
        node_rows = self.job_node()
        jobs = {j.job_id: j for j in self.jobs}

        def nl(job_id: str, instance: str, *extra: tuple[str, object]) -> str:
            return _labels(instance, ("job_id", job_id), *extra)

        def node_family(field_name: str) -> Iterator[Series]:
            for (job_id, instance, model), row in node_rows.items():
                if field_name in row:
                    born_at = end - jobs[job_id].start
                    yield nl(job_id, instance, ("model", model)), row[field_name], 0.0, born_at

        yield "mfu_job_node_peak_flops", "gauge", node_family("peak")
        yield "mfu_job_node_mfu_ratio", "gauge", node_family("mfu")
        yield "mfu_job_node_hfu_ratio", "gauge", node_family("hfu")
        yield "mfu_job_node_gpus", "gauge", node_family("gpus")
        per_job_node: dict[tuple[str, str], list[Rank]] = {}
        for r in ranks:
            per_job_node.setdefault((r.job.job_id, r.gpu.instance), []).append(r)

        def job_node_sum(value: Callable[[Rank], float]) -> Iterator[Series]:
            for (job_id, instance), here in per_job_node.items():
                yield nl(job_id, instance), sum(value(r) for r in here), 0.0, born(here[0])

        yield "mfu_job_node_model_flops_per_second", "gauge", job_node_sum(lambda r: sum(r.flops.values()))
        yield "mfu_job_node_tokens_per_second", "gauge", job_node_sum(lambda r: r.job.tokens)
        # each GPU's power split equally among the ranks on it (the agent's mfu_job_node_energy_joules)
        yield (
            "mfu_job_node_energy_joules_total",
            "counter",
            (
                (
                    nl(job_id, instance),
                    0.0,
                    sum(gpu_power(r.gpu) / len(r.gpu.ranks) for r in here),
                    born(here[0]),
                )
                for (job_id, instance), here in per_job_node.items()
            ),
        )
        first = {key: min(born(r) for r in here) for key, here in per_job_node.items()}
        yield (
            "mfu_job_node_first_report_timestamp_seconds",
            "gauge",
            ((nl(j, i), t, 0.0, t) for (j, i), t in first.items()),
        )

    def write_openmetrics(
        self,
        outs: list[TextIO],
        end: float,
        history: float,
        step: float,
        families: Iterable[str] | None = None,
    ) -> dict:
        """Writes samples every `step` seconds over (end - history, end] as OpenMetrics text, the
        timestamps split in contiguous slices over `outs` (one file per slice, each a complete
        OpenMetrics document), so that several `promtool` processes can backfill them in parallel
        into blocks that do not overlap. `families`: sample names to write (None: all)."""
        wanted = None if families is None else set(families)
        n = int(history // step) + 1
        times = [end - step * (n - 1 - i) for i in range(n)]
        parts = len(outs)
        cut = [round(i * n / parts) for i in range(parts + 1)]
        slices = [times[cut[p] : cut[p + 1]] for p in range(parts)]
        stamps = [[f" {t:.0f}\n" if t == int(t) else f" {t!r}\n" for t in s] for s in slices]
        stats = {"series": 0, "samples": 0, "families": []}
        buffers: list[list[str]] = [[] for _ in outs]
        pending = 0

        def flush() -> None:
            for out, buf in zip(outs, buffers, strict=True):
                out.write("".join(buf))
                buf.clear()

        for family, kind, sample, series in self.series(end):
            if wanted is not None and sample not in wanted:
                continue
            stats["families"].append(sample)
            for buf in buffers:
                buf.append(f"# TYPE {family} {kind}\n")
            for labels, base, slope, born in series:
                prefix = f"{sample}{{{labels}}} "
                stats["series"] += 1
                for p in range(parts):
                    ts, st = slices[p], stamps[p]
                    first = 0
                    while first < len(ts) and ts[first] < born:
                        first += 1
                    if first == len(ts):
                        continue
                    if slope == 0.0:  # the same line but for the timestamp
                        line = f"{prefix}{_num(base)}"
                        buffers[p].append("".join([line + s for s in st[first:]]))
                    else:
                        pairs = zip(ts[first:], st[first:], strict=True)
                        buffers[p].append("".join([f"{prefix}{_num(base + slope * t)}{s}" for t, s in pairs]))
                    stats["samples"] += len(ts) - first
                    pending += len(ts) - first
                if pending > 200_000:
                    flush()
                    pending = 0
        flush()
        for out in outs:
            out.write("# EOF\n")
        return stats


def _num(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _load(g: Gpu) -> float:
    return sum(sum(r.mfu.values()) for r in g.ranks)


def gpu_power(g: Gpu) -> float:
    return round(120 + 560 * min(1.0, _load(g) * 1.5), 1)


def _family(sample: str) -> str:
    """OpenMetrics family name of a sample name (counters are declared without `_total`)."""
    return sample.removesuffix("_total")


def _labels(instance: str, *pairs: tuple[str, object]) -> str:
    """Label text of a series as Prometheus stores it after a scrape (`instance` and `job` added)."""
    return ",".join(f'{k}="{v}"' for k, v in (("instance", instance), ("job", SCRAPE_JOB), *pairs))


def _host(node: int) -> str:
    return f"gpu-node-{node:04d}"


def _instance(node: int) -> str:
    return f"{_host(node)}:{PORT}"


def _pod(r: Rank) -> tuple[tuple[str, str], tuple[str, str]]:
    """(pod_uid, container_id) labels of a rank's process: one pod per node of a job."""
    h = zlib.crc32(f"{r.job.job_id}/{r.rank // GPUS_PER_NODE}".encode())
    c = zlib.crc32(f"{r.job.job_id}/{r.rank}".encode())
    return (
        ("pod_uid", f"{h:08x}-7c1e-4b2a-9d3f-{h * 2654435761 % 16**12:012x}"),
        ("container_id", f"containerd://{c:08x}{c * 40503 % 16**8:08x}"),
    )


def _names(r: Rank) -> tuple[tuple[str, str], ...]:
    """(namespace, pod, container) of a rank's process, as the kubelet names them."""
    return (
        ("namespace", "training"),
        ("pod", f"{r.job.job_id}-worker-{r.rank // GPUS_PER_NODE}"),
        ("container", "trainer"),
    )


def write_files(fleet: Fleet, paths: list[Path], **kwargs) -> dict:
    """`Fleet.write_openmetrics` into one new file per path (each a slice of the time range)."""
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(p, "w", encoding="utf-8", buffering=1 << 20)) for p in paths]
        return fleet.write_openmetrics(outs, **kwargs)
