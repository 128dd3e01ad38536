"""GPU health (mfu_agent/health): the XID catalogue data file, the classification of each cause, the
per-GPU state and how long each cause holds it, and the families the agent exports. The end-to-end check
through a real agent process and a real Prometheus with the shipped rules is in test_e2e_prometheus.py
(test_gpu_health_reaches_prometheus), on that module's running cluster."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import date
from pathlib import Path

import pytest
from fakenvml import FakeNvml
from metrics_text import one, values
from prometheus_client import generate_latest
from prometheus_server import find_binary

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.events import XID_CATALOGUE, EventCounter
from mfu_agent.gpu.model import GpuEvent, GpuIdentity, GpuReading, MigIdentity, RemappedRows, Snapshot
from mfu_agent.gpu.nvml_backend import NvmlBackend
from mfu_agent.gpu.simulated import SimulatedBackend
from mfu_agent.health.catalogue import ACTIONS, CATALOGUE_ACTIONS, SEVERITY, load_catalogue, parse_catalogue
from mfu_agent.health.state import SUSTAINED_SLOWDOWN_SECONDS as SUSTAINED
from mfu_agent.health.state import XID_HOLD_SECONDS, HealthTracker

ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = ROOT / "mfu_agent" / "health" / "xid_catalogue.json"
T0 = 1_700_000_000.0


# -- the catalogue ---------------------------------------------------------------------------------


def test_the_data_file_is_well_formed_and_names_its_source():
    doc = json.loads(DATA_FILE.read_text())
    assert doc["source"].startswith("https://docs.nvidia.com/deploy/xid-errors/")
    date.fromisoformat(doc["reviewed"])
    codes = [item["xid"] for item in doc["xids"]]
    assert len(codes) == len(set(codes)) and codes == sorted(codes)
    assert set(codes) <= set(XID_CATALOGUE), "every code is one the agent counts under its own label"
    for item in doc["xids"]:
        assert item["action"] in {
            "none",
            "restart_application",
            "reset_gpu",
            "reboot_node",
            "inspect_hardware",
        }
        assert item["description"].strip()
    assert load_catalogue().entries.keys() == set(codes)


def test_the_done_when_codes_and_unlisted_codes():
    catalogue = load_catalogue()
    assert catalogue.action(79) == "reboot_node"
    assert catalogue.action(13) == "restart_application"
    assert catalogue.action(48) == "reset_gpu"
    assert catalogue.action(45) == "none"
    assert catalogue.action(64) == "inspect_hardware"
    unlisted = next(c for c in XID_CATALOGUE if c not in catalogue.entries)
    assert catalogue.action(unlisted) == "unknown"
    assert catalogue.action("other") == "unknown"
    assert catalogue.action(None) == "unknown"


def test_the_reviewed_codes_follow_the_catalogues_immediate_action():
    """The codes the retired GpuXidCritical / GpuXidApplication alerts listed, as NVIDIA's catalogue
    classifies them (column "Resolution Bucket (Immediate Action)"): 61 is unused on Ampere and newer,
    so it stays unknown; 64 deviates, saying why."""
    catalogue = load_catalogue()
    doc = json.loads(DATA_FILE.read_text())
    buckets = {item["xid"]: item["bucket"] for item in doc["xids"]}
    expected = {
        13: ("RESTART_APP", "restart_application"),
        31: ("RESTART_APP", "restart_application"),
        43: ("IGNORE", "none"),
        45: ("WORKFLOW_XID_45", "none"),
        48: ("WORKFLOW_XID_48", "reset_gpu"),
        62: ("RESET_GPU", "reset_gpu"),
        63: ("IGNORE", "none"),
        64: ("RESET_GPU", "inspect_hardware"),
        74: ("WORKFLOW_NVLINK_ERR", "reset_gpu"),
        79: ("RESTART_BM", "reboot_node"),
        92: ("IGNORE", "none"),
        94: ("RESTART_APP", "restart_application"),
        95: ("RESET_GPU", "reset_gpu"),
        119: ("RESET_GPU", "reset_gpu"),
        120: ("RESET_GPU", "reset_gpu"),
        121: ("IGNORE", "none"),
        140: ("RESET_GPU", "reset_gpu"),
    }
    assert {code: (buckets.get(code), catalogue.action(code)) for code in expected} == expected
    assert catalogue.action(61) == "unknown"
    deviating = {item["xid"] for item in doc["xids"] if item["action"] != doc["mapping"][item["bucket"]]}
    assert deviating == {64}
    assert all(item["deviation"].strip() for item in doc["xids"] if item["xid"] in deviating)


def test_actions_are_ordered_by_severity():
    assert ACTIONS[0] == "none" and ACTIONS[-1] == "inspect_hardware"
    assert SEVERITY["restart_application"] < SEVERITY["reset_gpu"] < SEVERITY["reboot_node"]
    assert set(ACTIONS) - {"unknown"} == CATALOGUE_ACTIONS


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.pop("source"), "`source`"),
        (lambda d: d.update(xids=[]), "`xids`"),
        (lambda d: d["xids"][0].update(action="reboot"), r"xids\[0\]\.action"),
        (lambda d: d["xids"][1].update(xid=d["xids"][0]["xid"]), r"xids\[1\]\.xid: \d+ listed twice"),
        (lambda d: d["xids"][0].update(xid="79"), r"xids\[0\]\.xid"),
        (lambda d: d["xids"][0].update(description=""), r"xids\[0\]\.description"),
        (lambda d: d["mapping"].update(IGNORE="ignore"), "`mapping`"),
        (lambda d: d["xids"][0].update(bucket="RESTART"), r"xids\[0\]\.bucket: 'RESTART'"),
        # An action other than its bucket's mapping, without a deviation saying why (XID 13 RESTART_APP).
        (lambda d: d["xids"][2].update(action="reset_gpu"), r"xids\[2\]\.action: .*no `deviation`"),
        (lambda d: d["xids"][2].update(deviation=""), r"xids\[2\]\.deviation"),
    ],
)
def test_a_malformed_catalogue_is_refused_naming_the_field(change, field):
    doc = json.loads(DATA_FILE.read_text())
    change(doc)
    with pytest.raises(ValueError, match=field):
        parse_catalogue(doc)


def test_the_data_file_ships_in_the_wheel():
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^"mfu_agent\.health" = \[.*"xid_catalogue\.json".*\]$', package_data, re.M), (
        package_data
    )


# -- the state -------------------------------------------------------------------------------------


def gpu(index: int, up: bool = True, **readings) -> GpuReading:
    return GpuReading(GpuIdentity(index, f"GPU-{index}", "NVIDIA H100 80GB HBM3"), up=up, **readings)


def snap(*gpus: GpuReading) -> Snapshot:
    return Snapshot(taken_at=T0, driver_version="550.0", gpus=gpus, sample_duration_seconds=0.01)


def states(
    tracker: HealthTracker, snapshot: Snapshot, events: dict, now: float
) -> dict[int, tuple[str, str]]:
    return {h.gpu.index: (h.action, h.reason) for h in tracker.update(snapshot, events, now)}


def xids(*codes: tuple[int, int | str], count: int = 1) -> dict:
    return {(index, f"GPU-{index}", "xid", code): count for index, code in codes}


def test_xid_79_recommends_a_node_reboot_and_xid_13_an_application_restart():
    tracker = HealthTracker(load_catalogue())
    got = states(tracker, snap(gpu(0), gpu(1), gpu(2)), xids((1, 79), (2, 13)), T0)
    assert got == {0: ("none", "none"), 1: ("reboot_node", "xid_79"), 2: ("restart_application", "xid_13")}


def test_an_application_xid_holds_for_an_hour_from_its_last_event_a_reset_xid_until_restart():
    tracker = HealthTracker(load_catalogue())
    both = snap(gpu(0), gpu(1))
    assert states(tracker, both, xids((0, 13), (1, 48)), T0)[0] == ("restart_application", "xid_13")
    later = T0 + XID_HOLD_SECONDS
    assert states(tracker, both, xids((0, 13), (1, 48)), later)[0] == ("restart_application", "xid_13")
    # Another XID 13 (its count rose) half an hour on: held an hour from then.
    assert states(tracker, both, xids((0, 13), (1, 48), count=2), T0 + 1800)[0][0] == "restart_application"
    got = states(tracker, both, xids((0, 13), (1, 48), count=2), T0 + 1800 + XID_HOLD_SECONDS + 1)
    assert got == {0: ("none", "none"), 1: ("reset_gpu", "xid_48")}
    assert states(tracker, both, xids((0, 13), (1, 48), count=2), T0 + 30 * 86400)[1] == (
        "reset_gpu",
        "xid_48",
    )


def test_the_most_severe_cause_wins():
    tracker = HealthTracker(load_catalogue())
    pending = RemappedRows(corrected=0, uncorrected=1, pending=True, failure=False)
    failed = RemappedRows(corrected=0, uncorrected=9, pending=True, failure=True)
    readings = snap(
        gpu(0, remapped_rows=pending),
        gpu(1, remapped_rows=failed),
        gpu(2, ecc_uncorrected_total=2),
        gpu(3, ecc_uncorrected_total=0, remapped_rows=RemappedRows(4, 0, False, False)),
    )
    got = states(tracker, readings, xids((0, 13), (1, 79), (2, 45)), T0)
    assert got == {
        0: ("reset_gpu", "row_remap_pending"),
        1: ("inspect_hardware", "row_remap_failure"),
        2: ("reset_gpu", "ecc_uncorrectable"),
        3: ("none", "none"),
    }
    (one,) = [h for h in tracker.update(readings, xids((1, 79)), T0) if h.gpu.index == 1]
    assert [c.reason for c in one.causes] == ["row_remap_failure", "xid_79", "row_remap_pending"]


def test_an_xid_that_calls_for_nothing_leaves_the_gpu_healthy_and_names_it():
    tracker = HealthTracker(load_catalogue())
    assert states(tracker, snap(gpu(0)), xids((0, 45)), T0) == {0: ("none", "xid_45")}
    (health,) = tracker.update(snap(gpu(0)), xids((0, 45)), T0)
    assert health.severity == 0


def test_codes_the_catalogue_does_not_classify_are_unknown_never_guessed():
    tracker = HealthTracker(load_catalogue())
    unlisted = next(c for c in XID_CATALOGUE if c not in load_catalogue().entries)
    got = states(tracker, snap(gpu(0), gpu(1)), xids((0, "other"), (1, unlisted)), T0)
    assert got == {0: ("unknown", "xid_other"), 1: ("unknown", f"xid_{unlisted}")}


def test_a_slowdown_counts_once_sustained_and_clears_when_it_stops():
    tracker = HealthTracker(load_catalogue())
    hot = snap(gpu(0, clock_event_reasons=frozenset({"hw_thermal_slowdown"})), gpu(1))
    braked = snap(gpu(0), gpu(1, clock_event_reasons=frozenset({"hw_power_brake_slowdown", "sw_power_cap"})))
    assert states(tracker, hot, {}, T0)[0] == ("none", "none")
    assert states(tracker, hot, {}, T0 + SUSTAINED - 1)[0] == ("none", "none")
    assert states(tracker, hot, {}, T0 + SUSTAINED)[0] == (
        "inspect_hardware",
        "thermal_slowdown",
    )
    # One snapshot without it: the clock starts again.
    t = T0 + SUSTAINED + 1
    assert states(tracker, braked, {}, t) == {0: ("none", "none"), 1: ("none", "none")}
    assert states(tracker, braked, {}, t + SUSTAINED)[1] == (
        "inspect_hardware",
        "power_slowdown",
    )
    assert states(tracker, hot, {}, t + SUSTAINED + 1)[0] == ("none", "none")
    # Capping at the power limit alone is no slowdown.
    capped = snap(gpu(0, clock_event_reasons=frozenset({"sw_power_cap"})))
    assert states(tracker, capped, {}, t + 2 * SUSTAINED)[0] == ("none", "none")
    assert states(tracker, capped, {}, t + 4 * SUSTAINED)[0] == ("none", "none")


def test_a_down_gpu_has_a_state_only_with_an_xid_and_mig_devices_none():
    tracker = HealthTracker(load_catalogue())
    mig = GpuReading(
        GpuIdentity(2, "MIG-2a", "NVIDIA H100 80GB HBM3", mig=MigIdentity("GPU-2", "1g.10gb", 1, 0, 16))
    )
    got = states(tracker, snap(gpu(0, up=False), gpu(1, up=False), gpu(2), mig), xids((1, 79)), T0)
    assert got == {1: ("reboot_node", "xid_79"), 2: ("none", "none")}


# -- the families on /metrics ----------------------------------------------------------------------


def health_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("mfu_gpu_health_"))


def test_the_agent_exports_the_health_state_per_gpu():
    backend = SimulatedBackend("4xNVIDIA H100 80GB HBM3")
    agent = Agent(backend, AgentOptions())
    agent.events = EventCounter()
    agent.events.add(GpuEvent(1, backend.read_all()[1].uuid, "xid", 79))
    agent.events.add(GpuEvent(3, backend.read_all()[3].uuid, "xid", 13))
    agent.sampler.sample_once()
    text = generate_latest(agent.registry).decode()
    uuid = {g.index: g.uuid for g in backend.read_all()}
    assert health_lines(text) == sorted(
        [
            f'mfu_gpu_health_action{{action="none",gpu="0",reason="none",uuid="{uuid[0]}"}} 1.0',
            f'mfu_gpu_health_action{{action="reboot_node",gpu="1",reason="xid_79",uuid="{uuid[1]}"}} 1.0',
            f'mfu_gpu_health_action{{action="none",gpu="2",reason="none",uuid="{uuid[2]}"}} 1.0',
            f'mfu_gpu_health_action{{action="restart_application",gpu="3",reason="xid_13",uuid="{uuid[3]}"}} '
            "1.0",
            f'mfu_gpu_health_severity{{gpu="0",uuid="{uuid[0]}"}} 0.0',
            f'mfu_gpu_health_severity{{gpu="1",uuid="{uuid[1]}"}} 4.0',
            f'mfu_gpu_health_severity{{gpu="2",uuid="{uuid[2]}"}} 0.0',
            f'mfu_gpu_health_severity{{gpu="3",uuid="{uuid[3]}"}} 2.0',
        ]
    )
    check = subprocess.run(
        [find_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0 and not re.search(r"health", check.stdout + check.stderr), check


def test_xids_from_the_nvml_event_set_reach_the_health_state(fake_nvml: FakeNvml):
    """Through the real NVML backend and event thread, on the fake driver library."""
    backend = NvmlBackend()
    backend.start()
    agent = Agent(backend, AgentOptions(interval=1.0))
    agent.start()
    try:
        fake_nvml.queue_xid(2, 79)
        fake_nvml.queue_xid(6, 13)
        deadline = time.monotonic() + 10
        text = generate_latest(agent.registry).decode()
        while len(values(text, "mfu_gpu_xid_errors_total")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            text = generate_latest(agent.registry).decode()
        uuid = fake_nvml.devices[2].uuid
        assert (
            one(text, "mfu_gpu_health_action", gpu="2", uuid=uuid, action="reboot_node", reason="xid_79") == 1
        )
        assert one(text, "mfu_gpu_health_action", gpu="6", action="restart_application", reason="xid_13") == 1
        assert one(text, "mfu_gpu_health_severity", gpu="2") == 4
        assert values(text, "mfu_gpu_health_action", action="none") == [1.0] * 6
    finally:
        agent.stop()
