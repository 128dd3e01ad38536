"""Shared by the client test files: the environment variables the client reads (cleared for every
test, so the host's never leak in) and a factory of Reporters that are closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mfu_agent.client import Reporter

CLIENT_ENV = (
    "MFU_AGENT_URL",
    "MFU_JOB_ID",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "PMIX_RANK",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "MFU_AGENT_TOKEN",
    "MFU_AGENT_TOKEN_FILE",
    "POD_NAME",
    "POD_NAMESPACE",
    "KUBERNETES_SERVICE_HOST",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
)


def clear_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


def reporter_factory(**defaults: Any) -> Iterator[Callable[..., Reporter]]:
    """For a fixture: `yield from reporter_factory(job_id=...)`; keyword arguments are defaults."""
    created: list[Reporter] = []

    def make(**kwargs: Any) -> Reporter:
        reporter = Reporter(**{**defaults, **kwargs})
        created.append(reporter)
        return reporter

    yield make
    for reporter in created:
        reporter.close(timeout=0.5)
