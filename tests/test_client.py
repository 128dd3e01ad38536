"""Tests for the training-side client (mfu_agent.client), against a stdlib recording HTTP server."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_harness import clear_client_env, reporter_factory

from mfu_agent.client import Reporter
from mfu_agent.client.testing import FakeAgent

F = 1.5e12  # model FLOPs per step used throughout
WAIT = 15.0  # bounded waits: generous deadlines, no timing assertions


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_client_env(monkeypatch)


@pytest.fixture
def fake() -> Iterator[FakeAgent]:
    with FakeAgent() as fake:
        yield fake


@pytest.fixture
def make_reporter() -> Iterator[Callable[..., Reporter]]:
    yield from reporter_factory(job_id="job-1", interval=0.05)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def warnings_matching(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mfu_agent.client" and r.levelno == level and text in r.getMessage()
    ]


# --------------------------------------------------------------------------------------------------
# counters and wire format
# --------------------------------------------------------------------------------------------------


def test_cumulative_counters_and_step_count(fake: FakeAgent, make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=fake.url, flops_per_step=F, tokens_per_step=512, samples_per_step=4, interval=60)
    for _ in range(7):
        r.step()
    r.step(model_flops=10.0, tokens=3)
    r.step(hardware_flops=2 * F)
    r.step(samples=1)
    assert r.steps == 10
    assert r.flush() is True

    report = fake.latest()
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(9 * F + 10.0)
    assert report["tokens_total"] == 9 * 512 + 3
    assert report["samples_total"] == 9 * 4 + 1
    assert report["hardware_flops_total"] == pytest.approx(2 * F)  # only explicit amounts (no default)
    assert report["step"] == 10
    assert report["job_id"] == "job-1"
    assert report["rank"] == 0
    assert report["pid"] == os.getpid()
    assert report["dtype"] == "bf16"


def test_optional_counters_absent_until_given(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    r.step()
    assert r.flush()
    report = fake.latest()
    assert report is not None
    for absent in ("tokens_total", "samples_total", "hardware_flops_total", "gpus", "world_size"):
        assert absent not in report
    assert report["model_flops_total"] == F


def test_posts_a_json_list_batch_to_v1_reports(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url + "/", flops_per_step=F, interval=60)  # trailing slash tolerated
    r.step()
    assert r.flush()
    post = fake.posts[-1]
    assert post.path == "/v1/reports"
    assert isinstance(post.body, list) and len(post.body) == 1
    assert post.headers["content-type"] == "application/json"
    assert "authorization" not in post.headers


def test_background_thread_posts_latest_state_periodically(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, flops_per_step=F, tokens_per_step=8)
    for _ in range(25):
        r.step()
    # no flush(): the sender thread must deliver it on its own
    assert fake.wait_for(lambda f: (f.latest() or {}).get("step") == 25, timeout=WAIT)
    report = fake.latest()
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(25 * F)
    assert report["tokens_total"] == 25 * 8
    # each POST carries exactly one (the latest) report of this reporter: no backlog
    assert all(len(p.reports) == 1 for p in fake.posts)


def test_timestamp_is_when_the_last_step_happened(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    before = time.time()
    r.step()
    after_step = time.time()
    time.sleep(0.2)  # the post happens later than the step; the timestamp must not move with it
    assert r.flush()
    report = fake.latest()
    assert report is not None
    assert before <= report["timestamp"] <= after_step


def test_several_reporters_each_report(fake: FakeAgent, make_reporter: Callable[..., Reporter]) -> None:
    r0 = make_reporter(url=fake.url, flops_per_step=F, rank=0, interval=60)
    r1 = make_reporter(url=fake.url, flops_per_step=2 * F, rank=1, interval=60)
    r0.step()
    r1.step()
    r1.step()
    assert r0.flush() and r1.flush()
    assert fake.latest(rank=0)["model_flops_total"] == F  # type: ignore[index]
    assert fake.latest(rank=1)["model_flops_total"] == 4 * F  # type: ignore[index]


def test_ignores_http_proxy_environment(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent is on this node: a cluster-wide proxy setting must not capture the reports.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, closed_port_url())
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    r.step()
    assert r.flush() is True


# --------------------------------------------------------------------------------------------------
# configuration: environment defaults, explicit arguments, errors
# --------------------------------------------------------------------------------------------------


def test_environment_defaults(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFU_AGENT_URL", fake.url)
    monkeypatch.setenv("MFU_JOB_ID", "env-job.7")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("MFU_AGENT_TOKEN", "s3cret")
    monkeypatch.setenv("POD_NAME", "trainer-0")
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    r = Reporter(flops_per_step=F, interval=60)
    try:
        r.step()
        assert r.flush()
    finally:
        r.close()
    post = fake.posts[-1]
    assert post.headers["authorization"] == "Bearer s3cret"
    report = post.reports[0]
    assert report["job_id"] == "env-job.7"  # MFU_JOB_ID wins over SLURM_JOB_ID
    assert (report["rank"], report["local_rank"], report["world_size"]) == (5, 1, 16)
    assert report["labels"] == {
        "pod": "trainer-0",
        "namespace": "ml",
        "slurm_job_id": "4242",
        "hostname": socket.gethostname(),
    }


def test_job_id_and_rank_fallbacks(
    monkeypatch: pytest.MonkeyPatch, make_reporter: Callable[..., Reporter]
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    r = Reporter(url=closed_port_url(), interval=60)
    try:
        assert (r.job_id, r.rank, r.local_rank, r.world_size) == ("777", 3, 2, 8)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "elastic-1")
        monkeypatch.setenv("RANK", "6")
        r2 = make_reporter(job_id=None, url=closed_port_url(), interval=60)
        assert (r2.job_id, r2.rank) == ("elastic-1", 6)
    finally:
        r.close(timeout=0.2)


def test_rank_defaults_to_zero(make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=closed_port_url())
    assert r.rank == 0 and r.local_rank is None and r.world_size is None


def test_token_file(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("MFU_AGENT_TOKEN_FILE", str(token_file))
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    r.step()
    assert r.flush()
    assert fake.posts[-1].headers["authorization"] == "Bearer from-file"


def test_kubernetes_pod_label_from_hostname(
    make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "pod-abc")
    assert "pod" not in make_reporter(url=closed_port_url()).labels  # not in Kubernetes
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert make_reporter(url=closed_port_url()).labels["pod"] == "pod-abc"


def test_explicit_arguments_win_over_environment(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFU_AGENT_URL", closed_port_url())
    monkeypatch.setenv("MFU_JOB_ID", "env-job")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "9")
    monkeypatch.setenv("MFU_AGENT_TOKEN", "env-token")
    monkeypatch.setenv("POD_NAME", "env-pod")
    r = make_reporter(
        job_id="arg-job",
        url=fake.url,
        rank=1,
        local_rank=0,
        world_size=2,
        token="arg-token",
        labels={"pod": "arg-pod"},
        gpus=[0, "GPU-1234"],
        dtype="fp8",
        flops_per_step=F,
        interval=60,
    )
    r.step()
    assert r.flush()
    post = fake.posts[-1]
    assert post.headers["authorization"] == "Bearer arg-token"
    report = post.reports[0]
    assert report["job_id"] == "arg-job"
    assert (report["rank"], report["local_rank"], report["world_size"]) == (1, 0, 2)
    assert report["labels"]["pod"] == "arg-pod"
    assert report["gpus"] == [0, "GPU-1234"]
    assert report["dtype"] == "fp8"


@pytest.mark.parametrize(
    ("alias", "expected"),
    [("bfloat16", "bf16"), ("torch.float16", "fp16"), ("FP32", "fp32"), ("tf32", "tf32"), ("int8", "int8")],
)
def test_dtype_aliases(alias: str, expected: str, make_reporter: Callable[..., Reporter]) -> None:
    assert make_reporter(url=closed_port_url(), dtype=alias).dtype == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_id": ""},
        {"job_id": "has space"},
        {"job_id": "x" * 129},
        {"job_id": "caf\u00e9"},
        {"job_id": "ok", "dtype": "fp4"},
        {"job_id": "ok", "url": "ftp://example"},
        {"job_id": "ok", "flops_per_step": -1},
        {"job_id": "ok", "flops_per_step": math.nan},
        {"job_id": "ok", "rank": -1},
        {"job_id": "ok", "world_size": 0},
        {"job_id": "ok", "labels": {"team": "x"}},
        {"job_id": "ok", "gpus": [-1]},
        {"job_id": "ok", "interval": 0},
        {"job_id": "ok", "timeout": -2},
    ],
)
def test_bad_configuration_raises_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="mfu_agent.client"):
        Reporter(**kwargs)


def test_no_job_id_anywhere_raises() -> None:
    with pytest.raises(ValueError, match="MFU_JOB_ID"):
        Reporter()


def test_bad_rank_environment_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK"):
        Reporter(job_id="ok")


def test_unreadable_token_file_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("MFU_AGENT_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="MFU_AGENT_TOKEN_FILE"):
        Reporter(job_id="ok")


# --------------------------------------------------------------------------------------------------
# step() never raises; agent down; bounded memory; logging once; recovery
# --------------------------------------------------------------------------------------------------


def test_step_never_raises_on_bad_arguments(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    for _ in range(3):
        r.step(model_flops=-1)
        r.step(model_flops=math.nan)
        r.step(model_flops="lots")  # type: ignore[arg-type]
        r.step(tokens=math.inf)
        r.step(hardware_flops=object())  # type: ignore[arg-type]
    r.step()
    assert r.steps == 16  # the steps are counted, the bad amounts ignored
    assert r.flush()
    report = fake.latest()
    assert report is not None
    # a bad model_flops adds 0; a step whose only bad amount is another counter still adds the default
    assert report["model_flops_total"] == pytest.approx(7 * F)
    assert report["step"] == 16
    assert len(warnings_matching(caplog, "step(model_flops=")) == 1  # once per argument, not per call
    assert len(warnings_matching(caplog, "step(tokens=")) == 1
    assert len(warnings_matching(caplog, "step(hardware_flops=")) == 1


def test_agent_down_steps_keep_working_memory_bounded_logged_once(
    make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mfu_agent.client")
    r = make_reporter(
        url=closed_port_url(), flops_per_step=F, tokens_per_step=1, interval=0.02, max_backoff=0.05
    )

    def structure() -> dict[str, int]:
        return {k: len(v) for k, v in vars(r).items() if hasattr(v, "__len__") and not isinstance(v, str)}

    r.step()
    assert wait_until(lambda: r.stats["posts_failed"] >= 1)
    before = structure()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            r.step()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert r.steps == 100_001
    assert structure() == before  # no queue / buffer grows while the agent is down
    assert grown < 256 * 1024  # 100k steps keep no per-step objects (a leak would be megabytes)
    assert wait_until(lambda: r.stats["posts_failed"] >= 5)
    assert r.flush(timeout=0.5) is False  # no raise, just False
    assert r.snapshot()["model_flops_total"] == pytest.approx(100_001 * F)
    assert len(warnings_matching(caplog, "cannot reach the agent")) == 1  # once, not per attempt


def test_recovery_after_agent_comes_up_delivers_latest_totals(
    make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mfu_agent.client")
    url = closed_port_url()
    port = int(url.rsplit(":", 1)[1])
    r = make_reporter(url=url, flops_per_step=F, tokens_per_step=4, interval=0.02, max_backoff=0.1)
    for _ in range(50):
        r.step()
    assert wait_until(lambda: r.stats["posts_failed"] >= 3)
    for _ in range(50):
        r.step()
    with FakeAgent(port=port) as fake:
        assert fake.wait_for(lambda f: (f.latest() or {}).get("step") == 100, timeout=WAIT)
        report = fake.latest()
        assert report is not None
        assert report["model_flops_total"] == pytest.approx(100 * F)
        assert report["tokens_total"] == 400
        assert wait_until(lambda: len(warnings_matching(caplog, "delivered again", logging.INFO)) >= 1)
        r.close(timeout=1.0)
    assert len(warnings_matching(caplog, "cannot reach the agent")) == 1
    assert len(warnings_matching(caplog, "delivered again", logging.INFO)) == 1
    assert r.stats["consecutive_failures"] == 0


def test_server_errors_retry_with_backoff_then_recover(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mfu_agent.client")
    fake.respond_with(503)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=0.02, max_backoff=0.1)
    r.step()
    assert wait_until(lambda: r.stats["consecutive_failures"] >= 3)  # backing off, not dropping
    assert r.stats["reports_dropped"] == 0
    r.step()
    fake.respond_with(202)
    assert fake.wait_for(lambda f: (f.latest() or {}).get("step") == 2, timeout=WAIT)
    assert len(warnings_matching(caplog, "agent failed")) == 1
    assert wait_until(lambda: len(warnings_matching(caplog, "delivered again", logging.INFO)) == 1)


def test_over_capacity_is_retried(fake: FakeAgent, make_reporter: Callable[..., Reporter]) -> None:
    fake.respond_with([429, 429])
    r = make_reporter(url=fake.url, flops_per_step=F, interval=0.02, max_backoff=0.1)
    r.step()
    assert fake.wait_for(lambda f: (f.latest() or {}).get("step") == 1, timeout=WAIT)
    assert [p.status for p in fake.posts[:3]] == [429, 429, 202]


def test_bad_request_is_logged_once_and_dropped(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    fake.respond_with(400)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=0.02)
    r.step()
    assert wait_until(lambda: r.stats["reports_dropped"] >= 4)
    stats = r.stats
    assert stats["reports_dropped"] >= 4
    assert stats["consecutive_failures"] == 0  # dropped, not retried with backoff
    assert stats["last_status"] == 400
    assert len(warnings_matching(caplog, "rejected")) == 1


@pytest.mark.parametrize("status", [413, 422])
def test_other_rejections_drop(fake: FakeAgent, make_reporter: Callable[..., Reporter], status: int) -> None:
    fake.respond_with(status)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    r.step()
    assert r.flush() is False
    assert r.stats["reports_dropped"] == 1 and r.stats["consecutive_failures"] == 0


def test_unauthorized_is_retried_and_counters_kept(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    fake.respond_with(401)
    r = make_reporter(url=fake.url, token="wrong", flops_per_step=F, interval=0.02, max_backoff=0.1)
    for _ in range(3):
        r.step()
    assert wait_until(lambda: r.stats["consecutive_failures"] >= 3)
    assert r.stats["reports_dropped"] == 0
    assert len(warnings_matching(caplog, "refused the token")) == 1
    fake.respond_with(202)  # e.g. the token was rotated on the agent side
    assert fake.wait_for(lambda f: (f.latest() or {}).get("step") == 3, timeout=WAIT)
    assert fake.latest()["model_flops_total"] == pytest.approx(3 * F)  # type: ignore[index]
    assert fake.posts[-1].headers["authorization"] == "Bearer wrong"


def test_backoff_grows_with_failures_and_is_capped(make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=closed_port_url(), interval=60, max_backoff=300)
    assert r._next_delay() == 60
    with r._send_lock:  # simulate consecutive failures without waiting for them
        r._failures = 2
    two = [r._next_delay() for _ in range(50)]
    assert all(120 <= d <= 240 for d in two)  # 60 * 2**2 with jitter in [0.5, 1]
    assert len(set(two)) > 1  # jittered
    with r._send_lock:
        r._failures = 40
    assert all(150 <= r._next_delay() <= 300 for _ in range(50))  # capped


# --------------------------------------------------------------------------------------------------
# flush / close / context manager / lifecycle
# --------------------------------------------------------------------------------------------------


def test_close_flushes_final_totals_and_is_idempotent(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)  # no periodic post in this test
    for _ in range(5):
        r.step()
    r.close()
    assert r.closed
    report = fake.latest()
    assert report is not None and report["step"] == 5
    assert report["model_flops_total"] == pytest.approx(5 * F)
    posts = len(fake.posts)
    r.close()
    r.close()
    assert len(fake.posts) == posts  # idempotent: no second final post
    assert not r._thread.is_alive()
    r.step()  # still harmless after close


def test_context_manager(fake: FakeAgent) -> None:
    with Reporter(job_id="ctx", url=fake.url, flops_per_step=F, interval=60) as r:
        r.step()
        r.step()
    assert r.closed
    report = fake.latest(job_id="ctx")
    assert report is not None and report["step"] == 2


def test_close_with_agent_down_returns(make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=closed_port_url(), flops_per_step=F, interval=60)
    r.step()
    r.close(timeout=0.5)  # must return, not raise
    assert r.closed and not r._thread.is_alive()


def test_abandoned_reporter_is_collected_and_its_thread_ends(fake: FakeAgent) -> None:
    r = Reporter(job_id="gc", url=fake.url, interval=0.02)
    thread = r._thread
    ref = weakref.ref(r)
    del r
    assert wait_until(lambda: (gc.collect(), ref() is None)[1])
    thread.join(timeout=WAIT)
    assert not thread.is_alive()


def test_step_is_safe_from_many_threads(fake: FakeAgent, make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=fake.url, flops_per_step=1.0, tokens_per_step=1, interval=0.01)

    def work() -> None:
        for _ in range(20_000):
            r.step()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    assert r.flush()
    report = fake.latest()
    assert report is not None
    assert report["step"] == 80_000 and report["tokens_total"] == 80_000
    assert report["model_flops_total"] == 80_000.0


def test_client_imports_only_the_standard_library() -> None:
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import mfu_agent.client, mfu_agent.client.testing\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'mfu_agent')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


# --------------------------------------------------------------------------------------------------
# validation that keeps reports acceptable to the agent
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"labels": {"pod": "has space"}},
        {"labels": {"hostname": "x" * 254}},
        {"gpus": ["not-a-uuid"]},
        {"gpus": [1024]},
        {"gpus": list(range(17))},  # the agent's bound: 16 per report
        {"labels": {"pod": "p" * 253, "namespace": "n" * 253, "slurm_job_id": "7" * 10}},  # > 512 in all
        {"rank": 1_000_001},
    ],
)
def test_values_the_agent_would_refuse_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="mfu_agent.client"):
        Reporter(job_id="ok", url=closed_port_url(), **kwargs)


def test_environment_label_values_are_sanitised_and_explicit_empty_removes(
    make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "team a")
    r = make_reporter(url=closed_port_url(), labels={"hostname": ""}, gpus=["GPU-0a1b-2c3d", "MIG-9f"])
    assert r.labels["namespace"] == "team_a"
    assert "hostname" not in r.labels
    assert r.gpus == ["GPU-0a1b-2c3d", "MIG-9f"]


def test_environment_labels_are_left_out_to_fit_the_agents_bound(
    make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "p" * 253)
    monkeypatch.setenv("POD_NAMESPACE", "n" * 253)
    monkeypatch.setattr("socket.gethostname", lambda: "node-17")
    r = make_reporter(url=closed_port_url(), labels={"slurm_job_id": "424242"})  # 253 + 253 + 6 + 7 > 512
    assert sum(map(len, r.labels.values())) <= 512
    assert r.labels["slurm_job_id"] == "424242" and r.labels["pod"] == "p" * 253
    assert "hostname" not in r.labels  # left out first: the pod name and namespace fill the bound


def test_torchrun_default_run_id_is_not_a_job_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(ValueError, match="no job id"):
        Reporter()
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    r = Reporter(url=closed_port_url(), interval=60)
    try:
        assert r.job_id == "99"
    finally:
        r.close(timeout=0.2)


# --------------------------------------------------------------------------------------------------
# end to end with the real agent (conftest serves the app under uvicorn on simulated GPUs)
# --------------------------------------------------------------------------------------------------


def test_real_agent_accepts_every_field_the_client_sends(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _agent, client = served
    monkeypatch.setenv("POD_NAME", "trainer-0")
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    r = Reporter(
        job_id="e2e-job",
        url=str(client.base_url),
        flops_per_step=F,
        hardware_flops_per_step=1.25 * F,
        tokens_per_step=2048,
        samples_per_step=4,
        rank=1,
        local_rank=1,
        world_size=2,
        gpus=[1],
        interval=60,
    )
    try:
        for _ in range(3):
            r.step()
        assert r.flush() is True, r.stats
        assert r.stats["last_status"] in (200, 202)
        # Looked at before close(): its final report lets the agent drop the rank at once.
        jobs = {j["job_id"]: j for j in client.get("/v1/jobs").json()["jobs"]}
    finally:
        r.close()
    assert r.stats["final_report"] == "delivered", r.stats
    ranks = {x["rank"]: x for x in jobs["e2e-job"]["ranks"]}
    assert ranks[1]["step"] == 3
    assert ranks[1]["labels"]["pod"] == "trainer-0"


def test_real_agent_with_a_token(sim_backend: Any) -> None:
    from conftest import serve

    from mfu_agent.agent import Agent, AgentOptions

    agent = Agent(sim_backend, AgentOptions(interval=0.2, node_name="test-node", report_token="t0ken"))
    with serve(agent) as url:
        common: dict[str, Any] = {"job_id": "tok-job", "url": url, "flops_per_step": F, "interval": 60}
        wrong = Reporter(token="nope", rank=0, gpus=[0], **common)
        right = Reporter(token="t0ken", rank=1, gpus=[1], **common)
        try:
            wrong.step()
            right.step()
            assert wrong.flush() is False
            assert wrong.stats["last_status"] == 401
            assert right.flush() is True
        finally:
            wrong.close(timeout=0.5)
            right.close(timeout=0.5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_never_blocks_and_does_not_report(fake: FakeAgent) -> None:
    r = Reporter(job_id="fork", url=fake.url, flops_per_step=F, interval=60)
    try:
        r.step()
        with r._lock:  # a lock held by another thread at the moment of the fork
            pid = os.fork()
            if pid == 0:  # child: the held lock must not block step(); close() must not post
                try:
                    r.step()
                    r.close(timeout=0.5)
                    os._exit(0 if r.steps == 2 and r.closed else 1)
                finally:
                    os._exit(2)
        deadline = time.monotonic() + WAIT
        done, status = os.waitpid(pid, os.WNOHANG)
        while done == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # the child blocked: that is the failure this test looks for
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("step() or close() blocked in a forked child")
        assert os.waitstatus_to_exitcode(status) == 0
        assert fake.posts == []  # nothing from the child
        assert not r.closed and r.flush()  # the parent's reporter is unaffected
        assert fake.latest()["step"] == 1  # type: ignore[index]
    finally:
        r.close()


def test_step_without_any_flops_is_logged_once(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    r = make_reporter(url=fake.url, interval=60)  # no flops_per_step
    for _ in range(5):
        r.step()
    r.step(model_flops=7.0)
    assert r.flush()
    report = fake.latest()
    assert report is not None and report["step"] == 6 and report["model_flops_total"] == 7.0
    assert len(warnings_matching(caplog, "without flops_per_step")) == 1


# --------------------------------------------------------------------------------------------------
# parallel layouts, mixed precision and rank identity (issue 9)
# --------------------------------------------------------------------------------------------------


def test_job_flops_per_step_is_shared_over_the_world(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, job_flops_per_step=8e15, job_tokens_per_step=4096, world_size=16, rank=3)
    r.step()
    r.step()
    report = r.snapshot()
    assert report["model_flops_total"] == pytest.approx(2 * 8e15 / 16)
    assert report["tokens_total"] == 2 * 4096 // 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_flops_per_step": 1e15}, "world size"),
        ({"job_flops_per_step": 1e15, "flops_per_step": 1e12, "world_size": 2}, "not both"),
        ({"flops_per_step": {"fp8": 1.0, "fp4": 1.0}}, "fp4"),
        ({"flops_per_step": {}}, "empty"),
        ({"flops_per_step": {"fp8": 1.0, "bf16": 2.0}, "dtype": "fp16"}, "fp16"),
        ({"rank": 4, "world_size": 4}, "below world_size"),
    ],
)
def test_bad_parallel_or_dtype_configuration_raises(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reporter(job_id="j", url=closed_port_url(), **kwargs)


def test_flops_by_dtype_are_reported_as_a_mapping(
    fake: FakeAgent, make_reporter: Callable[..., Reporter]
) -> None:
    r = make_reporter(url=fake.url, job_flops_per_step={"fp8": 6e15, "bf16": 2e15}, world_size=2)
    r.step()
    r.step(model_flops={"bfloat16": 1e12})
    r.step(model_flops=5e11)  # a plain number counts in the reporter's precision
    report = r.snapshot()
    assert report["dtype"] == "fp8"  # the fastest dtype it computes in
    assert report["model_flops_total"] == {
        "fp8": pytest.approx(3e15 + 5e11),
        "bf16": pytest.approx(1e15 + 1e12),
    }
    assert r.flush()
    assert fake.latest()["model_flops_total"] == report["model_flops_total"]


def test_one_dtype_keeps_the_plain_number_form(make_reporter: Callable[..., Reporter]) -> None:
    r = make_reporter(url=closed_port_url(), flops_per_step={"bf16": 1e12}, dtype="bf16")
    r.step()
    assert r.snapshot()["model_flops_total"] == 1e12 and r.snapshot()["dtype"] == "bf16"


@pytest.mark.parametrize(
    ("env", "rank", "local_rank", "world_size"),
    [
        (
            {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8"},
            5,
            1,
            8,
        ),
        ({"PMI_RANK": "2", "PMI_SIZE": "4"}, 2, None, 4),
        ({"MV2_COMM_WORLD_RANK": "7", "MV2_COMM_WORLD_SIZE": "16", "MPI_LOCALRANKID": "3"}, 7, 3, 16),
    ],
)
def test_rank_from_mpi_launchers(
    monkeypatch: pytest.MonkeyPatch,
    make_reporter: Callable[..., Reporter],
    env: dict[str, str],
    rank: int,
    local_rank: int | None,
    world_size: int,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = make_reporter(url=closed_port_url())
    assert (r.rank, r.local_rank, r.world_size) == (rank, local_rank, world_size)


def test_an_unknown_rank_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    import mfu_agent.client._reporter as reporter_module

    monkeypatch.setattr(reporter_module, "_rank_warning_logged", False)
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    make_reporter(url=closed_port_url())
    make_reporter(url=closed_port_url())
    assert len(warnings_matching(caplog, "no rank given")) == 1
    make_reporter(url=closed_port_url(), world_size=1)  # a single process: rank 0 is no guess


def test_each_reporter_says_who_it_is(make_reporter: Callable[..., Reporter]) -> None:
    a, b = make_reporter(url=closed_port_url(), interval=3), make_reporter(url=closed_port_url())
    assert a.snapshot()["instance"] != b.snapshot()["instance"]
    assert a.snapshot()["pid"] == os.getpid() and a.snapshot()["interval"] == 3


def test_a_refused_rank_is_logged_once_and_retried_at_the_normal_pace(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    fake.respond_with(409)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=0.02)
    r.step()
    assert wait_until(lambda: r.stats["reports_dropped"] >= 4)
    assert r.stats["consecutive_failures"] == 0 and r.stats["last_status"] == 409
    assert len(warnings_matching(caplog, "another process reports the same job_id and rank")) == 1
    fake.respond_with(202)
    assert fake.wait_for(lambda f: f.posts[-1].status == 202, timeout=WAIT)
    assert fake.latest()["model_flops_total"] == F  # nothing was lost while refused


# --------------------------------------------------------------------------------------------------
# the rank's device from CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES
# --------------------------------------------------------------------------------------------------

CVD, NVD, ORDER = "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"
PCI = {ORDER: "PCI_BUS_ID"}
NO_LIST = ("all", "none", "void", "", "ALL")


@pytest.mark.parametrize(
    ("env", "local_rank", "gpus", "source"),
    [
        # CUDA_VISIBLE_DEVICES alone: integers are NVML indices only in PCI bus order
        ({CVD: "0,1,2,3", **PCI}, 2, [2], CVD),
        ({CVD: "3,1", **PCI}, 1, [1], CVD),
        ({CVD: "3,1"}, 1, None, None),  # CUDA's default FASTEST_FIRST order may differ from NVML's
        ({CVD: "3,1", ORDER: "FASTEST_FIRST"}, 0, None, None),
        ({CVD: "GPU-aaaa-1,GPU-bbbb-2", **PCI}, 1, ["GPU-bbbb-2"], CVD),
        ({CVD: "GPU-aaaa-1,GPU-bbbb-2"}, 0, ["GPU-aaaa-1"], CVD),  # UUIDs need no order
        ({CVD: "MIG-1111,MIG-2222"}, 1, ["MIG-2222"], CVD),
        ({CVD: " GPU-0b42 , 1"}, 0, ["GPU-0b42"], CVD),  # a UUID prefix is sent as written
        ({CVD: "GPU-a,MIG-GPU-b/1/0"}, 1, None, None),  # old MIG spelling: visible, not nameable
        # CUDA stops at the first invalid entry: what follows it is not visible
        ({CVD: "GPU-a,GPU-b,bogus,GPU-d"}, 1, ["GPU-b"], CVD),
        ({CVD: "GPU-a,GPU-b,-1,GPU-d"}, 1, ["GPU-b"], CVD),
        ({CVD: "0,1,bogus,3", **PCI}, 0, [0], CVD),
        # NVIDIA_VISIBLE_DEVICES alone (container runtime, Kubernetes device plugin)
        ({NVD: "GPU-aaaa,GPU-bbbb,GPU-cccc"}, 2, ["GPU-cccc"], NVD),
        ({NVD: "MIG-aaaa,MIG-bbbb"}, 0, ["MIG-aaaa"], NVD),
        ({NVD: "4,6"}, 1, [6], NVD),  # the runtime's integers are host NVML indices
        ({NVD: "0:1,0:2"}, 1, None, None),  # a MIG device by index: cannot be named to the agent
        # both: CUDA_VISIBLE_DEVICES integers index NVIDIA_VISIBLE_DEVICES, UUIDs stand for themselves
        ({NVD: "GPU-a,GPU-b,GPU-c", CVD: "2,0"}, 0, ["GPU-c"], f"{CVD}, {NVD}"),
        ({NVD: "GPU-a,GPU-b,GPU-c", CVD: "2,0"}, 1, ["GPU-a"], f"{CVD}, {NVD}"),
        ({NVD: "GPU-a,GPU-b", CVD: "MIG-x,1"}, 0, ["MIG-x"], f"{CVD}, {NVD}"),
        ({NVD: "GPU-a,GPU-b", CVD: "MIG-x,1"}, 1, ["GPU-b"], f"{CVD}, {NVD}"),
        ({NVD: "5,7", CVD: "1,0"}, 0, [7], f"{CVD}, {NVD}"),
        ({NVD: "GPU-a,GPU-b,GPU-c", CVD: "2,1,7,0"}, 1, ["GPU-b"], f"{CVD}, {NVD}"),  # 7: invalid
        # one visible device is the process's device whatever local_rank says (srun --gpus-per-task)
        ({CVD: "MIG-only"}, 3, ["MIG-only"], CVD),
        ({CVD: "MIG-only"}, None, ["MIG-only"], CVD),
        ({NVD: "GPU-only"}, None, ["GPU-only"], NVD),
        ({CVD: "GPU-a,GPU-b"}, None, None, None),  # several devices and no local_rank: unknown
        ({CVD: "5"}, 0, None, None),  # one device, but which GPU "5" is depends on CUDA's order
        ({CVD: "5", **PCI}, 2, [5], CVD),
        # nothing set: the agent finds the GPU by pid, then local_rank, as before
        ({}, 1, None, None),
        ({ORDER: "PCI_BUS_ID"}, 1, None, None),
    ],
)
def test_the_rank_device_is_resolved_from_the_visible_devices(
    fake: FakeAgent,
    make_reporter: Callable[..., Reporter],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    local_rank: int | None,
    gpus: list[int | str] | None,
    source: str | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=local_rank)
    assert (r.gpus, r.gpus_source) == (gpus, source)
    r.step()
    assert r.flush()
    report = fake.posts[-1].reports[0]  # the JSON body the agent received
    assert report.get("gpus") == gpus
    if local_rank is not None:
        assert report["local_rank"] == local_rank


@pytest.mark.parametrize("no_list", NO_LIST)
def test_nvidia_visible_devices_without_a_list(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch, no_list: str
) -> None:
    monkeypatch.setenv(NVD, no_list)
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1)
    assert r.gpus is None  # NVIDIA_VISIBLE_DEVICES alone names no device
    monkeypatch.setenv(CVD, "GPU-a,GPU-b")
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1)
    assert r.gpus == ["GPU-b"] and r.gpus_source == CVD
    monkeypatch.setenv(CVD, "0,1")  # integers count all the node's devices, as without the variable
    assert make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1).gpus is None
    monkeypatch.setenv(ORDER, "PCI_BUS_ID")
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1)
    r.step()
    assert r.flush()
    assert fake.posts[-1].reports[0]["gpus"] == [1]


def test_local_rank_from_the_environment_picks_the_device(
    fake: FakeAgent, make_reporter: Callable[..., Reporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(NVD, "MIG-aaaa,MIG-bbbb")
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60)
    r.step()
    assert r.flush()
    report = fake.posts[-1].reports[0]
    assert (report["local_rank"], report["gpus"]) == (1, ["MIG-bbbb"])
    assert r.snapshot()["gpus"] == ["MIG-bbbb"]


@pytest.mark.parametrize(
    ("env", "local_rank", "named"),
    [
        ({CVD: "GPU-a,GPU-b"}, 2, [f"{CVD}='GPU-a,GPU-b'"]),
        ({CVD: "GPU-a,GPU-b,bogus,GPU-d"}, 3, [CVD]),  # past the entries CUDA accepts
        ({CVD: ""}, 0, [f"{CVD}=''"]),  # set but empty: no device at all
        ({NVD: "GPU-a,GPU-b,GPU-c"}, 3, [f"{NVD}='GPU-a,GPU-b,GPU-c'"]),
        ({NVD: "GPU-a,GPU-b,GPU-c", CVD: "0,2"}, 2, [CVD, NVD]),
    ],
)
def test_local_rank_past_the_visible_devices_is_warned_about_once(
    fake: FakeAgent,
    make_reporter: Callable[..., Reporter],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: dict[str, str],
    local_rank: int,
    named: list[str],
) -> None:
    import mfu_agent.client._reporter as reporter_module

    monkeypatch.setattr(reporter_module, "_visible_warning_logged", False)
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for _ in range(3):
        r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=local_rank)
        assert r.gpus is None and r.gpus_source is None
    r.step()
    assert r.flush()
    assert "gpus" not in fake.posts[-1].reports[0]  # nothing named: the agent uses pid / local_rank
    (warning,) = warnings_matching(caplog, f"local_rank {local_rank} is past")
    for text in named:
        assert text in warning
    assert "gpus=" in warning


def test_explicit_gpus_always_win_over_the_visible_devices(
    fake: FakeAgent,
    make_reporter: Callable[..., Reporter],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mfu_agent.client._reporter as reporter_module

    monkeypatch.setattr(reporter_module, "_visible_warning_logged", False)
    caplog.set_level(logging.WARNING, logger="mfu_agent.client")
    monkeypatch.setenv(NVD, "GPU-a,GPU-b")
    monkeypatch.setenv(CVD, "MIG-x,1")
    monkeypatch.setenv(ORDER, "PCI_BUS_ID")
    r = make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1, gpus=[3, "GPU-own"])
    assert (r.gpus, r.gpus_source) == ([3, "GPU-own"], "gpus")
    r.step()
    assert r.flush()
    assert fake.posts[-1].reports[0]["gpus"] == [3, "GPU-own"]
    # gpus=[] names nothing and turns the resolution off
    assert make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=1, gpus=[]).gpus is None
    # and a local_rank past the list is no concern when the device is named
    make_reporter(url=fake.url, flops_per_step=F, interval=60, local_rank=5, gpus=["MIG-y"])
    assert warnings_matching(caplog, "is past") == []
