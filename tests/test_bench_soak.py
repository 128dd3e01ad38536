"""The soak of bench/soak.py (`make soak`) at its shortest, 45 s: every fault runs (a driver reload, XID
bursts, the report flood, slowloris) against a real agent process, the summary has what
docs/reliability.md reads, and the behaviours hold: the scraper and the well-behaved client never see a
5xx or a reset, the steady ranks' MFU is exported again after the reload, every XID is counted. No
timings are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_runs_every_fault_and_the_well_behaved_clients_see_no_errors(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.75", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    s = result["summary"]
    for key in ("rss_bytes", "open_files", "metrics_seconds"):
        assert set(s["flat"][key]) == {"first_third_median", "last_third_median", "ratio", "max"}
    logs = s["flat"]["log_lines_per_minute"]
    assert set(logs) == {"first_third", "last_third", "ratio", "max_in_one_sample"}
    assert s["samples"] >= 10 and s["scrapes"] == s["samples"] and s["scrapes_failed"] == 0
    assert s["errors_scraper"] == 0, s["answers"]["errors"]
    assert s["errors_steady_client"] == 0, s["answers"]["errors"]
    assert s["steady_posts_ok"] > 0
    # every fault ran
    assert s["reloads"] >= 1 and s["reloads_recovered"] == s["reloads"], result["reloads"]
    assert s["xids_queued"] > 0 and s["xids_counted"] == s["xids_queued"]
    assert s["flood_pairs_sent"] > result["plan"]["max_ranks"]
    assert s["answers"]["expected"].get("flood /v1/reports 429", 0) > 0, "the flood went past --max-ranks"
    assert s["slowloris_closed"] > 0
    assert s["log_tracebacks"] == 0 and s["clean_exit"]
    assert {row["target"] for row in result["targets"]} >= {
        "5xx, resets, timeouts: the scraper",
        "5xx, resets, timeouts: the steady client",
    }
    assert "target" in proc.stdout and "first third" in proc.stdout  # the printed tables
