"""Recording and alerting rules at fleet scale: each rule group's evaluation time in a real Prometheus.

    .venv/bin/python -m bench.rules_scale            # 2,048 nodes, 16,384 GPUs, 2,000 jobs
    .venv/bin/python -m bench.rules_scale --quick    # 128 nodes, 1,024 GPUs, 125 jobs
    .venv/bin/python -m bench.run --only rules       # the same, as a section of the bench

A synthetic fleet (bench/fleet.py: what one mfu-agent per node exports, with the `instance` and `job`
labels a scrape adds) is written as OpenMetrics, 15 minutes at a 15 s step, backfilled with
`promtool tsdb create-blocks-from openmetrics` (one promtool per CPU, each a slice of the time range,
so the blocks do not overlap), and a Prometheus on 127.0.0.1 is started on those blocks with every
rule file in deploy/prometheus/rules (as they are in the tree at run time) plus a baseline group, and
no scrape targets. Each group's evaluation time is read from Prometheus's own metrics
(`prometheus_rule_group_last_duration_seconds`, `..._last_evaluation_samples`) over several
evaluations, and reported with its ratio to the baseline group evaluated in the same Prometheus.
The rules' results are then checked against the fleet (job MFU series per job, one fleet MFU), so a
broken rule cannot look fast. Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # `python bench/rules_scale.py` as well as `python -m bench.rules_scale`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

import yaml  # noqa: E402

from .common import ROOT, free_port  # noqa: E402
from .fleet import CORE_FAMILIES, Fleet, write_files  # noqa: E402

RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
FULL = {"nodes": 2048, "jobs": 2000}
QUICK = {"nodes": 128, "jobs": 125}
INTERVAL = 15  # evaluation_interval, seconds
HISTORY = 900  # seconds of samples before the end
STEP = 15  # seconds between samples (the scrape interval)
TARGET_SECONDS = 1.0
BASELINE_GROUP = "bench.baseline"
BASELINE_RULES = {
    "groups": [
        {
            "name": BASELINE_GROUP,
            "rules": [
                {"record": "bench:node_gpus:count", "expr": "count by (instance) (mfu_gpu_info)"},
                {"record": "bench:fleet_gpus_up:sum", "expr": "sum(mfu_gpu_up)"},
            ],
        }
    ]
}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
# Rough costs on the 2-core machine of docs/performance.md, to date the samples so that they end
# about when Prometheus starts (rules evaluated "now" then see a fresh fleet): writing one sample of
# OpenMetrics, and promtool's backfill of one sample (per promtool process, two running at once).
_WRITE_S_PER_SAMPLE = 1.3e-6
_BACKFILL_S_PER_SAMPLE = 9e-6
_BYTES_PER_SAMPLE = 180  # of OpenMetrics text, deleted once backfilled


def _binary(name: str) -> str:
    for candidate in (Path("/usr/bin") / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(f"`{name}` is not installed (`make prometheus` installs it)")


def _get(url: str, timeout: float = 30.0) -> bytes:
    with _OPENER.open(url, timeout=timeout) as r:
        return r.read()


def _api(base: str, path: str, **params: object) -> object:
    url = f"{base}/api/v1/{path}" + (("?" + urllib.parse.urlencode(params)) if params else "")
    body = json.loads(_get(url))
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def _blob_id(path: Path) -> str:
    """The file's git blob id (what `git hash-object` prints), short."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:10]


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    rules_dir = Path(rules_dir).resolve()  # Prometheus names each group by the path it was given
    return sorted([*rules_dir.glob("*.yml"), *rules_dir.glob("*.yaml")])


def referenced_metrics(paths: list[Path]) -> set[str]:
    """Raw metric names the rules select (mfu_* and up): which families the fleet must hold."""
    names: set[str] = set()
    for path in paths:
        for group in yaml.safe_load(path.read_text()).get("groups") or []:
            for rule in group.get("rules") or []:
                expr = str(rule.get("expr", ""))
                names |= set(re.findall(r"\bmfu_[a-z0-9_]+", expr))
                if re.search(r"(?<![\w:])up\b(?!\s*\()", expr):
                    names.add("up")
    return names


def _rule_groups(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text()).get("groups") or []:
            rules = group.get("rules") or []
            out.append(
                {
                    "file": path.name,
                    "path": str(path),
                    "name": group["name"],
                    "key": f"{path};{group['name']}",
                    "records": sum(1 for r in rules if "record" in r),
                    "alerts": sum(1 for r in rules if "alert" in r),
                }
            )
    return out


_SAMPLE = re.compile(r'^(prometheus_rule_[a-z_]+)\{rule_group="((?:[^"\\]|\\.)*)"\} (\S+)$', re.M)


def _group_metrics(base: str) -> dict[str, dict[str, float]]:
    """{rule_group: {metric: value}} from Prometheus's own /metrics."""
    out: dict[str, dict[str, float]] = {}
    for name, group, value in _SAMPLE.findall(_get(base + "/metrics").decode()):
        out.setdefault(group.replace('\\"', '"').replace("\\\\", "\\"), {})[name] = float(value)
    return out


def _proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _prometheus(work: Path, rules: list[Path]) -> Iterator[tuple[str, int]]:
    """Prometheus on 127.0.0.1 over work/data with `rules` and no scrape targets: (base URL, pid)."""
    config = {
        "global": {"scrape_interval": f"{STEP}s", "evaluation_interval": f"{INTERVAL}s"},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_file = open(work / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            _binary("prometheus"),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
            "--log.level=info",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=work,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Prometheus exited ({proc.returncode}): {_tail(work / 'prometheus.log')}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if _get(base + "/-/ready", timeout=2):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus not ready in 120 s: {_tail(work / 'prometheus.log')}")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log_file.close()


def _tail(path: Path, n: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""


def _backfill(parts: list[Path], work: Path) -> Path:
    """One promtool per part, in parallel; the blocks end up in work/data."""
    promtool = _binary("promtool")
    data = work / "data"
    data.mkdir()
    with contextlib.ExitStack() as stack:
        procs = []
        for i, part in enumerate(parts):
            out = work / f"blocks-{i}"
            log = stack.enter_context(open(work / f"promtool-{i}.log", "wb"))
            cmd = [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(part), str(out)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            stack.callback(lambda p=proc: (p.kill(), p.wait()))  # no-op once exited; else stops it
            procs.append((proc, out))
        failed = []
        for i, (proc, out) in enumerate(procs):
            if proc.wait() != 0:
                failed.append(
                    f"promtool on part {i} exited {proc.returncode}: {_tail(work / f'promtool-{i}.log')}"
                )
                continue
            for block in out.iterdir():
                block.rename(data / block.name)
    if failed:
        raise RuntimeError("; ".join(failed))
    return data


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(
    nodes: int,
    jobs: int,
    log: Callable[[str], None] = print,
    evaluations: int = 5,
    history: int = HISTORY,
    step: int = STEP,
    rules_dir: Path = RULES_DIR,
    all_series: bool = False,
    keep: bool = False,
    parts: int | None = None,
) -> dict:
    rules = rule_files(rules_dir)
    if not rules:
        raise RuntimeError(f"no rule files in {rules_dir}")
    t0 = time.monotonic()
    fleet = Fleet.build(nodes, jobs)
    summary = fleet.summary()
    catalogue = {sample for _, _, sample, _ in fleet.series(0.0)}
    referenced = referenced_metrics(rules)
    families = None if all_series else (CORE_FAMILIES | referenced) & catalogue
    missing = sorted(referenced - catalogue)
    parts = parts or max(1, min(4, os.cpu_count() or 1))
    # Count the series first, to date the samples so that they end about when Prometheus starts.
    n_series = sum(
        sum(1 for _ in series)
        for _, _, sample, series in fleet.series(0.0)
        if families is None or sample in families
    )
    points = history // step + 1
    est_samples = n_series * points
    est = est_samples * (_WRITE_S_PER_SAMPLE + _BACKFILL_S_PER_SAMPLE / parts) + 2.0
    end = math.floor(time.time() + est)
    log(
        f"  fleet: {summary['nodes']:,} nodes, {summary['gpus']:,} GPUs, {summary['jobs']:,} jobs, "
        f"{summary['ranks']:,} ranks; {n_series:,} series x {points} samples ({history} s at {step} s); "
        f"{len(families) if families is not None else 'all'} families; rules: "
        + ", ".join(f"{p.name} ({_blob_id(p)})" for p in rules)
    )
    if missing:
        log(f"  note: the rules select metrics the fleet does not generate: {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="mfu-rules-scale-"))
    free = shutil.disk_usage(work).free
    if free < 2.5 * _BYTES_PER_SAMPLE * est_samples:  # the text, then the blocks beside it
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(
            f"{free / 2**30:.1f} GiB free under {work.parent}, about "
            f"{2.5 * _BYTES_PER_SAMPLE * est_samples / 2**30:.1f} GiB needed (set TMPDIR elsewhere)"
        )
    result: dict = {
        "scale": {**summary, "series": n_series, "history_seconds": history, "step_seconds": step},
        "rule_files": [{"file": p.name, "blob": _blob_id(p)} for p in rules],
        "families": sorted(families) if families is not None else "all",
        "unknown_metrics_in_rules": missing,
        "evaluation_interval_seconds": INTERVAL,
        "work_dir": str(work) if keep else None,
    }
    try:
        paths = [work / f"part-{i}.om" for i in range(parts)]
        t = time.monotonic()
        stats = write_files(fleet, paths, end=end, history=history, step=step, families=families)
        written = sum(p.stat().st_size for p in paths)
        write_s = time.monotonic() - t
        gib = written / 2**30
        log(f"  wrote {stats['samples']:,} samples ({gib:.2f} GiB of OpenMetrics) in {write_s:.0f} s")
        t = time.monotonic()
        data = _backfill(paths, work)
        backfill_s = time.monotonic() - t
        for p in paths:
            p.unlink()
        blocks = _du(data)
        mib = blocks / 2**20
        log(f"  backfilled in {backfill_s:.0f} s by {parts} promtool processes: {mib:.0f} MiB of blocks")
        wait = end + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
        result["prepare"] = {
            "samples": stats["samples"],
            "openmetrics_bytes": written,
            "write_seconds": write_s,
            "backfill_seconds": backfill_s,
            "promtool_processes": parts,
            "block_bytes": blocks,
            "waited_seconds": max(0.0, wait),
        }
        baseline = work / "bench-baseline.yml"
        baseline.write_text(yaml.safe_dump(BASELINE_RULES, sort_keys=False))
        groups = _rule_groups([*rules, baseline])
        with _prometheus(work, [*rules, baseline]) as (base, pid):
            started = time.time()
            result["prepare"]["data_age_at_start_seconds"] = started - end
            log(
                f"  Prometheus ready {started - end:.0f} s after the last sample; measuring {evaluations} "
                f"evaluations of each group (every {INTERVAL} s) after a warm-up one"
            )
            result.update(_observe(base, pid, groups, evaluations, end, log))
            result["checks"] = _check(base, fleet, rules, log)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.monotonic() - t0
    return result


def _observe(base: str, pid: int, groups: list[dict], evaluations: int, end: float, log) -> dict:
    seen: dict[str, float] = {}
    runs: dict[str, list[dict]] = {g["key"]: [] for g in groups}
    cpu0, _ = _proc_stat(pid)
    t0 = time.monotonic()
    rss_max = 0
    deadline = t0 + (evaluations + 3) * INTERVAL + 120
    metrics: dict[str, dict[str, float]] = {}
    while time.monotonic() < deadline:
        metrics = _group_metrics(base)
        for key, m in metrics.items():
            ts = m.get("prometheus_rule_group_last_evaluation_timestamp_seconds", 0.0)
            if key not in runs or ts <= 0 or ts == seen.get(key):
                continue
            if key in seen:  # the first evaluation seen is the warm-up
                runs[key].append(
                    {
                        "at": ts,
                        "data_age_seconds": ts - end,
                        "seconds": m.get("prometheus_rule_group_last_duration_seconds", float("nan")),
                        "samples": m.get("prometheus_rule_group_last_evaluation_samples"),
                    }
                )
            seen[key] = ts
        rss_max = max(rss_max, _proc_stat(pid)[1])
        if all(len(r) >= evaluations for r in runs.values()):
            break
        time.sleep(1.0)
    cpu1, _ = _proc_stat(pid)
    wall = time.monotonic() - t0
    rules_api = _api(base, "rules")
    per_rule = {}
    for g in rules_api["groups"]:
        key = f"{g['file']};{g['name']}"
        per_rule[key] = sorted(
            (
                {
                    "name": r["name"],
                    "type": r["type"],
                    "seconds": r.get("evaluationTime", 0.0),
                    "health": r.get("health"),
                    "error": r.get("lastError", ""),
                }
                for r in g["rules"]
            ),
            key=lambda r: -r["seconds"],
        )
    out_groups = []
    baseline = None
    for g in groups:
        r = runs[g["key"]]
        secs = [x["seconds"] for x in r]
        m = metrics.get(g["key"], {})
        row = {
            **{k: g[k] for k in ("file", "name", "records", "alerts")},
            "evaluations": r,
            "median_seconds": statistics.median(secs) if secs else float("nan"),
            "max_seconds": max(secs) if secs else float("nan"),
            "samples": r[-1]["samples"] if r else None,
            "missed_iterations": m.get("prometheus_rule_group_iterations_missed_total", 0.0),
            "failures": m.get("prometheus_rule_evaluation_failures_total", 0.0),
            "slowest_rules": per_rule.get(g["key"], [])[:3],
            "unhealthy_rules": [x for x in per_rule.get(g["key"], []) if x["health"] not in ("ok", None)],
        }
        if g["name"] == BASELINE_GROUP and g["file"] == "bench-baseline.yml":
            baseline = row
        out_groups.append(row)
    for row in out_groups:
        row["ratio"] = row["median_seconds"] / baseline["median_seconds"] if baseline else float("nan")
    log(
        f"  {'group':<36} {'rules':>5} {'median s':>9} {'max s':>7} {'samples':>8} {'x baseline':>10}"
        "  slowest rule"
    )
    for row in out_groups:
        samples = "-" if row["samples"] is None else f"{row['samples']:,.0f}"
        slowest = row["slowest_rules"][0] if row["slowest_rules"] else {"name": "-", "seconds": 0.0}
        log(
            f"  {row['file'] + ':' + row['name']:<36} {row['records'] + row['alerts']:>5} "
            f"{row['median_seconds']:>9.3f} {row['max_seconds']:>7.3f} {samples:>8} {row['ratio']:>10.1f}  "
            f"{slowest['name']} ({slowest['seconds']:.3f} s)"
        )
        for bad in row["unhealthy_rules"]:
            log(f"    unhealthy: {bad['name']}: {bad['error']}")
    ages = [e["data_age_seconds"] for r in runs.values() for e in r]
    if ages:
        log(f"  the measured evaluations ran {min(ages):.0f} to {max(ages):.0f} s after the last sample")
    return {
        "groups": out_groups,
        "baseline_median_seconds": baseline["median_seconds"] if baseline else None,
        "data_age_seconds": [min(ages), max(ages)] if ages else None,
        "prometheus": {
            "cpu_seconds": cpu1 - cpu0,
            "wall_seconds": wall,
            "cpu_percent": 100 * (cpu1 - cpu0) / wall if wall else 0.0,
            "rss_max_bytes": rss_max,
            "version": _version(),
        },
    }


def _version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run([_binary("prometheus"), "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).split("\n", 1)[0]
    return ""


def _check(base: str, fleet: Fleet, rules: list[Path], log) -> dict:
    """The rules' output against the fleet: series per recording rule, job and fleet MFU values."""
    recorded = []
    for path in rules:
        for group in yaml.safe_load(path.read_text()).get("groups") or []:
            recorded += [r["record"] for r in group.get("rules") or [] if "record" in r]
    counts = {
        s["metric"]["__name__"]: int(float(s["value"][1]))
        for s in _api(base, "query", query='count by (__name__) ({__name__=~"mfu:.+"})')["result"]
    }
    series = {name: counts.get(name, 0) for name in dict.fromkeys(recorded)}
    empty = [name for name, n in series.items() if n == 0]
    expected_jobs = fleet.expected_job_mfu()
    got = {
        s["metric"].get("job_id"): float(s["value"][1])
        for s in _api(base, "query", query="mfu:job_mfu:ratio")["result"]
    }
    close = sum(
        1
        for j, v in expected_jobs.items()
        if j in got and math.isclose(got[j], v, rel_tol=0.01, abs_tol=1e-4)
    )
    worst = max(
        ((abs(got[j] - v), j) for j, v in expected_jobs.items() if j in got), default=(float("nan"), None)
    )
    rel = [abs(got[j] / v - 1) for j, v in expected_jobs.items() if j in got and v]
    fleet_rows = _api(base, "query", query="mfu:fleet_mfu:ratio")["result"]
    fleet_value = float(fleet_rows[0]["value"][1]) if len(fleet_rows) == 1 else None
    out = {
        "series_per_recording_rule": series,
        "empty_recording_rules": empty,
        "job_mfu_series": len(got),
        "jobs_with_mfu_expected": len(expected_jobs),
        "job_mfu_within_1pct": close,
        "job_mfu_worst_abs_error": worst[0],
        "job_mfu_worst_job": worst[1],
        "job_mfu_median_relative_error": statistics.median(rel) if rel else None,
        "fleet_mfu_series": len(fleet_rows),
        "fleet_mfu": fleet_value,
        "fleet_mfu_expected": fleet.expected_fleet_mfu(),
    }
    log(
        f"  checks: mfu:job_mfu:ratio {len(got):,} series ({len(expected_jobs):,} jobs have a known peak; "
        f"{close:,} within 1% of the contract's peak-weighted value), "
        f"mfu:fleet_mfu:ratio {len(fleet_rows)} series "
        f"({fleet_value if fleet_value is None else round(fleet_value, 4)}, expected "
        f"{out['fleet_mfu_expected']:.4f}); recording rules without output: {', '.join(empty) or 'none'}"
    )
    return out


def targets(r: dict) -> list[tuple[str, float, str, bool, str]]:
    """(target, value, goal, met, unit) rows for bench.run's summary."""
    gpus = r["scale"]["gpus"]
    rows = []
    for g in r["groups"]:
        if g["file"] == "bench-baseline.yml":
            continue
        v = g["median_seconds"]
        rows.append(
            (f"rule group {g['file']}:{g['name']}, {gpus:,} GPUs, median evaluation", v, "< 1", v < 1, "s")
        )
    c = r["checks"]
    jobs = c["jobs_with_mfu_expected"]
    rows.append(("mfu:job_mfu:ratio series (jobs with a known peak)", c["job_mfu_series"], f"{jobs:,}",
                 c["job_mfu_series"] == jobs, ""))  # fmt: skip
    rows.append(("mfu:fleet_mfu:ratio series", c["fleet_mfu_series"], "1", c["fleet_mfu_series"] == 1, ""))
    failures = sum(g["failures"] for g in r["groups"])
    rows.append(("rule evaluation failures", failures, "0", failures == 0, ""))
    rows.append(
        (
            "recording rules without output",
            len(c["empty_recording_rules"]),
            "0",
            not c["empty_recording_rules"],
            "",
        )
    )
    return rows


def run(quick: bool, log: Callable[[str], None]) -> dict:
    scale = QUICK if quick else FULL
    return measure(scale["nodes"], scale["jobs"], log, evaluations=3 if quick else 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rules_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 nodes, 125 jobs, 3 evaluations")
    parser.add_argument("--nodes", type=int, help="nodes of 8 GPUs (default 2,048)")
    parser.add_argument("--jobs", type=int, help="jobs (default 2,000)")
    parser.add_argument("--evaluations", type=int, help="evaluations measured per group (default 5)")
    parser.add_argument("--history", type=int, default=HISTORY, help="seconds of samples (default 900)")
    parser.add_argument("--step", type=int, default=STEP, help="seconds between samples (default 15)")
    parser.add_argument("--rules-dir", type=Path, default=RULES_DIR, help="rule files to load (*.yml)")
    parser.add_argument(
        "--all-series",
        action="store_true",
        help="every family the agent exports, not only those the issue names and the rules select",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data, logs)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers to PATH")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    result = measure(
        args.nodes or scale["nodes"],
        args.jobs or scale["jobs"],
        print,
        evaluations=args.evaluations or (3 if args.quick else 5),
        history=args.history,
        step=args.step,
        rules_dir=args.rules_dir,
        all_series=args.all_series,
        keep=args.keep,
    )
    for name, value, goal, met, unit in targets(result):
        shown = f"{value:.3f}" if isinstance(value, float) else f"{value}"
        print(f"{name:<78} {shown:>10} {unit:<2} {goal:<8} {'yes' if met else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop Prometheus, remove the data
    sys.exit(main())
