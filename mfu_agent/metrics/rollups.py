"""What the agent adds up for the recording rules: per GPU, per rank and per job on this node.

At fleet scale (16,384 GPUs) every per-GPU family Prometheus reads costs about as much as a whole rule
group may take (docs/performance.md), so the agent, which holds every rank of its node, exports the
peak-weighted figures (jobs/rollup.py) at the coarsest level the rules need.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ..gpu.model import Snapshot
from ..jobs.registry import RankView
from ..jobs.rollup import peak_weighted, per_gpu
from .labels import add_sample, device_labels

GPU = ["gpu", "uuid"]
RANK = ["job_id", "rank"]
JOB_MODEL = ["job_id", "model"]
JOB = ["job_id"]


def gpu_rollup_families(views: list[RankView], snapshot: Snapshot | None) -> Iterator[Metric]:
    mfu = GaugeMetricFamily(
        "mfu_gpu_mfu_ratio",
        "MFU of the GPU: every reporting rank's and dtype's part on it; absent while a rank on it has none.",
        labels=GPU,
    )
    ranks = GaugeMetricFamily(
        "mfu_gpu_reporting_ranks", "Reporting ranks the agent places on the GPU now (0: none).", labels=GPU
    )
    on_gpu: dict[str, int] = defaultdict(int)
    for v in views:
        for g in v.gpus:
            on_gpu[g.uuid] += 1
    figures = per_gpu(views, "model_flops")
    for gpu in snapshot.gpus if snapshot else ():
        if not gpu.up:
            continue
        if gpu.mig_mode:
            continue  # its work runs on its MIG devices, which have their own series
        labels = device_labels(gpu.identity)
        add_sample(ranks, labels, on_gpu.get(gpu.uuid, 0))
        figure = figures.get(gpu.uuid)
        if figure is not None:
            add_sample(mfu, labels, figure.utilisation)
    yield mfu
    yield ranks


def rank_rollup_families(views: list[RankView]) -> Iterator[Metric]:
    mfu = GaugeMetricFamily(
        "mfu_job_rank_mfu_ratio", "MFU of the rank, peak-weighted over its GPUs; never clamped.", labels=RANK
    )
    hfu = GaugeMetricFamily(
        "mfu_job_rank_hfu_ratio", "HFU of the rank, peak-weighted over its GPUs; never clamped.", labels=RANK
    )
    progress = GaugeMetricFamily(
        "mfu_job_rank_last_progress_timestamp_seconds",
        "Unix time the rank's work last moved forward (a report with a newer step time).",
        labels=RANK,
    )
    last = GaugeMetricFamily(
        "mfu_job_rank_last_report_timestamp_seconds",
        "Unix time the agent last heard from the rank.",
        labels=RANK,
    )
    steps = GaugeMetricFamily(
        "mfu_job_rank_steps_per_second",
        "Steps per second of the rank over the agent's window, by the sender's step times; only once its "
        "steps cover the whole window (since its first step or a restore).",
        labels=RANK,
    )
    for v in views:
        labels = [v.job_id, str(v.rank)]
        for family, counter in ((mfu, "model_flops"), (hfu, "hardware_flops")):
            value = v.utilisation(counter)
            if value is not None:
                family.add_metric(labels, value)
        if v.last_progress:
            progress.add_metric(labels, v.last_progress)
        last.add_metric(labels, v.last_received)
        if v.step_rate is not None:
            steps.add_metric(labels, v.step_rate)
    yield from (mfu, hfu, progress, last, steps)


def job_node_families(views: list[RankView]) -> Iterator[Metric]:
    peak = GaugeMetricFamily(
        "mfu_job_node_peak_flops",
        "Sum over the job's distinct GPUs of this model here that have an MFU of their peak at the fastest "
        "dtype reported on them: the weight of this node in the job's MFU.",
        labels=JOB_MODEL,
    )
    mfu = GaugeMetricFamily(
        "mfu_job_node_mfu_ratio",
        "Peak-weighted MFU of the job's GPUs of this model on this node; never clamped.",
        labels=JOB_MODEL,
    )
    hfu = GaugeMetricFamily(
        "mfu_job_node_hfu_ratio",
        "Peak-weighted HFU of the job's GPUs of this model here (only when each of them has an HFU).",
        labels=JOB_MODEL,
    )
    gpus = GaugeMetricFamily(
        "mfu_job_node_gpus", "Distinct GPUs of this model the job uses on this node.", labels=JOB_MODEL
    )
    flops_rate = GaugeMetricFamily(
        "mfu_job_node_model_flops_per_second",
        "Model FLOP/s of the job's ranks on this node over the agent's window, all dtypes.",
        labels=JOB,
    )
    tokens_rate = GaugeMetricFamily(
        "mfu_job_node_tokens_per_second",
        "Tokens per second of the job's ranks on this node over the agent's window.",
        labels=JOB,
    )
    first = GaugeMetricFamily(
        "mfu_job_node_first_report_timestamp_seconds",
        "Unix time the agent first heard from any of the job's ranks on this node.",
        labels=JOB,
    )
    by_job: dict[str, list[RankView]] = defaultdict(list)
    for v in views:
        by_job[v.job_id].append(v)
    for job_id, ranks in by_job.items():
        models: dict[str, set[str]] = defaultdict(set)
        for v in ranks:
            for g in v.gpus:
                models[g.model].add(g.uuid)
        mfu_figures, hfu_figures = per_gpu(ranks, "model_flops"), per_gpu(ranks, "hardware_flops")
        for model, uuids in sorted(models.items()):
            labels = [job_id, model]
            gpus.add_metric(labels, len(uuids))
            with_mfu = [f for u, f in mfu_figures.items() if u in uuids]
            ratio, weight = peak_weighted(with_mfu)
            if ratio is None:
                continue
            mfu.add_metric(labels, ratio)
            peak.add_metric(labels, weight)
            if all(f.uuid in hfu_figures for f in with_mfu):
                hfu_ratio, _ = peak_weighted(hfu_figures[f.uuid] for f in with_mfu)
                if hfu_ratio is not None:
                    hfu.add_metric(labels, hfu_ratio)
        rates = [r for r in (v.rate("model_flops") for v in ranks) if r is not None]
        if rates:
            flops_rate.add_metric([job_id], sum(rates))
        token_rates = [r for r in (v.rate("tokens") for v in ranks) if r is not None]
        if token_rates:
            tokens_rate.add_metric([job_id], sum(token_rates))
        first.add_metric([job_id], min(v.first_received for v in ranks))
    yield from (peak, mfu, hfu, gpus, flops_rate, tokens_rate, first)
