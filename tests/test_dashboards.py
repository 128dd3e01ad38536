"""Grafana dashboards (dashboards/*.json) and provisioning (deploy/grafana): structure, datasource
variable, metric names, and every query checked for valid PromQL by a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_server import (
    PROMETHEUS_BUILTIN_METRICS,
    MetricsExporter,
    PrometheusAPIError,
    PrometheusNotInstalled,
    PrometheusServer,
    contract_metric_names,
    fake_agent_metrics,
    find_binary,
    promql_metric_names,
)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_FILES = sorted((ROOT / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Grafana's built-in variables, as they could be interpolated for a 1 h range (with a short
# $__interval, so that subqueries find samples in the seconds-old test Prometheus).
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# Dashboard variables: job_id is used with `=` (the fake agent's job "llm"), the others with `=~`
# (".*" = All) or in a single-value repeat; ".*" is valid in both kinds of matcher.
VARIABLE_VALUES = {"job_id": "llm"}
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def targets(dashboard: dict) -> Iterator[tuple[dict, dict]]:
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def variable_queries(dashboard: dict) -> Iterator[tuple[dict, str]]:
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            yield var, query["query"] if isinstance(query, dict) else query


def variable_selector(query: str) -> str:
    """The PromQL inside a Grafana variable query: label_values(<selector>, label), query_result(<expr>)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(?:metrics|label_names)\((.*)\)\s*", query, re.S)
    if m:
        return m.group(1) or "up"
    return query


def substitute(expr: str) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        if name.startswith("__"):
            raise AssertionError(f"unknown Grafana builtin ${name} in {expr!r}: add it to BUILTIN_VARIABLES")
        return VARIABLE_VALUES.get(name, ".*")

    return VARIABLE.sub(value, expr)


def all_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, where, expr) for every panel target and variable query."""
    out = []
    for path in DASHBOARD_FILES:
        dashboard = load(path)
        for panel, target in targets(dashboard):
            out.append((path.name, f"{panel['title']} / {target['refId']}", target["expr"]))
        for var, query in variable_queries(dashboard):
            out.append((path.name, f"variable {var['name']}", variable_selector(query)))
    return out


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus with the project's rules, scraping a fake agent (see fake_agent_metrics)."""
    try:
        find_binary("prometheus")
    except PrometheusNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    start = time.time()
    with (
        MetricsExporter(lambda: fake_agent_metrics(time.time() - start, mig=True)) as agent,
        PrometheusServer(
            rule_files=RULE_FILES,
            scrape_targets=[agent.target],
            tmp_dir=tmp_path_factory.mktemp("prometheus"),
        ) as prom,
    ):
        # A few scrapes and rule evaluations, so that rates, derivatives and recorded series exist:
        # the last rules of each group that depends on rates have three samples.
        prom.wait_for(
            lambda: all(
                prom.query(f"min(count_over_time({name}[1m])) >= 3")
                for name in ("mfu:job_mfu:ratio", "mfu:job_gpus_below_target:count")
            ),
            timeout=60,
            what="recorded series with three samples each",
        )
        yield prom


def test_the_three_dashboards_exist():
    assert {p.name for p in DASHBOARD_FILES} >= {
        "mfu-gpu-node.json",
        "mfu-training-job.json",
        "mfu-fleet.json",
    }


def test_dashboards_have_unique_uids_titles_and_tags():
    uids, titles = set(), set()
    for path in DASHBOARD_FILES:
        d = load(path)
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), path.name
        assert d["uid"] not in uids and d["title"] not in titles, path.name
        uids.add(d["uid"])
        titles.add(d["title"])
        assert "mfu-agent" in d["tags"], path.name
        assert d["schemaVersion"] >= 39, path.name
        assert d.get("id") is None, f"{path.name}: an exported id breaks import and provisioning"
    assert {"mfu-gpu-node", "mfu-training-job", "mfu-fleet"} <= uids


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_datasource_variable_and_panel_datasources(path):
    d = load(path)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", "no datasource variable"
    n_targets = 0
    for panel, target in targets(d):
        n_targets += 1
        assert panel["datasource"] == DS, panel["title"]
        assert target["datasource"] == DS, panel["title"]
        assert target["expr"].strip(), panel["title"]
    assert n_targets >= 10
    for var, _ in variable_queries(d):
        assert var["datasource"] == DS, var["name"]
    # No datasource is hard-wired anywhere (only the variable and Grafana's own annotation source).
    text = json.dumps(d["panels"])
    assert '"uid": "prometheus"' not in text


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_have_unique_ids_and_fit_the_grid(path):
    d = load(path)
    ids = [p["id"] for p in all_panels(d["panels"])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in all_panels(d["panels"]):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        assert panel["title"].strip()
        if panel["type"] != "row":
            assert panel.get("description", "").strip() or panel["type"] == "text", panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_repeats_and_variables_refer_to_defined_variables(path):
    d = load(path)
    names = {v["name"] for v in d["templating"]["list"]}
    for panel in all_panels(d["panels"]):
        if panel.get("repeat"):
            assert panel["repeat"] in names, panel["title"]
    used = set()
    for _, _, expr in [e for e in all_exprs() if e[0] == path.name]:
        for m in VARIABLE.finditer(expr):
            used.add(m.group(1) or m.group(2) or m.group(3))
    assert used - set(BUILTIN_VARIABLES) <= names, used - set(BUILTIN_VARIABLES) - names


def test_training_job_dashboard_selects_a_job():
    d = load(ROOT / "dashboards" / "mfu-training-job.json")
    job = next(v for v in d["templating"]["list"] if v["name"] == "job_id")
    query = job["query"]["query"] if isinstance(job["query"], dict) else job["query"]
    assert query == 'label_values(mfu_job_info{cluster=~"$cluster"}, job_id)'
    exprs = [t["expr"] for _, t in targets(d)]
    assert all('job_id="$job_id"' in e for e in exprs if "mfu_job_" in e or "mfu:job_" in e)


def test_gpu_node_dashboard_has_a_node_variable():
    d = load(ROOT / "dashboards" / "mfu-gpu-node.json")
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"instance", "gpu"} <= names


def test_exprs_use_only_contract_metrics_and_recording_rules():
    recorded = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            recorded |= {r["record"] for r in group["rules"] if "record" in r}
    contract = contract_metric_names(ROOT / "docs" / "metrics.md")
    known = contract | recorded | PROMETHEUS_BUILTIN_METRICS
    used = set()
    for name, where, expr in all_exprs():
        names = promql_metric_names(substitute(expr))
        assert names, f"{name} {where}: no metric in {expr!r}"
        assert names <= known, f"{name} {where}: unknown metrics {names - known}"
        used |= names
    # The dashboards show what the brief asks for.
    assert {
        "mfu_gpu_utilization_ratio",
        "mfu_gpu_sm_active_ratio",
        "mfu_gpu_tensor_active_ratio",
        "mfu_gpu_dram_active_ratio",
        "mfu_gpu_power_watts",
        "mfu_gpu_power_limit_watts",
        "mfu_gpu_energy_joules_total",
        "mfu_gpu_temperature_celsius",
        "mfu_gpu_sm_clock_hertz",
        "mfu_gpu_sm_clock_max_hertz",
        "mfu_gpu_clock_event_active",
        "mfu_gpu_memory_used_bytes",
        "mfu_gpu_xid_errors_total",
        "mfu_gpu_ecc_errors_total",
        "mfu_gpu_remapped_rows_total",
        "mfu_gpu_peak_flops",
        "mfu_gpu_clock_peak_flops",
        "mfu_job_step",
        "mfu_job_tokens_total",
        "mfu:job_mfu:ratio",
        "mfu_gpu_mfu_ratio",
        "mfu_job_mfu_ratio",
        "mfu_job_rank_mfu_ratio",
        "mfu:job_peak_flops:sum",
        "mfu:fleet_model_mfu:ratio",
        "mfu:fleet_gpus_below_target:count",
    } <= used


def test_no_panel_classifies_xid_codes_itself():
    """Which XIDs are faults is the agent's catalogue file's to say (mfu_gpu_health_action and
    mfu_gpu_health_severity carry it): no query selects XID codes of its own. (The fleet dashboard's
    hardware XID column once did, with a list that disagreed with the catalogue.)"""
    for name, where, expr in all_exprs():
        assert not re.search(r"\bxid\s*(=~|!~|=|!=)", expr), f"{name} {where}: {expr}"
        assert not re.search(r'\breason\s*(=~|!~|=|!=)\s*"[^"]*xid', expr), f"{name} {where}: {expr}"


def test_substitution_leaves_no_variables():
    for name, where, expr in all_exprs():
        assert "$" not in substitute(expr), f"{name} {where}"
    assert substitute('rate(x{job_id="$job_id", g=~"${gpu:regex}"}[$__rate_interval])') == (
        'rate(x{job_id="llm", g=~".*"}[1m])'
    )


def test_every_expr_is_valid_promql_and_shows_data(prometheus):
    """Each query parses and evaluates (no 400 bad_data, no 422 execution error such as many-to-many
    matching) on agent-shaped data, and returns series - except the few that only show problems the
    fake agent does not have."""
    exprs = all_exprs()
    assert len(exprs) > 60
    errors, empty = [], []
    for name, where, expr in exprs:
        try:
            result = prometheus.query(substitute(expr))
        except PrometheusAPIError as e:
            errors.append(f"{name} {where}: {e} in {substitute(expr)!r}")
            continue
        if not result:
            empty.append((name, where))
    assert not errors, "\n".join(errors)
    assert set(empty) <= EMPTY_ON_FAKE_DATA, set(empty) - EMPTY_ON_FAKE_DATA


# Queries that return nothing on the fake agent's data, and why.
EMPTY_ON_FAKE_DATA = {
    # Every GPU of the fake agent runs a reporting job: no process goes unreported.
    ("mfu-fleet.json", "GPU processes of jobs not reporting MFU / A"),
    # Job "llm" runs on the fake agent's healthy GPUs: no XIDs, no throttling there.
    ("mfu-training-job.json", "Hardware events on the job's GPUs (time range) / A"),
    ("mfu-training-job.json", "Throttling on the job's GPUs / A"),
    # Job "llm" has two ranks: its median step rate (and each rank's pace against it) needs three, so
    # no rank straggles either (test_straggler_panels_show_the_straggler_gpu covers those panels).
    ("mfu-training-job.json", "Step rate per rank / B"),
    ("mfu-training-job.json", "Pace vs job median / A"),
    *(("mfu-training-job.json", f"Stragglers / {ref}") for ref in "ABCDE"),
    # The cost over a week or the range sums the cost rules at 5-minute steps (a subquery), whose points
    # fall on multiples of 5 minutes: data younger than one step has none yet. Parsed and evaluated all
    # the same; test_cost.py checks the rules' dollars against a hand calculation.
    *(
        ("mfu-fleet.json", f"{title} / A")
        for title in (
            "What low MFU and idle GPUs cost this week",
            "Idle GPUs cost this week",
            "Below the MFU target this week",
            "All GPU time this week",
            "Idle and below-target dollars by node (range)",
        )
    ),
}


def test_prometheus_rejects_invalid_promql(prometheus):
    """The check above can fail: a parse error comes back as HTTP 400 bad_data."""
    with pytest.raises(PrometheusAPIError) as e:
        prometheus.query('sum by (job_id (rate(mfu_job_model_flops_total{job_id="x"}[1m]))')
    assert e.value.status == 400 and e.value.error_type == "bad_data"


def test_grafana_datasource_provisioning():
    doc = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["uid"] == "prometheus"
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    # The dashboards' datasource variable defaults to it.
    for path in DASHBOARD_FILES:
        var = next(v for v in load(path)["templating"]["list"] if v["name"] == "datasource")
        assert var["current"]["value"] == "prometheus", path.name


def test_grafana_dashboard_provisioning():
    doc = yaml.safe_load((GRAFANA / "dashboards" / "mfu-agent.yml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/mfu-agent"


# --- Dashboards as code: dashboards/*.json is generated from mfu_dashboards/ -------------------------

GEN_DASHBOARDS = ROOT / "scripts" / "gen_dashboards.py"


def _gen_dashboards(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GEN_DASHBOARDS), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_committed_dashboards_are_in_step_with_their_source():
    """dashboards/*.json and deploy/kubernetes/dashboards/ are what mfu_dashboards/ generates: a change
    made in the JSON alone, or in the source without regenerating, fails here."""
    result = _gen_dashboards("--check")
    assert result.returncode == 0, result.stderr + "\nrun `python scripts/gen_dashboards.py` and commit"


def test_gen_dashboards_check_detects_drift_and_rewrites(tmp_path):
    assert _gen_dashboards("--root", str(tmp_path)).returncode == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert "dashboards/mfu-fleet.json" in written
    assert "deploy/kubernetes/dashboards/kustomization.yaml" in written
    for rel in written:  # the same bytes as committed
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), rel
    assert _gen_dashboards("--root", str(tmp_path), "--check").returncode == 0
    fleet = tmp_path / "dashboards" / "mfu-fleet.json"
    fleet.write_text(fleet.read_text().replace('"MFU / Fleet"', '"MFU / Fleet (edited)"'))
    (tmp_path / "dashboards" / "hand-made.json").write_text("{}")
    result = _gen_dashboards("--root", str(tmp_path), "--check")
    assert result.returncode == 1
    assert "out of date: dashboards/mfu-fleet.json" in result.stderr
    assert "stale (no source): dashboards/hand-made.json" in result.stderr
    assert _gen_dashboards("--root", str(tmp_path)).returncode == 0
    assert not (tmp_path / "dashboards" / "hand-made.json").exists()
    assert _gen_dashboards("--root", str(tmp_path), "--check").returncode == 0


def test_target_mfu_is_the_agents_default_which_the_rules_read():
    """The dashboards' MFU threshold colours are drawn at the agents' --mfu-target default, which the
    agents export and the recording rule reads."""
    from mfu_agent.cli import build_parser
    from mfu_agent.cli.options import DEFAULT_MFU_TARGET

    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "mfu-recording.yml").read_text())
    (expr,) = [
        r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("record") == "mfu:target_mfu:ratio"
    ]
    assert "mfu_agent_mfu_target_ratio" in expr
    assert build_parser().parse_args(["run"]).mfu_target == DEFAULT_MFU_TARGET

    def steps(node):
        if isinstance(node, dict):
            if isinstance(node.get("steps"), list):
                yield [(step["color"], step["value"]) for step in node["steps"]]
            for value in node.values():
                yield from steps(value)
        elif isinstance(node, list):
            for value in node:
                yield from steps(value)

    mfu_steps = [
        s[2][1]
        for path in DASHBOARD_FILES
        for s in steps(load(path))
        if [c for c, _ in s] == ["red", "orange", "green"]
    ]
    assert len(mfu_steps) >= 9 and set(mfu_steps) == {DEFAULT_MFU_TARGET}


def test_cluster_variable_filters_every_query():
    """Every dashboard has a `cluster` variable (All = `.*`, which also matches series without the label),
    and every selector of every panel query and node/job/GPU variable carries cluster=~"$cluster"."""
    from mfu_dashboards.promql import CLUSTER_MATCHER, with_cluster

    for path in DASHBOARD_FILES:
        variables = {v["name"]: v for v in load(path)["templating"]["list"]}
        cluster = variables["cluster"]
        assert cluster["type"] == "query" and cluster["includeAll"] and cluster["allValue"] == ".*", path.name
        assert cluster["query"]["query"] == "label_values(mfu_gpu_info, cluster)"
        for name, var in variables.items():
            if var["type"] == "query" and name != "cluster":
                assert CLUSTER_MATCHER in var["query"]["query"], (path.name, name)
    for name, where, expr in all_exprs():
        if where == "variable cluster":
            continue
        bare = expr.replace(CLUSTER_MATCHER + ", ", "").replace("{" + CLUSTER_MATCHER + "}", "")
        assert CLUSTER_MATCHER in expr and with_cluster(bare) == expr, f"{name} {where}: {expr}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", 'up{cluster=~"$cluster"}'),
        ('x{a="b}", c=~"$gpu"}', 'x{cluster=~"$cluster", a="b}", c=~"$gpu"}'),
        (
            "sum by (job_id) (rate(x_total[$__rate_interval]))",
            'sum by (job_id) (rate(x_total{cluster=~"$cluster"}[$__rate_interval]))',
        ),
        (
            "a < bool on () group_left (model) b",
            'a{cluster=~"$cluster"} < bool on () group_left (model) b{cluster=~"$cluster"}',
        ),
        (
            "(a - a offset $__range) or a",
            '(a{cluster=~"$cluster"} - a{cluster=~"$cluster"} offset $__range) or a{cluster=~"$cluster"}',
        ),
        (
            "sum_over_time(r:x:count[$__range:$__interval]) * $__interval_ms > 1e-09",
            'sum_over_time(r:x:count{cluster=~"$cluster"}[$__range:$__interval]) * $__interval_ms > 1e-09',
        ),
        (
            'time() - max without (pid) (y{job_id="$job_id"})',
            'time() - max without (pid) (y{cluster=~"$cluster", job_id="$job_id"})',
        ),
        ('topk(5, {__name__="up"})', 'topk(5, {cluster=~"$cluster", __name__="up"})'),
        ("vector(1)", "vector(1)"),
    ],
)
def test_with_cluster_adds_the_matcher_to_every_selector(expr, expected):
    from mfu_dashboards.promql import with_cluster

    assert with_cluster(expr) == expected


def _links(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """(panel title, column or series, url) of every data link."""
    for panel in all_panels(dashboard["panels"]):
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    for link in prop["value"]:
                        yield panel["title"], override["matcher"]["options"], link["url"]


def test_drill_down_links_fleet_to_job_to_node_to_gpu():
    """Table cells link fleet -> training job -> GPU node -> one GPU; every link names a dashboard that
    exists and only its variables, and keeps the time range, data source and cluster."""
    dashboards = {load(p)["uid"]: load(p) for p in DASHBOARD_FILES}
    variables = {uid: {v["name"] for v in d["templating"]["list"]} for uid, d in dashboards.items()}
    targets_of: dict[str, set[tuple[str, frozenset[str]]]] = {}
    for uid, dashboard in dashboards.items():
        for title, column, url in _links(dashboard):
            m = re.fullmatch(r"/d/([a-z0-9-]+)/[a-z0-9-]+\?(.*)", url)
            assert m, f"{uid} {title} {column}: {url}"
            target, query = m.groups()
            assert target in dashboards, f"{uid} {title}: no dashboard {target}"
            names = set(re.findall(r"var-(\w+)=", query)) - {"datasource"}
            assert names <= variables[target], f"{uid} {title}: {names - variables[target]}"
            assert {"${__url_time_range}", "var-datasource=${datasource}", "${cluster:queryparam}"} <= set(
                query.split("&")
            ), f"{uid} {title}: {url}"
            targets_of.setdefault(uid, set()).add((target, frozenset(names)))
    assert ("mfu-training-job", frozenset({"job_id"})) in targets_of["mfu-fleet"]
    assert ("mfu-gpu-node", frozenset({"instance"})) in targets_of["mfu-fleet"]
    assert ("mfu-gpu-node", frozenset({"instance"})) in targets_of["mfu-training-job"]
    assert ("mfu-gpu-node", frozenset({"instance", "gpu"})) in targets_of["mfu-gpu-node"]


def _straggling_job_metrics() -> str:
    """Job "big": ranks 0..2 on GPUs 0..2 of one node, rank 2 stepping at half the others' rate on a hot,
    throttled GPU that needs a reset (severity 3)."""
    lines = []
    for rank in range(3):
        slow = rank == 2
        g = f'gpu="{rank}",uuid="GPU-big-{rank}"'
        r = f'job_id="big",rank="{rank}"'
        lines += [
            f"mfu_job_rank_steps_per_second{{{r}}} {1.0 if slow else 2.0}",
            f'mfu_job_step{{{r},{g},dtype="bf16"}} 100',
            f"mfu_gpu_sm_clock_hertz{{{g}}} {1.2e9 if slow else 1.98e9}",
            f"mfu_gpu_sm_clock_max_hertz{{{g}}} 1.98e9",
            f'mfu_gpu_clock_event_active{{{g},reason="hw_thermal_slowdown"}} {int(slow)}',
            f'mfu_gpu_clock_event_active{{{g},reason="gpu_idle"}} 0',
            f"mfu_gpu_temperature_celsius{{{g}}} {90 if slow else 60}",
            f"mfu_gpu_health_severity{{{g}}} {3 if slow else 0}",
        ]
    return "\n".join(lines) + "\n"


def test_straggler_panels_show_the_straggler_gpu(tmp_path):
    """The training job's straggler panels on a job with a straggler: the pace against the median, and
    the Stragglers table's queries, one row for the slow rank with its GPU's clock, throttle reasons,
    temperature and health (the fake agent's job has too few ranks for a median)."""
    with (
        MetricsExporter(_straggling_job_metrics) as agent,
        PrometheusServer(rule_files=RULE_FILES, scrape_targets=[agent.target], tmp_dir=tmp_path) as prom,
    ):
        prom.wait_for(
            lambda: prom.query('ALERTS{alertname="RankStraggler", job_id="big"}'),
            timeout=60,
            what="a pending RankStraggler alert",
        )
        dashboard = load(ROOT / "dashboards" / "mfu-training-job.json")
        panels = {p["title"]: p for p in all_panels(dashboard["panels"])}

        def query(expr: str) -> dict[str, float]:
            result = prom.query(substitute(expr).replace('job_id="llm"', 'job_id="big"'))
            return {s["metric"].get("rank", ""): float(s["value"][1]) for s in result}

        pace = query(panels["Pace vs job median"]["targets"][0]["expr"])
        assert pace == {"0": 1.0, "1": 1.0, "2": 0.5}
        stragglers = [query(t["expr"]) for t in panels["Stragglers"]["targets"]]
        assert stragglers == [
            {"2": 1.0},
            {"2": pytest.approx(1.2 / 1.98)},
            {"2": 1.0},
            {"2": 90.0},
            {"2": 3.0},
        ]
