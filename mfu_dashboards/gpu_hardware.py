"""The GPU node dashboard's hardware rows: power, thermals and clocks, memory, errors."""

from __future__ import annotations

from grafana_foundation_sdk.cog.builder import Builder

from .common import Override, Q, column, dashed, value_mapping
from .panels import bargauge_panel, row, state_timeline_panel, table_panel, timeseries_panel

RED_IF_ANY = (("transparent", None), ("red", 1))  # a count that should be 0
DASH = {"dash": [10, 10], "fill": "dash"}


def node_panels() -> list[Builder]:
    return [
        row("Power, thermals and clocks"),
        timeseries_panel(
            "Power vs limit",
            "Board power draw and the enforced power limit (dashed).",
            [
                Q('mfu_gpu_power_watts{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}"),
                Q('mfu_gpu_power_limit_watts{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}} limit"),
            ],
            w=8,
            h=8,
            unit="watt",
            min=0,
            overrides=[
                dashed("limit$"),
            ],
        ),
        timeseries_panel(
            "Temperature",
            "GPU core temperature.",
            [Q('mfu_gpu_temperature_celsius{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}")],
            w=8,
            h=8,
            unit="celsius",
        ),
        bargauge_panel(
            "Energy in the time range",
            "Energy each GPU used over the dashboard's time range (increase of mfu_gpu_energy_joules_total), "
            "in kWh.",
            [
                Q(
                    'increase(mfu_gpu_energy_joules_total{instance=~"$instance", gpu=~"$gpu"}[$__range]) '
                    "/ 3.6e6",
                    "GPU {{gpu}}",
                )
            ],
            w=8,
            h=8,
            unit="kwatth",
            decimals=2,
        ),
        timeseries_panel(
            "SM clock vs max",
            "SM clock against its maximum (dashed). A clock held below max while busy is throttling: see the "
            "clock event reasons.",
            [
                Q('mfu_gpu_sm_clock_hertz{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}"),
                Q('mfu_gpu_sm_clock_max_hertz{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}} max"),
            ],
            w=12,
            h=8,
            unit="hertz",
            overrides=[
                dashed("max$"),
            ],
        ),
        state_timeline_panel(
            "Clock event reasons (throttling)",
            "When each clock event reason was active (gpu_idle left out). sw_power_cap is normal at full "
            "load; hw_slowdown, hw_thermal_slowdown, sw_thermal_slowdown and hw_power_brake_slowdown slow "
            "the "
            "GPU down (GpuThermalOrPowerThrottling).",
            [
                Q(
                    'max by (gpu, reason) (mfu_gpu_clock_event_active{instance=~"$instance", gpu=~"$gpu", '
                    'reason!="gpu_idle"}) > 0',
                    "GPU {{gpu}} {{reason}}",
                )
            ],
            w=12,
            h=8,
            steps=(("orange", None),),
            mappings=[value_mapping("1", "active", "orange")],
        ),
        timeseries_panel(
            "Gap to peak per GPU: lost to clocks vs lost in the software",
            "Splits what a GPU misses of its datasheet peak (1 - MFU). Lost to clocks: 1 - clock ceiling, "
            "where the clock ceiling is mfu_gpu_clock_peak_flops / mfu_gpu_peak_flops (the peak at the "
            "current SM clock over the datasheet's, the same for every dtype): throttling, power capping or "
            "clocks set low. Lost in the software: clock ceiling - GPU MFU (mfu_gpu_mfu_ratio): what the "
            "jobs "
            "leave unused at the clock the GPU runs at (kernels, input pipeline, communication, stragglers). "
            "Empty where the clock or the peak is unknown; the software part only while a job with a known "
            "peak runs on the GPU.",
            [
                Q(
                    "1 - max by (instance, gpu, uuid, mig_profile, gpu_instance_id) "
                    '(mfu_gpu_clock_peak_flops{instance=~"$instance", gpu=~"$gpu"} / '
                    'mfu_gpu_peak_flops{instance=~"$instance", gpu=~"$gpu"})',
                    "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} lost to clocks",
                ),
                Q(
                    "max by (instance, gpu, uuid, mig_profile, gpu_instance_id) "
                    '(mfu_gpu_clock_peak_flops{instance=~"$instance", gpu=~"$gpu"} / '
                    'mfu_gpu_peak_flops{instance=~"$instance", gpu=~"$gpu"}) - on (instance, gpu, uuid) '
                    'mfu_gpu_mfu_ratio{instance=~"$instance", gpu=~"$gpu"}',
                    "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} lost in the software",
                ),
            ],
            w=24,
            h=8,
            unit="percentunit",
            soft_max=1,
            soft_min=0,
            overrides=[
                Override(
                    "lost to clocks$", {"custom.lineStyle": {"dash": [10, 10], "fill": "dash"}}, "byRegexp"
                ),
            ],
        ),
        row("Memory"),
        timeseries_panel(
            "Memory used vs total",
            "Framebuffer memory used and the total (dashed).",
            [
                Q(
                    'mfu_gpu_memory_used_bytes{instance=~"$instance", gpu=~"$gpu"}',
                    "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}}",
                ),
                Q(
                    'mfu_gpu_memory_total_bytes{instance=~"$instance", gpu=~"$gpu"}',
                    "GPU {{gpu}} {{mig_profile}} {{gpu_instance_id}} total",
                ),
            ],
            w=12,
            h=8,
            unit="bytes",
            min=0,
            overrides=[
                dashed("total$"),
            ],
        ),
        timeseries_panel(
            "Memory controller utilisation",
            "NVML memory utilisation (time the memory controller was busy).",
            [Q('mfu_gpu_memory_utilization_ratio{instance=~"$instance", gpu=~"$gpu"}', "GPU {{gpu}}")],
            w=12,
            h=8,
            unit="percentunit",
            min=0,
            max=1,
        ),
        row("Errors"),
        table_panel(
            "XIDs in the time range",
            "XID events per GPU and XID code over the time range (a series that appeared within the range "
            "counts whole). The action an XID calls for (after NVIDIA's XID catalogue) is the GPU's health "
            "state, mfu_gpu_health_action (docs/metrics.md, GPU health).",
            [
                Q(
                    '(mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} - '
                    'mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} offset $__range) or '
                    'mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"}'
                )
            ],
            w=8,
            h=8,
            rename={"gpu": "GPU", "xid": "XID", "Value": "Events"},
            hide=("Time", "__name__", "job", "instance", "uuid"),
            sort="Events",
            sort_desc=True,
            overrides=[
                column("Events", steps=RED_IF_ANY, cell="color-background"),
            ],
        ),
        timeseries_panel(
            "XID events",
            "XID events per GPU and code, per interval.",
            [
                Q(
                    'sum by (gpu, xid) (increase(mfu_gpu_xid_errors_total{instance=~"$instance", '
                    'gpu=~"$gpu"}[$__rate_interval]) > 0 or (mfu_gpu_xid_errors_total{instance=~"$instance", '
                    'gpu=~"$gpu"} unless mfu_gpu_xid_errors_total{instance=~"$instance", gpu=~"$gpu"} offset '
                    "$__rate_interval))",
                    "GPU {{gpu}} XID {{xid}}",
                )
            ],
            w=8,
            h=8,
            min=0,
            bars=True,
        ),
        timeseries_panel(
            "ECC errors",
            "Corrected and uncorrected ECC errors per interval. Uncorrected ones: GpuEccUncorrectable.",
            [
                Q(
                    'sum by (gpu, type) (increase(mfu_gpu_ecc_errors_total{instance=~"$instance", '
                    'gpu=~"$gpu"}[$__rate_interval]))',
                    "GPU {{gpu}} {{type}}",
                ),
                Q(
                    'sum by (gpu) (increase(mfu_gpu_double_bit_ecc_events_total{instance=~"$instance", '
                    'gpu=~"$gpu"}[$__rate_interval]))',
                    "GPU {{gpu}} double-bit events",
                ),
            ],
            w=8,
            h=8,
            min=0,
            bars=True,
        ),
        table_panel(
            "Memory health per GPU",
            "ECC error counters, remapped rows, a pending remap (needs a GPU reset: GpuRowRemapPending) and "
            "remap failure (RMA: GpuRowRemapFailure).",
            [
                Q(
                    'sum by (gpu) (mfu_gpu_ecc_errors_total{instance=~"$instance", gpu=~"$gpu", '
                    'type="corrected"})'
                ),
                Q(
                    'sum by (gpu) (mfu_gpu_ecc_errors_total{instance=~"$instance", gpu=~"$gpu", '
                    'type="uncorrected"})'
                ),
                Q('sum by (gpu) (mfu_gpu_double_bit_ecc_events_total{instance=~"$instance", gpu=~"$gpu"})'),
                Q(
                    'sum by (gpu) (mfu_gpu_remapped_rows_total{instance=~"$instance", gpu=~"$gpu", '
                    'type="corrected"})'
                ),
                Q(
                    'sum by (gpu) (mfu_gpu_remapped_rows_total{instance=~"$instance", gpu=~"$gpu", '
                    'type="uncorrected"})'
                ),
                Q('max by (gpu) (mfu_gpu_remapped_rows_pending{instance=~"$instance", gpu=~"$gpu"})'),
                Q('max by (gpu) (mfu_gpu_row_remap_failure{instance=~"$instance", gpu=~"$gpu"})'),
            ],
            w=24,
            h=7,
            merge=True,
            rename={
                "gpu": "GPU",
                "Value #A": "ECC corrected",
                "Value #B": "ECC uncorrected",
                "Value #C": "Double-bit events",
                "Value #D": "Rows remapped (corrected)",
                "Value #E": "Rows remapped (uncorrected)",
                "Value #F": "Remap pending",
                "Value #G": "Remap failure",
            },
            hide=("Time", "__name__", "job"),
            overrides=[
                column("ECC uncorrected", steps=RED_IF_ANY, cell="color-background"),
                column("Double-bit events", steps=RED_IF_ANY, cell="color-background"),
                column("Remap pending", steps=RED_IF_ANY, cell="color-background"),
                column("Remap failure", steps=RED_IF_ANY, cell="color-background"),
            ],
        ),
    ]
