"""One line per check, as text for people or JSON for machines, and the exit status they give."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    name: str  # "nvml", "gpm", "listen", ...
    message: str
    fix: str = ""
    gpu: int | None = None  # the GPU index, for per-GPU checks

    @property
    def label(self) -> str:
        return f"{self.name}[{self.gpu}]" if self.gpu is not None else self.name


def exit_status(checks: list[Check]) -> int:
    """1 when a check failed (the agent cannot do its main job here), else 0 (warnings included)."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def render_text(checks: list[Check]) -> str:
    width = max((len(c.label) for c in checks), default=0)
    lines = [
        f"{c.status:<4}  {c.label:<{width}}  {c.message}" + (f" -- fix: {c.fix}" if c.fix else "")
        for c in checks
    ]
    counts = {s: sum(c.status == s for c in checks) for s in ("fail", "warn")}
    lines.append(
        f"doctor: {counts['fail']} failed, {counts['warn']} warning(s); exit status {exit_status(checks)}"
    )
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    return (
        json.dumps({"checks": [asdict(c) for c in checks], "exit_status": exit_status(checks)}, indent=2)
        + "\n"
    )
