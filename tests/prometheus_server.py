"""A real Prometheus server for tests.

    with PrometheusServer(rule_files=[...], scrape_targets=["127.0.0.1:8469"], tmp_dir=tmp_path) as prom:
        prom.wait_for(lambda: prom.query('up{job="mfu-agent"} == 1'), timeout=30)
        prom.alerts()

Starts the `prometheus` binary (``/usr/bin/prometheus`` or the one on PATH) with a generated
configuration, a TSDB in ``tmp_dir`` and a free port on 127.0.0.1, waits until ``/-/ready``
answers, and stops it on exit. ``make test`` (scripts/apt-install.sh prometheus) installs
Prometheus and promtool when they are missing.

Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mfu_agent.health.catalogue import SEVERITY

T = TypeVar("T")

# Talks to 127.0.0.1 only: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

INSTALL_HINT = "run `make test` (it installs them with scripts/apt-install.sh prometheus)"


class PrometheusNotInstalled(RuntimeError):
    pass


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or an API call failed."""


class PrometheusAPIError(PrometheusError):
    def __init__(self, status: int, error_type: str, error: str):
        super().__init__(f"HTTP {status} {error_type}: {error}")
        self.status = status
        self.error_type = error_type
        self.error = error


def find_binary(name: str) -> str:
    """Path of `prometheus` / `promtool`: /usr/bin first, then PATH; raises with an install hint."""
    candidate = Path("/usr/bin") / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise PrometheusNotInstalled(f"`{name}` is not installed: {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The warm-up of MfuLow: `(time() - min by (job_id) (mfu_job_node_first_report_timestamp_seconds)) > 600`
# (rules of before the node-level families: `mfu_job_first_report_timestamp_seconds`).
_WARM_UP = re.compile(r"(mfu_job(?:_node)?_first_report_timestamp_seconds\)\)\s*>\s*)[0-9][0-9.e+]*")


def rules_with_short_for(
    rule_files: Iterable[Path],
    out_dir: Path,
    for_: str = "5s",
    rate_window: str | None = None,
    warm_up_s: float | None = None,
) -> list[Path]:
    """Copies of `rule_files` in `out_dir` with every alert's `for:` set to `for_` (for fast tests).

    `rate_window` (e.g. "10s") also replaces the 5-minute windows (`[5m]`) of the rates: a
    series younger than its rate window has its rate underestimated (Prometheus divides the
    increase by the whole window). The MFU rules are built from the agent's gauges and do not
    need it; the throughput rules and MfuLow's progress check do.
    `warm_up_s` replaces MfuLow's warm-up (jobs whose first report is younger do not alert);
    ValueError if no rule has one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    warm_ups = 0
    for path in rule_files:
        path = Path(path)
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule and "for" in rule:
                    rule["for"] = for_
                if rate_window:
                    rule["expr"] = str(rule["expr"]).replace("[5m]", f"[{rate_window}]")
                if warm_up_s is not None:
                    rule["expr"], n = _WARM_UP.subn(lambda m: f"{m.group(1)}{warm_up_s:g}", str(rule["expr"]))
                    warm_ups += n
        target = out_dir / path.name
        if target.exists():
            raise ValueError(f"two rule files named {path.name}")
        target.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
        written.append(target)
    if warm_up_s is not None and not warm_ups:
        raise ValueError("warm_up_s given, but no rule has a warm-up on the first-report gauge")
    return written


class PrometheusServer:
    """A Prometheus process scraping `scrape_targets` (job "mfu-agent") and evaluating `rule_files`.

    `extra_config` is merged into the generated configuration: `scrape_configs` entries are
    appended, `global` is merged key by key, any other key is set as given.
    """

    def __init__(
        self,
        rule_files: Iterable[Path] = (),
        scrape_targets: Iterable[str] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        tmp_dir: Path | None = None,
        extra_config: dict[str, Any] | None = None,
        *,
        job_name: str = "mfu-agent",
        metrics_path: str = "/metrics",
        start_timeout: float = 30.0,
        extra_args: Iterable[str] = (),
    ):
        if tmp_dir is None:
            raise ValueError("tmp_dir is required (e.g. pytest's tmp_path)")
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_targets = list(scrape_targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.tmp_dir = Path(tmp_dir)
        self.extra_config = extra_config or {}
        self.job_name = job_name
        self.metrics_path = metrics_path
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.binary = find_binary("prometheus")
        self.config_path = self.tmp_dir / "prometheus.yml"
        self.data_dir = self.tmp_dir / "prometheus-data"
        self.log_path = self.tmp_dir / "prometheus.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [],
        }
        if self.scrape_targets:
            config["scrape_configs"].append(
                {
                    "job_name": self.job_name,
                    "metrics_path": self.metrics_path,
                    "scrape_interval": self.scrape_interval,
                    "static_configs": [{"targets": self.scrape_targets}],
                }
            )
        for key, value in self.extra_config.items():
            if key == "scrape_configs":
                config["scrape_configs"].extend(value)
            elif key == "global":
                config["global"].update(value)
            else:
                config[key] = value
        return config

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        last_error = None
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            try:
                self._start_once()
                return self
            except PrometheusError as e:
                last_error = e
                if "address already in use" not in self.log().lower():
                    break
        raise last_error  # type: ignore[misc]

    def _start_once(self) -> None:
        self.port = free_port()
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
            *self.extra_args,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process, closed in stop()
        self._log_file = log
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_dir)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"Prometheus exited with status {self.process.returncode} while starting")
            try:
                with _OPENER.open(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self._fail(f"Prometheus was not ready within {self.start_timeout:.0f} s")

    def _fail(self, message: str) -> None:
        self.stop()
        log = self.log()
        print(f"{message}; its log ({self.log_path}):\n{log}")
        raise PrometheusError(f"{message}; log:\n{log[-4000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log = getattr(self, "_log_file", None)
        if log is not None:
            log.close()
            self._log_file = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusAPIError on an error answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise PrometheusAPIError(e.code, "http", raw.decode(errors="replace")) from None
            raise PrometheusAPIError(e.code, body.get("errorType", ""), body.get("error", "")) from None
        if body.get("status") != "success":
            raise PrometheusAPIError(200, body.get("errorType", ""), body.get("error", ""))
        return body["data"]

    def query(self, expr: str, time_: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the `result` list (for a scalar or string: [{"value": [...]}])."""
        params: dict[str, Any] = {"query": expr}
        if time_ is not None:
            params["time"] = time_
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float | str = 1) -> list[dict[str, Any]]:
        data = self.api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending and firing) alerts from /api/v1/alerts."""
        return self.api("alerts")["alerts"]

    def firing(self, alertname: str | None = None) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["state"] == "firing" and (alertname is None or a["labels"].get("alertname") == alertname)
        ]

    def rules(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Rule groups from /api/v1/rules (type_ "alert" or "record" to filter)."""
        return self.api("rules", {"type": type_} if type_ else None)["groups"]

    def targets(self) -> dict[str, Any]:
        return self.api("targets")

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.25, what: str = ""
    ) -> T:
        """Polls `predicate` until it returns something truthy (returned); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = predicate()
            except PrometheusAPIError as e:
                last = e
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what or 'condition'} not met within {timeout} s; last result: {last!r}")
            time.sleep(interval)


# -- PromQL helpers ---------------------------------------------------------------------------

# Prometheus's own series, allowed in rules and dashboards besides the agent's metrics.
PROMETHEUS_BUILTIN_METRICS = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers that are not functions, keywords or labels).

    A careful regex, not a parser: strings, label matchers, ranges and grouping label lists are
    removed first; `{__name__="x"}` selectors are recognised.
    """
    names = set(_NAME_MATCHER.findall(expr))
    s = re.sub(r"#[^\n]*", "", expr)  # comments
    s = _STRING.sub('""', s)
    s = re.sub(r"\{[^}]*\}", "{}", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "[]", s)  # range and subquery selectors
    # grouping label lists: `sum by (a) (x)` -> `sum (x)`, `x * on (a) group_left (b) y` -> `x * y`
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in _IDENTIFIER.finditer(s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue  # a function (or aggregation) call, or a keyword
        names.add(word)
    return names


def contract_metric_names(contract: Path) -> set[str]:
    """Metric names listed in docs/metrics.md (every `mfu_...` word)."""
    return set(re.findall(r"\bmfu_[a-z0-9_]+", Path(contract).read_text()))


# -- A stand-in for the agent's /metrics -------------------------------------------------------


class MetricsExporter:
    """Serves `render()` (Prometheus text format) at http://127.0.0.1:<port>/metrics from a thread."""

    def __init__(self, render: Callable[[], str]):
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = outer.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.render = render
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def target(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> MetricsExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


FAKE_PEAK_FLOPS = 1e15  # dense BF16 peak of the fake H100s (FP8: twice that)
FAKE_PEAKS = {"bf16": FAKE_PEAK_FLOPS, "fp8": 2 * FAKE_PEAK_FLOPS}
FAKE_DATASHEET_CLOCK_HZ = 1.98e9  # the SM clock the fake peak figures assume


def fake_agent_metrics(elapsed: float, mig: bool = False) -> str:
    """An exposition shaped like the agent's (docs/metrics.md and the issue 9 contract), `elapsed` s in.

    One node, four GPUs: job "llm" ranks 0 and 1 on GPUs 0 and 1 at MFU 0.5 (HFU 0.6), rank 0 in
    bf16, rank 1 in fp8 and bf16 (two dtype series on GPU 1: 0.2 of the fp8 peak and 0.3 of the
    bf16 peak; its precision, the dtype of its other series, is fp8), both started when the
    exporter did (still warming up); job "slow" on GPU 2 at MFU 0.1, first reported an hour
    ago, which also looks busy but is idle, is thermally throttled (its clock-limited peak is
    1.2 / 1.98 of the datasheet's), has XID 79 and uncorrectable ECC errors; job "new" on GPU 3,
    a GPU model without a known peak.
    Peak-weighted, job "llm" is (0.5 * 1 + 0.5 * 2) / 3 = 0.5 and the fleet (0.5 * 1 + 0.5 * 2 +
    0.1 * 1) / 4 = 0.4 (by GPU count it would be 1.1 / 3).
    The agent's pre-aggregated families (issue 9 contract, round 2) say the same: per GPU
    (`mfu_gpu_mfu_ratio`, `mfu_gpu_reporting_ranks`), per rank (`mfu_job_rank_*`) and per job on the
    node (`mfu_job_node_*`).
    With `mig`, a fifth GPU in MIG mode is added (see _fake_mig_gpu).
    """
    t = elapsed
    started = time.time() - elapsed
    out: list[str] = []

    def m(name: str, labels: dict[str, str], value: float) -> None:
        lbl = ",".join(f'{k}="{v}"' for k, v in labels.items())
        out.append(f"{name}{{{lbl}}} {value!r}" if lbl else f"{name} {value!r}")

    m("mfu_agent_build_info", {"version": "0.0.0-test", "backend": "fake", "node": "node-1"}, 1)
    m("mfu_agent_sample_duration_seconds", {}, 0.004)
    m("mfu_agent_last_sample_timestamp_seconds", {}, time.time())
    m("mfu_agent_nvml_errors_total", {"call": "nvmlDeviceGetPowerUsage", "error": "NotSupported"}, 3)
    for outcome, n in (("accepted", 10 * t), ("invalid", 1)):
        m("mfu_agent_reports_total", {"outcome": outcome}, n)
    m("mfu_agent_tracked_ranks", {}, 4)
    m("mfu_agent_mfu_target_ratio", {}, 0.4)

    # GPU -> (job, rank, {dtype: that dtype's part of the rank's MFU}, first report)
    jobs = {
        0: ("llm", "0", {"bf16": 0.5}, started),
        1: ("llm", "1", {"fp8": 0.2, "bf16": 0.3}, started),
        2: ("slow", "0", {"bf16": 0.1}, started - 3600),
        3: ("new", "0", {"bf16": 0.3}, started),
    }
    reasons = [
        "gpu_idle",
        "applications_clocks_setting",
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "display_clock_setting",
    ]
    for gpu in range(4):
        g = {"gpu": str(gpu), "uuid": f"GPU-fake-{gpu}"}
        bad = gpu == 2
        model = "NVIDIA Future GPU" if gpu == 3 else "NVIDIA H100 80GB HBM3"
        m(
            "mfu_gpu_info",
            {
                **g,
                "model": model,
                "driver_version": "550.54.15",
                "pci_bus_id": f"00000000:{gpu + 1:02X}:00.0",
                "architecture": "hopper",
                "sm_activity_source": "gpm",
            },
            1,
        )
        m("mfu_gpu_up", g, 1)
        m("mfu_gpu_utilization_ratio", g, 0.95 if bad else 0.98)
        m("mfu_gpu_memory_utilization_ratio", g, 0.4)
        m("mfu_gpu_sm_active_ratio", g, 0.3 if bad else 0.85)
        m("mfu_gpu_sm_occupancy_ratio", g, 0.2 if bad else 0.5)
        m("mfu_gpu_tensor_active_ratio", g, 0.05 if bad else 0.6)
        m("mfu_gpu_dram_active_ratio", g, 0.1 if bad else 0.4)
        for dt in ("fp16", "fp32", "fp64"):
            m(f"mfu_gpu_{dt}_active_ratio", g, 0.01 if dt == "fp64" else 0.1)
        m("mfu_gpu_memory_used_bytes", g, 60e9)
        m("mfu_gpu_memory_total_bytes", g, 80e9)
        m("mfu_gpu_power_watts", g, 650.0)
        m("mfu_gpu_power_limit_watts", g, 700.0)
        m("mfu_gpu_energy_joules_total", g, 1e9 + 650.0 * t)
        # Cost at $3.60/h ($0.001 a second) for the H100s; "slow" (MFU 0.1, target 0.4) spends 3/4 of it
        # below target; no GPU is idle while allocated; GPU 3's model has no price.
        m("mfu_gpu_idle_allocated_seconds_total", g, 0.0)
        if gpu == 3:
            m("mfu_gpu_price_unknown", {**g, "model": model}, 1)
        else:
            m("mfu_gpu_cost_dollars_total", g, 0.001 * t)
            m("mfu_gpu_idle_cost_dollars_total", g, 0.0)
            m("mfu_gpu_below_target_cost_dollars_total", g, 0.00075 * t if bad else 0.0)
        m("mfu_gpu_temperature_celsius", g, 88.0 if bad else 65.0)
        m("mfu_gpu_sm_clock_hertz", g, 1.2e9 if bad else 1.98e9)
        m("mfu_gpu_sm_clock_max_hertz", g, 1.98e9)
        for reason in reasons:
            m(
                "mfu_gpu_clock_event_active",
                {**g, "reason": reason},
                int(bad and reason == "hw_thermal_slowdown"),
            )
        for kind in ("corrected", "uncorrected"):
            m(
                "mfu_gpu_ecc_errors_total",
                {**g, "type": kind},
                (int(t) if bad else 0) + (7 if kind == "corrected" else 0),
            )
            m("mfu_gpu_remapped_rows_total", {**g, "type": kind}, 1 if bad else 0)
        m("mfu_gpu_remapped_rows_pending", g, int(bad))
        m("mfu_gpu_row_remap_failure", g, 0)
        m("mfu_gpu_double_bit_ecc_events_total", g, int(t) if bad else 0)
        if bad:
            m("mfu_gpu_xid_errors_total", {**g, "xid": "79"}, 1 + int(t))
            m("mfu_gpu_xid_errors_total", {**g, "xid": "13"}, 1)
        # The agent's health state (docs/metrics.md, GPU health): GPU 2's worst cause is its XID 79 (its
        # thermal slowdown is not sustained for the 10 minutes that would make it one).
        action, reason = ("reboot_node", "xid_79") if bad else ("none", "none")
        m("mfu_gpu_health_action", {**g, "action": action, "reason": reason}, 1)
        m("mfu_gpu_health_severity", g, SEVERITY[action])
        pid = str(1000 + gpu)
        m("mfu_gpu_process_memory_bytes", {**g, "pid": pid}, 59e9)
        m("mfu_gpu_process_sm_utilization_ratio", {**g, "pid": pid}, 0.7)
        m("mfu_gpu_process_memory_utilization_ratio", {**g, "pid": pid}, 0.3)
        m(
            "mfu_gpu_process_info",
            {**g, "pid": pid, "pod_uid": f"pod-{gpu}", "container_id": f"c{gpu}", "slurm_job_id": ""},
            1,
        )
        clock = 1.2e9 if bad else 1.98e9
        if gpu == 3:
            m("mfu_gpu_peak_flops_unknown", {**g, "model": model}, 1)
        else:
            for dtype, peak in FAKE_PEAKS.items():
                m("mfu_gpu_peak_flops", {**g, "dtype": dtype}, peak)
                m("mfu_gpu_clock_peak_flops", {**g, "dtype": dtype}, peak * clock / FAKE_DATASHEET_CLOCK_HZ)

        job_id, rank, parts, first_report = jobs[gpu]
        precision = next(d for d in ("fp8", "bf16") if d in parts)
        j = {"job_id": job_id, "rank": rank, **g, "dtype": precision}
        m(
            "mfu_job_info",
            {
                **j,
                "pid": pid,
                "local_rank": rank,
                "world_size": "2" if job_id == "llm" else "1",
                "pod": f"{job_id}-{rank}",
                "namespace": "training",
                "slurm_job_id": "",
                "hostname": "node-1",
            },
            1,
        )
        for dtype, part in parts.items():
            jd = {**j, "dtype": dtype}
            m("mfu_job_model_flops_total", jd, part * FAKE_PEAKS[dtype] * t)
            m("mfu_job_hardware_flops_total", jd, 1.2 * part * FAKE_PEAKS[dtype] * t)
            if gpu == 3:
                m("mfu_job_peak_flops_unknown", {**jd, "model": model}, 1)
            else:
                m("mfu_job_peak_flops", jd, FAKE_PEAKS[dtype])
                m("mfu_job_mfu_ratio", jd, part)
                m("mfu_job_hfu_ratio", jd, 1.2 * part)
        m("mfu_job_tokens_total", j, 5000.0 * t)
        m("mfu_job_samples_total", j, 2.5 * t)
        m("mfu_job_step", j, float(int(t)))
        m("mfu_job_tokens_per_second", j, 5000.0)
        m("mfu_job_last_report_timestamp_seconds", j, time.time())
        m("mfu_job_first_report_timestamp_seconds", j, first_report)

    # Round 2 of the contract: what the agent pre-aggregates over the series above.
    now = time.time()
    node: dict[str, dict[str, float]] = {}  # job_id -> sums over its GPUs here
    for gpu, (job_id, rank, parts, first_report) in jobs.items():
        g = {"gpu": str(gpu), "uuid": f"GPU-fake-{gpu}"}
        known = gpu != 3
        mfu = sum(parts.values())
        w = max(FAKE_PEAKS[d] for d in parts)
        m("mfu_gpu_reporting_ranks", g, 1)
        r = {"job_id": job_id, "rank": rank}
        if known:
            m("mfu_gpu_mfu_ratio", g, mfu)
            m("mfu_job_rank_mfu_ratio", r, mfu)
            m("mfu_job_rank_hfu_ratio", r, 1.2 * mfu)
        m("mfu_job_rank_last_progress_timestamp_seconds", r, now)
        m("mfu_job_rank_last_report_timestamp_seconds", r, now)
        acc = node.setdefault(job_id, {"gpus": 0, "peak": 0.0, "mfu_w": 0.0, "flops": 0.0, "tokens": 0.0})
        acc["gpus"] += 1
        acc["flops"] += sum(part * FAKE_PEAKS[d] for d, part in parts.items())
        acc["tokens"] += 5000.0
        acc["first"] = min(acc.get("first", first_report), first_report)
        acc["known"] = known
        if known:
            acc["peak"] += w
            acc["mfu_w"] += mfu * w
    for job_id, acc in node.items():
        model = "NVIDIA H100 80GB HBM3" if acc["known"] else "NVIDIA Future GPU"
        jm = {"job_id": job_id, "model": model}
        m("mfu_job_node_gpus", jm, acc["gpus"])
        if acc["peak"]:
            m("mfu_job_node_peak_flops", jm, acc["peak"])
            m("mfu_job_node_mfu_ratio", jm, acc["mfu_w"] / acc["peak"])
            m("mfu_job_node_hfu_ratio", jm, 1.2 * acc["mfu_w"] / acc["peak"])
        jn = {"job_id": job_id}
        m("mfu_job_node_model_flops_per_second", jn, acc["flops"])
        m("mfu_job_node_tokens_per_second", jn, acc["tokens"])
        m("mfu_job_node_first_report_timestamp_seconds", jn, acc["first"])
        m("mfu_job_node_energy_joules_total", jn, 650.0 * acc["gpus"] * t)  # each GPU at 650 W
    _fake_goodput_and_interconnect(m, t, jobs)
    if mig:
        _fake_mig_gpu(m, t, started)
    return "\n".join(out) + "\n"


def _fake_goodput_and_interconnect(
    m: Callable[[str, dict[str, str], float], None], t: float, jobs: dict
) -> None:
    """Goodput counters and step rates per rank, GPM status, NVLink/PCIe traffic and NVLink error
    counters per GPU (docs/metrics.md), for the dashboards' panels over them. Every rank ran 90 % of
    its wall time productively, stalled 4 %, spent 6 % checkpointing, restarted once (a new process)
    and redid 2 % of its wall time; rank 1 of "llm" steps at 1.9/s against rank 0's 2/s."""
    for gpu, (job_id, rank, _, _) in jobs.items():
        r = {"job_id": job_id, "rank": rank}
        m("mfu_job_wall_seconds_total", r, 100.0 + t)
        m("mfu_job_productive_seconds_total", r, 0.9 * (100.0 + t))
        m("mfu_job_stall_seconds_total", r, 0.04 * (100.0 + t))
        m("mfu_job_restart_downtime_seconds_total", r, 5.0)
        m("mfu_job_phase_seconds_total", {**r, "phase": "checkpoint"}, 0.06 * (100.0 + t))
        for cause in ("new_process", "counter_reset"):
            m("mfu_job_restarts_total", {**r, "cause": cause}, int(cause == "new_process"))
        m("mfu_job_lost_work_steps_total", r, 4)
        m("mfu_job_lost_work_seconds_total", r, 2.0)
        m("mfu_job_lost_work_flops_total", r, 2.0e15)
        m("mfu_job_lost_work_tokens_total", r, 10000)
        m("mfu_job_rank_steps_per_second", r, 1.9 if (job_id, rank) == ("llm", "1") else 2.0)
        g = {"gpu": str(gpu), "uuid": f"GPU-fake-{gpu}"}
        for status in ("ok", "not_supported", "no_permission", "in_use", "error"):
            m("mfu_gpu_gpm_status", {**g, "status": status}, int(status == "ok"))
        for direction, share in (("rx", 1.0), ("tx", 0.98)):
            m("mfu_gpu_nvlink_bytes_per_second", {**g, "direction": direction}, share * 150e9)
            m("mfu_gpu_pcie_bytes_per_second", {**g, "direction": direction}, share * 2e9)
        for kind in ("replay", "recovery", "crc_flit", "crc_data"):
            m("mfu_gpu_nvlink_errors_total", {**g, "type": kind}, 0)


def _fake_mig_gpu(m: Callable[[str, dict[str, str], float], None], t: float, started: float) -> None:
    """GPU 4 in MIG mode, as the agent exports it (docs/metrics.md, MIG devices): the parent keeps power,
    clocks and errors; two 1g.10gb MIG devices (GPU instances 1 and 2, 16 of 132 SMs each) carry memory,
    SM activity, processes, peaks and MFU. Job "mig" runs rank 0 on GPU instance 1 and rank 1 on 2, each
    at MFU 0.25 of its slice."""
    parent = {"gpu": "4", "uuid": "GPU-fake-4"}
    model = "NVIDIA H100 80GB HBM3"
    info = {"driver_version": "550.54.15", "pci_bus_id": "00000000:05:00.0", "architecture": "hopper"}
    m("mfu_gpu_info", {**parent, "model": model, **info, "sm_activity_source": "none"}, 1)
    m("mfu_gpu_up", parent, 1)
    m("mfu_gpu_mig_mode", parent, 1)
    m("mfu_gpu_health_action", {**parent, "action": "none", "reason": "none"}, 1)
    m("mfu_gpu_health_severity", parent, 0)
    m("mfu_gpu_memory_used_bytes", parent, 12e9)
    m("mfu_gpu_memory_total_bytes", parent, 80e9)
    m("mfu_gpu_power_watts", parent, 300.0)
    m("mfu_gpu_power_limit_watts", parent, 700.0)
    m("mfu_gpu_energy_joules_total", parent, 1e9 + 300.0 * t)
    m("mfu_gpu_temperature_celsius", parent, 50.0)
    m("mfu_gpu_sm_clock_hertz", parent, 1.98e9)
    m("mfu_gpu_sm_clock_max_hertz", parent, 1.98e9)
    m("mfu_gpu_clock_event_active", {**parent, "reason": "hw_slowdown"}, 0)
    for kind in ("corrected", "uncorrected"):
        m("mfu_gpu_ecc_errors_total", {**parent, "type": kind}, 0)
    for dtype, peak in FAKE_PEAKS.items():
        m("mfu_gpu_peak_flops", {**parent, "dtype": dtype}, peak)
        m("mfu_gpu_clock_peak_flops", {**parent, "dtype": dtype}, peak)
    slice_peaks = {dtype: peak * 16 / 132 for dtype, peak in FAKE_PEAKS.items()}
    for gi in (1, 2):
        d = {
            "gpu": "4",
            "uuid": f"MIG-fake-4-{gi}",
            "mig_profile": "1g.10gb",
            "gpu_instance_id": str(gi),
            "compute_instance_id": "0",
        }
        busy = True
        m(
            "mfu_gpu_info",
            {**d, "model": model, **info, "sm_activity_source": "gpm", "parent_uuid": "GPU-fake-4"},
            1,
        )
        m("mfu_gpu_up", d, 1)
        m("mfu_gpu_memory_used_bytes", d, 9e9 if busy else 0.0)
        m("mfu_gpu_memory_total_bytes", d, 10e9)
        m("mfu_gpu_sm_active_ratio", d, 0.8 if busy else 0.0)
        m("mfu_gpu_tensor_active_ratio", d, 0.5 if busy else 0.0)
        m("mfu_gpu_dram_active_ratio", d, 0.3 if busy else 0.0)
        for dtype, peak in slice_peaks.items():
            m("mfu_gpu_peak_flops", {**d, "dtype": dtype}, peak)
            m("mfu_gpu_clock_peak_flops", {**d, "dtype": dtype}, peak)
        m("mfu_gpu_reporting_ranks", d, 1 if busy else 0)
        if not busy:
            continue
        pid, rank = str(1003 + gi), str(gi - 1)
        m("mfu_gpu_process_memory_bytes", {**d, "pid": pid}, 9e9)
        m(
            "mfu_gpu_process_info",
            {**d, "pid": pid, "pod_uid": "pod-mig", "container_id": "cmig", "slurm_job_id": ""},
            1,
        )
        m("mfu_gpu_mfu_ratio", d, 0.25)
        g = {"gpu": "4", "uuid": d["uuid"]}
        j = {"job_id": "mig", "rank": rank, **g, "dtype": "bf16"}
        m(
            "mfu_job_info",
            {
                **j,
                "pid": pid,
                "local_rank": "0",
                "world_size": "1",
                "pod": "mig-0",
                "namespace": "training",
                "slurm_job_id": "",
                "hostname": "node-1",
            },
            1,
        )
        m("mfu_job_model_flops_total", j, 0.25 * slice_peaks["bf16"] * t)
        m("mfu_job_hardware_flops_total", j, 0.3 * slice_peaks["bf16"] * t)
        m("mfu_job_peak_flops", j, slice_peaks["bf16"])
        m("mfu_job_mfu_ratio", j, 0.25)
        m("mfu_job_hfu_ratio", j, 0.3)
        m("mfu_job_tokens_total", j, 500.0 * t)
        m("mfu_job_samples_total", j, 0.5 * t)
        m("mfu_job_step", j, float(int(t)))
        m("mfu_job_tokens_per_second", j, 500.0)
        m("mfu_job_last_report_timestamp_seconds", j, time.time())
        m("mfu_job_first_report_timestamp_seconds", j, started)
        r = {"job_id": "mig", "rank": rank}
        m("mfu_job_rank_mfu_ratio", r, 0.25)
        m("mfu_job_rank_hfu_ratio", r, 0.3)
        m("mfu_job_rank_last_progress_timestamp_seconds", r, time.time())
        m("mfu_job_rank_last_report_timestamp_seconds", r, time.time())
    jm = {"job_id": "mig", "model": model}
    m("mfu_job_node_gpus", jm, 2)
    m("mfu_job_node_peak_flops", jm, 2 * slice_peaks["bf16"])
    m("mfu_job_node_mfu_ratio", jm, 0.25)
    m("mfu_job_node_hfu_ratio", jm, 0.3)
    m("mfu_job_node_model_flops_per_second", {"job_id": "mig"}, 0.5 * slice_peaks["bf16"])
    m("mfu_job_node_tokens_per_second", {"job_id": "mig"}, 1000.0)
    m("mfu_job_node_first_report_timestamp_seconds", {"job_id": "mig"}, started)
