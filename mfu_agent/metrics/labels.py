"""The labels of a device's series. A whole GPU has {gpu, uuid}; a MIG device has its parent's index in
`gpu`, its MIG UUID in `uuid`, and three more labels: `mig_profile` ("1g.10gb"), `gpu_instance_id` and
`compute_instance_id`. Whole GPUs do not carry those three at all (in PromQL an absent label equals "",
so `{mig_profile=""}` selects whole GPUs and `{mig_profile!=""}` MIG devices)."""

from __future__ import annotations

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from ..gpu.model import GpuIdentity

MIG_LABELS = ("mig_profile", "gpu_instance_id", "compute_instance_id")


def device_labels(identity: GpuIdentity, **extra: str) -> dict[str, str]:
    labels = {"gpu": str(identity.index), "uuid": identity.uuid}
    mig = identity.mig
    if mig is not None:
        labels["mig_profile"] = mig.profile
        labels["gpu_instance_id"] = str(mig.gpu_instance_id)
        labels["compute_instance_id"] = str(mig.compute_instance_id)
    labels.update(extra)
    return labels


def add_sample(family: Metric, labels: dict[str, str], value: float) -> None:
    """Like add_metric, with labels by name: a family's series may then differ in label names (the MIG
    labels), which the exposition format allows."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value, None))
