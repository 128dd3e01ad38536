"""Who owns a (job_id, rank): the sender that first reported it.

A sender is known by the client's random per-Reporter `instance` id, or by its pid when no instance id
is sent. A report for a live key from a different sender is refused (409) and changes nothing, so two
processes that both believe they are rank 0 never have their counters merged. A new sender takes the key
over once the owner has been silent for more than three of its report intervals, or its pid is known to
be gone, so a restarted job (new processes, same ranks) is never refused for long.
"""

from __future__ import annotations

from collections.abc import Callable

from .rank import RankState, ReportData

SILENT_INTERVALS = 3
DEFAULT_INTERVAL = 5.0  # the client's default, for senders that do not say theirs


def same_sender(state: RankState | ReportData, report: ReportData) -> bool:
    if state.instance is not None or report.instance is not None:
        return state.instance == report.instance
    if state.pid is not None and report.pid is not None:
        return state.pid == report.pid
    return True  # neither says who it is: nothing to tell them apart by


def takeover_reason(
    state: RankState, report: ReportData, now: float, pid_alive: Callable[[int], bool]
) -> str | None:
    """Why a different sender may take the key over now, or None when it may not."""
    interval = state.interval or DEFAULT_INTERVAL
    silent = now - state.last_received
    if silent > SILENT_INTERVALS * interval:
        return (
            f"the previous sender has been silent for {silent:.1f} s (> {SILENT_INTERVALS} x {interval:g} s)"
        )
    # Only a pid seen in NVML's process list is known to be a host pid; a pid sent from inside a
    # container's PID namespace names some other process here, so its absence proves nothing.
    if state.attributed_by == "pid" and state.pid is not None and not pid_alive(state.pid):
        return f"the previous sender's process {state.pid} has exited"
    return None


def conflict_message(state: RankState, report: ReportData, now: float, where: str) -> str:
    def who(instance: str | None, pid: int | None) -> str:
        parts = [f"instance {instance}" if instance else "", f"pid {pid}" if pid else ""]
        return " ".join(p for p in parts if p) or "an unidentified sender"

    interval = state.interval or DEFAULT_INTERVAL
    return (
        f"{where}rank: job {state.job_id!r} rank {state.rank} is already reported by "
        f"{who(state.instance, state.pid)} (last report {now - state.last_received:.1f} s ago); this report "
        f"comes from {who(report.instance, report.pid)}. Two processes are using the same rank: set RANK "
        f"(or pass rank=) so each process has its own, or use a different job_id. The rank is handed over "
        f"once its sender is silent for {SILENT_INTERVALS * interval:g} s or its process has exited."
    )
