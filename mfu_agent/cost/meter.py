"""GPU time and its cost, integrated at every sample tick (so exact whatever the scrape interval):
idle-while-allocated seconds, dollars, dollars idle and dollars below the MFU target per device, and
the energy of each job's ranks on this node.

A tick adds the time since the previous tick, described by the new readings (GPM SM activity is the
mean over that time), for each device that was up at both ticks, unless the ticks are further apart
than `max_gap` seconds (the sampler was stuck: what happened meanwhile is unknown, so nothing is added).

- idle while allocated: the device has compute processes and its GPM SM active ratio is below
  `idle_below`. A device without SM activity (no GPM, or GPM refused) is never counted as idle: its
  counter is absent until it has had one, and mfu_gpu_gpm_status says why.
- cost: a whole GPU's price x time, whether used or not (a GPU in MIG mode too: the board's price).
- idle cost: the device's price (a MIG device: its share) x idle time.
- below-target cost: for a device with an MFU (mfu_gpu_mfu_ratio) that is not idle at that tick,
  price x time x max(0, target - MFU) / target: the part of the spend that did not buy the target's
  work. Idle time is idle cost only, so the two never count the same second.
- job energy: each whole GPU's energy counter increase since its last reading, split equally among
  the ranks on it now, added to their jobs. A job with a rank on a device without an energy counter
  (a MIG device: the board's energy is not split among its slices; or a GPU without one) gets none.

The ranks' MFU and placement come from the job registry, read at each tick unless that is slow
(thousands of ranks): see FIGURES_DUTY.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ..gpu.model import GpuIdentity, GpuReading, Snapshot
from ..jobs.registry import RankView
from ..jobs.rollup import per_gpu
from ..specs import PeakTable
from .prices import PriceTable

log = logging.getLogger(__name__)

# The ranks' MFU per GPU and placement are read from the job registry at every sample, unless that took
# more than 1/FIGURES_DUTY of the time since it was last read (thousands of ranks): then they are reused
# until that much time has passed, so the meter never takes more than 5% of a core.
FIGURES_DUTY = 20


@dataclass
class DeviceUsage:
    """One device's totals since the agent started (or since the device appeared)."""

    identity: GpuIdentity
    price_per_hour: float | None  # the device's price (a MIG device's share); None: unknown
    runs_work: bool  # False for a GPU in MIG mode: its MIG devices run the work
    idle_seconds: float | None = None  # None until the device has had an SM activity reading
    cost_dollars: float = 0.0  # whole GPUs only
    idle_cost_dollars: float = 0.0
    below_target_cost_dollars: float = 0.0


class UsageMeter:
    def __init__(
        self,
        views: Callable[[], list[RankView]],
        peaks: PeakTable,
        prices: PriceTable | None = None,
        target: float = 0.4,
        idle_below: float = 0.2,
        max_gap: float = 10.0,
    ) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"the MFU target must be in (0, 1], got {target}")
        self._views = views
        self._peaks = peaks
        self.prices = prices
        self.target = target
        self.idle_below = idle_below
        self.max_gap = max_gap
        self._lock = threading.Lock()
        self._previous: Snapshot | None = None
        self._devices: dict[str, DeviceUsage] = {}
        self._energy_seen: dict[str, float] = {}  # uuid -> the energy counter at its last reading
        self._job_joules: dict[str, float] = {}
        self._without_energy: set[str] = set()  # jobs with a rank on a device without an energy counter
        self._warned: set[str] = set()
        # (when read, on the snapshots' clock; how long reading took; MFU by uuid; the ranks' placement)
        self._figures: tuple[float, float, dict[str, float], list[tuple[str, tuple[str, ...]]]] | None = None

    def tick(self, snapshot: Snapshot) -> None:
        """Adds the time since the previous snapshot; called by the sampler after each one."""
        # Outside the lock: reading the registry takes its lock, and the registry, holding it, asks
        # for this meter's series count (metrics/cardinality.py), which takes this meter's lock.
        mfu, placement = self._rank_figures(snapshot.taken_at)
        with self._lock:
            previous, self._previous = self._previous, snapshot
            dt = snapshot.taken_at - previous.taken_at if previous is not None else 0.0
            counted = previous is not None and 0 < dt <= self.max_gap
            if not counted:
                mfu = {}
            listed = {g.uuid for g in (*snapshot.gpus, *snapshot.vanished)}
            for uuid in [u for u in self._devices if u not in listed]:
                del self._devices[uuid]
            for gpu in snapshot.gpus:
                device = self._device(gpu)
                before = previous.by_uuid.get(gpu.uuid) if previous is not None else None
                if counted and gpu.up and before is not None and before.up:
                    self._add(device, gpu, dt, mfu)
                elif (
                    gpu.up
                    and device.runs_work
                    and _sm_active(gpu) is not None
                    and device.idle_seconds is None
                ):
                    device.idle_seconds = 0.0
            self._add_energy(snapshot, placement)

    def devices(self) -> list[DeviceUsage]:
        """Copies of the devices' totals, in snapshot order."""
        with self._lock:
            return [DeviceUsage(**vars(d)) for d in self._devices.values()]

    def job_joules(self, jobs: set[str]) -> dict[str, float]:
        """{job: joules} for these jobs (the registry's now), 0 for a job not yet counted at a sample, and
        none for a job with a rank on a device without an energy counter."""
        with self._lock:
            return {j: self._job_joules.get(j, 0.0) for j in jobs if j not in self._without_energy}

    def _device(self, gpu: GpuReading) -> DeviceUsage:
        device = self._devices.get(gpu.uuid)
        runs_work = not gpu.mig_mode
        if device is None or device.identity != gpu.identity or device.runs_work != runs_work:
            price = self.prices.device_price(gpu.identity, self._peaks) if self.prices else None
            if self.prices is not None and price is None:
                self._warn_unpriced(gpu.identity)
            device = DeviceUsage(gpu.identity, price, runs_work)
            self._devices[gpu.uuid] = device
        return device

    def _add(self, device: DeviceUsage, gpu: GpuReading, dt: float, mfu: dict[str, float]) -> None:
        price = device.price_per_hour
        hours = dt / 3600
        if price is not None and not gpu.is_mig:
            device.cost_dollars += price * hours
        if not device.runs_work:
            return
        sm_active = _sm_active(gpu)
        if sm_active is None:
            return
        if device.idle_seconds is None:
            device.idle_seconds = 0.0
        if gpu.processes and sm_active < self.idle_below:
            device.idle_seconds += dt
            if price is not None:
                device.idle_cost_dollars += price * hours
        elif price is not None and gpu.uuid in mfu:
            shortfall = max(0.0, self.target - mfu[gpu.uuid]) / self.target
            device.below_target_cost_dollars += price * hours * shortfall

    def _rank_figures(self, now: float) -> tuple[dict[str, float], list[tuple[str, tuple[str, ...]]]]:
        """({uuid: the GPU's MFU}, [(job_id, the uuids of the rank's GPUs)]): read anew, or reused while
        reading them would take more than 1/FIGURES_DUTY of the time (FIGURES_DUTY). Only tick() calls
        it, from the sampler's thread."""
        if self._figures is not None:
            read_at, took, mfu, placement = self._figures
            if 0 <= now - read_at < took * FIGURES_DUTY:
                return mfu, placement
        started = time.perf_counter()
        views = self._views()
        mfu = {u: f.utilisation for u, f in per_gpu(views).items()} if self.prices else {}
        placement = [(v.job_id, tuple(share.uuid for share in v.gpus)) for v in views]
        self._figures = (now, time.perf_counter() - started, mfu, placement)
        return mfu, placement

    def _add_energy(self, snapshot: Snapshot, placement: list[tuple[str, tuple[str, ...]]]) -> None:
        jobs_on: dict[str, list[str]] = defaultdict(list)  # uuid -> the job of each rank on it
        for job_id, uuids in placement:
            for uuid in uuids:
                jobs_on[uuid].append(job_id)
        without: set[str] = set()
        for uuid, jobs in jobs_on.items():
            gpu = snapshot.by_uuid.get(uuid)
            if gpu is None or gpu.is_mig or (gpu.up and gpu.energy_joules is None):
                without.update(jobs)
        joules = self._job_joules
        for gpu in snapshot.gpus:
            if not gpu.up or gpu.energy_joules is None:
                continue
            last = self._energy_seen.get(gpu.uuid)
            self._energy_seen[gpu.uuid] = gpu.energy_joules
            jobs = jobs_on.get(gpu.uuid)
            if last is None or gpu.energy_joules < last or not jobs:  # first reading, or a reset driver
                continue
            for job in jobs:
                if job not in without:
                    joules[job] = joules.get(job, 0.0) + (gpu.energy_joules - last) / len(jobs)
        running = {job_id for job_id, _ in placement}
        for job in [j for j in joules if j not in running or j in without]:
            del joules[job]
        self._without_energy = without

    def _warn_unpriced(self, identity: GpuIdentity) -> None:
        key = f"{identity.name}|{identity.mig.profile if identity.mig else ''}"
        if key in self._warned:
            return
        self._warned.add(key)
        if identity.mig is None:
            log.warning(
                "no price for GPU model %r in --gpu-price-file and no default: no cost series for its GPUs",
                identity.name,
            )
        else:
            log.warning(
                "no price for MIG devices %s of %r: the GPU's or the slice's SM count is unknown (add "
                "sm_count for the model to --peak-flops-file); no cost series for them",
                identity.mig.profile,
                identity.name,
            )


def _sm_active(gpu: GpuReading) -> float | None:
    return gpu.activity.sm_active if gpu.activity is not None else None
