"""`mfu-agent top` as a user runs it: a real process in a pseudo-terminal (and without one), against a
real agent in demo mode, keys typed into the terminal, the screen read back."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from agent_process import ROOT, AgentProcess
from conftest import free_port
from test_cli import start_agent, stop

from mfu_agent.top import fmt

COLUMNS, LINES = 200, 60
TEST_JOB = "top-test-job"
SPACING = 300.0
H100_BF16 = 989.4e12
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# SGR parameters that set a colour (foreground, background, 256 and true colour, bright).
COLOUR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
MIG_PROFILES = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]


def top_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env = {k: v for k, v in env.items() if not k.startswith("MFU_AGENT_")}
    return {**env, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", **extra}


@pytest.fixture(scope="module")
def demo():
    """A demo agent, with the synthetic jobs reporting, plus TEST_JOB: two ranks on GPU 6 (with the pids
    of its two time-sharing processes) that reported twice, SPACING s apart, so their figures hold still
    (for twice that long: then the agent counts them as stalled)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_agent("demo", "--listen", f"127.0.0.1:{port}", env={"PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                jobs = httpx.get(url + "/v1/jobs", timeout=2).json()["jobs"]
                if any(j["job_id"] == "demo-llama-8b" and j["mfu"] is not None for j in jobs):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo job never showed up in /v1/jobs"
            time.sleep(0.1)
        now = time.time()
        for rank, pid in ((0, 4_190_001), (1, 4_190_002)):
            for t, progress in ((now - SPACING, 0), (now, 1)):
                report = {
                    "job_id": TEST_JOB,
                    "rank": rank,
                    "world_size": 3,  # the third rank is on another node
                    "pid": pid,
                    "instance": f"top-test-{rank}",
                    "gpus": [6],
                    "model_flops_total": progress * SPACING * (0.1 + 0.05 * rank) * H100_BF16,
                    "tokens_total": progress * SPACING * 1000.0 * (rank + 1),
                    "step": progress * (40 + rank),
                    "timestamp": t,
                }
                response = httpx.post(url + "/v1/reports", json=report, timeout=5)
                assert response.status_code == 202, response.text
        yield url
    finally:
        stop(proc)


class Terminal:
    """`mfu-agent top ARGS` on a pseudo-terminal of COLUMNS x LINES that is its controlling terminal."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.slave = slave
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfu_agent.cli", "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env or top_env(),
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        self.raw = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(
            errors="replace"
        )  # a character may span two reads
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self.raw += self._decoder.decode(data)

    def output(self) -> str:
        with self._lock:
            return self.raw

    def frames(self) -> list[str]:
        """The screens drawn so far, escape codes removed: each redraw starts at home and fills the
        screen, so a chunk between two homes with all its lines is a whole frame."""
        chunks = (ANSI.sub("", c).replace("\r", "") for c in self.output().split("\x1b[H"))
        return [c for c in chunks if c.count("\n") >= LINES - 1]

    def frame_where(self, condition: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            frames = self.frames()
            for frame in frames[seen:]:
                if condition(frame):
                    return frame
            seen = max(seen, len(frames) - 1)  # the last may grow
            time.sleep(0.05)
        raise AssertionError(f"no such frame within {timeout} s; last:\n{(self.frames() or [''])[-1]}")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def open_terminal(*args: str, env: dict[str, str] | None = None) -> Terminal:
        opened.append(Terminal(*args, env=env))
        return opened[-1]

    yield open_terminal
    for t in opened:
        t.close()


def table(frame: str, title: str) -> list[dict[str, str]]:
    """The rows, as {column title: cell}, of the table whose header has a column `title`; cells are two
    or more spaces apart (no cell holds two spaces)."""
    lines = frame.splitlines()
    start = next(i for i, line in enumerate(lines) if title in re.split(r"\s{2,}", line.strip()))
    titles = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for i in range(start + 2, len(lines)):  # past the rule under the header
        cells = re.split(r"\s{2,}", lines[i].strip())
        next_is_rule = i + 1 < len(lines) and lines[i + 1].startswith("─")
        if len(cells) != len(titles) or next_is_rule:  # a blank line, a line of text, the next header
            break
        rows.append(dict(zip(titles, cells, strict=True)))
    return rows


def gpus_of(frame: str) -> list[dict[str, str]]:
    return table(frame, "UTIL")


def has_all_devices(frame: str) -> bool:
    try:
        return len(gpus_of(frame)) == 12 and bool(table(frame, "TOKENS/S")) and bool(table(frame, "PID"))
    except (StopIteration, ValueError):
        return False


def job(url: str, job_id: str) -> dict:
    return next(j for j in httpx.get(url + "/v1/jobs", timeout=5).json()["jobs"] if j["job_id"] == job_id)


def test_live_view_shows_every_gpu_and_mig_device_jobs_and_flags_the_busy_idle_gpu(demo, terminal):
    top = terminal("--url", demo, "--interval", "0.3")
    frame = top.frame_where(has_all_devices)
    rows = {row["GPU"]: row for row in gpus_of(frame)}
    assert [row["GPU"] for row in gpus_of(frame)] == [str(i) for i in range(8)] + [
        f"7 {p}" for p in MIG_PROFILES
    ]
    assert rows["5"]["FLAGS"] == "BUSY-IDLE" and "BUSY-IDLE" not in rows["0"]["FLAGS"]
    assert rows["7"]["FLAGS"].startswith("MIG mode")  # maybe "power-cap" too
    assert rows["5"]["RANKS"] == "demo-llama-8b r5" and rows["7 3g.40gb"]["RANKS"] == "demo-llama-1b-mig r0"
    # A GPU in MIG mode has no utilisation or MFU of its own: a dash, never 0.
    assert rows["7"]["UTIL"] == rows["7"]["MFU"] == fmt.DASH

    # The test job: its figures as /v1/jobs gives them, formatted the same way.
    expected = job(demo, TEST_JOB)
    shown = {row["JOB"]: row for row in table(frame, "TOKENS/S")}[TEST_JOB]
    assert shown["MFU"] == fmt.percent(expected["mfu"]) != fmt.DASH
    assert shown["HFU"] == fmt.DASH  # it sends no hardware FLOPs: unknown, not 0
    assert shown["TOKENS/S"] == fmt.count(sum(r["tokens_per_second"] for r in expected["ranks"]))
    assert (shown["STEP"], shown["RANKS"], shown["GPUS"]) == ("40-41", "2/3", "6")
    # GPU 6 carries only the test job: the GPU's MFU is the job's.
    assert rows["6"]["MFU"] == fmt.percent(expected["mfu"])
    assert sorted(rows["6"]["RANKS"].split(", ")) == [f"{TEST_JOB} r0", f"{TEST_JOB} r1"]
    # Its two processes, each with the rank that reported its pid; no pod or Slurm job for them.
    processes = {row["PID"]: row for row in table(frame, "PID")}
    assert processes["4190001"]["RANK"] == f"{TEST_JOB} r0" and processes["4190001"]["GPU"] == "6"
    assert processes["4190002"]["RANK"] == f"{TEST_JOB} r1" and processes["4190002"]["POD / JOB"] == fmt.DASH

    # The demo job's MFU moves with every report: some frame shows what /v1/jobs says at that moment.
    def shows_the_demo_jobs_mfu(frame: str) -> bool:
        if not has_all_devices(frame):
            return False
        mfu = {row["JOB"]: row["MFU"] for row in table(frame, "TOKENS/S")}["demo-llama-8b"]
        return mfu == fmt.percent(job(demo, "demo-llama-8b")["mfu"])

    top.frame_where(shows_the_demo_jobs_mfu)
    top.type("q")
    assert top.wait() == 0


def percent_value(cell: str) -> float | None:
    return None if cell == fmt.DASH else float(cell.rstrip("%"))


def test_sort_keys_reorder_the_rows_and_q_quits_and_restores_the_terminal(demo, terminal):
    top = terminal("--url", demo, "--interval", "0.3")
    frame = top.frame_where(has_all_devices)
    assert "sort: gpu asc" in frame
    before = termios.tcgetattr(top.slave)
    assert not before[3] & termios.ICANON and not before[3] & termios.ECHO  # cbreak while it runs

    top.type("s")  # gpu -> util, biggest first
    frame = top.frame_where(lambda f: "sort: util desc" in f and has_all_devices(f))
    utilisation = [percent_value(row["UTIL"]) for row in gpus_of(frame)]
    known = [u for u in utilisation if u is not None]
    assert known == sorted(known, reverse=True) and utilisation[len(known) :] == [None] * 5
    order = [row["GPU"] for row in gpus_of(frame)]
    assert order[7:] == ["7"] + [f"7 {p}" for p in MIG_PROFILES]  # no utilisation of their own: last

    top.type("r")  # smallest first; unknowns still last
    frame = top.frame_where(lambda f: "sort: util asc" in f and has_all_devices(f))
    utilisation = [percent_value(row["UTIL"]) for row in gpus_of(frame)]
    known = [u for u in utilisation if u is not None]
    assert known == sorted(known) and utilisation[len(known) :] == [None] * 5

    top.type("sss")  # util -> sm -> tensor -> mfu (still reversed: smallest first)
    frame = top.frame_where(lambda f: "sort: mfu asc" in f and has_all_devices(f))
    mfu = [percent_value(row["MFU"]) for row in gpus_of(frame)]
    known = [m for m in mfu if m is not None]
    assert len(known) == 8 and known == sorted(known)  # GPUs 0-6 and the 3g.40gb device have a figure
    assert gpus_of(frame)[0]["GPU"] == "5"  # the crawling rank on the busy-but-idle GPU

    top.type("q")
    assert top.wait() == 0
    output = top.output()
    assert output.rstrip().endswith("\x1b[?1049l")  # back from the alternate screen
    after = termios.tcgetattr(top.slave)
    assert after[3] & termios.ICANON and after[3] & termios.ECHO  # the terminal as it was
    assert "Traceback" not in output


def test_ctrl_c_exits_0_quietly(demo, terminal):
    top = terminal("--url", demo)
    top.frame_where(has_all_devices)
    top.type("\x03")  # the terminal turns it into SIGINT
    assert top.wait() == 0
    assert "Traceback" not in top.output() and "KeyboardInterrupt" not in top.output()
    assert termios.tcgetattr(top.slave)[3] & termios.ICANON


def test_colour_by_default_and_none_under_no_color(demo, terminal):
    coloured = terminal("--url", demo)
    coloured.frame_where(has_all_devices)
    plain = terminal("--url", demo, env=top_env(NO_COLOR="1"))
    frame = plain.frame_where(has_all_devices)
    assert COLOUR_SGR.search(coloured.output())  # the busy-but-idle row, in yellow
    assert not COLOUR_SGR.search(plain.output())
    # The flag is a word too, so it shows without colour.
    assert {row["GPU"]: row for row in gpus_of(frame)}["5"]["FLAGS"] == "BUSY-IDLE"
    for top in (coloured, plain):
        top.type("q")
        assert top.wait() == 0


def run_top(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfu_agent.cli", "top", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=top_env(**env),
        timeout=60,
    )


def test_once_without_a_terminal_prints_one_plain_frame(demo):
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # never used: top goes to the agent directly
    done = run_top(
        "--once", "--url", demo, "--sort", "mfu", COLUMNS="200", http_proxy=dead_proxy, HTTP_PROXY=dead_proxy
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and done.stderr == ""
    assert done.stdout.count("sort: mfu desc") == 1 and "s/S: sort" not in done.stdout  # no keys here
    rows = gpus_of(done.stdout)
    assert len(rows) == 12 and {row["GPU"]: row for row in rows}["5"]["FLAGS"] == "BUSY-IDLE"
    mfu = [percent_value(row["MFU"]) for row in rows]
    known = [m for m in mfu if m is not None]
    assert len(known) == 8 and known == sorted(known, reverse=True)
    jobs = {row["JOB"] for row in table(done.stdout, "TOKENS/S")}
    assert jobs == {"demo-llama-8b", "demo-llama-1b-mig", TEST_JOB}


def test_narrow_terminal_drops_columns_not_the_essentials(demo):
    done = run_top("--once", "--url", demo, COLUMNS="80")
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    rows = gpus_of(done.stdout)
    assert set(rows[0]) >= {"GPU", "UTIL", "SM", "MFU", "FLAGS"} and "TEMP" not in rows[0]
    assert len(rows) == 12 and {row["GPU"]: row for row in rows}["5"]["FLAGS"] == "BUSY-IDLE"


def test_unreachable_agent_once_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}"
    done = run_top("--once", "--url", url)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"mfu-agent top: cannot reach {url}/v1/gpus:")
    assert "refused" in done.stderr.lower()


def test_unreachable_agent_live_says_so_and_keeps_retrying(terminal):
    url = f"http://127.0.0.1:{free_port()}"
    top = terminal("--url", url, "--interval", "0.2")
    top.frame_where(lambda f: f"error: cannot reach {url}/v1/gpus" in f and "retrying every 0.2 s" in f)
    first = len(top.frames())
    top.frame_where(lambda f: len(top.frames()) > first + 2 and "cannot reach" in f)  # still trying
    assert top.proc.poll() is None
    top.type("q")
    assert top.wait() == 0


def test_url_from_the_environment_and_bad_ones(demo):
    done = run_top("--once", MFU_AGENT_URL=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "cannot reach http://127.0.0.1:" in done.stderr
    port = free_port()
    done = run_top("--once", MFU_AGENT_LISTEN=f"0.0.0.0:{port}")
    assert done.returncode == 1 and f"cannot reach http://127.0.0.1:{port}/v1/gpus" in done.stderr
    done = run_top("--once", "--url", demo + "/nowhere")  # something answers, but not the API
    assert (
        done.returncode == 1
        and done.stderr == f"mfu-agent top: {demo}/nowhere/v1/gpus: HTTP 404: Not Found\n"
    )
    done = run_top("--once", MFU_AGENT_LISTEN="nonsense")
    assert done.returncode == 2 and "MFU_AGENT_LISTEN" in done.stderr


POD_UID = "0f3c1a2b-1111-2222-3333-444455556666"
CGROUPS = {  # the two time-sharing processes of GPU 0: one in a Kubernetes pod, one in a Slurm job
    4_190_001: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
    + POD_UID.replace("-", "_")
    + ".slice/cri-containerd-"
    + "ab" * 32
    + ".scope\n",
    4_190_002: "0::/system.slice/slurmstepd.scope/job_12345/step_0/user/task_0\n",
}


def test_throttled_and_lost_gpus_and_process_owners(tmp_path):
    for pid, cgroup in CGROUPS.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    faults = ("--fault", "throttle:1", "--fault", "lost:2", "--fault", "shared:0")
    with AgentProcess(
        "--simulate", "3xNVIDIA H100 80GB HBM3", *faults, "--proc-root", str(tmp_path)
    ) as agent:
        done = run_top("--once", "--url", agent.url, COLUMNS="200")
        gpus = httpx.get(agent.url + "/v1/gpus", timeout=5).json()["gpus"]
        info = agent.series("mfu_gpu_process_info", gpu="0")
    assert done.returncode == 0, done.stderr
    rows = {row["GPU"]: row for row in gpus_of(done.stdout)}
    assert rows["1"]["FLAGS"] == "THROTTLED hw-thermal,sw-thermal" and "THROTTLED" not in rows["0"]["FLAGS"]
    # A lost GPU: flagged, and every reading a dash rather than a 0.
    assert rows["2"]["FLAGS"] == "DOWN"
    assert {rows["2"][c] for c in ("UTIL", "SM", "TENSOR", "MFU", "POWER", "MEM", "TEMP", "CLOCK")} == {
        fmt.DASH
    }
    assert "no jobs report to this agent" in done.stdout
    # Who each process belongs to, from its cgroup: in /v1/gpus as on mfu_gpu_process_info, and on screen.
    owners = {p["pid"]: (p["pod_uid"], p["container_id"], p["slurm_job_id"]) for p in gpus[0]["processes"]}
    assert owners == {4_190_001: (POD_UID, "ab" * 32, ""), 4_190_002: ("", "", "12345")}
    exported = {int(dict(labels)["pid"]): dict(labels) for labels in info}
    assert {
        pid: (e["pod_uid"], e["container_id"], e["slurm_job_id"]) for pid, e in exported.items()
    } == owners
    processes = {row["PID"]: row for row in table(done.stdout, "PID")}
    assert processes["4190001"]["POD / JOB"] == f"pod {POD_UID}"
    assert processes["4190002"]["POD / JOB"] == "slurm 12345"


def test_gpus_json_gives_each_devices_mfu_and_each_processs_owner(demo):
    gpus = httpx.get(demo + "/v1/gpus", timeout=5).json()["gpus"]
    test_job = job(demo, TEST_JOB)
    by_label = {(g["index"], (g["mig"] or {}).get("profile")): g for g in gpus}
    # GPU 6 carries only the test job's two ranks: its MFU adds up theirs.
    assert by_label[(6, None)]["mfu"] == pytest.approx(sum(r["mfu"] for r in test_job["ranks"]))
    assert by_label[(6, None)]["mfu"] == pytest.approx(test_job["mfu"])
    assert by_label[(7, None)]["mig_mode"] and by_label[(7, None)]["mfu"] is None  # see its MIG devices
    assert by_label[(7, "3g.40gb")]["mfu"] is not None and by_label[(7, "2g.20gb")]["mfu"] is None
    processes = by_label[(6, None)]["processes"]
    assert [p["pid"] for p in processes] == [4_190_001, 4_190_002]
    assert all((p["pod_uid"], p["container_id"], p["slurm_job_id"]) == ("", "", "") for p in processes)
    metrics = httpx.get(demo + "/metrics", timeout=5).text
    line = next(m for m in metrics.splitlines() if m.startswith("mfu_gpu_mfu_ratio{") and 'gpu="6"' in m)
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(by_label[(6, None)]["mfu"])


def test_a_resized_terminal_is_redrawn_at_once(demo, terminal):
    top = terminal("--url", demo, "--interval", "600")  # no refresh but the one a resize brings
    frame = top.frame_where(has_all_devices)
    assert "TEMP" in gpus_of(frame)[0] and max(len(line) for line in frame.splitlines()) == COLUMNS
    fcntl.ioctl(top.slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, 80, 0, 0))
    frame = top.frame_where(lambda f: has_all_devices(f) and max(len(line) for line in f.splitlines()) == 80)
    assert "TEMP" not in gpus_of(frame)[0] and "MFU" in gpus_of(frame)[0]
    top.type("q")
    assert top.wait() == 0
