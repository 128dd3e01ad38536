"""The screen of `mfu-agent top` as rich renderables: a header, the devices, the jobs, the processes.

Flags are words (BUSY-IDLE, THROTTLED, DOWN) as well as colours, so they show under NO_COLOR. On a
narrow terminal the least needed columns go first."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from . import fmt
from .view import GpuRow, JobRow, NodeView, ProcessRow, sort_column, sorted_gpus

THROTTLE_NAMES = {
    "hw_slowdown": "hw",
    "hw_thermal_slowdown": "hw-thermal",
    "sw_thermal_slowdown": "sw-thermal",
    "hw_power_brake_slowdown": "power-brake",
}
KEYS_HELP = "s/S: sort column, r: reverse, q: quit"


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable  # row -> str or Text
    keep: int  # lower: kept longer on a narrow terminal (0: always)
    justify: str = "right"


GPU_COLUMNS = (
    Column("GPU", lambda g: g.label, 0, "left"),
    Column("UTIL", lambda g: fmt.percent(g.utilisation), 0),
    Column("SM", lambda g: fmt.percent(g.sm_active), 0),
    Column("TENSOR", lambda g: fmt.percent(g.tensor_active), 2),
    Column("MFU", lambda g: fmt.percent(g.mfu), 0),
    Column("POWER", lambda g: fmt.of_limit(g.power_watts, g.power_limit_watts, unit="W"), 3),
    Column("MEM", lambda g: fmt.memory(g.memory_used_bytes, g.memory_total_bytes), 3),
    Column("TEMP", lambda g: fmt.celsius(g.temperature_celsius), 5),
    Column("CLOCK", lambda g: fmt.of_limit(g.sm_clock_hertz, g.sm_clock_max_hertz, 1e6, "MHz"), 4),
    Column("FLAGS", lambda g: flags(g), 0, "left"),
    Column("RANKS", lambda g: ", ".join(g.ranks) or fmt.DASH, 1, "left"),
)
JOB_COLUMNS = (
    Column("JOB", lambda j: j.job_id, 0, "left"),
    Column("MFU", lambda j: fmt.percent(j.mfu), 0),
    Column("HFU", lambda j: fmt.percent(j.hfu), 3),
    Column("TOKENS/S", lambda j: fmt.count(j.tokens_per_second), 0),
    Column("STEP", lambda j: fmt.steps(j.step_min, j.step_max), 1),
    Column("RANKS", lambda j: fmt.ranks(j.ranks, j.world_size), 1),
    Column("GPUS", lambda j: ", ".join(j.gpus) or fmt.DASH, 2, "left"),
    Column("LAST REPORT", lambda j: fmt.age(j.last_report_age_seconds), 4),
)
PROCESS_COLUMNS = (
    Column("GPU", lambda p: p.gpu_label, 0, "left"),
    Column("PID", lambda p: str(p.pid), 0),
    Column("MEM", lambda p: fmt.memory(p.memory_bytes, None), 1),
    Column("SM", lambda p: fmt.percent(p.sm_utilisation), 1),
    Column("POD / JOB", lambda p: p.owner or fmt.DASH, 0, "left"),
    Column("RANK", lambda p: ", ".join(p.ranks) or fmt.DASH, 2, "left"),
)


def flags(gpu: GpuRow) -> Text:
    if not gpu.up:
        return Text("DOWN", style="bold red")
    words: list[tuple[str, str]] = []
    if gpu.mig_mode:
        words.append(("MIG mode", ""))
    if gpu.busy_idle:
        words.append(("BUSY-IDLE", "bold yellow"))
    if gpu.throttled:
        words.append(("THROTTLED " + ",".join(THROTTLE_NAMES.get(r, r) for r in gpu.throttled), "bold red"))
    elif "sw_power_cap" in gpu.clock_reasons:
        words.append(("power-cap", ""))
    return Text(" ").join(Text(word, style=style) for word, style in words) if words else Text(fmt.DASH)


def row_style(gpu: GpuRow) -> str:
    if not gpu.up:
        return "dim"
    if gpu.throttled:
        return "red"
    return "yellow" if gpu.busy_idle else ""


@dataclass
class Screen:
    """What to draw: the latest view (None before the first), the error of the latest fetch, the sort."""

    url: str
    view: NodeView | None = None
    error: str = ""
    sort_key: str = "gpu"
    reverse: bool = False
    interval: float = 1.0
    live: bool = True  # keys help and "retrying" only where keys and retries happen

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        yield self.header()
        if self.error:
            retry = f"; retrying every {self.interval:g} s" if self.live else ""
            yield Text(f"error: {self.error}{retry}", style="bold red")
        view = self.view
        if view is None:
            return
        if not view.nvml_up:
            yield Text(f"NVML unavailable: {view.unavailable_reason}", style="bold red")
        width = options.max_width
        gpus = sorted_gpus(view.gpus, self.sort_key, self.reverse)
        yield fitted(console, options, GPU_COLUMNS, gpus, width, row_style)
        if view.jobs:
            yield fitted(console, options, JOB_COLUMNS, view.jobs, width)
        else:
            yield Text("no jobs report to this agent", style="dim")
        if view.processes:
            yield fitted(console, options, PROCESS_COLUMNS, view.processes, width)

    def header(self) -> Text:
        """Two lines: where from, then the order (and the keys)."""
        column = sort_column(self.sort_key)
        descending = column.descending != self.reverse
        text = Text("mfu-agent top", style="bold")
        text.append(f"  {self.url}")
        view = self.view
        if view is not None:
            text.append(f"  {view.backend}, driver {view.driver_version or fmt.DASH}")
        text.append("\n")
        if view is not None:
            text.append(f"sampled {time.strftime('%H:%M:%S', time.localtime(view.taken_at))}  ")
        text.append(f"sort: {column.key} {'desc' if descending else 'asc'}")
        if self.live:
            text.append(f"  ({KEYS_HELP})", style="dim")
        return text


def fitted(
    console: Console,
    options: ConsoleOptions,
    columns: Sequence[Column],
    rows: Sequence[GpuRow] | Sequence[JobRow] | Sequence[ProcessRow],
    width: int,
    style_of: Callable | None = None,
) -> RenderableType:
    """The table with as many columns as fit in `width`, dropping the least needed first."""
    shown = list(columns)
    unbounded = options.update_width(1_000_000)  # measured at its natural width, not clamped to the screen
    while True:
        table = _table(shown, rows, style_of)
        droppable = [c for c in shown if c.keep > 0]
        if not droppable or Measurement.get(console, unbounded, table).maximum <= width:
            return table
        shown.remove(max(droppable, key=lambda c: c.keep))


def _table(columns: Sequence[Column], rows: Sequence, style_of: Callable | None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.title, justify=column.justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns), style=style_of(row) if style_of else None)
    return table
