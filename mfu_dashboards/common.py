"""What the dashboards share: the data source, the MFU target and threshold colours, queries (`Q`),
field overrides (`column`, `dashed`) and the drill-down links between the dashboards. The panel
shapes are in panels.py, the dashboard settings and layout in board.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from mfu_agent.cli.options import DEFAULT_MFU_TARGET

REPO = Path(__file__).resolve().parent.parent
RECORDING_RULES = REPO / "deploy" / "prometheus" / "rules" / "mfu-recording.yml"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


# The MFU target is the agents' --mfu-target, which the rules read (mfu:target_mfu:ratio is
# max(mfu_agent_mfu_target_ratio)); queries draw that series, and threshold colours, which Grafana
# cannot take from a query, use its default: one constant for the agent and the dashboards.
TARGET_MFU = DEFAULT_MFU_TARGET
MFU_WARNING = 0.25  # below it a job's MFU is red, between it and the target orange

Steps = Sequence[tuple[str, float | None]]
MFU_STEPS: Steps = (("red", None), ("orange", MFU_WARNING), ("green", TARGET_MFU))
BLUE: Steps = (("blue", None),)
GREEN: Steps = (("green", None),)


def thresholds(steps: Steps) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(color=color, value=value) for color, value in steps])
    )


def color(mode: str) -> db.FieldColor:
    return db.FieldColor().mode(dm.FieldColorModeId(mode))


# --- Queries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """A PromQL target: expression and legend; `Q(...)` in a panel's list gets refId A, B, ..."""

    expr: str
    legend: str = "__auto"


def value_mapping(value: str, text: str, color: str) -> dm.ValueMap:
    return dm.ValueMap(options={value: dm.ValueMappingResult(color=color, index=0, text=text)})


# --- Overrides -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """Field overrides: `matcher` byName (a column or series name) or byRegexp; `props` id -> value."""

    options: str
    props: dict[str, Any] = field(default_factory=dict)
    matcher: str = "byName"


def column(
    name: str,
    unit: str | None = None,
    decimals: float | None = None,
    *,
    steps: Steps | None = None,
    cell: str | None = None,
    **props: Any,
) -> Override:
    """A table column: unit, decimals, threshold steps and the cell display (`color-background`, ...)."""
    out: dict[str, Any] = {}
    if unit is not None:
        out["unit"] = unit
    if decimals is not None:
        out["decimals"] = decimals
    if steps is not None:
        out["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}
    if cell is not None:
        out["custom.cellOptions"] = (
            {"type": cell, "mode": "basic"} if cell == "color-background" else {"type": cell}
        )
    out.update({k.replace("__", "."): v for k, v in props.items()})
    return Override(name, out)


def dashed(regexp: str = "^target$") -> Override:
    """Series drawn as a dashed 2-px line (targets, limits, medians)."""
    return Override(
        regexp, {"custom.lineStyle": {"dash": [10, 10], "fill": "dash"}, "custom.lineWidth": 2}, "byRegexp"
    )


def link(name: str, title: str, url: str) -> Override:
    """A data link on a table column or series (drill-down to another dashboard)."""
    return Override(name, {"links": [{"title": title, "url": url}]})


# --- Links between the dashboards -------------------------------------------------------------------

# The time range, data source and cluster(s) travel with every drill-down link.
TIME_AND_SOURCE = "${__url_time_range}&var-datasource=${datasource}&${cluster:queryparam}"


def job_url(job: str = "${__value.text}") -> str:
    return f"/d/mfu-training-job/mfu-training-job?var-job_id={job}&{TIME_AND_SOURCE}"


def node_url(instance: str = "${__value.text}", gpu: str | None = None) -> str:
    gpu_var = f"&var-gpu={gpu}" if gpu else ""
    return f"/d/mfu-gpu-node/mfu-gpu-node?var-instance={instance}{gpu_var}&{TIME_AND_SOURCE}"


def job_link(column: str = "Job") -> Override:
    """A table's job column opens the job's Training job dashboard."""
    return link(column, "Training job dashboard", job_url())


def node_link(column: str = "Node") -> Override:
    """A table's node column opens the node's GPU node dashboard."""
    return link(column, "GPU node dashboard", node_url())


def gpu_link(instance: str = "${__data.fields.Node}", column: str = "GPU") -> Override:
    """A table's GPU column opens the GPU node dashboard on that GPU alone (`instance`: the node, by
    default the row's Node column)."""
    return link(column, "This GPU on the GPU node dashboard", node_url(instance, gpu="${__value.text}"))
