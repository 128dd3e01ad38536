"""Prometheus rules in deploy/prometheus: promtool checks and unit tests, alert metadata, metric names,
and the rules loaded into a real Prometheus (through tests/prometheus_server.py)."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_server import (
    PROMETHEUS_BUILTIN_METRICS,
    MetricsExporter,
    PrometheusNotInstalled,
    PrometheusServer,
    contract_metric_names,
    fake_agent_metrics,
    find_binary,
    promql_metric_names,
    rules_with_short_for,
)

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
UNIT_TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))
CONTRACT = ROOT / "docs" / "metrics.md"
SEVERITIES = {"critical", "warning", "info"}
RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z0-9_]+:[a-z0-9_]+$")


def binary(name: str) -> str:
    try:
        return find_binary(name)
    except PrometheusNotInstalled as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool")


def load_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                rules.append({**rule, "_file": path.name, "_group": group["name"]})
    return rules


def alerts() -> list[dict]:
    return [r for r in load_rules() if "alert" in r]


def recording_rules() -> list[dict]:
    return [r for r in load_rules() if "record" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in recording_rules()}


def test_rule_and_unit_test_files_exist():
    assert {p.name for p in RULE_FILES} >= {"mfu-recording.yml", "mfu-alerts.yml"}
    assert UNIT_TEST_FILES, "no promtool unit tests in deploy/prometheus/tests"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules_is_clean(promtool, path):
    r = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert "SUCCESS" in output, output
    assert "warn" not in output.lower(), output


def test_example_prometheus_config_is_valid(promtool):
    r = subprocess.run(
        [promtool, "check", "config", str(PROM_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    # It loads both rule files, from paths relative to itself.
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert sorted(config["rule_files"]) == sorted(f"rules/{p.name}" for p in RULE_FILES)
    jobs = [c["job_name"] for c in config["scrape_configs"]]
    assert any(re.fullmatch(".*mfu.*", j) for j in jobs), "MfuAgentDown expects a scrape job named *mfu*"


def test_promtool_unit_tests_pass(promtool):
    r = subprocess.run(
        [promtool, "test", "rules", *map(str, UNIT_TEST_FILES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROM_DIR / "tests",
    )
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert output.count("SUCCESS") == len(UNIT_TEST_FILES), output


def test_unit_tests_load_the_real_rule_files():
    for path in UNIT_TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        loaded = {(path.parent / f).resolve() for f in doc["rule_files"]}
        assert loaded <= {p.resolve() for p in RULE_FILES}, path.name
        assert (PROM_DIR / "rules" / "mfu-recording.yml").resolve() in loaded, path.name


def test_every_alert_has_severity_summary_and_description():
    found = alerts()
    assert len(found) >= 14
    for rule in found:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        assert len(annotations.get("description", "").split()) >= 15, f"{name}: description too short"


def test_required_alerts_exist():
    required = {
        "MfuLow",
        "MfuDropped",
        "GpuBusyButIdle",
        "TrainingJobStalled",
        "GpuNeedsNodeReboot",
        "GpuNeedsReset",
        "GpuNeedsInspection",
        "GpuNeedsAppRestart",
        "GpuXidUnclassified",
        "GpuEccUncorrectable",
        "GpuRowRemapFailure",
        "GpuThermalOrPowerThrottling",
        "GpuMissing",
        "GpuDown",
        "MfuAgentDown",
        "MfuPeakUnknown",
        "MfuImplausible",
    }
    names = [r["alert"] for r in alerts()]
    # One alert may be split over rules in several groups, for cost (GpuThermalOrPowerThrottling:
    # thermal and power reasons); such rules agree in everything but their expr and one label
    # that tells them apart.
    for name in {n for n in names if names.count(n) > 1}:
        assert name == "GpuThermalOrPowerThrottling", f"duplicate alert name {name}"
        split = [r for r in alerts() if r["alert"] == name]
        assert len({r["_group"] for r in split}) == len(split), name
        assert len({r["labels"]["throttling"] for r in split}) == len(split), name
        for r in split:
            assert r["for"] == split[0]["for"] and r["annotations"] == split[0]["annotations"], name
            assert r["labels"]["severity"] == split[0]["labels"]["severity"], name
    assert required <= set(names), required - set(names)
    critical = {r["alert"] for r in alerts() if r["labels"]["severity"] == "critical"}
    assert {"GpuNeedsNodeReboot", "GpuNeedsReset", "GpuEccUncorrectable", "GpuRowRemapFailure"} <= critical


def test_no_rule_classifies_xid_codes_itself():
    """XIDs are classified in one place, the agent's catalogue file (mfu_agent/health/xid_catalogue.json),
    and reach the rules as mfu_gpu_health_action{action}: no rule selects XID codes of its own (the
    retired GpuXidCritical / GpuXidApplication did, and disagreed with the catalogue)."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                expr = rule["expr"]
                assert not re.search(r"\bxid\s*(=~|!~|=|!=)", expr), f"{path.name} {name}: {expr}"
                assert not re.search(r'\breason\s*(=~|!~|=|!=)\s*"[^"]*xid', expr), (
                    f"{path.name} {name}: {expr}"
                )


def unit_test_coverage() -> tuple[dict[str, int], dict[str, int]]:
    """Per alert name: how many alert_rule_test cases expect it firing, and how many expect silence."""
    fires: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in UNIT_TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                bucket = fires if case.get("exp_alerts") else quiet
                bucket[name] = bucket.get(name, 0) + 1
    return fires, quiet


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fires, quiet = unit_test_coverage()
    for rule in alerts():
        name = rule["alert"]
        assert fires.get(name), f"no promtool unit test where {name} fires"
        assert quiet.get(name), f"no promtool unit test where {name} stays quiet"
    unknown = (set(fires) | set(quiet)) - {r["alert"] for r in alerts()}
    assert not unknown, f"unit tests for alerts that do not exist: {unknown}"


def test_firing_unit_tests_check_annotations():
    """promtool compares annotations exactly, so every expected alert spells them out."""
    for path in UNIT_TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    assert "summary" in exp.get("exp_annotations", {}), (path.name, case["alertname"])


def test_recording_rule_names_follow_the_convention():
    names = [r["record"] for r in recording_rules()]
    assert len(names) == len(set(names)), "duplicate recording rules"
    for name in names:
        assert RULE_NAME.match(name), f"{name} is not level:metric:operations"
    # The names the rest of the project (dashboards, docs, end-to-end test) relies on.
    assert {
        "mfu:job_mfu:ratio",
        "mfu:job_hfu:ratio",
        "mfu:job_node_mfu:ratio",
        "mfu:job_node_peak_flops:sum",
        "mfu:job_model_flops_per_second:sum",
        "mfu:job_tokens_per_second:sum",
        "mfu:job_gpus:count",
        "mfu:node_sm_active:avg",
        "mfu:fleet_sm_active:avg",
        "mfu:fleet_mfu:ratio",
        "mfu:fleet_model_mfu:ratio",
        "mfu:job_peak_flops:sum",
        "mfu:node_gpus_below_target:count",
        "mfu:fleet_gpus_below_target:count",
        "mfu:node_gpus:count",
        "mfu:node_gpus:max_over_time6h",
    } <= set(names)


def test_job_mfu_rules_are_the_documented_peak_weighted_formula():
    """The job MFU is built from the agent's windowed gauges per job and node, peak-weighted
    (docs/alerts.md)."""

    def norm(expr: str) -> str:
        return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", " ".join(expr.split())))

    exprs = {r["record"]: norm(str(r["expr"])) for r in recording_rules()}
    assert exprs["mfu:job_node_peak_flops:sum"] == "sum by (job_id, instance) (mfu_job_node_peak_flops)"
    assert exprs["mfu:job_node_mfu:ratio"] == (
        "sum by (job_id, instance) (mfu_job_node_mfu_ratio * mfu_job_node_peak_flops)"
        " / mfu:job_node_peak_flops:sum"
    )
    assert exprs["mfu:job_peak_flops:sum"] == "sum by (job_id) (mfu:job_node_peak_flops:sum)"
    assert exprs["mfu:job_mfu:ratio"] == (
        "sum by (job_id) (mfu:job_node_mfu:ratio * mfu:job_node_peak_flops:sum) / mfu:job_peak_flops:sum"
    )
    assert exprs["mfu:fleet_mfu:ratio"] == (
        "sum(mfu_job_node_mfu_ratio * mfu_job_node_peak_flops) / sum(mfu_job_node_peak_flops)"
    )
    docs = norm((ROOT / "docs" / "alerts.md").read_text())
    documented = (
        "mfu:job_node_peak_flops:sum",
        "mfu:job_node_mfu:ratio",
        "mfu:job_peak_flops:sum",
        "mfu:job_mfu:ratio",
        "mfu:fleet_mfu:ratio",
    )
    for name in documented:
        assert f"`{exprs[name]}`" in docs, f"docs/alerts.md does not spell out {name}"
    # No MFU or HFU rule falls back to a rate of the counters (wrong for a series younger than 5 min).
    for name, expr in exprs.items():
        if "mfu:" in name and ("_mfu:" in name or "_hfu:" in name):
            assert "rate(" not in expr, name


def test_mfu_low_waits_for_the_warm_up():
    rule = next(r for r in alerts() if r["alert"] == "MfuLow")
    expr = " ".join(str(rule["expr"]).split())
    assert "(time() - min by (job_id) (mfu_job_node_first_report_timestamp_seconds)) > 600" in expr
    docs = (ROOT / "docs" / "alerts.md").read_text()
    assert "warm-up" in docs and "600" in docs


def test_promql_metric_names_helper():
    assert promql_metric_names(
        'sum by (job_id) (rate(a_total{x="y}", z=~"1|2"}[5m]) and b) / on (job_id) group_left () '
        "(c offset 1h) * 1e15 > bool 0.5 or vector(0) unless d:e:f"
    ) == {"a_total", "b", "c", "d:e:f"}
    assert promql_metric_names('{__name__="g"} + time()') == {"g"}
    assert promql_metric_names("sum(h) without (i) - max_over_time(j[6h:1m])") == {"h", "j"}


def test_contract_parses():
    names = contract_metric_names(CONTRACT)
    assert {"mfu_job_model_flops_total", "mfu_gpu_sm_active_ratio", "mfu_gpu_fp64_active_ratio"} <= names
    assert len(names) > 40


def test_rules_use_only_contract_metrics_and_recording_rules():
    known = contract_metric_names(CONTRACT) | recorded_names() | PROMETHEUS_BUILTIN_METRICS
    used: set[str] = set()
    for rule in load_rules():
        names = promql_metric_names(str(rule["expr"]))
        unknown = names - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
        used |= names
    # The extraction found the metrics the rules are built on (the check above is not vacuous).
    assert {"mfu_job_node_mfu_ratio", "mfu_gpu_mfu_ratio", "mfu_gpu_health_action"} <= used


def test_recording_rules_come_after_the_rules_they_use_within_a_group():
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            seen: set[str] = set()
            in_group = {r["record"] for r in group["rules"] if "record" in r}
            for rule in group["rules"]:
                needs = promql_metric_names(str(rule["expr"])) & in_group
                if "record" in rule:
                    assert needs <= seen, f"{rule['record']} uses {needs - seen} before it is recorded"
                if "record" in rule:
                    seen.add(rule["record"])


def test_rules_with_short_for_rewrites_the_warm_up(tmp_path):
    out = rules_with_short_for(RULE_FILES, tmp_path / "short", for_="2s", warm_up_s=5)
    for original, rewritten in zip(RULE_FILES, out, strict=True):
        a = [r for g in yaml.safe_load(original.read_text())["groups"] for r in g["rules"]]
        b = [r for g in yaml.safe_load(rewritten.read_text())["groups"] for r in g["rules"]]
        for ra, rb in zip(a, b, strict=True):
            if ra.get("alert") == "MfuLow":
                assert "mfu_job_node_first_report_timestamp_seconds)) > 600" in ra["expr"]
                assert rb["expr"] == ra["expr"].replace("_seconds)) > 600", "_seconds)) > 5")
            else:
                assert rb["expr"] == ra["expr"]
    recording = [p for p in RULE_FILES if p.name == "mfu-recording.yml"]
    with pytest.raises(ValueError, match="no rule has a warm-up"):
        rules_with_short_for(recording, tmp_path / "none", warm_up_s=5)


def test_rules_with_short_for_rewrites_only_for(tmp_path):
    out = rules_with_short_for(RULE_FILES, tmp_path / "short", for_="2s")
    assert [p.name for p in out] == [p.name for p in RULE_FILES]
    for original, rewritten in zip(RULE_FILES, out, strict=True):
        a = yaml.safe_load(original.read_text())
        b = yaml.safe_load(rewritten.read_text())
        for ga, gb in zip(a["groups"], b["groups"], strict=True):
            assert len(ga["rules"]) == len(gb["rules"])
            for ra, rb in zip(ga["rules"], gb["rules"], strict=True):
                if "for" in ra:
                    assert rb["for"] == "2s"
                    ra = {k: v for k, v in ra.items() if k != "for"}
                    rb = {k: v for k, v in rb.items() if k != "for"}
                assert ra == rb
    assert any("for" in r for r in alerts())


def test_real_prometheus_loads_and_evaluates_every_rule(tmp_path):
    """Every rule loads and evaluates without error on agent-shaped data, with the expected values."""
    binary("prometheus")
    expected = {r.get("alert") or r.get("record") for r in load_rules()}
    # 10 s rate windows instead of 5 min, so that the rates are right within seconds.
    fast = rules_with_short_for(RULE_FILES, tmp_path / "rules", for_="1s", rate_window="10s")
    start = time.time()
    with (
        MetricsExporter(lambda: fake_agent_metrics(time.time() - start)) as agent,
        PrometheusServer(rule_files=fast, scrape_targets=[agent.target], tmp_dir=tmp_path / "prom") as prom,
    ):
        assert prom.url.startswith("http://127.0.0.1:")

        def values(expr):
            return {
                tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in prom.query(expr)
            }

        def job_mfu_settled():
            mfu = values("mfu:job_mfu:ratio")
            llm = mfu.get((("job_id", "llm"),), 0)
            return mfu if abs(llm - 0.5) < 0.02 and time.time() - start > 12 else None

        mfu = prom.wait_for(job_mfu_settled, timeout=60, what="job MFU at its true value")
        data_seen = time.time()

        def evaluated_on_data():
            rules = [r for g in prom.rules() for r in g["rules"]]
            done = all(r["lastEvaluation"] >= _rfc3339(data_seen) for r in rules)
            return rules if len(rules) == len(load_rules()) and done else None

        rules = prom.wait_for(evaluated_on_data, timeout=30, what="every rule evaluated on data")
        assert {r["name"] for r in rules} == expected
        broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert not broken, broken
        (history,) = prom.query_range("mfu:node_gpus:count", start, time.time(), 1)
        assert {v for _, v in history["values"]} == {"4"}

        assert mfu.keys() == {(("job_id", "llm"),), (("job_id", "slow"),)}  # "new" has no known peak
        assert mfu[(("job_id", "slow"),)] == pytest.approx(0.1, abs=0.001)
        hfu = values('mfu:job_hfu:ratio{job_id="llm"}')
        assert hfu == {(("job_id", "llm"),): pytest.approx(0.6, abs=0.001)}
        # GPU 1 of "llm" reports fp8 and bf16: its MFU is their sum, its weight the fp8 peak (2e15).
        assert values('mfu:job_peak_flops:sum{job_id="llm"}') == {(("job_id", "llm"),): 3e15}
        assert values('mfu:job_node_mfu:ratio{job_id="llm"}') == {
            (("instance", agent.target), ("job_id", "llm")): pytest.approx(0.5)
        }
        assert values('mfu:job_model_flops_per_second:sum{job_id="llm"}') == {(("job_id", "llm"),): 1.2e15}
        assert values('mfu:job_tokens_per_second:sum{job_id="llm"}') == {(("job_id", "llm"),): 1e4}
        assert values('mfu:job_gpus:count{job_id="llm"}') == {(("job_id", "llm"),): 2}
        assert values('mfu:job_nodes:count{job_id="llm"}') == {(("job_id", "llm"),): 1}
        assert list(values("mfu:node_gpus:count").values()) == [4]
        assert list(values("mfu:fleet_gpus_busy_but_idle:count").values()) == [1]
        assert list(values("mfu:fleet_gpus_below_target:count").values()) == [1]  # "slow" on GPU 2

        # $0.001 a second for each of the three priced GPUs; "slow" spends 3/4 of its GPU's below target
        # (rates: once the window holds 10 s of scrapes).
        def cost_rate_settled():
            got = list(values("mfu:fleet_cost_dollars:rate5m").values())
            return got if got == [pytest.approx(0.003, rel=1e-3)] else None

        prom.wait_for(cost_rate_settled, timeout=30, what="the fleet's cost rate at its true value")
        assert list(values("mfu:fleet_below_target_cost_dollars:rate5m").values()) == [
            pytest.approx(0.00075, rel=1e-3)
        ]

        # two GPUs at 650 W for 1e4 tokens/s (the energy rate settles as the window fills, like the cost's)
        def energy_per_token_settled():
            got = values('mfu:job_energy_joules_per_token:ratio{job_id="llm"}')
            return got if got == {(("job_id", "llm"),): pytest.approx(2 * 650 / 1e4, rel=1e-3)} else None

        prom.wait_for(energy_per_token_settled, timeout=30, what="the job's joules per token")
        assert list(values("mfu:fleet_job_gpus:count").values()) == [4]
        assert list(values("mfu:fleet_idle_gpus:count").values()) == [0]
        # Peak-weighted: (0.5 * 1 + 0.5 * 2 + 0.1 * 1) / 4 (by GPU count it would be 1.1 / 3)
        assert list(values("mfu:fleet_mfu:ratio").values()) == [pytest.approx(0.4, abs=0.001)]
        assert values("mfu:fleet_model_mfu:ratio") == {
            (("model", "NVIDIA H100 80GB HBM3"),): pytest.approx(0.4, abs=0.001)
        }


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def test_real_prometheus_fires_alerts_on_agent_shaped_data(tmp_path):
    """With `for:` and rate windows shortened, the alerts the fake agent's faults call for fire, no others."""
    binary("prometheus")
    fast = rules_with_short_for(RULE_FILES, tmp_path / "rules", for_="1s", rate_window="10s")
    start = time.time()
    expected = {
        ("GpuNeedsNodeReboot", "2"),
        ("GpuBusyButIdle", "2"),
        ("GpuThermalOrPowerThrottling", "2"),
        ("GpuEccUncorrectable", "2"),
        ("GpuRowRemapPending", "2"),
        ("MfuLow", None),
        ("MfuPeakUnknown", None),
        ("GpuPriceUnknown", None),  # GPU 3's model has neither a peak nor a price
    }
    with (
        MetricsExporter(lambda: fake_agent_metrics(time.time() - start)) as agent,
        PrometheusServer(rule_files=fast, scrape_targets=[agent.target], tmp_dir=tmp_path / "prom") as prom,
    ):

        def settled():
            # While the rate windows fill up every job's MFU is underestimated: wait them out.
            if time.time() - start < 15:
                return None
            got = {(a["labels"]["alertname"], a["labels"].get("gpu")) for a in prom.firing()}
            return got if expected <= got else None

        prom.wait_for(settled, timeout=60, what="the expected alerts firing")

        def mfu_low_jobs():
            # Only "slow" (MFU 0.1, first report an hour ago): "llm" is fine (and still warming up).
            jobs = sorted(a["labels"]["job_id"] for a in prom.firing("MfuLow"))
            return jobs if jobs == ["slow"] else None

        prom.wait_for(mfu_low_jobs, timeout=30, what="MfuLow for the slow job only")
        got = {(a["labels"]["alertname"], a["labels"].get("gpu")) for a in prom.firing()}
        assert got == expected, got ^ expected
        (reboot,) = prom.firing("GpuNeedsNodeReboot")
        assert reboot["labels"]["reason"] == "xid_79" and reboot["labels"]["severity"] == "critical"
        (unknown,) = prom.firing("MfuPeakUnknown")
        assert unknown["labels"]["model"] == "NVIDIA Future GPU"
        assert "--peak-flops-file" in unknown["annotations"]["description"]


def test_real_prometheus_fires_mfu_agent_down_without_targets(tmp_path):
    """Without any mfu-agent target, MfuAgentDown (absent scrape) fires once its `for` has passed."""
    binary("prometheus")
    short = rules_with_short_for(RULE_FILES, tmp_path / "rules", for_="1s")
    with PrometheusServer(rule_files=short, scrape_targets=[], tmp_dir=tmp_path / "prom") as prom:
        firing = prom.wait_for(lambda: prom.firing("MfuAgentDown"), timeout=60, what="MfuAgentDown firing")
        assert firing[0]["labels"]["severity"] == "warning"
        assert firing[0]["annotations"]["summary"] == "No mfu-agent target is being scraped"
        assert not prom.firing("GpuDown")
