"""A real gRPC server on a unix socket standing in for the kubelet's PodResources v1 API.

Its answers are encoded by hand here, field numbers from upstream's api.proto (k8s.io/kubelet,
pkg/apis/podresources/v1), with fields the agent does not read (cpu_ids, memory, topology) put in as a
newer kubelet would, so the agent's own message definitions are checked against the wire format rather
than against themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc

# A pod: (namespace, name, [(container, [(resource_name, [device ids])])])
Pod = tuple[str, str, list[tuple[str, list[tuple[str, list[str]]]]]]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _bytes_field(number, text.encode())


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def encode_list_response(pods: list[Pod]) -> bytes:
    """ListPodResourcesResponse { repeated PodResources pod_resources = 1; }"""
    out = b""
    for namespace, name, containers in pods:
        pod = _str_field(1, name) + _str_field(2, namespace)  # PodResources.name = 1, namespace = 2
        for container_name, devices in containers:
            container = _str_field(1, container_name)  # ContainerResources.name = 1
            for resource_name, device_ids in devices:
                # ContainerDevices.resource_name = 1, device_ids = 2, topology = 3 {nodes = 1 {ID = 1}}
                entry = _str_field(1, resource_name) + b"".join(_str_field(2, d) for d in device_ids)
                entry += _bytes_field(3, _bytes_field(1, _varint_field(1, 1)))
                container += _bytes_field(2, entry)  # ContainerResources.devices = 2
            container += _varint_field(3, 7)  # ContainerResources.cpu_ids = 3 (not read)
            # ContainerResources.memory = 4: ContainerMemory {memory_type = 1, size = 2} (not read)
            container += _bytes_field(4, _str_field(1, "memory") + _varint_field(2, 1 << 30))
            pod += _bytes_field(3, container)  # PodResources.containers = 3
        out += _bytes_field(1, pod)
    return out


@dataclass
class FakeKubelet:
    """Serves `pods` on `socket_path`; `fail` (a grpc.StatusCode) makes List fail, `hang` makes it wait
    until released. `calls` counts the List calls answered or failed."""

    pods: list[Pod] = field(default_factory=list)
    fail: grpc.StatusCode | None = None
    calls: int = 0
    directory: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="kubelet-", dir="/tmp"))
    hang: threading.Event | None = None

    def __post_init__(self) -> None:
        self.socket_path = os.path.join(self.directory, "kubelet.sock")  # short: unix paths cap at 107
        self._server: grpc.Server | None = None

    def _list(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        if self.hang is not None:
            self.hang.wait(30)
        if self.fail is not None:
            context.abort(self.fail, "the test made List fail")
        return encode_list_response(self.pods)

    def start(self) -> FakeKubelet:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list, request_deserializer=bytes, response_serializer=bytes
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port("unix://" + self.socket_path)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self.hang is not None:
            self.hang.set()
        if self._server is not None:
            self._server.stop(None).wait(5)
            self._server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
