"""The NVML gateway: the only module that imports pynvml.

Every NVML call goes through `NvmlGateway.call`, which sorts failures into four kinds:

- absent:   NotSupported / NoPermission (remembered per GPU and call, never retried) and
            FunctionNotFound / NVMLLibraryMismatchError (remembered per call): the reading is absent;
            except for the GPM sample calls, where NoPermission and InUse are refusals that can end
            (a privilege granted, a profiler that exits): they are answered as a `GpmStatus` and
            not remembered, and the caller retries them slowly (gpu/gpm.py);
- gpu down: GpuIsLost / Unknown: `GpuDown` is raised so the caller marks that GPU down, others carry on;
- agent:    Uninitialized / DriverNotLoaded / LibraryNotFound / LibRmVersionMismatch: `NvmlUnavailable`,
            fatal at start-up; at run time the backend marks every GPU down and re-initialises NVML;
- other:    anything else (Timeout, InsufficientPower, ...): absent this tick, retried next tick.
            InvalidArgument and NotFound from a per-device call are also noted (`take_handle_errors`):
            a handle that stopped answering may belong to a GPU that left the device list.

Every failure is counted in `errors` by (call, error) for `mfu_agent_nvml_errors_total`.

Exceptions: NotFound from nvmlDeviceGetProcessUtilization means "no samples newer than the
timestamp asked for", and from nvmlDeviceGetMigDeviceHandleByIndex "no MIG device in this slot";
both are NVML's normal answers, not failures.

A GPU is named by a key: its index (int) for a whole GPU, "<parent index>.<slot>" for a MIG device.
What was remembered as absent for a key is forgotten when the device changes (`forget`): a GPU that
enters or leaves MIG mode answers differently (utilisation is NotSupported in MIG mode only).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

from .model import GpmStatus

T = TypeVar("T")
GpuKey = int | str  # a GPU index, or "<parent index>.<slot>" for a MIG device
GPM_REFUSALS: frozenset[str] = frozenset({"no_permission", "in_use"})  # may end: retried slowly


class _Absent:
    """Sentinel for a reading NVML could not give; falsy and distinct from 0."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used at all: no library, no driver, or not initialised."""


class GpuDown(RuntimeError):
    """A GPU stopped answering (GpuIsLost or Unknown)."""

    def __init__(self, gpu: GpuKey | None, call: str, error: str) -> None:
        super().__init__(f"GPU {gpu} is down: {call} failed with {error}")
        self.gpu = gpu
        self.error = error  # error_name() of the failure: "gpu_is_lost" or "unknown"


_ABSENT_ERRORS = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission)
_MISSING_ERRORS = (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError)
_GPU_DOWN_ERRORS = (pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_Unknown)
_AGENT_ERRORS = (
    pynvml.NVMLError_Uninitialized,
    pynvml.NVMLError_DriverNotLoaded,
    pynvml.NVMLError_LibraryNotFound,
    pynvml.NVMLError_LibRmVersionMismatch,
)
_REFUSAL_ERRORS = (pynvml.NVMLError_NoPermission, pynvml.NVMLError_InUse)
# From a per-device call: the handle may be stale (its GPU left the device list).
_HANDLE_ERRORS = (pynvml.NVMLError_InvalidArgument, pynvml.NVMLError_NotFound)

ARCHITECTURES = {
    getattr(pynvml, name): name.removeprefix("NVML_DEVICE_ARCH_").lower()
    for name in dir(pynvml)
    if name.startswith("NVML_DEVICE_ARCH_") and name != "NVML_DEVICE_ARCH_UNKNOWN"
}

CLOCK_EVENT_REASONS = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "applications_clocks_setting",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake_slowdown",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clock_setting",
}

GPM_METRICS = {
    "sm_active": pynvml.NVML_GPM_METRIC_SM_UTIL,
    "sm_occupancy": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
    "tensor_active": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    "dram_active": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    "fp16_active": pynvml.NVML_GPM_METRIC_FP16_UTIL,
    "fp32_active": pynvml.NVML_GPM_METRIC_FP32_UTIL,
    "fp64_active": pynvml.NVML_GPM_METRIC_FP64_UTIL,
}
# Interconnect throughput, per physical GPU, in MiB/s (nvml.h: "PCIe traffic from this GPU in MiB/sec",
# "NvLink read bandwidth for all links in MiB/sec"). Asked of whole GPUs only, not of GPU instances.
GPM_TRAFFIC_METRICS = {
    "pcie_rx": pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
    "pcie_tx": pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
    "nvlink_rx": pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
    "nvlink_tx": pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
}
_GPM_KEYS = {metric_id: key for key, metric_id in {**GPM_METRICS, **GPM_TRAFFIC_METRICS}.items()}

# NVLink error counters summed over the GPU's links by the driver (one nvmlDeviceGetFieldValues call
# for all), and the number of links, which says whether the GPU has NVLink at all.
NVLINK_ERROR_FIELDS = {
    "replay": pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
    "recovery": pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
    "crc_flit": pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
    "crc_data": pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
}
NVLINK_LINK_COUNT_FIELD = pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT
_FIELD_VALUE = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}

XID_EVENT = pynvml.nvmlEventTypeXidCriticalError
DOUBLE_BIT_ECC_EVENT = pynvml.nvmlEventTypeDoubleBitEccError

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def error_name(exc: BaseException) -> str:
    """A bounded snake_case name for an NVML failure, for metric labels."""
    if isinstance(exc, pynvml.NVMLLibraryMismatchError):
        return "library_mismatch"
    if isinstance(exc, pynvml.NVMLError):
        name = type(exc).__name__.removeprefix("NVMLError_")
        if name != "NVMLError":
            return _CAMEL.sub("_", name).lower()
    return "other"


def handle_key(handle: Any) -> int:
    """The address a device handle points at: equal for handles of the same device."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


@dataclass(frozen=True, slots=True)
class RawEvent:
    handle_key: int
    event_type: int
    data: int


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process's utilisation sample in NVML units: percent 0..100, timestamp in µs."""

    pid: int
    timestamp_us: int
    sm_percent: int
    memory_percent: int


def _process_utilization_or_none(handle: Any, since: int) -> list[Any]:
    try:
        return pynvml.nvmlDeviceGetProcessUtilization(handle, since)
    except pynvml.NVMLError_NotFound:
        return []  # no samples newer than `since`: the normal case between samples


def _mig_handle_or_none(handle: Any, slot: int) -> Any:
    try:
        return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
    except pynvml.NVMLError_NotFound:
        return None  # an empty slot: the normal case on a GPU not fully partitioned


@dataclass(frozen=True, slots=True)
class NvlinkCounts:
    """What nvmlDeviceGetFieldValues said about a GPU's NVLink: its links (0 without NVLink), and its
    error counters summed over links, by NVLINK_ERROR_FIELDS key (a counter the driver did not give is
    left out)."""

    links: int
    errors: dict[str, int]


@dataclass(frozen=True, slots=True)
class MigIds:
    gpu_instance_id: int
    compute_instance_id: int


class NvmlGateway:
    def __init__(self) -> None:
        self.errors: Counter[tuple[str, str]] = Counter()
        # (GPU, call) -> error_name, and call -> error_name: answers remembered, never asked again
        self._absent: dict[tuple[GpuKey | None, str], str] = {}
        self._missing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._initialised = False
        self._utilization_seen: dict[GpuKey, int] = {}  # GPU -> newest process sample timestamp (µs)
        self._handle_errors = 0  # InvalidArgument / NotFound from per-device calls since the last take

    # -- the one place NVML is called -------------------------------------------------------
    def call(self, gpu: GpuKey | None, name: str, fn: Callable[..., T], *args: Any) -> T:
        return self._call(gpu, name, fn, args, retry_refusals=False)[0]

    def _call(
        self,
        gpu: GpuKey | None,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        retry_refusals: bool,
    ) -> tuple[Any, str]:
        """(the result, ""), or (ABSENT, the error_name of the failure). With `retry_refusals`,
        NoPermission and InUse are answered without being remembered."""
        if name in self._missing:
            return ABSENT, self._missing[name]
        remembered = self._absent.get((gpu, name))
        if remembered is not None:
            return ABSENT, remembered
        try:
            return fn(*args), ""
        except _REFUSAL_ERRORS as exc:
            self._count(name, exc)
            if not retry_refusals and isinstance(exc, _ABSENT_ERRORS):
                with self._lock:
                    self._absent[(gpu, name)] = error_name(exc)
            return ABSENT, error_name(exc)
        except _ABSENT_ERRORS as exc:
            self._count(name, exc)
            with self._lock:
                self._absent[(gpu, name)] = error_name(exc)
            return ABSENT, error_name(exc)
        except _MISSING_ERRORS as exc:
            self._count(name, exc)
            with self._lock:
                self._missing[name] = error_name(exc)
            return ABSENT, error_name(exc)
        except _GPU_DOWN_ERRORS as exc:
            self._count(name, exc)
            raise GpuDown(gpu, name, error_name(exc)) from exc
        except _AGENT_ERRORS as exc:
            self._count(name, exc)
            raise NvmlUnavailable(f"NVML {name} failed: {exc}") from exc
        except pynvml.NVMLError as exc:
            self._count(name, exc)
            if gpu is not None and isinstance(exc, _HANDLE_ERRORS):
                with self._lock:
                    self._handle_errors += 1
            return ABSENT, error_name(exc)

    def take_handle_errors(self) -> int:
        """InvalidArgument / NotFound answers of per-device calls since the last take: a reason to check
        whether the device list changed."""
        with self._lock:
            count, self._handle_errors = self._handle_errors, 0
            return count

    def _count(self, name: str, exc: BaseException) -> None:
        with self._lock:
            self.errors[(name, error_name(exc))] += 1

    def errors_snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.errors)

    def forget(self, gpu: GpuKey) -> None:
        """Ask `gpu` everything again: it changed (entered or left MIG mode, a new MIG device)."""
        with self._lock:
            self._absent = {entry: e for entry, e in self._absent.items() if entry[0] != gpu}
            self._utilization_seen.pop(gpu, None)

    def forget_device(self, index: int) -> None:
        """Forget GPU `index` and its MIG devices: another GPU now answers at that index."""

        def of_it(key: GpuKey | None) -> bool:
            return key == index or (isinstance(key, str) and key.split(".", 1)[0] == str(index))

        with self._lock:
            self._absent = {entry: e for entry, e in self._absent.items() if not of_it(entry[0])}
            self._utilization_seen = {k: v for k, v in self._utilization_seen.items() if not of_it(k)}

    def reset(self) -> None:
        """Forget everything learnt per device: NVML is initialised afresh and the GPUs may differ."""
        with self._lock:
            self._absent.clear()
            self._utilization_seen.clear()
            self._handle_errors = 0

    # -- library ------------------------------------------------------------------------------
    def init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            raise NvmlUnavailable(
                "no NVIDIA driver found: the NVML library (libnvidia-ml.so.1) could not be loaded"
            ) from exc
        except pynvml.NVMLError_DriverNotLoaded as exc:
            raise NvmlUnavailable("the NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded)") from exc
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as exc:
            raise NvmlUnavailable(f"NVML could not be initialised: {exc}") from exc
        self._initialised = True

    def shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            self.call(None, "nvmlShutdown", pynvml.nvmlShutdown)

    def driver_version(self) -> str:
        version = self.call(None, "nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion)
        return str(version) if version is not ABSENT else ""

    def nvml_version(self) -> str:
        version = self.call(None, "nvmlSystemGetNVMLVersion", pynvml.nvmlSystemGetNVMLVersion)
        return str(version) if version is not ABSENT else ""

    def device_count(self) -> int | None:
        """The number of GPUs NVML sees; None when it could not say this time."""
        count = self.call(None, "nvmlDeviceGetCount", pynvml.nvmlDeviceGetCount)
        return int(count) if count is not ABSENT else None

    def handle(self, index: int) -> Any:
        return self.call(index, "nvmlDeviceGetHandleByIndex", pynvml.nvmlDeviceGetHandleByIndex, index)

    # -- identity -----------------------------------------------------------------------------
    def name(self, gpu: GpuKey, handle: Any) -> str:
        value = self.call(gpu, "nvmlDeviceGetName", pynvml.nvmlDeviceGetName, handle)
        return str(value) if value is not ABSENT else "unknown"

    def uuid(self, gpu: GpuKey, handle: Any) -> str:
        value = self.call(gpu, "nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, handle)
        return str(value) if value is not ABSENT else ""

    def pci_bus_id(self, gpu: GpuKey, handle: Any) -> str:
        info = self.call(gpu, "nvmlDeviceGetPciInfo", pynvml.nvmlDeviceGetPciInfo_v3, handle)
        return str(info.busId) if info is not ABSENT else ""

    def architecture(self, gpu: GpuKey, handle: Any) -> str:
        value = self.call(gpu, "nvmlDeviceGetArchitecture", pynvml.nvmlDeviceGetArchitecture, handle)
        return ARCHITECTURES.get(value, "unknown") if value is not ABSENT else "unknown"

    # -- readings (NVML units; the backend converts) ------------------------------------------
    def utilization(self, gpu: GpuKey, handle: Any) -> tuple[int, int] | None:
        rates = self.call(gpu, "nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, handle)
        return (rates.gpu, rates.memory) if rates is not ABSENT else None

    def memory(self, gpu: GpuKey, handle: Any) -> tuple[int, int] | None:
        """(used, total) bytes from the v2 struct, or v1 where the driver has no v2."""
        info = self.call(
            gpu, "nvmlDeviceGetMemoryInfo_v2", pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2
        )
        if info is ABSENT and "nvmlDeviceGetMemoryInfo_v2" in self._missing:
            info = self.call(gpu, "nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, handle)
        return (info.used, info.total) if info is not ABSENT else None

    def power_mw(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(self.call(gpu, "nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, handle))

    def power_limit_mw(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(
            self.call(gpu, "nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        )

    def energy_mj(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(
            self.call(
                gpu,
                "nvmlDeviceGetTotalEnergyConsumption",
                pynvml.nvmlDeviceGetTotalEnergyConsumption,
                handle,
            )
        )

    def temperature_c(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(
            self.call(
                gpu,
                "nvmlDeviceGetTemperature",
                pynvml.nvmlDeviceGetTemperature,
                handle,
                pynvml.NVML_TEMPERATURE_GPU,
            )
        )

    def sm_clock_mhz(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(
            self.call(
                gpu, "nvmlDeviceGetClockInfo", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM
            )
        )

    def sm_clock_max_mhz(self, gpu: GpuKey, handle: Any) -> int | None:
        return _opt(
            self.call(
                gpu,
                "nvmlDeviceGetMaxClockInfo",
                pynvml.nvmlDeviceGetMaxClockInfo,
                handle,
                pynvml.NVML_CLOCK_SM,
            )
        )

    def clock_event_reasons(self, gpu: GpuKey, handle: Any) -> frozenset[str] | None:
        mask = self.call(
            gpu,
            "nvmlDeviceGetCurrentClocksEventReasons",
            pynvml.nvmlDeviceGetCurrentClocksEventReasons,
            handle,
        )
        if mask is ABSENT:
            return None
        return frozenset(name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit)

    def ecc_errors(self, gpu: GpuKey, handle: Any) -> tuple[int, int] | None:
        """(corrected, uncorrected) volatile totals: counts since the driver loaded."""
        counts = []
        for error_type in (
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        ):
            value = self.call(
                gpu,
                "nvmlDeviceGetTotalEccErrors",
                pynvml.nvmlDeviceGetTotalEccErrors,
                handle,
                error_type,
                pynvml.NVML_VOLATILE_ECC,
            )
            if value is ABSENT:
                return None
            counts.append(int(value))
        return counts[0], counts[1]

    def remapped_rows(self, gpu: GpuKey, handle: Any) -> tuple[int, int, int, int] | None:
        rows = self.call(gpu, "nvmlDeviceGetRemappedRows", pynvml.nvmlDeviceGetRemappedRows, handle)
        return tuple(rows) if rows is not ABSENT else None  # type: ignore[return-value]

    def compute_processes(self, gpu: GpuKey, handle: Any) -> list[tuple[int, int | None]] | None:
        procs = self.call(
            gpu,
            "nvmlDeviceGetComputeRunningProcesses",
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            handle,
        )
        if procs is ABSENT:
            return None
        return [(int(p.pid), p.usedGpuMemory) for p in procs]

    def process_utilization(self, gpu: GpuKey, handle: Any) -> list[ProcessSample] | None:
        """Per-process utilisation samples newer than the last ones this GPU gave; [] when none are new.

        None when the GPU cannot give them (NotSupported: remembered, never asked again) or the call
        failed this tick. NVML keeps the last-seen timestamp per GPU, so each tick asks only for new
        samples; where NVML gives one pid several samples, the newest is kept.
        """
        since = self._utilization_seen.get(gpu, 0)
        samples = self.call(
            gpu, "nvmlDeviceGetProcessUtilization", _process_utilization_or_none, handle, since
        )
        if samples is ABSENT:
            return None
        newest: dict[int, ProcessSample] = {}
        for s in samples:
            sample = ProcessSample(int(s.pid), int(s.timeStamp), int(s.smUtil), int(s.memUtil))
            if sample.pid not in newest or sample.timestamp_us >= newest[sample.pid].timestamp_us:
                newest[sample.pid] = sample
        if newest:
            self._utilization_seen[gpu] = max(since, *(s.timestamp_us for s in newest.values()))
        return list(newest.values())

    # -- MIG ----------------------------------------------------------------------------------
    def mig_mode(self, gpu: GpuKey, handle: Any) -> bool | None:
        """True in MIG mode, False not; None for a GPU without MIG (NotSupported, remembered)."""
        modes = self.call(gpu, "nvmlDeviceGetMigMode", pynvml.nvmlDeviceGetMigMode, handle)
        return bool(modes[0] == pynvml.NVML_DEVICE_MIG_ENABLE) if modes is not ABSENT else None

    def mig_slots(self, gpu: GpuKey, handle: Any) -> int:
        count = self.call(
            gpu, "nvmlDeviceGetMaxMigDeviceCount", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle
        )
        return int(count) if count is not ABSENT else 0

    def mig_handle(self, gpu: GpuKey, handle: Any, slot: int) -> Any:
        """The MIG device in `slot`; None for an empty slot, ABSENT when the call failed."""
        return self.call(gpu, "nvmlDeviceGetMigDeviceHandleByIndex", _mig_handle_or_none, handle, slot)

    def mig_ids(self, mig: GpuKey, handle: Any) -> MigIds | None:
        gi = self.call(mig, "nvmlDeviceGetGpuInstanceId", pynvml.nvmlDeviceGetGpuInstanceId, handle)
        ci = self.call(mig, "nvmlDeviceGetComputeInstanceId", pynvml.nvmlDeviceGetComputeInstanceId, handle)
        return MigIds(int(gi), int(ci)) if gi is not ABSENT and ci is not ABSENT else None

    def mig_sm_count(self, mig: GpuKey, handle: Any) -> int | None:
        """The MIG device's SMs (nvmlDeviceGetAttributes answers for MIG device handles only)."""
        attrs = self.call(mig, "nvmlDeviceGetAttributes", pynvml.nvmlDeviceGetAttributes, handle)
        return int(attrs.multiprocessorCount) if attrs is not ABSENT and attrs.multiprocessorCount else None

    def gpm_mig_sample_get(
        self, mig: GpuKey, parent_handle: Any, gpu_instance_id: int, sample: Any
    ) -> GpmStatus:
        _, error = self._call(
            mig,
            "nvmlGpmMigSampleGet",
            pynvml.nvmlGpmMigSampleGet,
            (parent_handle, gpu_instance_id, sample),
            retry_refusals=True,
        )
        return gpm_status(error)

    # -- GPM ----------------------------------------------------------------------------------
    def gpm_support(self, gpu: GpuKey, handle: Any) -> GpmStatus:
        """Whether the device has GPM: "ok", "not_supported", or the refusal or error of the query."""
        support, error = self._call(
            gpu, "nvmlGpmQueryDeviceSupport", pynvml.nvmlGpmQueryDeviceSupport, (handle,), retry_refusals=True
        )
        if support is not ABSENT and not support.isSupportedDevice:
            return "not_supported"
        return gpm_status(error)

    def gpm_sample_alloc(self, gpu: GpuKey) -> Any:
        return self.call(gpu, "nvmlGpmSampleAlloc", pynvml.nvmlGpmSampleAlloc)

    def gpm_sample_free(self, gpu: GpuKey, sample: Any) -> None:
        self.call(gpu, "nvmlGpmSampleFree", pynvml.nvmlGpmSampleFree, sample)

    def gpm_sample_get(self, gpu: GpuKey, handle: Any, sample: Any) -> GpmStatus:
        _, error = self._call(
            gpu, "nvmlGpmSampleGet", pynvml.nvmlGpmSampleGet, (handle, sample), retry_refusals=True
        )
        return gpm_status(error)

    def gpm_metrics(self, gpu: GpuKey, request: Any, older: Any, newer: Any) -> dict[str, float]:
        """The request's GPM metrics between two samples, in NVML's units (percent 0..100 for
        GPM_METRICS, MiB/s for GPM_TRAFFIC_METRICS), keyed as those; a metric NVML did not give is
        left out."""
        request.sample1 = older
        request.sample2 = newer
        if self.call(gpu, "nvmlGpmMetricsGet", pynvml.nvmlGpmMetricsGet, request) is ABSENT:
            return {}
        values = {}
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            if metric.nvmlReturn == pynvml.NVML_SUCCESS:
                values[_GPM_KEYS[metric.metricId]] = float(metric.value)
        return values

    @staticmethod
    def gpm_request(traffic: bool = True) -> Any:
        """A metrics-get request for GPM_METRICS and, with `traffic` (whole GPUs), GPM_TRAFFIC_METRICS."""
        metric_ids = [*GPM_METRICS.values(), *(GPM_TRAFFIC_METRICS.values() if traffic else ())]
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        for i, metric_id in enumerate(metric_ids):
            request.metrics[i].metricId = metric_id
        return request

    # -- NVLink -------------------------------------------------------------------------------
    def nvlink_counts(self, gpu: GpuKey, handle: Any) -> NvlinkCounts | None:
        """The GPU's NVLink links and error counters (since the driver loaded or the counters were
        reset), in one nvmlDeviceGetFieldValues call; None when the call failed or is not supported.
        A field the driver does not give (NotSupported: no NVLink) reads as 0 links or leaves that
        counter out; any other per-field failure is counted in `errors` as this call's."""
        name = "nvmlDeviceGetFieldValues"
        field_ids = [NVLINK_LINK_COUNT_FIELD, *NVLINK_ERROR_FIELDS.values()]
        values = self.call(gpu, name, pynvml.nvmlDeviceGetFieldValues, handle, field_ids)
        if values is ABSENT:
            return None
        read: dict[int, int] = {}
        for value in values:
            if value.nvmlReturn == pynvml.NVML_SUCCESS:
                member = _FIELD_VALUE.get(value.valueType)
                if member is not None:  # a value type this pynvml does not know: left out
                    read[int(value.fieldId)] = int(getattr(value.value, member))
            elif value.nvmlReturn != pynvml.NVML_ERROR_NOT_SUPPORTED:
                self._count(name, pynvml.NVMLError(value.nvmlReturn))
        links = read.get(NVLINK_LINK_COUNT_FIELD, 0)
        errors = {key: read[field] for key, field in NVLINK_ERROR_FIELDS.items() if field in read}
        return NvlinkCounts(links, errors if links > 0 else {})

    # -- events -------------------------------------------------------------------------------
    def event_set_create(self) -> Any:
        return self.call(None, "nvmlEventSetCreate", pynvml.nvmlEventSetCreate)

    def register_events(self, gpu: GpuKey, handle: Any, event_set: Any, wanted: int) -> int:
        """Registers the wanted event types the device supports; returns the mask registered."""
        supported = self.call(
            gpu, "nvmlDeviceGetSupportedEventTypes", pynvml.nvmlDeviceGetSupportedEventTypes, handle
        )
        mask = wanted & supported if supported is not ABSENT else 0
        if not mask:
            return 0
        done = self.call(
            gpu, "nvmlDeviceRegisterEvents", pynvml.nvmlDeviceRegisterEvents, handle, mask, event_set
        )
        return mask if done is not ABSENT else 0

    def wait_event(self, event_set: Any, timeout_ms: int) -> RawEvent | None:
        """One event, or None on timeout. Timeouts are the normal case and are not counted as errors."""
        try:
            data = pynvml.nvmlEventSetWait_v2(event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        except _AGENT_ERRORS as exc:
            self._count("nvmlEventSetWait", exc)
            raise NvmlUnavailable(f"NVML nvmlEventSetWait failed: {exc}") from exc
        except pynvml.NVMLError as exc:
            # The caller backs off: a lost GPU in the set can make every wait fail at once.
            self._count("nvmlEventSetWait", exc)
            raise
        return RawEvent(handle_key(data.device), int(data.eventType), int(data.eventData))

    def event_set_free(self, event_set: Any) -> None:
        self.call(None, "nvmlEventSetFree", pynvml.nvmlEventSetFree, event_set)


def gpm_status(error: str) -> GpmStatus:
    """The GpmStatus of a GPM call's outcome ("" for success, else its error_name)."""
    if not error:
        return "ok"
    if error in ("not_supported", "function_not_found", "library_mismatch"):
        return "not_supported"
    if error in GPM_REFUSALS:
        return error  # type: ignore[return-value]
    return "error"


def _opt(value: Any) -> Any:
    return None if value is ABSENT else value
