"""The synthetic training job behind `mfu-agent demo`: eight ranks reporting through the real client."""

from __future__ import annotations

import math
import random
import threading

from .client import Reporter
from .specs import peak_flops

DEMO_JOB_ID = "demo-llama-8b"
TOKENS_PER_STEP = 8 * 4096  # micro-batch of 8 sequences of 4096 tokens per rank
RECOMPUTE_FACTOR = 4 / 3  # activation checkpointing redoes the forward pass: HFU > MFU


class SyntheticJob:
    """Ranks 0..n-1 on GPUs 0..n-1 at a believable, wandering MFU; the busy-but-idle GPUs' ranks crawl."""

    def __init__(
        self,
        url: str,
        device_name: str,
        gpu_count: int,
        slow_gpus: set[int],
        step_seconds: float = 0.5,
        seed: int = 1,
    ) -> None:
        self.url = url
        self.peak = peak_flops(device_name, "bf16") or 989.4e12
        self.gpu_count = gpu_count
        self.slow_gpus = slow_gpus
        self.step_seconds = step_seconds
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mfu-demo-job", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        reporters = [
            Reporter(
                job_id=DEMO_JOB_ID,
                rank=i,
                local_rank=i,
                world_size=self.gpu_count,
                gpus=[i],
                dtype="bf16",
                url=self.url,
                interval=2.0,
                labels={"hostname": "demo-node"},
            )
            for i in range(self.gpu_count)
        ]
        t = 0.0
        try:
            while not self._stop.wait(self.step_seconds):
                t += self.step_seconds
                for i, reporter in enumerate(reporters):
                    if i in self.slow_gpus:
                        mfu = 0.04 + 0.01 * math.sin(t / 7)
                    else:
                        mfu = 0.42 + 0.05 * math.sin(t / 40 + i) + self._rng.uniform(-0.015, 0.015)
                    flops = mfu * self.peak * self.step_seconds
                    tokens = TOKENS_PER_STEP * mfu / 0.42
                    reporter.step(model_flops=flops, tokens=tokens, hardware_flops=flops * RECOMPUTE_FACTOR)
        finally:
            for reporter in reporters:
                reporter.close(timeout=0)  # the agent is shutting down with the job: no final delivery
