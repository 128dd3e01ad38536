"""The synthetic training jobs behind `mfu-agent demo`, reporting through the real client: a job with
one rank per whole GPU, and a small one on a MIG device (named by its MIG UUID)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .client import Reporter
from .gpu.model import GpuIdentity
from .gpu.peaks import device_peaks
from .specs import PeakTable

DEMO_JOB_ID = "demo-llama-8b"
TOKENS_PER_STEP = 8 * 4096  # micro-batch of 8 sequences of 4096 tokens per rank
DEMO_MIG_JOB_ID = "demo-llama-1b-mig"  # a small fine-tune on one MIG device
MIG_TOKENS_PER_STEP = 4 * 2048
RECOMPUTE_FACTOR = 4 / 3  # activation checkpointing redoes the forward pass: HFU > MFU
FALLBACK_PEAK = 989.4e12  # H100 SXM dense bf16, for a whole GPU of a model without a known peak


@dataclass(frozen=True)
class DemoRank:
    job_id: str
    rank: int
    world_size: int
    gpu: int | str  # a whole GPU's index, or a MIG device's UUID
    peak: float  # the device's dense bf16 FLOP/s (a MIG device's: its share of the GPU's SMs)
    mfu: float  # the MFU it wanders around
    tokens_per_step: int
    slow: bool = False  # on a busy-but-idle GPU: it crawls


class SyntheticJob:
    """Ranks 0..ranks-1 of DEMO_JOB_ID on whole GPUs 0..ranks-1 at a believable, wandering MFU (the
    ranks on `slow_gpus` crawl), and DEMO_MIG_JOB_ID's one rank on the first MIG device, if any."""

    def __init__(
        self,
        url: str,
        devices: Sequence[GpuIdentity],
        ranks: int,
        slow_gpus: set[int],
        step_seconds: float = 0.5,
        seed: int = 1,
    ) -> None:
        self.url = url
        self.step_seconds = step_seconds
        table = PeakTable()
        in_mig_mode = {d.mig.parent_uuid for d in devices if d.mig is not None}
        whole = {d.index: d for d in devices if d.mig is None and d.uuid not in in_mig_mode}
        missing = [i for i in range(ranks) if i not in whole]
        if missing:
            raise ValueError(f"the demo job needs whole GPUs 0..{ranks - 1}; GPU(s) {missing} are not")
        self.ranks = [
            DemoRank(
                DEMO_JOB_ID,
                i,
                ranks,
                i,
                device_peaks(whole[i], table).get("bf16") or FALLBACK_PEAK,
                0.42,
                TOKENS_PER_STEP,
                slow=i in slow_gpus,
            )
            for i in range(ranks)
        ]
        mig = next((d for d in devices if d.mig is not None), None)
        mig_peak = device_peaks(mig, table).get("bf16") if mig is not None else None
        if mig is not None and mig_peak:
            self.ranks.append(DemoRank(DEMO_MIG_JOB_ID, 0, 1, mig.uuid, mig_peak, 0.33, MIG_TOKENS_PER_STEP))
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
                job_id=r.job_id,
                rank=r.rank,
                local_rank=r.gpu if isinstance(r.gpu, int) else 0,
                world_size=r.world_size,
                gpus=[r.gpu],
                dtype="bf16",
                url=self.url,
                interval=2.0,
                labels={"hostname": "demo-node"},
            )
            for r in self.ranks
        ]
        t = 0.0
        try:
            while not self._stop.wait(self.step_seconds):
                t += self.step_seconds
                for i, (r, reporter) in enumerate(zip(self.ranks, reporters, strict=True)):
                    if r.slow:
                        mfu = 0.04 + 0.01 * math.sin(t / 7)
                    else:
                        mfu = r.mfu + 0.05 * math.sin(t / 40 + i) + self._rng.uniform(-0.015, 0.015)
                    flops = mfu * r.peak * self.step_seconds
                    tokens = r.tokens_per_step * mfu / r.mfu
                    reporter.step(model_flops=flops, tokens=tokens, hardware_flops=flops * RECOMPUTE_FACTOR)
        finally:
            for reporter in reporters:
                reporter.close(timeout=0)  # the agent is shutting down with the job: no final delivery
