"""A client of the kubelet's PodResources v1 API: which devices each container of each pod was given.

The kubelet serves it over gRPC on a unix socket (default /var/lib/kubelet/pod-resources/kubelet.sock);
`List` answers with every pod on the node, its containers and their devices as the device plugins named
them (the NVIDIA device plugin: GPU and MIG UUIDs). The messages are the subset written down in
podresources_v1.proto beside this file, built at import time from the descriptor below rather than from
generated `_pb2` code: generated code pins the protobuf runtime it was made with (newer protoc output
refuses older runtimes and vice versa), while a descriptor is plain data every protobuf 4.21+ runtime
loads the same way. The call goes through `channel.unary_unary` with the messages' own (de)serialisers,
so no generated gRPC stub is needed either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "LIST_METHOD",
    "MESSAGES",
    "SERVICE",
    "ContainerDevice",
    "ListPodResourcesRequest",
    "ListPodResourcesResponse",
    "PodResourcesClient",
    "allocations",
]

SERVICE = "v1.PodResourcesLister"
LIST_METHOD = f"/{SERVICE}/List"
DEFAULT_TIMEOUT_SECONDS = 2.0
# A node with hundreds of pods answers in well under 1 MiB; gRPC's default cap (4 MiB) is kept apart
# from that by a margin, but a busy node with many devices per pod should never be cut off.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# message -> its fields as (name, number, type, repeated): type "string" or another message's name.
# Upstream names and numbers (podresources_v1.proto); tests/test_podresources.py compares the two.
MESSAGES: dict[str, tuple[tuple[str, int, str, bool], ...]] = {
    "ListPodResourcesRequest": (),
    "ListPodResourcesResponse": (("pod_resources", 1, "PodResources", True),),
    "PodResources": (
        ("name", 1, "string", False),
        ("namespace", 2, "string", False),
        ("containers", 3, "ContainerResources", True),
    ),
    "ContainerResources": (
        ("name", 1, "string", False),
        ("devices", 2, "ContainerDevices", True),
    ),
    "ContainerDevices": (
        ("resource_name", 1, "string", False),
        ("device_ids", 2, "string", True),
    ),
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="mfu_agent/attribution/podresources_v1.proto", package="v1", syntax="proto3"
    )
    for message_name, fields in MESSAGES.items():
        message = proto.message_type.add(name=message_name)
        for name, number, kind, repeated in fields:
            entry = message.field.add(
                name=name,
                number=number,
                label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
            )
            if kind == "string":
                entry.type = field.TYPE_STRING
            else:
                entry.type = field.TYPE_MESSAGE
                entry.type_name = f".v1.{kind}"
    service = proto.service.add(name="PodResourcesLister")
    service.method.add(
        name="List", input_type=".v1.ListPodResourcesRequest", output_type=".v1.ListPodResourcesResponse"
    )
    return proto


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()  # our own pool: no clash with any other "v1" package
    pool.Add(_file_descriptor())
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:  # protobuf before 4.22
        factory = message_factory.MessageFactory(pool)
        get_class = factory.GetPrototype
    return {name: get_class(pool.FindMessageTypeByName(f"v1.{name}")) for name in MESSAGES}


_CLASSES = _message_classes()
ListPodResourcesRequest = _CLASSES["ListPodResourcesRequest"]
ListPodResourcesResponse = _CLASSES["ListPodResourcesResponse"]
PodResources = _CLASSES["PodResources"]
ContainerResources = _CLASSES["ContainerResources"]
ContainerDevices = _CLASSES["ContainerDevices"]


@dataclass(frozen=True, slots=True)
class ContainerDevice:
    """One device id given to one container, as the kubelet lists it."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_id: str


def allocations(response: Any) -> list[ContainerDevice]:
    """Every (pod, container, device id) of a ListPodResourcesResponse."""
    return [
        ContainerDevice(pod.namespace, pod.name, container.name, devices.resource_name, device_id)
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
        for device_id in devices.device_ids
    ]


class PodResourcesClient:
    """One gRPC channel to the kubelet's socket; `list()` makes one List call with a deadline.

    Raises grpc.RpcError (its `code()` says why: UNAVAILABLE when the kubelet is not listening,
    DEADLINE_EXCEEDED when it does not answer in time) or google.protobuf.message.DecodeError."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        import grpc  # here, not at import: an agent off Kubernetes never loads gRPC

        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            "unix://" + os.path.abspath(socket_path),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        self._list = self._channel.unary_unary(
            LIST_METHOD,
            request_serializer=ListPodResourcesRequest.SerializeToString,
            response_deserializer=ListPodResourcesResponse.FromString,
        )

    def list(self) -> list[ContainerDevice]:
        return allocations(self._list(ListPodResourcesRequest(), timeout=self.timeout))

    def close(self) -> None:
        self._channel.close()
