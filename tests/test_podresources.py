"""Kubernetes names from the kubelet's PodResources v1 API: the client against a real gRPC server on a
unix socket (tests/kubelet_server.py), the cache's refresh and failure handling, and the real agent
process naming GPU processes and reporting ranks."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import grpc
import httpx
import pytest
from agent_clock import Clock
from agent_process import AgentProcess
from fakenvml import default_mig_uuid, default_uuid
from kubelet_server import FakeKubelet

from mfu_agent.attribution import podresources
from mfu_agent.attribution.cache import KubeletDevices, KubeNames, device_uuid, holders_by_device
from mfu_agent.attribution.podresources import ContainerDevice, PodResourcesClient

PROTO = Path(podresources.__file__).with_name("podresources_v1.proto")
FIXTURES = Path(__file__).parent / "fixtures" / "proc"
GPU0, GPU1, GPU2, GPU3 = (default_uuid(i) for i in range(4))
MIG = default_mig_uuid(4, 7, 0)  # GPU 4's 1g.10gb device (GPU instance 7, compute instance 0)


@pytest.fixture
def kubelet():
    with FakeKubelet() as server:
        yield server


def test_the_descriptor_matches_the_committed_proto_file() -> None:
    """podresources.py's messages, field by field, are the ones written in podresources_v1.proto."""
    text = re.sub(r"//[^\n]*", "", PROTO.read_text(encoding="utf-8"))
    field_re = re.compile(r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;")
    written: dict[str, tuple[tuple[str, int, str, bool], ...]] = {}
    for name, body in re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text):
        written[name] = tuple(
            (field, int(number), kind, bool(repeated))
            for repeated, kind, field, number in field_re.findall(body)
        )
    assert written == podresources.MESSAGES
    assert "rpc List(ListPodResourcesRequest) returns (ListPodResourcesResponse)" in text
    assert podresources.LIST_METHOD == "/v1.PodResourcesLister/List" and "package v1;" in text


def test_the_client_lists_every_container_device_from_a_real_server(kubelet: FakeKubelet) -> None:
    kubelet.pods = [
        ("training", "llama-0", [("pytorch", [("nvidia.com/gpu", [GPU0, GPU1])]), ("sidecar", [])]),
        (
            "serving",
            "infer-0",
            [("server", [("nvidia.com/mig-1g.10gb", [MIG]), ("example.com/nic", ["eth3"])])],
        ),
        ("kube-system", "coredns-1", [("coredns", [])]),
    ]
    client = PodResourcesClient(kubelet.socket_path, timeout=2)
    try:
        listed = client.list()
    finally:
        client.close()
    assert listed == [
        ContainerDevice("training", "llama-0", "pytorch", "nvidia.com/gpu", GPU0),
        ContainerDevice("training", "llama-0", "pytorch", "nvidia.com/gpu", GPU1),
        ContainerDevice("serving", "infer-0", "server", "nvidia.com/mig-1g.10gb", MIG),
        ContainerDevice("serving", "infer-0", "server", "example.com/nic", "eth3"),
    ]


@pytest.mark.parametrize(
    ("device_id", "uuid"),
    [
        (GPU0, GPU0),
        (MIG, MIG),
        (f"{GPU0}::3", GPU0),  # a time-slicing replica
        ("GPU-5a0b3c5e-6b1c-2d3e-4f5a-6b7c8d9e0f1a", "GPU-5a0b3c5e-6b1c-2d3e-4f5a-6b7c8d9e0f1a"),
        ("0", None),  # deviceIDStrategy: index
        (f"MIG-{GPU0}/7/0", None),  # pre-R470 MIG id: no UUID of a device NVML lists
        ("eth3", None),
        (f"{GPU0}::", None),
    ],
)
def test_device_ids_are_read_as_uuids_or_ignored(device_id: str, uuid: str | None) -> None:
    assert device_uuid(device_id) == uuid


def test_a_gpu_held_by_several_containers_has_several_holders() -> None:
    a = ContainerDevice("ml", "a", "c", "nvidia.com/gpu", f"{GPU0}::0")
    also_a = ContainerDevice("ml", "a", "c", "nvidia.com/gpu", f"{GPU0}::1")
    b = ContainerDevice("ml", "b", "c", "nvidia.com/gpu", f"{GPU0}::2")
    index = ContainerDevice("ml", "x", "c", "nvidia.com/gpu", "3")
    nic = ContainerDevice("ml", "x", "c", "example.com/nic", "eth3")
    holders, unmatched = holders_by_device([a, also_a, index, nic])
    assert holders == {GPU0: frozenset({KubeNames("ml", "a", "c")})} and unmatched == 1
    holders, _ = holders_by_device([a, also_a, b])
    assert holders[GPU0] == {KubeNames("ml", "a", "c"), KubeNames("ml", "b", "c")}


def test_index_device_ids_are_warned_about_once(
    kubelet: FakeKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet.pods = [("ml", "trainer-0", [("pytorch", [("nvidia.com/gpu", ["0", "1"])])])]
    devices = KubeletDevices(kubelet.socket_path)
    try:
        with caplog.at_level(logging.INFO, logger="mfu_agent.attribution.cache"):
            devices.refresh()
            devices.refresh()
        assert devices.health()[0] is True and devices.holders(GPU0) == frozenset()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "deviceIDStrategy=uuid" in warnings[0], warnings
    finally:
        devices.stop()


def test_a_refresh_picks_up_a_change(kubelet: FakeKubelet) -> None:
    kubelet.pods = [("ml", "trainer-0", [("pytorch", [("nvidia.com/gpu", [GPU0])])])]
    devices = KubeletDevices(kubelet.socket_path)
    try:
        devices.refresh()
        assert devices.holders(GPU0) == {KubeNames("ml", "trainer-0", "pytorch")}
        assert devices.holders(GPU1) == frozenset()
        generation = devices.generation
        devices.refresh()
        assert devices.generation == generation, "the same answer is no change"
        kubelet.pods = [("ml", "trainer-1", [("pytorch", [("nvidia.com/gpu", [GPU1])])])]
        devices.refresh()
        assert devices.holders(GPU0) == frozenset()
        assert devices.holders(GPU1) == {KubeNames("ml", "trainer-1", "pytorch")}
        assert devices.generation == generation + 1
        up, errors, last_success = devices.health()
        assert up is True and errors == {} and last_success is not None
    finally:
        devices.stop()


def test_failures_keep_the_last_answer_for_a_while_then_drop_it(kubelet: FakeKubelet) -> None:
    kubelet.pods = [("ml", "trainer-0", [("pytorch", [("nvidia.com/gpu", [GPU0])])])]
    clock = Clock()
    devices = KubeletDevices(kubelet.socket_path, keep_seconds=120, clock=clock)
    try:
        devices.refresh()
        kubelet.fail = grpc.StatusCode.UNAVAILABLE
        clock.now += 60
        devices.refresh()
        assert devices.holders(GPU0) == {KubeNames("ml", "trainer-0", "pytorch")}, "kept within 120 s"
        assert devices.health()[:2] == (False, {"unavailable": 1})
        clock.now += 61
        devices.refresh()
        assert devices.holders(GPU0) == frozenset(), "dropped past 120 s"
        assert devices.health()[:2] == (False, {"unavailable": 2})
        kubelet.fail = None
        devices.refresh()
        assert devices.holders(GPU0) == {KubeNames("ml", "trainer-0", "pytorch")}
        assert devices.health()[0] is True
    finally:
        devices.stop()


def test_a_kubelet_that_does_not_answer_is_cut_off_by_the_deadline(kubelet: FakeKubelet) -> None:
    import threading

    kubelet.hang = threading.Event()
    devices = KubeletDevices(kubelet.socket_path, timeout_seconds=0.2)
    try:
        devices.refresh()
        assert devices.health()[:2] == (False, {"deadline_exceeded": 1})
    finally:
        kubelet.hang.set()
        devices.stop()


def test_a_stopped_server_is_unavailable_and_a_removed_socket_is_counted(kubelet: FakeKubelet) -> None:
    devices = KubeletDevices(kubelet.socket_path, timeout_seconds=1)
    try:
        devices.refresh()
        kubelet.stop()
        Path(kubelet.socket_path).unlink(missing_ok=True)
        Path(kubelet.socket_path).touch()  # a stale file nobody listens on
        devices.refresh()
        assert devices.health()[:2] == (False, {"unavailable": 1})
        Path(kubelet.socket_path).unlink()
        devices.refresh()
        assert devices.health()[:2] == (False, {"unavailable": 1, "no_socket": 1})
    finally:
        devices.stop()


def test_no_socket_means_off_and_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    devices = KubeletDevices(str(tmp_path / "kubelet.sock"))
    with caplog.at_level(logging.INFO, logger="mfu_agent.attribution.cache"):
        for _ in range(5):
            devices.refresh()
    assert devices.health() == (None, {}, None) and not devices.active and devices.series() == 0
    lines = [r for r in caplog.records if r.name == "mfu_agent.attribution.cache"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "kubelet.sock" in lines[0].getMessage()


# -- the real agent --------------------------------------------------------------------------------

GIB = 1024**3
POD_38810 = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"  # tests/fixtures/proc: the cgroups of these pids
POD_41235 = "3f1c2a9e-8b7d-4c6e-9a2f-1d3b5c7e9f01"
POD_52017 = "b2e4d6f8-1a3c-4e5f-8a7b-9c0d1e2f3a4b"
POD_63001 = "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a"
POD_27745 = "c0ffee00-dead-4bee-f00d-123456789abc"

NODE = {
    "devices": [
        {"processes": [[38810, 30 * GIB]]},  # GPU 0: one pod's process, the GPU held by its container
        {"processes": [[41235, 20 * GIB], [52017, 10 * GIB]]},  # GPU 1: time-sliced by two pods
        {"processes": [[63001, 20 * GIB], [1337, GIB]]},  # GPU 2: a pod's process and a host process
        {"processes": [[27745, 20 * GIB], [52017, GIB]]},  # GPU 3: held by one pod, used by two
        {
            "mig_mode": 1,
            "mig_devices": [{"profile": "1g.10gb", "gpu_instance_id": 7, "processes": [[41235, 5 * GIB]]}],
        },
    ]
}
PODS = [
    ("training", "llama-0", [("pytorch", [("nvidia.com/gpu", [GPU0])])]),
    ("research", "a-0", [("main", [("nvidia.com/gpu.shared", [f"{GPU1}::0"])])]),
    ("research", "b-0", [("main", [("nvidia.com/gpu.shared", [f"{GPU1}::1"])])]),
    ("serving", "infer-0", [("server", [("nvidia.com/gpu", [GPU2])])]),
    ("serving", "infer-1", [("server", [("nvidia.com/gpu", [GPU3])])]),
    ("batch", "mig-0", [("worker", [("nvidia.com/mig-1g.10gb", [MIG])])]),
]


@pytest.fixture(scope="module")
def named_agent(tmp_path_factory: pytest.TempPathFactory):
    with FakeKubelet(pods=PODS) as server:
        tmp = tmp_path_factory.mktemp("kubelet-agent")
        agent = AgentProcess(
            "--proc-root",
            str(FIXTURES),
            "--kubelet-socket",
            server.socket_path,
            fake_nvml=NODE,
            tmp=tmp,
        )
        with agent:
            # The kubelet is asked in the agent's own thread and joined per snapshot: wait until the
            # first answer is in the exported names (a loaded machine can take a few seconds).
            deadline = time.monotonic() + 30
            while not agent.series("mfu_gpu_process_info", gpu="0", pid="38810", pod="llama-0"):
                assert time.monotonic() < deadline, agent.series("mfu_gpu_process_info", gpu="0")
                time.sleep(0.2)
            yield agent, server


def _process(agent: AgentProcess, gpu: str, pid: int) -> dict[str, str]:
    found = agent.series("mfu_gpu_process_info", gpu=gpu, pid=str(pid))
    assert len(found) == 1, found
    labels = dict(next(iter(found)))
    return {k: labels[k] for k in ("pod_uid", "namespace", "pod", "container")}


def test_gpu_processes_are_named_only_where_one_container_can_be_the_owner(named_agent) -> None:
    agent, _ = named_agent
    assert _process(agent, "0", 38810) == {
        "pod_uid": POD_38810,
        "namespace": "training",
        "pod": "llama-0",
        "container": "pytorch",
    }
    # GPU 1 is held by two containers: which is which cannot be told, so no names, pod UIDs kept.
    assert _process(agent, "1", 41235) == {"pod_uid": POD_41235, "namespace": "", "pod": "", "container": ""}
    assert _process(agent, "1", 52017) == {"pod_uid": POD_52017, "namespace": "", "pod": "", "container": ""}
    # GPU 2: the pod's process is named; a host process on it is not the pod's.
    assert _process(agent, "2", 63001)["pod"] == "infer-0"
    assert _process(agent, "2", 1337) == {"pod_uid": "", "namespace": "", "pod": "", "container": ""}
    # GPU 3 is held by one container, but processes of two pods run on it: no names for either.
    assert _process(agent, "3", 27745) == {"pod_uid": POD_27745, "namespace": "", "pod": "", "container": ""}
    assert _process(agent, "3", 52017)["pod"] == ""
    # A MIG device is held by its own UUID.
    assert _process(agent, "4", 41235) == {
        "pod_uid": POD_41235,
        "namespace": "batch",
        "pod": "mig-0",
        "container": "worker",
    }
    assert agent.series("mfu_agent_kubelet_up") == {frozenset(): 1.0}
    assert agent.series("mfu_agent_kubelet_errors_total") == {}


def test_v1_gpus_carries_the_names(named_agent) -> None:
    agent, _ = named_agent
    gpus = httpx.get(agent.url + "/v1/gpus", timeout=10).json()["gpus"]
    by_uuid = {g["uuid"]: g for g in gpus}
    (process,) = by_uuid[GPU0]["processes"]
    assert {k: process[k] for k in ("pid", "pod_uid", "namespace", "pod", "container")} == {
        "pid": 38810,
        "pod_uid": POD_38810,
        "namespace": "training",
        "pod": "llama-0",
        "container": "pytorch",
    }
    (mig_process,) = by_uuid[MIG]["processes"]
    assert mig_process["pod"] == "mig-0"


def _report(agent: AgentProcess, **fields) -> None:
    body = {"model_flops_total": 1e15, "tokens_total": 1000, **fields}
    response = httpx.post(agent.url + "/v1/reports", content=json.dumps(body), timeout=10)
    assert response.status_code == 202, response.text


def test_reporting_ranks_are_named(named_agent) -> None:
    agent, _ = named_agent
    _report(agent, job_id="by-pid", rank=0, pid=38810)
    reported = {"pod": "hostname-not-pod", "namespace": "x"}
    _report(agent, job_id="by-uuid", rank=0, gpus=[GPU2], labels=reported)
    _report(agent, job_id="on-mig", rank=0, gpus=[MIG])
    _report(agent, job_id="shared", rank=0, gpus=[GPU1], labels={"pod": "a-0", "namespace": "research"})

    def info(job_id: str) -> dict[str, str]:
        (labels,) = agent.series("mfu_job_info", job_id=job_id)
        labels = dict(labels)
        return {k: labels[k] for k in ("attributed_by", "pod_uid", "namespace", "pod", "container")}

    assert info("by-pid") == {
        "attributed_by": "pid",
        "pod_uid": POD_38810,
        "namespace": "training",
        "pod": "llama-0",
        "container": "pytorch",
    }
    # The kubelet's names win over the report's own labels: it knows who holds the GPU.
    assert info("by-uuid") == {
        "attributed_by": "gpus",
        "pod_uid": "",
        "namespace": "serving",
        "pod": "infer-0",
        "container": "server",
    }
    assert info("on-mig")["pod"] == "mig-0" and info("on-mig")["container"] == "worker"
    # A GPU two containers hold: the report's labels stand, and no container is made up.
    assert info("shared") == {
        "attributed_by": "gpus",
        "pod_uid": "",
        "namespace": "research",
        "pod": "a-0",
        "container": "",
    }
    ranks = {job_id: job["ranks"][0] for job_id, job in agent.jobs().items()}
    assert ranks["by-uuid"]["owner"] == {
        "pod_uid": "",
        "container_id": "",
        "slurm_job_id": "",
        "namespace": "serving",
        "pod": "infer-0",
        "container": "server",
    }
    assert ranks["by-uuid"]["labels"] == {"pod": "hostname-not-pod", "namespace": "x"}, "as reported"
    assert ranks["by-pid"]["owner"]["pod_uid"] == POD_38810


def test_an_agent_without_the_socket_says_so_once_and_exports_no_kubelet_series(tmp_path: Path) -> None:
    missing = tmp_path / "no-kubelet.sock"
    with AgentProcess("--kubelet-socket", str(missing)) as agent:
        assert "mfu_agent_kubelet" not in agent.metrics()
    output = agent.output or ""
    assert output.count("no kubelet PodResources socket") == 1, output
