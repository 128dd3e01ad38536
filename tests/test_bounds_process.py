"""Bounded everything through real agent processes and real HTTP (issue 11, items 4 and 8): an XID storm,
a flood of 100,000 (job_id, rank) pairs that stops, 4,096 ranks on 8 GPUs with long labels, and a final
report that the state file forgets. The same logic on a clock the test moves: tests/test_bounds.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from agent_process import AgentProcess
from metrics_text import samples

BUDGET = 100_000  # the default --max-series
H100 = "8xNVIDIA H100 80GB HBM3"


@contextmanager
def running(*args: str) -> Iterator[AgentProcess]:
    """An agent process; the test may stop it itself to read its output."""
    agent = AgentProcess(*args).start()
    try:
        yield agent
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()


def series_on_metrics(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def matching(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called `name` with these labels (parsing only their lines: the page may
    hold 100,000 series)."""
    lines = "\n".join(line for line in text.splitlines() if line.startswith((name + "{", name + " ")))
    wanted = set(labels.items())
    return [v for (n, ls), v in samples(lines).items() if n == name and wanted <= ls]


def value(text: str, name: str, **labels: str) -> float:
    found = matching(text, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_an_xid_storm_makes_bounded_series_and_bounded_log_lines():
    with running("--simulate", "2xNVIDIA H100 80GB HBM3", "--fault", "xid-storm:0") as agent:
        deadline = time.monotonic() + 60
        while True:
            xids = agent.series("mfu_gpu_xid_errors_total", gpu="0")
            if sum(xids.values()) >= 20_000 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        by_code = {dict(labels)["xid"]: count for labels, count in xids.items()}
        text = agent.metrics()
        out = agent.stop()
    assert sum(by_code.values()) == 20_000, "every event counted"
    assert len(by_code) == 173, "172 catalogue codes and one 'other', not 10,000 series"
    assert by_code["79"] == 10_001 and by_code["other"] == 10_000 - 172 and by_code["172"] == 1
    assert series_on_metrics(text) < 1_000
    xid_lines = [line for line in out.splitlines() if " XID" in line]
    first_lines = [line for line in xid_lines if "more in the last" not in line]
    assert len(first_lines) == 173, "the first event of each catalogue code, and the first other one"
    assert len(xid_lines) - len(first_lines) <= 2, "then at most a summary a minute per kind"
    assert any("XID 173 on GPU 0" in line and 'xid="other"' in line for line in first_lines)


def flood_batch(job: int, ranks: int = 1000) -> list[dict]:
    return [
        {
            "job_id": f"flood-{job}",
            "rank": rank,
            "gpus": [rank % 8],
            "model_flops_total": 1e15,
            "instance": "flooder",
            "interval": 1,
        }
        for rank in range(ranks)
    ]


def test_a_flood_of_100000_pairs_stays_bounded_and_new_jobs_get_in_once_it_stops():
    with running("--simulate", H100, "--rank-ttl", "600") as agent, httpx.Client(timeout=60) as client:
        statuses: dict[int, int] = {}
        for job in range(100):  # 100,000 distinct (job_id, rank) pairs, 1,000 per request
            response = client.post(agent.url + "/v1/reports", json=flood_batch(job))
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 429:
                assert "(--max-ranks)" in response.json()["error"], response.text
        assert set(statuses) <= {202, 429} and statuses.get(429), statuses
        text = agent.metrics()
        assert value(text, "mfu_agent_tracked_ranks") <= 4096
        assert series_on_metrics(text) <= value(text, "mfu_agent_series_estimate") <= BUDGET
        # The flood has stopped. A new job gets in once the flood's ranks are silent for three of
        # their (1 s) intervals: seconds, not the 600 s TTL.
        new_job = [
            {"job_id": "after-flood", "rank": r, "gpus": [r], "model_flops_total": 1.0} for r in range(8)
        ]
        deadline = time.monotonic() + 120
        while (response := client.post(agent.url + "/v1/reports", json=new_job)).status_code == 429:
            assert time.monotonic() < deadline, "still refused two minutes after the flood stopped"
            time.sleep(0.25)
        assert response.status_code == 202, response.text
        text = agent.metrics()
        assert value(text, "mfu_agent_rank_evictions_total", reason="silent") >= 8
        assert value(text, "mfu_agent_rank_evictions_total", reason="ttl") == 0
        assert len(matching(text, "mfu_job_info", job_id="after-flood")) == 8
        out = agent.stop()
    assert sum("evicted to make room" in line for line in out.splitlines()) <= 4, "eviction lines bounded"


def test_4096_ranks_on_8_gpus_with_long_labels_stay_under_the_budget():
    job_id = "j" * 121 + "-long"  # 126 characters
    labels = {"pod": "p" * 253, "namespace": "n" * 63, "hostname": "h" * 64, "slurm_job_id": "1234567_89"}
    with AgentProcess("--simulate", H100) as agent, httpx.Client(timeout=60) as client:
        accepted = refused = 0
        for first in range(0, 4096, 256):
            batch = [
                {
                    "job_id": job_id,
                    "rank": rank,
                    "gpus": list(range(8)),
                    "model_flops_total": 1e15,
                    "instance": f"i{rank}",
                    "interval": 3600,  # alive all along: nothing may be evicted
                    "labels": labels,
                }
                for rank in range(first, first + 256)
            ]
            response = client.post(agent.url + "/v1/reports", json=batch)
            assert response.status_code in (202, 429), response.text
            if response.status_code == 429:
                refused += 1
                assert "of at most 100,000 (--max-series)" in response.json()["error"], response.text
            else:
                accepted += 256
        text = agent.metrics()
    assert refused and accepted >= 1024, (accepted, refused)
    assert value(text, "mfu_agent_tracked_ranks") == accepted
    assert series_on_metrics(text) <= value(text, "mfu_agent_series_estimate") <= BUDGET
    assert value(text, "mfu_agent_series_budget") == BUDGET
    assert value(text, "mfu_agent_rank_evictions_total", reason="silent") == 0


def test_a_final_report_is_forgotten_by_the_state_file(tmp_path):
    state = str(tmp_path / "state")
    ranks = [
        {"job_id": "ends", "rank": r, "gpus": [r], "model_flops_total": 3e15, "instance": f"r{r}"}
        for r in (0, 1)
    ]
    with AgentProcess("--simulate", H100, "--state-dir", state) as agent:
        assert httpx.post(agent.url + "/v1/reports", json=ranks).status_code == 202
        final = {**ranks[0], "model_flops_total": 4e15, "final": True}
        assert httpx.post(agent.url + "/v1/reports", json=final).status_code == 202
        assert sorted(dict(ls)["rank"] for ls in agent.series("mfu_job_info", job_id="ends")) == ["1"]
    with AgentProcess("--simulate", H100, "--state-dir", state) as agent:
        assert [r["rank"] for r in agent.jobs()["ends"]["ranks"]] == [1], "rank 1 restored, rank 0 not"
        # The job runs again: rank 0 is a new rank, counting from its own zero.
        again = {**ranks[0], "model_flops_total": 5e14, "instance": "again"}
        assert httpx.post(agent.url + "/v1/reports", json=again).status_code == 202
        totals = agent.series("mfu_job_model_flops_total", job_id="ends")
        assert {dict(ls)["rank"]: v for ls, v in totals.items()} == {"0": 5e14, "1": 3e15}
