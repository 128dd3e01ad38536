"""A whole dashboard: the house settings, the variables every dashboard has (data source, cluster),
and the layout of its panels on Grafana's 24-column grid."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from .common import DS
from .promql import with_cluster

SCHEMA_VERSION = 39
GRID_WIDTH = 24


def datasource_variable() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=False, text="Prometheus", value="prometheus"))
        .hide(dm.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )


def label_values(selector: str, label: str, *, cluster: bool = True) -> str:
    """Grafana's label_values() variable query, the selector filtered by the cluster variable."""
    return f"label_values({with_cluster(selector) if cluster else selector}, {label})"


def query_variable(
    name: str, label: str, query: str, *, sort: int = 1, all_value: str | None = None, multi: bool = False
) -> db.QueryVariable:
    """A variable from `query` (label_values(...)), refreshed on time-range change; `all_value` adds
    "All" (selected by default)."""
    v = (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query({"query": query, "refId": "StandardVariableQuery"})
        .hide(dm.VariableHide.DONT_HIDE)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort(sort))
        .multi(multi)
        .regex("")
    )
    if all_value is not None:
        v.include_all(True).all_value(all_value).current(
            dm.VariableOption(selected=True, text=["All"], value=["$__all"])
        )
    else:
        v.include_all(False)
    return v


def cluster_variable() -> db.QueryVariable:
    """The cluster: the `cluster` label that Prometheus's external_labels (or a relabel rule) adds to
    every series. All (`.*`) by default, which also matches series without the label, so a single
    Prometheus without one shows everything."""
    return query_variable(
        "cluster",
        "Cluster",
        label_values("mfu_gpu_info", "cluster", cluster=False),
        all_value=".*",
        multi=True,
    )


def _layout(items: Sequence[Any]) -> list[Any]:
    """Place built panels left to right, wrapping at 24 columns, each as high up as the panels above
    allow; a row starts below everything so far. Ids 1, 2, ... in order."""
    skyline = [0] * GRID_WIDTH
    x = 0
    next_id = 1

    def place(panel: Any) -> None:
        nonlocal x, next_id
        pos = panel.grid_pos
        if x + pos.w > GRID_WIDTH:
            x = 0
        pos.x, pos.y = x, max(skyline[x : x + pos.w])
        for col in range(x, x + pos.w):
            skyline[col] = pos.y + pos.h
        x += pos.w
        panel.id_val = next_id
        next_id += 1

    out = []
    for item in items:
        if isinstance(item, dm.RowPanel):
            top = max(skyline)
            item.grid_pos = dm.GridPos(h=1, w=GRID_WIDTH, x=0, y=top)
            item.id_val = next_id
            next_id += 1
            skyline = [top + 1] * GRID_WIDTH
            x = 0
            for panel in item.panels or []:  # a collapsed row holds its panels
                place(panel)
            if item.panels:
                skyline = [top + 1] * GRID_WIDTH
                x = 0
        else:
            place(item)
        out.append(item)
    return out


def dashboard(
    uid: str, title: str, description: str, *, variables: Sequence[Builder], panels: Sequence[Builder]
) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict): `panels` rows and panels in order."""
    builder = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["mfu-agent"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .timezone("")
        .refresh("30s")
        .live_now(False)
        .week_start("")
        .fiscal_year_start_month(0)
        .version(1)
        .timepicker(db.TimePicker())
        .link(
            db.DashboardLink("MFU dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["mfu-agent"])
            .as_dropdown(True)
            .icon("external link")
            .include_vars(False)
            .keep_time(True)
            .target_blank(False)
        )
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .variables([datasource_variable(), cluster_variable(), *variables])
    )
    model = builder.build()
    model.schema_version = SCHEMA_VERSION
    built = [p.build() for p in panels]
    model.panels = _layout(built)
    out = json.loads(JSONEncoder().encode(model))
    # Fields the SDK's models lack (a repeat's maxPerRow), set on the builder as `extra_json`.
    extras = {b.id_val: getattr(p, "extra_json", {}) for p, b in zip(panels, built, strict=True)}
    for panel in out["panels"]:
        panel.update(extras.get(panel.get("id"), {}))
    return out


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"
