"""The Grafana dashboards as code (grafana-foundation-sdk): `scripts/gen_dashboards.py` writes
dashboards/*.json from them. A development tool: not part of the mfu-agent package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import fleet, gpu_node, training_job

# dashboards/<name>.json: the function that builds it.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "mfu-fleet": fleet.build,
    "mfu-gpu-node": gpu_node.build,
    "mfu-training-job": training_job.build,
}
