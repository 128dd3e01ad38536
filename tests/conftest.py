"""Shared fixtures: an agent on simulated GPUs, served for real by uvicorn on a loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fakenvml import fake_nvml  # noqa: F401  (the NVML fixture, re-exported for every test module)

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.app import create_app
from mfu_agent.gpu.simulated import SimulatedBackend


def pytest_configure(config: pytest.Config) -> None:
    """The client names its device from CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES; on a GPU runner or
    in a GPU pod these hold the host's UUIDs, which the tests' simulated and fake GPUs do not have. Tests
    (and every process they start, module fixtures included) see none unless they set them."""
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        os.environ.pop(name, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(agent: Agent, **app_kwargs) -> Iterator[str]:
    """Runs the real app under uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(agent, **app_kwargs),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def sim_backend() -> SimulatedBackend:
    return SimulatedBackend("4xNVIDIA H100 80GB HBM3")


@pytest.fixture
def agent(sim_backend: SimulatedBackend) -> Agent:
    return Agent(sim_backend, AgentOptions(interval=0.2, node_name="test-node"))


@pytest.fixture
def served(agent: Agent) -> Iterator[tuple[Agent, httpx.Client]]:
    with serve(agent) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield agent, client
