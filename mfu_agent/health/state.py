"""Each whole GPU's health: its causes now, and the most severe of them with its recommended action.

Causes and how long they hold:
- an XID: classified by the catalogue (catalogue.py). One whose action is reset_gpu, reboot_node or
  inspect_hardware holds until the agent restarts: NVIDIA's GPU reset asks for every process that holds
  the GPU, monitoring agents included, to be stopped first, and a reboot restarts the agent. Any other XID
  (restart_application, unknown, none) holds for XID_HOLD_SECONDS after the agent last saw its count
  rise.
- a pending row remap (reset_gpu) and a failed one (inspect_hardware): while NVML reports them.
- uncorrectable ECC errors (reset_gpu): while the volatile count (since the driver loaded or the GPU was
  last reset) is above 0.
- a thermal or power slowdown (inspect_hardware): once one of its clock event reasons has been active
  in every snapshot the tracker was given (one per scrape) for SUSTAINED_SLOWDOWN_SECONDS, until one
  shows none active.
A GPU that is down has no readings: only its XIDs count, and it has no health state when it has none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..events import EventKey
from ..gpu.model import GpuReading, Snapshot
from .catalogue import SEVERITY, XidCatalogue

XID_HOLD_SECONDS = 3600.0
SUSTAINED_SLOWDOWN_SECONDS = 600.0
HELD_UNTIL_RESTART = frozenset({"reset_gpu", "reboot_node", "inspect_hardware"})
# The clock event reasons of a hardware slowdown (sw_power_cap is left out: capping at the power limit
# is normal under load), as the GpuThermalOrPowerThrottling alert reads them.
SLOWDOWNS = {
    "thermal_slowdown": frozenset({"hw_thermal_slowdown", "sw_thermal_slowdown"}),
    "power_slowdown": frozenset({"hw_slowdown", "hw_power_brake_slowdown"}),
}


@dataclass(frozen=True, slots=True)
class Cause:
    reason: str  # "xid_79", "xid_other", "row_remap_pending", "row_remap_failure", "ecc_uncorrectable", ...
    action: str
    seen_at: float  # Unix time the agent last saw it


@dataclass(frozen=True, slots=True)
class GpuHealth:
    gpu: GpuReading
    causes: tuple[Cause, ...]  # most severe first

    @property
    def action(self) -> str:
        return self.causes[0].action if self.causes else "none"

    @property
    def reason(self) -> str:
        return self.causes[0].reason if self.causes else "none"

    @property
    def severity(self) -> int:
        return SEVERITY[self.action]


def _worst_first(cause: Cause) -> tuple[int, float, str]:
    return -SEVERITY[cause.action], -cause.seen_at, cause.reason


class HealthTracker:
    """Fed the latest snapshot and the event counts (at each scrape); remembers when each XID count last
    rose and since when each slowdown has been active."""

    def __init__(self, catalogue: XidCatalogue) -> None:
        self.catalogue = catalogue
        self._counts: dict[EventKey, int] = {}
        self._xid_seen: dict[str, dict[int | str, float]] = {}  # uuid -> code -> Unix time its count rose
        self._slowdown_since: dict[tuple[str, str], float] = {}  # (uuid, reason) -> Unix time
        self._lock = threading.Lock()

    def update(self, snapshot: Snapshot | None, events: dict[EventKey, int], now: float) -> list[GpuHealth]:
        """The health of every whole GPU in the snapshot (down ones only with an XID on record)."""
        with self._lock:
            self._note_xids(events, now)
            if snapshot is None:
                return []
            listed = [g for g in (*snapshot.gpus, *snapshot.vanished) if not g.is_mig]
            return [h for h in (self._health(g, now) for g in listed) if h is not None]

    def _note_xids(self, events: dict[EventKey, int], now: float) -> None:
        for key, count in events.items():
            _, uuid, kind, code = key
            if kind == "xid" and code is not None and count > self._counts.get(key, 0):
                self._xid_seen.setdefault(uuid, {})[code] = now
            self._counts[key] = count

    def _health(self, gpu: GpuReading, now: float) -> GpuHealth | None:
        causes = []
        for code, seen in self._xid_seen.get(gpu.uuid, {}).items():
            action = self.catalogue.action(code)
            if action in HELD_UNTIL_RESTART or now - seen <= XID_HOLD_SECONDS:
                causes.append(Cause(f"xid_{code}", action, seen))
        if gpu.up:
            causes += self._state_causes(gpu, now)
        else:
            self._forget_slowdowns(gpu.uuid)
            if not causes:
                return None
        return GpuHealth(gpu, tuple(sorted(causes, key=_worst_first)))

    def _state_causes(self, gpu: GpuReading, now: float) -> list[Cause]:
        causes = []
        rows = gpu.remapped_rows
        if rows is not None and rows.failure:
            causes.append(Cause("row_remap_failure", "inspect_hardware", now))
        if rows is not None and rows.pending:
            causes.append(Cause("row_remap_pending", "reset_gpu", now))
        if gpu.ecc_uncorrected_total:
            causes.append(Cause("ecc_uncorrectable", "reset_gpu", now))
        for reason, clock_reasons in SLOWDOWNS.items():
            key = (gpu.uuid, reason)
            if gpu.clock_event_reasons is None or not clock_reasons & gpu.clock_event_reasons:
                self._slowdown_since.pop(key, None)
                continue
            since = self._slowdown_since.setdefault(key, now)
            if now - since >= SUSTAINED_SLOWDOWN_SECONDS:
                causes.append(Cause(reason, "inspect_hardware", now))
        return causes

    def _forget_slowdowns(self, uuid: str) -> None:
        for reason in SLOWDOWNS:
            self._slowdown_since.pop((uuid, reason), None)
