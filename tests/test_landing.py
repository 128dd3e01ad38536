"""The page at /: served with a strict Content-Security-Policy and no external assets, and in a real
headless Chromium (tests/chromium.py) its live tables show the GPUs and jobs as /v1/gpus and /v1/jobs
report them, with every text from the API shown as text."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from agent_process import ROOT, AgentProcess
from chromium import dump_dom
from conftest import free_port, serve

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.cli import DEMO_RANKS
from mfu_agent.demo import DEMO_JOB_ID, DEMO_MIG_JOB_ID
from mfu_agent.gpu.simulated import SimulatedBackend

DASH = "\u2014"  # what the page shows for a value it does not know
API_LINKS = {"metrics", "v1/gpus", "v1/jobs", "openapi.json"}
# A job the test reports itself, on GPU 6 (time-shared in the demo, where no demo job runs): two reports
# 100 s apart by the sender's clock, then silence, so its MFU and tokens/s stay put while the page loads.
CHECK_JOB = "landing-check/run-1"
HOSTILE = "<img src=x onerror=document.title=1>"


# -- what the page shows, formatted as its script formats it ------------------------------------------


def percent(x: float | None, digits: int) -> str:
    """JavaScript's (x * 100).toFixed(digits) + "%": the exact binary value, ties rounded up."""
    if x is None:
        return DASH
    return f"{Decimal(x * 100).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)}%"


def grouped(x: float | None) -> str:
    """x.toFixed(0) with thousands separators."""
    return DASH if x is None else f"{int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def gpu_mfu(jobs: list[dict[str, Any]]) -> dict[str, float]:
    """{uuid: the sum over the ranks on it of their MFU there}, from /v1/jobs (ranks with MFU only)."""
    sums: dict[str, float] = {}
    for job in jobs:
        for rank in job["ranks"]:
            for gpu in rank["gpus"]:
                assert gpu["mfu"] is not None, f"compare once every rank has MFU: {job['job_id']}"
                sums[gpu["uuid"]] = sums.get(gpu["uuid"], 0.0) + sum(gpu["mfu"].values())
    return sums


# -- reading the DOM ----------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Every tag with its attributes, the text of each element with an id, and the rows (cell texts) of
    each table's body, by the table's id."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self.feed(markup)
        self.close()
        self.rows = {t: [[c.strip() for c in row] for row in rows] for t, rows in self.rows.items()}
        self.text = {i: " ".join(t.split()) for i, t in self.text.items()}

    def _inside(self, tag: str) -> bool:
        return any(open_tag == tag for open_tag, _ in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id")
        elif self._table and self._inside("tbody") and tag == "tr":
            self.rows.setdefault(self._table, []).append([])
        elif self._table and self._inside("tbody") and tag == "td":
            self.rows[self._table][-1].append("")
        if tag in VOID:
            return
        element_id = attributes.get("id")
        if element_id:
            self.text[element_id] = ""
            self.classes[element_id] = attributes.get("class") or ""
        self._open.append((tag, element_id))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data
        if self._table and self._inside("td"):
            self.rows[self._table][-1][-1] += data

    def urls(self) -> list[str]:
        return [v for _, attributes in self.tags for k, v in attributes.items() if k in ("href", "src") and v]


# -- the agents -----------------------------------------------------------------------------------------


def wait_for(what: str, check, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.1)


def post_check_job(url: str) -> None:
    now = time.time()
    base = {"job_id": CHECK_JOB, "rank": 0, "world_size": 1, "instance": "landing-test", "gpus": [6]}
    for timestamp, flops, tokens, step in ((now - 100, 0.0, 0.0, 10), (now, 2.4e16, 3.3e6, 20)):
        report = {
            **base,
            "model_flops_total": flops,
            "tokens_total": tokens,
            "step": step,
            "timestamp": timestamp,
        }
        response = httpx.post(url + "/v1/reports", json=report, timeout=10)
        assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """`mfu-agent demo`, once both synthetic jobs and the check job have MFU on every rank."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfu_agent.cli", "demo", "--listen", f"127.0.0.1:{port}"]
        + ["--node-name", "landing-node-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for("the demo answers", lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200)
        post_check_job(url)

        def every_rank_has_mfu() -> bool:
            jobs = {j["job_id"]: j for j in httpx.get(url + "/v1/jobs", timeout=5).json()["jobs"]}
            wanted = {DEMO_JOB_ID, DEMO_MIG_JOB_ID, CHECK_JOB}
            return wanted <= set(jobs) and all(
                r["mfu"] is not None for j in jobs.values() for r in j["ranks"]
            )

        wait_for("MFU for every rank of the demo's jobs and the check job", every_rank_has_mfu)
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def rendered(demo: str) -> tuple[Page, dict[str, Any], list[dict[str, Any]]]:
    """The page after its script ran, with /v1/gpus and /v1/jobs as the test read them right after."""
    page = Page(dump_dom(demo + "/"))
    gpus = httpx.get(demo + "/v1/gpus", timeout=10).json()
    jobs = httpx.get(demo + "/v1/jobs", timeout=10).json()["jobs"]
    return page, gpus, jobs


# -- plain HTTP -----------------------------------------------------------------------------------------


def inline_hash(body: str, tag: str) -> str:
    (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", body, re.S)
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def test_get_root_serves_the_page_with_a_strict_csp():
    node = '<script>alert("node")</script> & co'
    agent = Agent(SimulatedBackend("1xNVIDIA L4"), AgentOptions(node_name=node, mfu_window_seconds=90))
    with serve(agent) as url:
        response = httpx.get(url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    body = response.text
    csp = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert csp["script-src"] == [inline_hash(body, "script")], "only the page's own script runs"
    assert csp["style-src"] == [inline_hash(body, "style")]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    # The node name is the one text the server writes into the page: escaped.
    assert "&lt;script&gt;alert(&quot;node&quot;)&lt;/script&gt; &amp; co" in body
    assert node not in body and body.count("<script>") == 1
    assert "<dd>90 s</dd>" in body
    assert '<a href="docs">' not in body and "/docs: off" in body


def test_docs_links_only_with_docs_on():
    agent = Agent(SimulatedBackend("1xNVIDIA L4"), AgentOptions(node_name="n"))
    with serve(agent, docs=True) as url:
        body = httpx.get(url + "/", timeout=10).text
        hrefs = set(re.findall(r'href="([^"]*)"', body))
        assert {"docs", "redoc"} | API_LINKS <= hrefs
        for href in hrefs:
            assert httpx.get(urljoin(url + "/", href), timeout=10).status_code == 200, href


# -- in the browser -------------------------------------------------------------------------------------


def test_gpu_table_shows_every_gpu_as_v1_gpus_reports_it(rendered):
    page, snapshot, jobs = rendered
    rows = page.rows["gpus"]
    gpus = snapshot["gpus"]
    assert len(rows) == len(gpus) == 12, rows  # 8 GPUs, GPU 7's 4 MIG devices
    mfu = gpu_mfu(jobs)
    for row, gpu in zip(rows, gpus, strict=True):
        index, device, utilisation, sm_active, gpu_mfu_text, power, memory = row
        assert index == str(gpu["index"])
        assert device.startswith(gpu["name"])
        if gpu["mig"]:
            assert device.endswith("MIG " + gpu["mig"]["profile"])
        # Readings change every second: where NVML has one the page shows a number, where not a dash.
        for shown, value in (
            (utilisation, gpu["utilization_ratio"]),
            (sm_active, (gpu["activity"] or {}).get("sm_active")),
            (power, gpu["power_watts"]),
            (memory, gpu["memory_used_bytes"]),
        ):
            assert (shown == DASH) == (value is None), (row, gpu)
            assert shown == DASH or re.fullmatch(r"\d+%|\d+ / \d+ W|\d+\.\d / \d+\.\d GiB", shown), row
        if gpu["uuid"] not in mfu:
            assert gpu_mfu_text == DASH, "no job reports on it: unknown, not 0"
        else:
            assert re.fullmatch(r"\d+\.\d%", gpu_mfu_text), row
    # GPU 6 carries only the check job, whose MFU stands still: exactly as /v1/jobs reports it.
    (check,) = [j for j in jobs if j["job_id"] == CHECK_JOB]
    six = check["ranks"][0]["gpus"][0]
    assert six["index"] == 6
    assert rows[6][4] == percent(sum(six["mfu"].values()), 1) == percent(mfu[six["uuid"]], 1)
    assert rows[7][1].endswith("in MIG mode") and rows[7][2] == DASH  # its work runs on its MIG devices
    assert page.text["gpu-count"] == "8 GPUs, 4 MIG devices"
    assert page.text["driver"] == snapshot["driver_version"] and page.text["backend"] == "simulated"
    assert page.text["node"] == "landing-node-1"
    assert page.text["status"].startswith("Live") and page.classes["status"] == ""


def test_job_table_shows_each_job_with_its_mfu_as_v1_jobs_reports_it(rendered):
    page, _, jobs = rendered
    rows = {row[0]: row for row in page.rows["jobs"]}
    assert set(rows) == {j["job_id"] for j in jobs} == {DEMO_JOB_ID, DEMO_MIG_JOB_ID, CHECK_JOB}
    (check,) = [j for j in jobs if j["job_id"] == CHECK_JOB]
    (rank,) = check["ranks"]
    job_id, mfu, hfu, tokens, step, ranks, gpus, age = rows[CHECK_JOB]
    assert mfu == percent(check["mfu"], 1) and mfu != DASH
    assert hfu == DASH, "no hardware FLOPs reported: unknown, not 0"
    assert tokens == grouped(rank["tokens_per_second"]) and tokens != DASH
    assert (step, ranks, gpus) == ("20", "1 of 1", "6")
    assert re.fullmatch(r"\d+\.\d s ago", age)
    # The demo's jobs move on while the page loads: their figures are shown, in the same format.
    main = rows[DEMO_JOB_ID]
    assert re.fullmatch(r"\d+\.\d%", main[1]) and re.fullmatch(r"\d+\.\d%", main[2]), main
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", main[3]) and re.fullmatch(r"\d+(–\d+)?", main[4]), main
    assert main[5] == f"{DEMO_RANKS} of {DEMO_RANKS}"
    assert main[6] == ", ".join(str(i) for i in range(DEMO_RANKS))
    assert rows[DEMO_MIG_JOB_ID][6] == "7 (3g.40gb)"
    assert page.text["job-count"] == "3 jobs"


def test_links_and_no_external_urls(rendered, demo):
    page, _, _ = rendered
    raw = Page(httpx.get(demo + "/", timeout=10).text)
    for urls in (page.urls(), raw.urls()):
        for url in urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, f"an external URL in the page: {url}"
    hrefs = {attributes["href"] for tag, attributes in page.tags if tag == "a"}
    assert hrefs == API_LINKS, "and /docs only with --docs"
    for href in hrefs:
        assert httpx.get(urljoin(demo + "/", href), timeout=10).status_code == 200, href
    assert not [
        t for t, a in page.tags if t in ("link", "iframe", "object", "embed") or (t == "script" and a)
    ]
    assert not [t for t, _ in page.tags if t == "img"]


def test_the_page_refreshes_itself(demo):
    # Under --virtual-time-budget the page's clock and timers run ahead of the wall clock: after 12 s
    # of it, the tables were last filled at the refresh 10 s after the first, which the page dates.
    started = time.localtime()
    page = Page(dump_dom(demo + "/", budget_ms=12_000))
    assert page.text["status"].startswith("Live: refreshes every 5 s")
    hours, minutes, seconds = (int(part) for part in page.text["updated"].split(":"))
    updated = hours * 3600 + minutes * 60 + seconds
    since_start = (updated - (started.tm_hour * 3600 + started.tm_min * 60 + started.tm_sec)) % 86400
    assert since_start >= 9, f"updated at {page.text['updated']}: no refresh after the first fill"


def test_text_from_the_api_shows_as_text(tmp_path, demo):
    # Job ids and labels never carry markup: the API refuses them.
    refused = httpx.post(
        demo + "/v1/reports",
        json={"job_id": HOSTILE, "rank": 0, "gpus": [6], "model_flops_total": 1.0},
        timeout=10,
    )
    assert refused.status_code == 422 and refused.json()["field"] == "job_id"
    # A GPU's name comes from the driver; NVML (tests/fakenvml.py) hands over this one.
    fake = {"devices": [{"name": HOSTILE}]}
    with AgentProcess("--interval", "0.2", "--node-name", HOSTILE, fake_nvml=fake, tmp=tmp_path) as agent:
        page = Page(dump_dom(agent.url + "/"))
        assert page.rows["gpus"][0][:2] == ["0", HOSTILE], page.rows
        assert page.text["node"] == HOSTILE
        assert not [t for t, _ in page.tags if t == "img"], "the name became markup"
        assert page.text["status"].startswith("Live")
        # NVML gone: the page says so, and the GPU reads as down with nothing but dashes.
        agent.nvml("unload")
        wait_for("NVML down", lambda: httpx.get(agent.url + "/v1/gpus", timeout=5).json()["nvml_up"] is False)
        page = Page(dump_dom(agent.url + "/"))
        assert page.classes["status"] == "warn" and page.text["status"].startswith("NVML is unavailable: ")
        assert page.rows["gpus"][0][0] == "0 (down)" and set(page.rows["gpus"][0][2:]) == {DASH}


def test_no_gpu_sample_yet_is_said_on_the_page():
    # An agent whose sampler has not run: /v1/gpus answers 503 as before the first sample.
    agent = Agent(SimulatedBackend("1xNVIDIA L4"), AgentOptions(node_name="n"))
    with serve(agent, manage_agent=False) as url:
        gpus = httpx.get(url + "/v1/gpus", timeout=10)
        assert gpus.status_code == 503
        page = Page(dump_dom(url + "/"))
    said = f"/v1/gpus answered 503: {gpus.json()['detail']}"
    assert page.classes["status"] == "error" and page.text["status"].startswith(said + " (tried at ")
    assert page.rows["gpus"] == [[f"No GPU data: {said}"]]
    assert page.rows["jobs"] == [["No job reports to this agent yet."]]


def test_an_unreachable_agent_is_said_on_the_page(tmp_path, demo):
    # The page as saved from the agent, opened where no agent answers its requests.
    saved = tmp_path / "landing.html"
    saved.write_text(httpx.get(demo + "/", timeout=10).text, encoding="utf-8")
    page = Page(dump_dom(saved.as_uri()))
    assert page.classes["status"] == "error" and "the agent is unreachable" in page.text["status"]
    ((gpus,),) = page.rows["gpus"]
    ((jobs,),) = page.rows["jobs"]
    assert gpus.startswith("No GPU data: the agent is unreachable"), "and no figures left standing"
    assert jobs.startswith("No job data: the agent is unreachable")
    assert page.text["updated"] == DASH


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_screenshot_script(tmp_path, demo):
    out = tmp_path / "landing.png"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "landing_screenshot.py"), str(out), "--url", demo],
        check=True,
        timeout=180,
    )
    assert png_size(out) == (1280, 900) and out.stat().st_size > 10_000
    assert png_size(ROOT / "docs" / "landing.png") == (1280, 900)
