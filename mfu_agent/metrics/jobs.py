"""Metric families for the reporting ranks: counters, MFU and HFU, and the peak behind them.

A rank on N GPUs gets one series per GPU, each with 1/N of the rank's counters and that GPU's peak, so
`sum by (job_id) (rate(mfu_job_model_flops_total[5m])) / sum by (job_id) (mfu_job_peak_flops)` is job MFU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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
]

_COUNTER_HELP = {
    "model_flops": "Model FLOPs done by the rank (its share on this GPU); work after a restart is added on.",
    "hardware_flops": "Hardware FLOPs (with recomputation) done by the rank on this GPU.",
    "tokens": "Tokens processed by the rank (its share on this GPU).",
    "samples": "Samples processed by the rank (its share on this GPU).",
}


def _text(value: object) -> str:
    return "" if value is None else str(value)


def job_families(
    views: list[RankView], pod_of: Callable[[int], tuple[str, str, str]] | None = None
) -> Iterator[Metric]:
    """`pod_of` maps a host pid to (pod_uid, container_id, slurm_job_id); it is asked only for ranks
    found through NVML's process list, whose pid is known to be a host pid (a pid sent from inside a
    container's PID namespace names some other process on the host)."""
    info = GaugeMetricFamily(
        "mfu_job_info", "A reporting rank on a GPU and where it runs; always 1.", labels=INFO_LABELS
    )
    counters = {
        name: CounterMetricFamily(f"mfu_job_{name}", _COUNTER_HELP[name], labels=SERIES) for name in COUNTERS
    }
    step = GaugeMetricFamily("mfu_job_step", "Last training step the rank reported.", labels=SERIES)
    peak = GaugeMetricFamily(
        "mfu_job_peak_flops",
        "Dense peak FLOP/s of this GPU at the job's dtype: the MFU denominator.",
        labels=SERIES,
    )
    unknown = GaugeMetricFamily(
        "mfu_job_peak_flops_unknown",
        "1 where no peak FLOP/s is known for the GPU model and dtype, so MFU cannot be computed.",
        labels=[*SERIES, "model"],
    )
    mfu = GaugeMetricFamily(
        "mfu_job_mfu_ratio", "Model FLOPs utilisation over the agent's window.", labels=SERIES
    )
    hfu = GaugeMetricFamily(
        "mfu_job_hfu_ratio", "Hardware FLOPs utilisation over the agent's window.", labels=SERIES
    )
    tokens_rate = GaugeMetricFamily(
        "mfu_job_tokens_per_second",
        "Tokens per second over the agent's window (this GPU's share).",
        labels=SERIES,
    )
    last = GaugeMetricFamily(
        "mfu_job_last_report_timestamp_seconds",
        "Unix time the agent last heard from the rank.",
        labels=SERIES,
    )
    for v in views:
        share = 1.0 / len(v.gpus)
        labels_map = dict(v.labels)
        pod_uid, container_id, cgroup_slurm_job = (
            pod_of(v.pid) if pod_of and v.attributed_by == "pid" and v.pid else ("", "", "")
        )
        for gpu in v.gpus:
            series = [v.job_id, str(v.rank), str(gpu.index), gpu.uuid, v.dtype]
            info.add_metric(
                [
                    *series,
                    _text(v.pid),
                    _text(v.local_rank),
                    _text(v.world_size),
                    v.attributed_by,
                    labels_map.get("pod", ""),
                    labels_map.get("namespace", ""),
                    labels_map.get("slurm_job_id", "") or cgroup_slurm_job,
                    labels_map.get("hostname", ""),
                    pod_uid,
                    container_id,
                ],
                1,
            )
            for i, name in enumerate(COUNTERS):
                if name in v.has:
                    counters[name].add_metric(series, v.totals[i] * share)
            if v.step is not None:
                step.add_metric(series, v.step)
            last.add_metric(series, v.last_received)
            if gpu.peak_flops is None:
                unknown.add_metric([*series, gpu.model], 1)
                continue
            peak.add_metric(series, gpu.peak_flops)
            if v.rates is not None:
                # Every GPU of the rank gets an equal share of its work, so each one's MFU is its own share
                # over its own peak; for identical GPUs this equals the rank's MFU.
                mfu.add_metric(series, v.rates[0] * share / gpu.peak_flops)
                if "hardware_flops" in v.has:
                    hfu.add_metric(series, v.rates[1] * share / gpu.peak_flops)
                if "tokens" in v.has:
                    tokens_rate.add_metric(series, v.rates[2] * share)
    yield info
    yield from counters.values()
    yield from (step, peak, unknown, mfu, hfu, tokens_rate, last)


def report_families(outcomes: dict[str, int], tracked: int) -> Iterator[Metric]:
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
