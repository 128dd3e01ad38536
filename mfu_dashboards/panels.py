"""The panel shapes: one function per kind of panel (stat, time series, table, bar gauge, histogram,
heatmap, state timeline, status history) in the house style, with what differs as arguments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    heatmap,
    histogram,
    prometheus,
    stat,
    statetimeline,
    statushistory,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from .common import BLUE, DS, GREEN, Override, Q, Steps, color, thresholds
from .promql import with_cluster


def _targets(
    panel: Any, queries: Iterable[Q | str], *, instant: bool = False, table_format: bool = False
) -> None:
    for i, q in enumerate(queries):
        q = Q(q) if isinstance(q, str) else q
        t = (
            prometheus.Dataquery()
            .datasource(DS)
            .editor_mode(pm.QueryEditorMode.CODE)
            .expr(with_cluster(q.expr))  # every selector filtered by the cluster variable
            .ref_id(chr(ord("A") + i))
            .legend_format(q.legend)
        )
        t = t.instant() if instant else t.range()
        if table_format:
            t = t.format(pm.PromQueryFormat.TABLE)
        panel.with_target(t)


def _base(panel: Any, title: str, description: str, w: int, h: int) -> Any:
    return panel.title(title).description(description).datasource(DS).grid_pos(dm.GridPos(h=h, w=w))


def _field(
    panel: Any, unit: str | None, decimals: float | None, min: float | None, max: float | None
) -> None:
    if unit is not None:
        panel.unit(unit)
    if decimals is not None:
        panel.decimals(decimals)
    if min is not None:
        panel.min(min)
    if max is not None:
        panel.max(max)


def _reduce(calc: str = "lastNotNull") -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs([calc]).fields("").values(False)


def _overrides(panel: Any, overrides: Iterable[Override]) -> None:
    for o in overrides:
        panel.with_override(
            dm.MatcherConfig(id_val=o.matcher, options=o.options),
            [dm.DynamicConfigValue(id_val=k, value=v) for k, v in o.props.items()],
        )


# --- Panels ----------------------------------------------------------------------------------------


def _no_legend_single_tooltip(panel: Any) -> None:
    """The state panels' legend (hidden: the rows name the series) and tooltip (the hovered cell)."""
    panel.legend(
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(False)
    )
    panel.tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))


def row(title: str, *, collapsed: bool = False, panels: Sequence[Builder] = ()) -> db.Row:
    r = db.Row(title).collapsed(collapsed)
    for p in panels:
        r.with_panel(p)
    return r


def stat_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 4,
    unit: str | None = None,
    decimals: float | None = None,
    min: float | None = None,
    max: float | None = None,
    steps: Steps = BLUE,
    graph: bool = True,
    text_mode: str = "auto",
    instant: bool = False,
    mappings: Sequence[dm.ValueMap] = (),
    overrides: Sequence[Override] = (),
) -> stat.Panel:
    p = _base(stat.Panel(), title, description, w, h)
    _targets(p, queries, instant=instant)
    _field(p, unit, decimals, min, max)
    p.color_scheme(color("thresholds")).thresholds(thresholds(steps)).mappings(list(mappings))
    p.color_mode(cm.BigValueColorMode.VALUE).graph_mode(
        cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE
    ).justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO).text_mode(
        cm.BigValueTextMode(text_mode)
    ).reduce_options(_reduce())
    _overrides(p, overrides)
    return p


def timeseries_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    unit: str | None = None,
    decimals: float | None = None,
    min: float | None = None,
    max: float | None = None,
    soft_min: float | None = None,
    soft_max: float | None = None,
    bars: bool = False,
    stacked: bool = False,
    legend_table: bool = False,
    overrides: Sequence[Override] = (),
    links: Sequence[db.DashboardLink] = (),
    repeat: str | None = None,
    max_per_row: int | None = None,
) -> timeseries.Panel:
    p = _base(timeseries.Panel(), title, description, w, h)
    _targets(p, queries)
    _field(p, unit, decimals, min, max)
    p.color_scheme(color("palette-classic"))
    p.draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
    p.fill_opacity(60 if bars else 20 if stacked else 0).line_width(1).show_points(cm.VisibilityMode.NEVER)
    p.span_nulls(False).stacking(
        cb.StackingConfig().group("A").mode(cm.StackingMode.NORMAL if stacked else cm.StackingMode.NONE)
    )
    if soft_min is not None:
        p.axis_soft_min(soft_min)
    if soft_max is not None:
        p.axis_soft_max(soft_max)
    if legend_table:
        p.legend(
            cb.VizLegendOptions()
            .calcs(["mean", "min", "max", "lastNotNull"])
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .show_legend(True)
            .sort_by("Mean")
            .sort_desc(False)
        )
    else:
        p.legend(
            cb.VizLegendOptions()
            .calcs([])
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    p.tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    _overrides(p, overrides)
    if links:
        p.links(list(links))
    if repeat is not None:
        p.repeat(repeat).repeat_direction("h")
        if max_per_row is not None:
            p.extra_json = {"maxPerRow": max_per_row}  # not in the SDK's panel model
    return p


def table_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    rename: dict[str, str] | None = None,
    hide: Sequence[str] = ("Time",),
    merge: bool = False,
    sort: str | None = None,
    sort_desc: bool = False,
    unit: str | None = None,
    overrides: Sequence[Override] = (),
    index: dict[str, int] | None = None,
) -> table.Panel:
    """One row per series of instant queries (table format); `merge` joins several queries' columns on
    their labels; `rename` names the columns (Value #A: the value of query A), `hide` drops some."""
    p = _base(table.Panel(), title, description, w, h)
    _targets(p, queries, instant=True, table_format=True)
    _field(p, unit, None, None, None)
    p.thresholds(thresholds(GREEN)).mappings([])
    p.cell_height(cm.TableCellHeight.SM).show_header(True).footer(
        cb.TableFooterOptions().count_rows(False).fields("").reducer(["sum"]).show(False)
    )
    if merge:
        p.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    p.with_transformation(
        dm.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": dict.fromkeys(hide, True),
                "indexByName": index or {},
                "renameByName": rename or {},
            },
        )
    )
    if sort is not None:
        p.with_transformation(
            dm.DataTransformerConfig(
                id_val="sortBy", options={"fields": {}, "sort": [{"desc": sort_desc, "field": sort}]}
            )
        )
    _overrides(p, overrides)
    return p


def bargauge_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    unit: str | None = None,
    decimals: float | None = None,
    min: float | None = 0,
    max: float | None = None,
    steps: Steps = BLUE,
) -> bargauge.Panel:
    p = _base(bargauge.Panel(), title, description, w, h)
    _targets(p, queries, instant=True)
    _field(p, unit, decimals, min, max)
    p.color_scheme(color("thresholds")).thresholds(thresholds(steps)).mappings([])
    p.display_mode(cm.BarGaugeDisplayMode.GRADIENT).value_mode(cm.BarGaugeValueMode.COLOR).show_unfilled(True)
    p.min_viz_width(8).min_viz_height(16).orientation(cm.VizOrientation.HORIZONTAL).reduce_options(_reduce())
    return p


def histogram_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    unit: str | None = None,
    min: float | None = None,
    max: float | None = None,
    bucket_size: float,
) -> histogram.Panel:
    p = _base(histogram.Panel(), title, description, w, h)
    _targets(p, queries, instant=True)
    _field(p, unit, None, min, max)
    p.color_scheme(color("palette-classic")).fill_opacity(80).line_width(1)
    p.bucket_offset(0).bucket_size(bucket_size).combine(True)
    _no_legend_single_tooltip(p)
    return p


def heatmap_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    unit: str,
    bucket: str,
    min: float | None = 0,
) -> heatmap.Panel:
    """Series bucketed by value (Grafana calculates the buckets, `bucket` wide)."""
    p = _base(heatmap.Panel(), title, description, w, h)
    _targets(p, queries)
    p.hide_from(cb.HideSeriesConfig().legend(False).tooltip(False).viz(False))
    p.scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
    p.calculate(True).calculation(
        cb.HeatmapCalculationOptions().y_buckets(
            cb.HeatmapCalculationBucketConfig()
            .mode(cm.HeatmapCalculationMode.SIZE)
            .value(bucket)
            .scale(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
        )
    )
    p.cell_gap(1).color(
        heatmap.HeatmapColorOptions()
        .exponent(0.5)
        .fill("dark-orange")
        .mode("scheme")
        .reverse(False)
        .scale("exponential")
        .scheme("Oranges")
        .steps(64)
    )
    p.exemplars_color("rgba(255,0,255,0.7)").filter_values(heatmap.FilterValueRange().le(1e-09))
    p.show_legend().rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.AUTO))
    p.show_tooltip().show_y_histogram()
    y_axis = heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT).reverse(False).unit(unit)
    if min is not None:
        y_axis.min(min)
    p.y_axis(y_axis)
    return p


def state_timeline_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    mappings: Sequence[dm.ValueMap] = (),
    steps: Steps = GREEN,
) -> statetimeline.Panel:
    """Which states were on when: a value mapped to a coloured state, merged over time."""
    p = _base(statetimeline.Panel(), title, description, w, h)
    _targets(p, queries)
    p.color_scheme(color("thresholds")).fill_opacity(80).line_width(0)
    p.mappings(list(mappings)).thresholds(thresholds(steps))
    p.align_value(cm.TimelineValueAlignment.LEFT).merge_values(True).row_height(0.9).show_value(
        cm.VisibilityMode.NEVER
    )
    _no_legend_single_tooltip(p)
    return p


def status_history_panel(
    title: str,
    description: str,
    queries: Sequence[Q | str],
    *,
    w: int,
    h: int = 8,
    unit: str | None = None,
    min: float | None = None,
    max: float | None = None,
    steps: Steps = GREEN,
) -> statushistory.Panel:
    p = _base(statushistory.Panel(), title, description, w, h)
    _targets(p, queries)
    _field(p, unit, None, min, max)
    p.color_scheme(color("thresholds")).fill_opacity(80).line_width(0)
    p.mappings([]).thresholds(thresholds(steps))
    p.col_width(0.9).row_height(0.9).show_value(cm.VisibilityMode.NEVER)
    _no_legend_single_tooltip(p)
    return p
