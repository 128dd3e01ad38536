"""The agent in process on the fake libnvidia-ml, on a clock the test moves: one sample per tick()."""

from __future__ import annotations

from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.nvml_backend import NvmlBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def started(clock: Clock) -> tuple[NvmlBackend, Agent]:
    backend = NvmlBackend(clock=clock)
    backend.start()
    return backend, Agent(backend, AgentOptions(interval=1.0))


def tick(agent: Agent, clock: Clock, seconds: float = 1.0) -> str:
    """Moves the clock, takes one sample, and returns the page."""
    clock.now += seconds
    agent.sampler.sample_once()
    return generate_latest(agent.registry).decode()
