"""A clock tests move by hand, and the agent in process on the fake libnvidia-ml on it: one sample per
tick()."""

from __future__ import annotations

from prometheus_client import generate_latest

from mfu_agent.agent import Agent, AgentOptions
from mfu_agent.gpu.nvml_backend import NvmlBackend


class Clock:
    """A clock a test moves by hand (`clock.now += 10`), for the code's `clock=` arguments."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

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
