"""The MIG benchmark of bench/run.py (bench/mig.py: 8 GPUs x 7 MIG devices against 8 whole GPUs) at its
smallest: each part runs and returns what the report and the targets read; the plain-registry baseline
holds the MIG series (which differ in label names) and renders the agent's text byte for byte; the
standing ranks report on MIG devices. No timings are checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mfu_agent.gpu.mig import MIG_RESCAN_TICKS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import mig  # noqa: E402
from bench.report import mig_tables  # noqa: E402
from bench.run import targets  # noqa: E402


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def result() -> dict:
    return {
        "gpus": mig.GPUS,
        "profiles": list(mig.PROFILES),
        "sampler": mig.run_sampler(True, quiet),
        "scrape": mig.run_scrape(True, quiet, ranks=(8,)),
        "standing": mig.run_standing(1.0, quiet, names=("agent_mig", "agent_nvml_mig"), warmup=1.0),
    }


def test_sampler_compares_mig_with_whole_gpus_and_counts_nvml_calls(result):
    s = result["sampler"]
    for name in ("simulated", "nvml_fake"):
        row = s[name]
        assert row["devices"] == {"whole": 8, "mig": 64}
        for kind in ("whole", "mig"):
            assert row[kind]["n"] > 0 and row[kind]["median"] > 0
        assert row["ratio_median"] > 0 and row["ratio_per_device"] > 0
    outside = s["nvml_fake"]["outside_fake"]  # the tick less the fake's own time
    for kind in ("whole", "mig"):
        assert 0 < outside[kind]["median"] < s["nvml_fake"][kind]["median"]
    calls = s["nvml_fake"]["nvml_calls_per_tick"]
    assert 0 < calls["whole"] < calls["mig"]
    by_symbol = s["nvml_fake"]["nvml_calls_per_tick_by_symbol"]
    # the 56 slots are enumerated once every MIG_RESCAN_TICKS ticks, the MIG devices read every tick
    assert by_symbol["mig"]["nvmlDeviceGetMigDeviceHandleByIndex"] == pytest.approx(56 / MIG_RESCAN_TICKS)
    assert by_symbol["mig"]["nvmlDeviceGetMemoryInfo_v2"] == 64
    assert "nvmlDeviceGetMigDeviceHandleByIndex" not in by_symbol["whole"]


def test_scrape_baseline_holds_the_mig_series(result):
    (row,) = result["scrape"]
    assert row["ranks"] == 8 and row["mig_devices"] == 56
    assert row["series"] > row["whole_series"] > 0
    assert row["baseline_mixed_families"] > 0  # families whose MIG series carry more labels
    assert row["baseline_identical_output"]["text"]
    for key in ("ratio_text", "ratio_openmetrics", "ratio_text_p99", "per_series_vs_whole_text"):
        assert row[key] > 0


def test_standing_ranks_report_on_mig_devices(result):
    s = result["standing"]
    for name in ("agent_mig", "agent_nvml_mig"):
        assert s[name]["cpu_percent"] >= 0 and s[name]["rss_max_bytes"] > 0
        gpus = s["rank_gpus"][name]
        assert len(gpus) == 8 and all(g.startswith("MIG-") for g in gpus)
    assert s["posts"]["failed"] == 0


def test_targets_and_report_read_the_result(result):
    rows = [t for t in targets({"mig": result}) if t["target"].startswith("MIG ")]
    assert len(rows) == 2 + 2  # the scrape's median and p99, the two standing agents
    assert all(isinstance(t["met"], bool) for t in rows)
    text = mig_tables(result)
    assert "nvmlDeviceGetMigDeviceHandleByIndex" in text and "agent_nvml_mig" in text
