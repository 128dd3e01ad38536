"""Metric families for the reporting ranks: counters, MFU and HFU, and the peak behind them.

FLOP series carry the dtype the FLOPs were done in; the other series carry the rank's precision. A rank
on N GPUs gets series per GPU, each with 1/N of the rank's work; `mfu_job_mfu_ratio` is one series per
(GPU, dtype), that dtype's part of the rank's MFU on that GPU, so summing over dtype gives the rank's MFU
there (docs/metrics.md; job and fleet aggregation in deploy/prometheus/rules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..attribution.owners import Attributed, Owner
from ..jobs.registry import COUNTERS, RankView

SERIES = ["job_id", "rank", "gpu", "uuid", "dtype"]  # every job series: so `and`/`on` join them 1:1
INFO_LABELS = [
    *SERIES,
    "pid",
    "local_rank",
    "world_size",
    "attributed_by",
    "pod",
    "namespace",
    "slurm_job_id",
    "hostname",
    "pod_uid",
    "container_id",
    "container",
]

_COUNTER_HELP = {
    "model_flops": "Model FLOPs the rank did on this GPU in this dtype; never goes down (restarts add on).",
    "hardware_flops": "Hardware FLOPs (with recomputation) done by the rank on this GPU in this dtype.",
    "tokens": "Tokens processed by the rank (its share on this GPU).",
    "samples": "Samples processed by the rank (its share on this GPU).",
}


def _text(value: object) -> str:
    return "" if value is None else str(value)


def job_families(views: list[RankView], owners: Attributed | None = None) -> Iterator[Metric]:
    """`owners`: who the processes and devices of the latest snapshot belong to (attribution/owners.py).
    A rank's pod UID and container id come from its process's cgroup, so only for ranks found through
    NVML's process list, whose pid is known to be a host pid (a pid sent from inside a container's PID
    namespace names some other process on the host); its namespace, pod and container from the kubelet
    where it knows them, else from the report's own labels (docs/metrics.md).

    Each family is built when the one before has been consumed (one pass over the views each), so a
    scrape that encodes them one by one holds one family at a time (metrics/exposition.py)."""
    yield _info(views, owners)
    for name in COUNTERS:
        counter = CounterMetricFamily(f"mfu_job_{name}", _COUNTER_HELP[name], labels=SERIES)
        for v in views:
            rank = str(v.rank)
            for (uuid, (kind, dtype)), total in v.gpu_totals.items():
                if kind == name:
                    index = v.gpus_seen.get(uuid, -1)
                    counter.add_metric([v.job_id, rank, str(index), uuid, dtype or v.dtype], total)
        yield counter
    yield _per_gpu(views, "mfu_job_step", "Last training step the rank reported.", lambda v: v.step)
    peak = GaugeMetricFamily(
        "mfu_job_peak_flops",
        "Dense peak FLOP/s of this GPU at this dtype: the denominator of the MFU part in that dtype.",
        labels=SERIES,
    )
    unknown = GaugeMetricFamily(
        "mfu_job_peak_flops_unknown",
        "1 where no peak FLOP/s is known for the GPU model and dtype, so MFU cannot be computed.",
        labels=[*SERIES, "model"],
    )
    for v in views:
        rank = str(v.rank)
        for gpu in v.gpus:
            for dtype, gpu_peak in gpu.peaks:
                dtype_series = [v.job_id, rank, str(gpu.index), gpu.uuid, dtype]
                if gpu_peak is None:
                    unknown.add_metric([*dtype_series, gpu.model], 1)
                else:
                    peak.add_metric(dtype_series, gpu_peak)
    yield peak
    yield unknown
    for name, counter, help_text in (
        (
            "mfu_job_mfu_ratio",
            "model_flops",
            "Part of the rank's model FLOPs utilisation on this GPU done in this dtype, over the agent's "
            "window (sum over dtype for the rank's MFU); never clamped.",
        ),
        (
            "mfu_job_hfu_ratio",
            "hardware_flops",
            "Part of the rank's hardware FLOPs utilisation on this GPU in this dtype, over the agent's "
            "window.",
        ),
    ):
        family = GaugeMetricFamily(name, help_text, labels=SERIES)
        for v in views:
            rank = str(v.rank)
            for gpu in v.gpus:
                parts = v.gpu_utilisation(gpu, counter)
                for dtype, part in (parts or {}).items():
                    # Never clamped: a part above 1 means the FLOPs formula or the peak is wrong.
                    family.add_metric([v.job_id, rank, str(gpu.index), gpu.uuid, dtype], part)
        yield family
    yield _per_gpu(
        views,
        "mfu_job_tokens_per_second",
        "Tokens per second over the agent's window (this GPU's share).",
        _tokens_per_second,
    )
    yield _per_gpu(
        views,
        "mfu_job_last_report_timestamp_seconds",
        "Unix time the agent last heard from the rank.",
        lambda v: v.last_received,
    )
    yield _per_gpu(
        views,
        "mfu_job_first_report_timestamp_seconds",
        "Unix time the agent first heard from the rank (kept across agent restarts with --state-dir).",
        lambda v: v.first_received,
    )


def _tokens_per_second(v: RankView) -> float | None:
    """This GPU's share of the rank's tokens/s."""
    return v.rates.get(("tokens", "")) / len(v.gpus) if v.rates is not None and v.has("tokens") else None


def _per_gpu(
    views: list[RankView], name: str, help_text: str, value_of: Callable[[RankView], float | None]
) -> Metric:
    """A gauge of one value per rank, on each GPU it uses now, with the rank's precision as dtype."""
    family = GaugeMetricFamily(name, help_text, labels=SERIES)
    for v in views:
        value = value_of(v)
        if value is None:
            continue
        rank = str(v.rank)
        for gpu in v.gpus:
            family.add_metric([v.job_id, rank, str(gpu.index), gpu.uuid, v.dtype], value)
    return family


def rank_owner(v: RankView, owners: Attributed | None) -> Owner:
    """Where a rank runs, as exported on mfu_job_info and /v1/jobs: the kubelet's names where it knows
    them (it knows which container holds the device), else the names the report carried."""
    found = owners.rank((g.uuid for g in v.gpus), v.pid, v.attributed_by) if owners else Owner()
    reported = dict(v.labels)
    if found.pod:
        namespace, pod, container = found.namespace, found.pod, found.container
    else:
        namespace, pod, container = reported.get("namespace", ""), reported.get("pod", ""), ""
    return Owner(
        pod_uid=found.pod_uid,
        container_id=found.container_id,
        slurm_job_id=reported.get("slurm_job_id", "") or found.slurm_job_id,
        namespace=namespace,
        pod=pod,
        container=container,
    )


def _info(views: list[RankView], owners: Attributed | None) -> Metric:
    info = GaugeMetricFamily(
        "mfu_job_info", "A reporting rank on a GPU and where it runs; always 1.", labels=INFO_LABELS
    )
    for v in views:
        labels_map = dict(v.labels)
        owner = rank_owner(v, owners)
        rank = str(v.rank)
        for gpu in v.gpus:
            info.add_metric(
                [
                    v.job_id,
                    rank,
                    str(gpu.index),
                    gpu.uuid,
                    v.dtype,
                    _text(v.pid),
                    _text(v.local_rank),
                    _text(v.world_size),
                    v.attributed_by,
                    owner.pod,
                    owner.namespace,
                    owner.slurm_job_id,
                    labels_map.get("hostname", ""),
                    owner.pod_uid,
                    owner.container_id,
                    owner.container,
                ],
                1,
            )
    return info


def report_families(
    outcomes: dict[str, int], tracked: int, evictions: dict[str, int], series: int, budget: int
) -> Iterator[Metric]:
    reports = CounterMetricFamily(
        "mfu_agent_reports",
        "Reports received, by outcome (a rejected request counts once however many reports it held).",
        labels=["outcome"],
    )
    for outcome, count in sorted(outcomes.items()):
        reports.add_metric([outcome], count)
    yield reports
    yield GaugeMetricFamily(
        "mfu_agent_tracked_ranks", "(job_id, rank) pairs the agent is tracking.", value=tracked
    )
    evicted = CounterMetricFamily(
        "mfu_agent_rank_evictions",
        "Ranks the agent stopped tracking, by reason: ttl (silent past --rank-ttl), silent or stalled "
        "(evicted to make room for a new rank), final (the sender's final report).",
        labels=["reason"],
    )
    for reason, count in sorted(evictions.items()):
        evicted.add_metric([reason], count)
    yield evicted
    yield GaugeMetricFamily(
        "mfu_agent_series_budget", "Most series /metrics may carry (--max-series).", value=budget
    )
    yield GaugeMetricFamily(
        "mfu_agent_series_estimate",
        "Series /metrics carries now, as the agent counts them to admit ranks (an upper bound).",
        value=series,
    )
