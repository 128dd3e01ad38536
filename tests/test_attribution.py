"""GPU process attribution from /proc/<pid>/cgroup: Kubernetes pods/containers and Slurm jobs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mfu_agent.attribution import ProcessAttribution, attribute_pid, parse_cgroup

FIXTURES = Path(__file__).parent / "fixtures" / "proc"

# pid -> (pod_uid, container_id, slurm_job_id), one per fixture tree under tests/fixtures/proc.
EXPECTED: dict[int, tuple[str, str, str]] = {
    # containerd, systemd cgroup driver, cgroup v2, burstable QoS (uid written with underscores)
    41235: (
        "3f1c2a9e-8b7d-4c6e-9a2f-1d3b5c7e9f01",
        "4a9c1e7b2d8f3a6c5e0b9d7f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c",
        "",
    ),
    # containerd, cgroupfs driver, cgroup v1 (hybrid, "0::/"), guaranteed QoS
    52017: (
        "b2e4d6f8-1a3c-4e5f-8a7b-9c0d1e2f3a4b",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "",
    ),
    # CRI-O, systemd driver, cgroup v2, besteffort QoS
    63001: (
        "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "",
    ),
    # docker (dockershim / cri-dockerd), cgroupfs driver, cgroup v1, burstable QoS
    27745: (
        "c0ffee00-dead-4bee-f00d-123456789abc",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "",
    ),
    # containerd, systemd driver, cgroup v1, guaranteed QoS
    38810: (
        "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
        "",
    ),
    # Slurm, cgroup v1: step_0 and the batch step
    71001: ("", "", "12345"),
    71002: ("", "", "12346"),
    # Slurm, cgroup v2 (slurmstepd.scope)
    81234: ("", "", "4242"),
    # host processes: a login session (v2) and a system service (v1 + unified)
    2210: ("", "", ""),
    1337: ("", "", ""),
    # docker run --gpus outside Kubernetes: a container but no pod
    91500: ("", "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4", ""),
}


def test_every_fixture_has_an_expectation() -> None:
    on_disk = {int(p.name) for p in FIXTURES.iterdir() if (p / "cgroup").is_file()}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_attribute_fixture(pid: int) -> None:
    pod_uid, container_id, job = EXPECTED[pid]
    got = attribute_pid(pid, proc_root=FIXTURES)
    assert got == ProcessAttribution(pod_uid=pod_uid, container_id=container_id, slurm_job_id=job)
    # str proc_root works the same as a Path
    assert attribute_pid(pid, proc_root=str(FIXTURES)) == got


def test_attribution_shape() -> None:
    a = attribute_pid(41235, proc_root=FIXTURES)
    assert [f.name for f in dataclasses.fields(a)] == ["pod_uid", "container_id", "slurm_job_id"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.pod_uid = "x"  # type: ignore[misc]
    assert not hasattr(a, "__dict__")  # slots
    assert a and not ProcessAttribution()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # kubelet cgroupfs driver, burstable and besteffort, containerd ids without prefix
        (
            "0::/kubepods/besteffort/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/" + "ab" * 32,
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "ab" * 32, ""),
        ),
        # docker runtime under the systemd driver (cri-dockerd)
        (
            "0::/kubepods.slice/kubepods-burstable.slice/"
            "kubepods-burstable-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice/docker-" + "cd" * 32 + ".scope",
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "cd" * 32, ""),
        ),
        # cri-o with cgroupfs driver
        (
            "0::/kubepods/burstable/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/crio-" + "ef" * 32,
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "ef" * 32, ""),
        ),
        # upper-case ids are canonicalised to lower case
        (
            "0::/kubepods/podA0B1C2D3-E4F5-4A6B-8C7D-9E0F1A2B3C4D/" + "AB" * 32,
            ("a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", "ab" * 32, ""),
        ),
        # static (mirror) pod: the kubelet's UID is 32 hex without dashes
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            + "0123456789abcdef" * 2
            + ".slice/cri-containerd-"
            + "12" * 32
            + ".scope",
            ("0123456789abcdef" * 2, "12" * 32, ""),
        ),
        # kind / nested kubelet: kubepods below another slice
        (
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            "kubelet-kubepods-besteffort-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice/cri-containerd-"
            + "34" * 32
            + ".scope",
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "34" * 32, ""),
        ),
        # read from inside a private cgroup namespace: relative path with ".."
        (
            "0::/../../kubepods-besteffort-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice/cri-containerd-"
            + "56" * 32
            + ".scope",
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "56" * 32, ""),
        ),
        # pod-level cgroup (the pause/sandbox or a process in the pod slice): pod, no container
        (
            "0::/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice",
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "", ""),
        ),
        # CRI-O's conmon monitor is not the container
        (
            "0::/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d.slice/crio-conmon-"
            + "78" * 32
            + ".scope",
            ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "", ""),
        ),
        # Slurm with a per-node prefix (multiple slurmd) and nested cgroup v2 user scope
        ("4:memory:/slurm_node07/uid_2001/job_987654/step_extern/task_0", ("", "", "987654")),
        ("0::/system.slice/slurmstepd.scope/job_55/step_batch/user/task_0", ("", "", "55")),
        # podman outside Kubernetes
        ("0::/machine.slice/libpod-" + "9a" * 32 + ".scope", ("", "9a" * 32, "")),
        # docker v1 cgroupfs outside Kubernetes
        ("12:memory:/docker/" + "bc" * 32, ("", "bc" * 32, "")),
        # no kubepods ancestor: a "pod..." directory elsewhere is not a pod
        ("0::/user.slice/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", ("", "", "")),
        # no slurm ancestor: job_N elsewhere is not a Slurm job
        ("0::/system.slice/job_12345/step_0", ("", "", "")),
        # a bare 64-hex directory that is not under a pod or docker
        ("0::/system.slice/" + "de" * 32, ("", "", "")),
        # wrong id lengths
        ("0::/kubepods/pod0a1b2c3d-4e5f-4a6b-8c7d/" + "ab" * 31, ("", "", "")),
        ("0::/system.slice/docker-" + "ab" * 33 + ".scope", ("", "", "")),
        # mixed separators in a uid are not a uid
        ("0::/kubepods/pod0a1b2c3d-4e5f_4a6b-8c7d-9e0f1a2b3c4d/" + "ab" * 32, ("", "", "")),
    ],
)
def test_parse_cgroup_variants(line: str, expected: tuple[str, str, str]) -> None:
    assert parse_cgroup(line + "\n") == ProcessAttribution(*expected)


def test_v1_pod_and_container_on_different_lines() -> None:
    # Some hierarchies only reach the pod level; the container id comes from another line of the pod.
    uid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    text = (
        f"12:memory:/kubepods/burstable/pod{uid}\n"
        f"11:devices:/kubepods/burstable/pod{uid}/{'ab' * 32}\n"
        "1:name=systemd:/system.slice/containerd.service\n"
    )
    assert parse_cgroup(text) == ProcessAttribution(uid, "ab" * 32, "")


def test_v2_line_is_preferred_over_v1_lines() -> None:
    v2_uid = "11111111-2222-4333-8444-555555555555"
    v1_uid = "66666666-7777-4888-8999-aaaaaaaaaaaa"
    text = f"12:memory:/kubepods/pod{v1_uid}/{'01' * 32}\n0::/kubepods/pod{v2_uid}/{'02' * 32}\n"
    assert parse_cgroup(text) == ProcessAttribution(v2_uid, "02" * 32, "")


def test_root_unified_line_does_not_hide_v1_paths() -> None:
    text = "3:cpuset:/slurm/uid_0/job_7/step_0\n0::/\n"
    assert parse_cgroup(text).slurm_job_id == "7"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "garbage",
        "0::",
        "0::relative/kubepods/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",  # path must be absolute
        "x:memory:/kubepods/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",  # hierarchy id not a number
        "kubepods/pod0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",  # not a cgroup line at all
        "\x00\xff\ufffd:::::",
        "0::/" + "a/" * 10000,
    ],
)
def test_malformed_text_gives_empty(text: str) -> None:
    assert parse_cgroup(text) == ProcessAttribution()


def test_parse_cgroup_non_string_gives_empty() -> None:
    assert parse_cgroup(None) == ProcessAttribution()  # type: ignore[arg-type]
    assert parse_cgroup(b"0::/slurm/job_1") == ProcessAttribution()  # type: ignore[arg-type]


def test_crlf_and_whitespace_tolerated() -> None:
    text = "12:memory:/slurm/uid_1/job_31/step_0\r\n 0::/ \r\n"
    assert parse_cgroup(text).slurm_job_id == "31"


@pytest.mark.parametrize("pid", [0, -1, True, "41235", 41235.0, None])
def test_bad_pid_gives_empty(pid: object) -> None:
    assert attribute_pid(pid, proc_root=FIXTURES) == ProcessAttribution()  # type: ignore[arg-type]


def test_missing_pid_and_root_give_empty(tmp_path: Path) -> None:
    assert attribute_pid(999999, proc_root=FIXTURES) == ProcessAttribution()
    assert attribute_pid(41235, proc_root=tmp_path / "nope") == ProcessAttribution()


def test_unreadable_or_odd_files_give_empty(tmp_path: Path) -> None:
    # cgroup is a directory
    (tmp_path / "10" / "cgroup").mkdir(parents=True)
    assert attribute_pid(10, proc_root=tmp_path) == ProcessAttribution()
    # not valid UTF-8: decoded with replacement, the valid line still counts
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "cgroup").write_bytes(b"\xff\xfe\n0::/slurm/uid_1/job_77/step_0\n")
    assert attribute_pid(11, proc_root=tmp_path) == ProcessAttribution(slurm_job_id="77")
    # a dangling symlink (process exited between listing and reading)
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "cgroup").symlink_to(tmp_path / "gone")
    assert attribute_pid(12, proc_root=tmp_path) == ProcessAttribution()
    # a path containing NUL is rejected by the OS layer, not raised
    assert attribute_pid(41235, proc_root="bad\x00root") == ProcessAttribution()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode")
def test_permission_denied_gives_empty(tmp_path: Path) -> None:
    f = tmp_path / "13" / "cgroup"
    f.parent.mkdir()
    f.write_text("0::/slurm/uid_1/job_1/step_0\n")
    f.chmod(0)
    assert attribute_pid(13, proc_root=tmp_path) == ProcessAttribution()


def test_own_process_never_raises() -> None:
    # The real /proc of the test runner: whatever it holds, attribution returns a value.
    got = attribute_pid(os.getpid())
    assert isinstance(got, ProcessAttribution)
    assert isinstance(got.pod_uid, str) and isinstance(got.container_id, str)


# -- joined with the kubelet's device holders (attribution/owners.py) ------------------------------


@pytest.fixture
def joined():
    """Three simulated GPUs with fixture pids on them, the kubelet (a real gRPC server) naming holders."""
    from kubelet_server import FakeKubelet

    from mfu_agent.attribution.cache import KubeletDevices
    from mfu_agent.attribution.owners import Attribution
    from mfu_agent.gpu.simulated import SimulatedBackend
    from mfu_agent.sampler import Sampler

    backend = SimulatedBackend("3xNVIDIA H100 80GB HBM3")
    backend.set_processes(0, [(38810, 30 << 30), (81234, 1 << 30)])  # a pod's process, a Slurm job's
    backend.set_processes(1, [(38810, 10 << 30)])
    backend.set_processes(2, [(41235, 10 << 30)])
    snapshot = Sampler(backend, 1.0).sample_once()
    uuids = [g.uuid for g in snapshot.gpus]
    pods = [
        ("ml", "llama-0", [("pytorch", [("nvidia.com/gpu", [uuids[0], uuids[1]])])]),
        ("ml", "other-0", [("main", [("nvidia.com/gpu", [uuids[2]])])]),
    ]
    with FakeKubelet(pods=pods) as server:
        devices = KubeletDevices(server.socket_path)
        devices.refresh()
        yield Attribution(str(FIXTURES), devices), snapshot, uuids, server, devices
        devices.stop()


def test_a_pods_process_takes_its_devices_names_and_a_slurm_process_does_not(joined) -> None:
    attribution, snapshot, uuids, *_ = joined
    found = attribution.of(snapshot)
    pod = found.process(uuids[0], 38810)
    assert (pod.pod_uid, pod.namespace, pod.pod, pod.container) == (
        EXPECTED[38810][0],
        "ml",
        "llama-0",
        "pytorch",
    )
    slurm = found.process(uuids[0], 81234)
    assert (slurm.slurm_job_id, slurm.pod) == ("4242", "")
    assert found.process(uuids[0], 999999).as_dict() == dict.fromkeys(slurm.as_dict(), "")


def test_a_rank_is_named_by_pid_or_by_its_gpus_never_by_local_rank(joined) -> None:
    attribution, snapshot, uuids, *_ = joined
    found = attribution.of(snapshot)
    by_pid = found.rank(uuids[:2], 38810, "pid")
    assert (by_pid.pod_uid, by_pid.pod) == (EXPECTED[38810][0], "llama-0")
    assert found.rank(uuids[:2], None, "gpus").pod == "llama-0", "two GPUs, one holder"
    assert found.rank(uuids[1:], None, "gpus").pod == "", "two GPUs of two different pods: no names"
    assert found.rank(uuids[:1], None, "local_rank").pod == "", "the GPU itself is an assumption"


def test_the_answer_follows_the_kubelet_and_without_it_cgroups_stand(joined) -> None:
    from mfu_agent.attribution.owners import Attribution

    attribution, snapshot, uuids, server, devices = joined
    assert attribution.of(snapshot) is attribution.of(snapshot), "one join per snapshot"
    server.pods = [("ml", "llama-1", [("pytorch", [("nvidia.com/gpu", [uuids[0]])])])]
    devices.refresh()
    assert attribution.of(snapshot).process(uuids[0], 38810).pod == "llama-1"
    alone = Attribution(str(FIXTURES)).of(snapshot).process(uuids[0], 38810)
    assert (alone.pod_uid, alone.container_id, alone.pod) == (*EXPECTED[38810][:2], "")
