"""Soak (issue 11 item 8): one real agent under every fault at once for 10 minutes, its resources
recorded over time to show them flat.

    .venv/bin/python -m bench.soak                       # 10 minutes (`make soak`)
    .venv/bin/python -m bench.soak --minutes 3 --json soak.json

The agent: `mfu-agent run --backend nvml` on the tests' fake libnvidia-ml (tests/fake_nvml_agent.py):
8 H100s, GPUs 6 and 7 in MIG mode (2g.20gb, 2g.20gb, 1g.10gb x 3 each), sampling every second, on
loopback, `--max-ranks 1024 --max-series 10000 --rank-ttl 60`. All at once:

* driver reload: NVML unloaded every 2 minutes and loaded again 10 s later (the fake's control file);
* XID storm: a burst every 30 s, 10,000 XID 79s and 1,000 distinct codes (1, 2, ..., 1,000) in all;
* report flood: 500 new (job_id, rank) pairs every 2 s through POST /v1/reports, past --max-ranks;
* slowloris: 50 connections sending a header byte every 0.5 s, re-opened as the agent closes them;
* 16 well-behaved ranks, one per device (6 whole GPUs, 10 MIG devices), through the real client
  `Reporter`, reporting every second and stepping ten times a second, the whole time;
* a Prometheus-like scraper: /metrics, /healthz and /readyz every 5 s, a new connection each.

Recorded every 5 s: the agent's RSS, open files, threads and CPU; the scrape's time, bytes and series;
/healthz and /readyz; the agent's log volume. Every answer of every client is counted by endpoint and
status: the flood's 429s and /readyz's 503s while NVML is down are expected and counted apart; 5xx,
resets and timeouts are errors. Shorter runs (`--minutes`) scale the fault schedule and the storm.
The figures are reported and checked against flat targets, never asserted (docs/reliability.md#soak).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import math
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/soak.py` as well as `python -m bench.soak`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench.common import ROOT, cpu_seconds, machine, rss_bytes  # noqa: E402
from bench.scrape import PROMETHEUS_ACCEPT  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))  # the agent process and the fake libnvidia-ml of the tests
from agent_process import AgentProcess  # noqa: E402
from fakenvml import default_mig_uuid, mig_devices  # noqa: E402

from mfu_agent.client import Reporter  # noqa: E402

WHOLE_GPUS = 6
MIG_GPUS = 2  # GPUs 6 and 7
MIG_PROFILES = ("2g.20gb", "2g.20gb", "1g.10gb", "1g.10gb", "1g.10gb")
H100_SMS = 132
STEADY_JOB = "steady"
STEADY_FLOPS_PER_STEP = 4e13  # ten steps a second: 40% MFU of a whole H100 (bf16, dense)
STEPS_PER_SECOND = 10

FULL_SECONDS = 600.0
RELOAD_EVERY = 120.0
DOWN_SECONDS = 10.0
XID_EVERY = 30.0
XID_REPEATED = 79  # fallen off the bus
XID_REPEATED_TOTAL = 10_000  # in a full run; shorter runs in proportion
XID_DISTINCT_TOTAL = 1_000
FLOOD_EVERY = 2.0
FLOOD_BATCH = 500
MAX_RANKS = 1024
MAX_SERIES = 10_000  # where the agent has --max-series: about what 1,024 flood ranks would carry
RANK_TTL = 60.0
SLOWLORIS = 50
SLOWLORIS_BYTE_EVERY = 0.5
SLOWLORIS_OPEN_PER_TICK = 10  # opened at most per byte round: their deadlines spread, not all at once
SAMPLE_EVERY = 5.0
RECOVERY_TIMEOUT = 60.0  # after a reload: readiness and the steady ranks' MFU must be back by then

# Outcomes that are not errors although not 2xx: (client, endpoint, outcome).
EXPECTED = {
    ("flood", "/v1/reports", "429"),
    ("scraper", "/readyz", "503"),
    ("reload", "/readyz", "503"),
    ("setup", "/metrics", "503"),
}


def log(message: str) -> None:
    print(message, flush=True)


# -- the plan -------------------------------------------------------------------------------------
def plan(minutes: float) -> dict:
    """The fault schedule of a run of `minutes`: the full one for 10, the same faults scaled down for
    fewer (at least one reload, two XID bursts, the TTL short enough for the flood's ranks to expire)."""
    seconds = minutes * 60.0
    scale = seconds / FULL_SECONDS
    reload_every = min(RELOAD_EVERY, seconds / 3)
    down = min(DOWN_SECONDS, reload_every / 4)
    reloads = []
    t = reload_every
    while t + down + 20 <= seconds:
        reloads.append(t)
        t += reload_every
    xid_every = min(XID_EVERY, seconds / 4)
    bursts = [xid_every * (k + 0.5) for k in range(max(2, int(seconds // xid_every)))]
    bursts = [b for b in bursts if b < seconds - 2]
    return {
        "seconds": seconds,
        "sample_every": min(SAMPLE_EVERY, max(1.0, seconds / 20)),
        "warmup": seconds / 10,  # the flood fills --max-ranks, the allocator grows: not in the thirds
        "reloads": reloads,
        "down_seconds": down,
        "xid_bursts": bursts,
        "xid_repeated_total": max(len(bursts), round(XID_REPEATED_TOTAL * scale)),
        "xid_distinct_total": max(len(bursts), round(XID_DISTINCT_TOTAL * scale)),
        "flood_every": FLOOD_EVERY,
        "flood_batch": FLOOD_BATCH,
        "max_ranks": MAX_RANKS,
        "rank_ttl": min(RANK_TTL, max(5.0, seconds / 3)),
        "slowloris": SLOWLORIS,
    }


def fake_nvml_config() -> dict:
    mig = [
        {
            k: getattr(m, k)
            for k in ("profile", "gpu_instance_id", "compute_instance_id", "sm_count", "memory_total")
        }
        for m in mig_devices(MIG_PROFILES)
    ]
    return {"devices": [{}] * WHOLE_GPUS + [{"mig_mode": 1, "mig_devices": mig}] * MIG_GPUS}


def steady_devices() -> list[tuple[int | str, float]]:
    """(what the rank names as its GPU, its share of a whole H100's SMs) for each of the 16 ranks."""
    devices: list[tuple[int | str, float]] = [(i, 1.0) for i in range(WHOLE_GPUS)]
    for parent in range(WHOLE_GPUS, WHOLE_GPUS + MIG_GPUS):
        for m in mig_devices(MIG_PROFILES):
            uuid = default_mig_uuid(parent, m.gpu_instance_id, m.compute_instance_id)
            devices.append((uuid, m.sm_count / H100_SMS))
    return devices


def agent_supports(flag: str) -> bool:
    from mfu_agent.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["run", flag, "1"])
    except SystemExit:
        return False
    return True


# -- answers --------------------------------------------------------------------------------------
class Answers:
    """Every answer (or failure) by (client, endpoint, outcome): a status code, or reset, timeout,
    refused, error:<exception>."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, client: str, endpoint: str, outcome: str | int) -> None:
        with self._lock:
            self.counts[(client, endpoint, str(outcome))] += 1

    def snapshot(self) -> Counter[tuple[str, str, str]]:
        with self._lock:
            return Counter(self.counts)


def failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(
        exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | http.client.RemoteDisconnected
    ):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return f"error:{type(exc).__name__}"


def is_error(outcome: str) -> bool:
    """5xx and failed exchanges; not 4xx (which the summary lists as unexpected when not EXPECTED)."""
    return not outcome.isdigit() or outcome.startswith("5")


class Http:
    def __init__(self, port: int, answers: Answers) -> None:
        self.port = port
        self.answers = answers

    def request(
        self,
        client: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int | None, bytes, float]:
        """One exchange on a new connection: (status or None, body, seconds); counted in `answers`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.answers.add(client, path, failure(exc))
            return None, b"", time.perf_counter() - started
        finally:
            conn.close()
        self.answers.add(client, path, response.status)
        return response.status, data, time.perf_counter() - started


def read_metrics(text: str) -> dict[str, float]:
    """What the soak follows in a /metrics page (text or OpenMetrics)."""
    series = steady_mfu = 0
    xids = evictions = 0.0
    tracked = nvml_up = estimate = float("nan")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        if line.startswith("mfu_job_rank_mfu_ratio{") and f'job_id="{STEADY_JOB}"' in line:
            steady_mfu += 1
        elif line.startswith("mfu_gpu_xid_errors_total{"):
            xids += float(line.rsplit(" ", 1)[1])
        elif line.startswith("mfu_agent_tracked_ranks "):
            tracked = float(line.split()[1])
        elif line.startswith("mfu_agent_nvml_up "):
            nvml_up = float(line.split()[1])
        elif line.startswith("mfu_agent_rank_evictions_total{"):
            evictions += float(line.rsplit(" ", 1)[1])
        elif line.startswith("mfu_agent_series_estimate "):  # where the agent has a series budget
            estimate = float(line.split()[1])
    return {
        "series": series,
        "steady_mfu": steady_mfu,
        "xids_counted": xids,
        "tracked_ranks": tracked,
        "nvml_up": nvml_up,
        "rank_evictions": evictions,
        "series_estimate": estimate,
    }


# -- the agent ------------------------------------------------------------------------------------
class SoakAgent(AgentProcess):
    """tests/agent_process.AgentProcess with its output to a file, read while it runs (a pipe nobody
    reads would stop the agent once full)."""

    def __init__(self, *args: str, fake_nvml: dict, tmp: Path) -> None:
        super().__init__(*args, fake_nvml=fake_nvml, tmp=tmp)
        self.log_path = tmp / "agent.log"
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def start(self) -> SoakAgent:
        assert self.tmp is not None and self.fake_nvml is not None
        config = self.tmp / "fake-nvml.json"
        self.control_path = self.tmp / "fake-nvml.control"
        config.write_text(json.dumps({**self.fake_nvml, "control": str(self.control_path)}))
        cmd = [
            sys.executable,
            str(ROOT / "tests" / "fake_nvml_agent.py"),
            str(config),
            "run",
            "--backend",
            "nvml",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "info",
            *self.args,
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests")))}
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            env.pop(name, None)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log_path.read_text()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                try:
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        return self
                finally:
                    conn.close()
            time.sleep(0.1)
        raise RuntimeError("agent not ready within 60 s")

    def stop(self) -> str:
        if self.proc is not None and self.exit_code is None:
            started = time.monotonic()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
            self.stop_seconds = time.monotonic() - started
        return ""


class LogVolume:
    """Lines and bytes the agent wrote since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.tracebacks = 0

    def read(self) -> tuple[int, int]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1  # whole lines only
        data = data[:cut]
        self.offset += cut
        self.tracebacks += data.count(b"Traceback")
        return data.count(b"\n"), len(data)


# -- the clients ----------------------------------------------------------------------------------
class SteadyReporter(Reporter):
    """The real client, its answers counted too."""

    answers: Answers

    def _succeeded(self, status: int, *args: Any, **kwargs: Any) -> Any:
        self.answers.add("steady", "/v1/reports", status)
        return super()._succeeded(status, *args, **kwargs)

    def _failed(self, kind: str, detail: str, status: int | None, *args: Any, **kwargs: Any) -> Any:
        outcome = str(status) if status is not None else ("reset" if "Reset" in detail else kind)
        self.answers.add("steady", "/v1/reports", outcome)
        return super()._failed(kind, detail, status, *args, **kwargs)


def steady_reporters(port: int, answers: Answers) -> list[SteadyReporter]:
    devices = steady_devices()
    reporters = []
    for rank, (gpu, share) in enumerate(devices):
        reporter = SteadyReporter(
            job_id=STEADY_JOB,
            flops_per_step=STEADY_FLOPS_PER_STEP * share,
            tokens_per_step=4096,
            url=f"http://127.0.0.1:{port}",
            rank=rank,
            local_rank=rank,
            world_size=len(devices),
            gpus=[gpu],
            interval=1.0,
        )
        reporter.answers = answers
        reporters.append(reporter)
    return reporters


def stepper(reporters: list[Reporter], stop: threading.Event) -> None:
    while not stop.wait(1.0 / STEPS_PER_SECOND):
        for reporter in reporters:
            reporter.step()


def flood(client: Http, p: dict, stop: threading.Event, stats: dict) -> None:
    batch = 0
    next_at = time.monotonic()
    while not stop.wait(max(0.0, next_at - time.monotonic())):
        next_at += p["flood_every"]
        now = time.time()
        reports = [
            {
                "job_id": f"flood-{batch}",
                "rank": r,
                "gpus": [r % WHOLE_GPUS],
                "model_flops_total": 1e12 * (r + 1),
                "tokens_total": 4096.0,
                "step": 1,
                "timestamp": now,
            }
            for r in range(p["flood_batch"])
        ]
        body = json.dumps(reports, separators=(",", ":")).encode()
        status, answer, took = client.request(
            "flood", "POST", "/v1/reports", body, {"Content-Type": "application/json"}, timeout=30
        )
        stats["batches"] += 1
        stats["pairs_sent"] += len(reports)
        if status == 202:
            stats["pairs_accepted"] += len(reports)
        elif status == 429:  # which bound refused it
            bound = next((b for b in ("--max-series", "--max-ranks") if b.encode() in answer), "other")
            stats["refused_by"][bound] = stats["refused_by"].get(bound, 0) + 1
        stats["seconds"].append(took)
        batch += 1


def slowloris(port: int, n: int, stop: threading.Event, answers: Answers, stats: dict) -> None:
    """`n` connections sending a request's headers a byte every SLOWLORIS_BYTE_EVERY s, never ending
    them; each one the agent closes is replaced. Their lifetimes are recorded."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    conns: dict[socket.socket, float] = {}

    def closed(sock: socket.socket, how: str) -> None:
        stats["lifetimes"].append(time.monotonic() - conns.pop(sock))
        answers.add("slowloris", "/healthz", how)
        sock.close()

    try:
        while not stop.is_set():
            for _ in range(min(n - len(conns), SLOWLORIS_OPEN_PER_TICK)):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                    sock.sendall(head)
                except OSError as exc:
                    answers.add("slowloris", "/healthz", "connect " + failure(exc))
                    break
                sock.setblocking(False)
                conns[sock] = time.monotonic()
                stats["opened"] += 1
            if conns:
                readable, _, _ = select.select(list(conns), [], [], 0)
                for sock in readable:
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        closed(sock, "closed by the agent")
                        continue
                    # an answer to headers that never ended would be a bug: count what it was
                    closed(sock, "closed by the agent" if not data else "answered " + data[9:12].decode())
                for sock in list(conns):
                    try:
                        sock.send(b"a")
                    except OSError:
                        closed(sock, "closed by the agent")
            stop.wait(SLOWLORIS_BYTE_EVERY)
    finally:
        for sock in conns:
            sock.close()


def faults(agent: SoakAgent, client: Http, p: dict, t0: float, stop: threading.Event, out: dict) -> None:
    """Runs the reloads and the XID bursts at their times, one after the other (a burst due while NVML
    is down runs once it is back, so that no XID is queued for an event set that is gone)."""
    events = [(t, "reload") for t in p["reloads"]] + [(t, "xid") for t in p["xid_bursts"]]
    events.sort()
    n_bursts = len(p["xid_bursts"])
    repeated_left, distinct_left = p["xid_repeated_total"], p["xid_distinct_total"]
    next_code = 1
    burst = 0
    for at, kind in events:
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            return
        if kind == "xid":
            bursts_left = n_bursts - burst
            repeated = repeated_left // bursts_left
            distinct = distinct_left // bursts_left
            device = burst % (WHOLE_GPUS + MIG_GPUS)
            codes = list(range(next_code, next_code + distinct))
            agent.nvml("queue_xid", index=device, xid=XID_REPEATED, count=repeated)
            agent.nvml("queue_xid", index=device, xid=codes)
            out["xid_bursts"].append(
                {
                    "t": time.monotonic() - t0,
                    "gpu": device,
                    "repeated": repeated,
                    "distinct": distinct,
                    "codes": [codes[0], codes[-1]] if codes else [],
                }
            )
            repeated_left -= repeated
            distinct_left -= distinct
            next_code += distinct
            burst += 1
            continue
        row: dict[str, Any] = {"t_unload": time.monotonic() - t0}
        agent.nvml("unload")
        out["nvml_down"].set()
        stop.wait(p["down_seconds"] / 2)
        status, text, _ = client.request("reload", "GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        row["while_down"] = read_metrics(text.decode()) if status == 200 else {"status": status}
        stop.wait(max(0.0, t0 + at + p["down_seconds"] - time.monotonic()))
        agent.nvml("reload")
        reloaded = time.monotonic()
        row["t_reload"] = reloaded - t0
        deadline = reloaded + RECOVERY_TIMEOUT
        while time.monotonic() < deadline and not stop.is_set():
            status, _, _ = client.request("reload", "GET", "/readyz")
            if status == 200:
                row["ready_after_reload_s"] = time.monotonic() - reloaded
                break
            time.sleep(0.25)
        out["nvml_down"].clear()
        while time.monotonic() < deadline and not stop.is_set():
            status, text, _ = client.request(
                "reload", "GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
            )
            seen = read_metrics(text.decode()) if status == 200 else None
            if seen and seen["steady_mfu"] >= len(steady_devices()):
                row["steady_mfu_after_reload_s"] = time.monotonic() - reloaded
                row["steady_mfu_series"] = seen["steady_mfu"]
                break
            time.sleep(1.0)
        row["recovered"] = "ready_after_reload_s" in row and "steady_mfu_after_reload_s" in row
        out["reloads"].append(row)
        ready, mfu = row.get("ready_after_reload_s", math.nan), row.get("steady_mfu_after_reload_s", math.nan)
        log(
            f"  reload at {row['t_reload']:.0f} s: ready again after {ready:.1f} s, "
            f"the {len(steady_devices())} steady ranks' MFU after {mfu:.1f} s"
        )


# -- the run --------------------------------------------------------------------------------------
def run(minutes: float, max_series: int | None = None, progress=log) -> dict:
    p = plan(minutes)
    args = ["--interval", "1", "--max-ranks", str(p["max_ranks"]), "--rank-ttl", f"{p['rank_ttl']:g}"]
    if max_series is not None:
        args += ["--max-series", str(max_series)]
    p["agent_args"] = args
    answers = Answers()
    out: dict[str, Any] = {
        "plan": p,
        "samples": [],
        "reloads": [],
        "xid_bursts": [],
        "nvml_down": threading.Event(),
    }
    flood_stats: dict[str, Any] = {
        "batches": 0,
        "pairs_sent": 0,
        "pairs_accepted": 0,
        "refused_by": {},
        "seconds": [],
    }
    slow_stats: dict[str, Any] = {"opened": 0, "lifetimes": []}
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="mfu-soak-") as tmp:
        agent = SoakAgent(*args, fake_nvml=fake_nvml_config(), tmp=Path(tmp))
        agent.start()
        pid = agent.proc.pid
        client = Http(agent.port, answers)
        logs = LogVolume(agent.log_path)
        reporters = steady_reporters(agent.port, answers)
        threads = [threading.Thread(target=stepper, args=(reporters, stop), daemon=True)]
        try:
            threads[0].start()
            # The steady ranks are in before the flood fills --max-ranks.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, text, _ = client.request("setup", "GET", "/metrics")
                if status == 200 and read_metrics(text.decode())["steady_mfu"] >= len(reporters):
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError("the steady ranks' MFU is not exported within 60 s")
            t0 = time.monotonic()
            threads += [
                threading.Thread(target=flood, args=(client, p, stop, flood_stats), daemon=True),
                threading.Thread(
                    target=slowloris,
                    args=(agent.port, p["slowloris"], stop, answers, slow_stats),
                    daemon=True,
                ),
                threading.Thread(target=faults, args=(agent, client, p, t0, stop, out), daemon=True),
            ]
            for thread in threads[1:]:
                thread.start()
            progress(f"  soak: {p['seconds']:.0f} s, agent pid {pid}, port {agent.port}, {' '.join(args)}")
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            next_sample = t0
            while True:
                next_sample += p["sample_every"]
                if stop.wait(max(0.0, next_sample - time.monotonic())):
                    break
                now = time.monotonic()
                row = sample(pid, client, logs, out["nvml_down"].is_set())
                cpu1 = cpu_seconds(pid)
                row["t"] = now - t0
                row["cpu_percent"] = 100.0 * (cpu1 - cpu0) / (now - wall0)
                cpu0, wall0 = cpu1, now
                out["samples"].append(row)
                if len(out["samples"]) % max(1, round(60 / p["sample_every"])) == 0:
                    progress(progress_line(row))
                if now - t0 >= p["seconds"]:
                    break
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
            for reporter in reporters:
                reporter.close(timeout=0.5)
            out["final"] = final_count(client, sum(b["repeated"] + b["distinct"] for b in out["xid_bursts"]))
            agent.stop()
            lines, size = logs.read()
            out["log_after_stop"] = {"lines": lines, "bytes": size}
            out["log_tail"] = agent.log_path.read_text(errors="replace").splitlines()[-20:]
            out["log_tracebacks"] = logs.tracebacks
            out["exit_code"] = agent.exit_code
            # uvicorn re-raises the SIGTERM it handled once shut down: -15 after "Finished server process"
            out["clean_exit"] = agent.exit_code in (0, -signal.SIGTERM) and any(
                "Finished server process" in line for line in out["log_tail"]
            )
            out["stop_seconds"] = agent.stop_seconds
    del out["nvml_down"]
    out["answers"] = [
        {"client": c, "endpoint": e, "outcome": o, "count": n}
        for (c, e, o), n in sorted(answers.snapshot().items())
    ]
    out["flood"] = {
        **flood_stats,
        "seconds": None,
        "median_seconds": statistics.median(flood_stats["seconds"]) if flood_stats["seconds"] else None,
    }
    lifetimes = slow_stats["lifetimes"]
    out["slowloris"] = {
        "opened": slow_stats["opened"],
        "closed_by_agent": len(lifetimes),
        "lifetime_median_s": statistics.median(lifetimes) if lifetimes else None,
        "lifetime_max_s": max(lifetimes) if lifetimes else None,
    }
    out["steady_posts"] = {
        "ok": sum(r.stats["posts_ok"] for r in reporters),
        "failed": sum(r.stats["posts_failed"] for r in reporters),
    }
    out["summary"] = summarise(out)
    return out


def final_count(client: Http, queued: int) -> dict:
    """The last /metrics, once the agent counted every XID queued (15 s at most)."""
    deadline = time.monotonic() + 15
    while True:
        status, text, _ = client.request("final", "GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        final = read_metrics(text.decode()) if status == 200 else {"status": status}
        if final.get("xids_counted", 0) >= queued or time.monotonic() > deadline:
            return final
        time.sleep(0.5)


def progress_line(row: dict) -> str:
    rss, took, size = row["rss_bytes"] / 2**20, row["metrics_seconds"], row["metrics_bytes"]
    return (
        f"  {row['t']:4.0f} s: RSS {rss:.1f} MiB, {row['open_files']} fds, scrape {took * 1000:.0f} ms / "
        f"{size / 1024:.0f} KiB, {row.get('tracked_ranks', 0):.0f} ranks, log +{row['log_lines']} lines"
    )


def sample(pid: int, client: Http, logs: LogVolume, nvml_down: bool) -> dict:
    row: dict[str, Any] = {"rss_bytes": rss_bytes(pid), "open_files": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            row["threads"] = int(line.split()[1])
    row["log_lines"], row["log_bytes"] = logs.read()
    row["nvml_down"] = nvml_down
    status, body, took = client.request("scraper", "GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    row["metrics_status"], row["metrics_seconds"], row["metrics_bytes"] = status, took, len(body)
    row.update(read_metrics(body.decode()) if status == 200 else {})
    for path in ("/healthz", "/readyz"):
        status, _, took = client.request("scraper", "GET", path)
        row[path[1:]] = status
        row[path[1:] + "_seconds"] = took
    return row


# -- the summary ----------------------------------------------------------------------------------
def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
    return statistics.median(values) if values else float("nan")


def summarise(out: dict) -> dict:
    p = out["plan"]
    rows = [r for r in out["samples"] if r["t"] >= p["warmup"]]
    third = max(1, len(rows) // 3)
    first, last = rows[:third], rows[-third:]
    flat = {}
    for key in (
        "rss_bytes",
        "open_files",
        "threads",
        "metrics_seconds",
        "metrics_bytes",
        "series",
        "cpu_percent",
    ):
        a, b = _median(first, key), _median(last, key)
        flat[key] = {
            "first_third_median": a,
            "last_third_median": b,
            "ratio": b / a if a else float("nan"),
            "max": max((r[key] for r in rows if r.get(key) is not None), default=None),
        }
    # Log lines come in bursts (one sample holds a whole XID burst): lines a minute over each third.
    span = (rows[-1]["t"] - rows[0]["t"]) / len(rows) if len(rows) > 1 else p["sample_every"]
    a, b = (sum(r["log_lines"] for r in part) * 60 / (len(part) * span) for part in (first, last))
    flat["log_lines_per_minute"] = {
        "first_third": a,
        "last_third": b,
        "ratio": b / a if a else float("nan"),
        "max_in_one_sample": max((r["log_lines"] for r in rows), default=None),
    }
    by_outcome: dict[str, dict[str, int]] = {"ok": {}, "expected": {}, "unexpected_4xx": {}, "errors": {}}
    for a in out["answers"]:
        key = f"{a['client']} {a['endpoint']} {a['outcome']}"
        outcome = a["outcome"]
        if a["client"] == "slowloris":
            kind = "expected" if outcome == "closed by the agent" else "errors"
        elif outcome.isdigit() and outcome.startswith("2"):
            kind = "ok"
        elif (a["client"], a["endpoint"], outcome) in EXPECTED:
            kind = "expected"
        elif is_error(outcome):
            kind = "errors"
        else:
            kind = "unexpected_4xx"
        by_outcome[kind][key] = a["count"]

    def errors_of(client: str) -> int:
        return sum(n for k, n in by_outcome["errors"].items() if k.startswith(client + " "))

    queued = sum(b["repeated"] + b["distinct"] for b in out["xid_bursts"])
    counted = out["final"].get("xids_counted", 0)
    log_lines = sum(r["log_lines"] for r in out["samples"]) + out["log_after_stop"]["lines"]
    log_bytes = sum(r["log_bytes"] for r in out["samples"]) + out["log_after_stop"]["bytes"]
    minutes = p["seconds"] / 60
    ready_503_outside = sum(1 for r in out["samples"] if r.get("readyz") == 503 and not r["nvml_down"])
    return {
        "samples": len(out["samples"]),
        "samples_in_thirds": len(rows),
        "flat": flat,
        "answers": by_outcome,
        "errors_steady_client": errors_of("steady"),
        "errors_scraper": errors_of("scraper"),
        "errors_all": sum(by_outcome["errors"].values()),
        "unexpected_4xx": sum(by_outcome["unexpected_4xx"].values()),
        "scrapes": sum(1 for r in out["samples"] if r.get("metrics_status") is not None),
        "scrapes_failed": sum(1 for r in out["samples"] if r.get("metrics_status") != 200),
        "readyz_503_while_nvml_up": ready_503_outside,
        "reloads": len(out["reloads"]),
        "reloads_recovered": sum(1 for r in out["reloads"] if r["recovered"]),
        "steady_mfu_after_reload_max_s": max(
            (r.get("steady_mfu_after_reload_s", math.inf) for r in out["reloads"]), default=None
        ),
        "xids_queued": queued,
        "xids_counted": counted,
        "log_lines": log_lines,
        "log_bytes": log_bytes,
        "log_lines_per_minute": log_lines / minutes,
        "log_lines_per_xid": log_lines / queued if queued else None,
        "log_lines_max_per_sample": max((r["log_lines"] for r in out["samples"]), default=0),
        "log_tracebacks": out["log_tracebacks"],
        "flood_pairs_sent": out["flood"]["pairs_sent"],
        "flood_pairs_accepted": out["flood"]["pairs_accepted"],
        "flood_refused_by": out["flood"]["refused_by"],
        "rank_evictions": out["final"].get("rank_evictions"),
        "tracked_ranks_max": max((r.get("tracked_ranks", 0) for r in out["samples"]), default=0),
        "slowloris_closed": out["slowloris"]["closed_by_agent"],
        "slowloris_lifetime_median_s": out["slowloris"]["lifetime_median_s"],
        "steady_posts_ok": out["steady_posts"]["ok"],
        "exit_code": out["exit_code"],
        "clean_exit": out["clean_exit"],
        "stop_seconds": out["stop_seconds"],
    }


def targets(s: dict) -> list[dict]:
    """The soak's targets: the measured figure, the goal, met or not. Reported, never asserted."""
    rows: list[dict] = []

    def add(name: str, value: Any, goal: str, ok: bool, unit: str = "") -> None:
        rows.append({"target": name, "value": value, "unit": unit, "goal": goal, "met": ok})

    f = s["flat"]
    add(
        "RSS, last third / first third (medians)",
        f["rss_bytes"]["ratio"],
        "<= 1.10",
        f["rss_bytes"]["ratio"] <= 1.10,
        "x",
    )
    files = f["open_files"]
    add(
        "open files, last third / first third (medians)",
        files["ratio"],
        "<= 1.10",
        files["ratio"] <= 1.10,
        "x",
    )
    render = f["metrics_seconds"]["ratio"]
    add("/metrics time, last third / first third (medians)", render, "<= 1.25", render <= 1.25, "x")
    add(
        "5xx, resets, timeouts: the steady client",
        s["errors_steady_client"],
        "0",
        s["errors_steady_client"] == 0,
    )
    add("5xx, resets, timeouts: the scraper", s["errors_scraper"], "0", s["errors_scraper"] == 0)
    add("5xx, resets, timeouts: every client", s["errors_all"], "0", s["errors_all"] == 0)
    add("unexpected 4xx", s["unexpected_4xx"], "0", s["unexpected_4xx"] == 0)
    add(
        f"reloads after which the 16 steady ranks' MFU is exported (of {s['reloads']})",
        s["reloads_recovered"],
        f"{s['reloads']}, within {RECOVERY_TIMEOUT:.0f} s",
        s["reloads_recovered"] == s["reloads"] and s["reloads"] > 0,
    )
    add(
        "XIDs counted / queued",
        s["xids_counted"] / s["xids_queued"] if s["xids_queued"] else None,
        "1",
        s["xids_counted"] == s["xids_queued"],
        "x",
    )
    per_xid = s["log_lines_per_xid"]
    add("agent log lines per XID queued", per_xid, "< 0.1 (bounded)", per_xid is not None and per_xid < 0.1)
    add("tracebacks in the agent log", s["log_tracebacks"], "0", s["log_tracebacks"] == 0)
    add(
        "agent shut down by SIGTERM: exit status", s["exit_code"], "0, or -15 once shut down", s["clean_exit"]
    )
    return rows


def report(out: dict) -> None:
    s = out["summary"]
    mib = 2**20
    log("")
    heading = "over time (after the warm-up)"
    log(f"{heading:<34} {'first third':>12} {'last third':>12} {'ratio':>7} {'max':>10}")
    shown = {
        "rss_bytes": ("RSS, MiB", mib),
        "open_files": ("open files", 1),
        "threads": ("threads", 1),
        "metrics_seconds": ("/metrics time, ms", 1e-3),
        "metrics_bytes": ("/metrics size, KiB", 1024),
        "series": ("/metrics samples", 1),
        "cpu_percent": ("agent CPU, % of a core", 1),
    }
    for key, (name, unit) in shown.items():
        f = s["flat"][key]
        top = f["max"] / unit if f["max"] is not None else math.nan
        log(
            f"{name:<34} {f['first_third_median'] / unit:>12.1f} {f['last_third_median'] / unit:>12.1f} "
            f"{f['ratio']:>7.3f} {top:>10.1f}"
        )
    f = s["flat"]["log_lines_per_minute"]
    log(
        f"{'log lines a minute (max: a sample)':<34} {f['first_third']:>12.1f} {f['last_third']:>12.1f} "
        f"{f['ratio']:>7.3f} {f['max_in_one_sample']:>10}"
    )
    log("")
    log("answers (client endpoint outcome: count)")
    for kind in ("ok", "expected", "unexpected_4xx", "errors"):
        entries = s["answers"][kind]
        log(f"  {kind}: " + (", ".join(f"{k}: {n:,}" for k, n in entries.items()) or "none"))
    log("")
    for r in out["reloads"]:
        ready, mfu = r.get("ready_after_reload_s", math.nan), r.get("steady_mfu_after_reload_s", math.nan)
        log(f"  reload at {r['t_reload']:.0f} s: ready after {ready:.1f} s, steady MFU after {mfu:.1f} s")
    bursts = len(out["xid_bursts"])
    log(
        f"  XIDs: {s['xids_queued']:,} queued in {bursts} bursts, {s['xids_counted']:,.0f} counted; "
        f"agent log {s['log_lines']:,} lines, {s['log_bytes'] / 1024:.1f} KiB "
        f"({s['log_lines_per_minute']:.1f} lines a minute, at most {s['log_lines_max_per_sample']}"
        " in one sample)"
    )
    lifetime = s["slowloris_lifetime_median_s"] or 0
    log(
        f"  flood: {s['flood_pairs_sent']:,} pairs sent, {s['flood_pairs_accepted']:,} accepted, batches "
        f"refused by {s['flood_refused_by']}; at most {s['tracked_ranks_max']:,.0f} ranks tracked, "
        f"{s['rank_evictions'] or 0:,.0f} evicted"
    )
    log(
        f"  slowloris: {s['slowloris_closed']:,} connections closed by the agent after {lifetime:.1f} s "
        f"(median); steady client: {s['steady_posts_ok']:,} posts accepted"
    )
    log(f"  agent stopped by SIGTERM: exit {s['exit_code']} in {s['stop_seconds'] or 0:.1f} s")
    log("")
    log(f"{'target':<66} {'value':>10}      {'goal':<24} met")
    for row in out["targets"]:
        value = row["value"]
        text = f"{value:,.3f}" if isinstance(value, float) else f"{value}"
        met = "yes" if row["met"] else "NO"
        log(f"{row['target']:<66} {text:>10} {row['unit']:<4} {row['goal']:<24} {met}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--json", metavar="PATH", help="write every sample and the summary to PATH as JSON")
    parser.add_argument(
        "--max-series",
        type=int,
        default=None,
        help=f"--max-series for the agent (default {MAX_SERIES:,}, so that the flood meets both it and "
        "--max-ranks; 0: the agent's own default)",
    )
    args = parser.parse_args(argv)
    if args.minutes * 60 < 20:
        parser.error("--minutes: at least 0.34 (20 s)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.max_series and not agent_supports("--max-series"):
        parser.error("--max-series: this agent has no such flag")
    if args.max_series is None and agent_supports("--max-series"):
        args.max_series = MAX_SERIES
    m = machine()
    log(
        f"mfu-agent soak: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"load average {m['loadavg_at_start']}"
    )
    out = run(args.minutes, args.max_series or None)
    out["machine"] = m
    out["command"] = ("python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    out["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out["targets"] = targets(out["summary"])
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"samples and summary: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
