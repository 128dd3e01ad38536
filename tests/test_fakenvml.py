"""The fake libnvidia-ml, exercised only through pynvml's public wrappers."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator

import fakenvml
import pynvml
import pytest
from fakenvml import (
    DEFAULT_GPM_PERCENT,
    SUPPORTED_EVENT_TYPES,
    FakeDevice,
    FakeNvml,
    handle_address,
    no_nvml_library,
)

# The exported fixtures, usable here whether or not a conftest re-exports them.
fake_nvml = fakenvml.fake_nvml
no_nvml = fakenvml.no_nvml

GiB = 1024**3
MiB = 1024**2
SEVEN_METRICS = [
    pynvml.NVML_GPM_METRIC_SM_UTIL,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    pynvml.NVML_GPM_METRIC_FP64_UTIL,
    pynvml.NVML_GPM_METRIC_FP32_UTIL,
    pynvml.NVML_GPM_METRIC_FP16_UTIL,
]


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    """Four H100s, installed and initialised; shut down and uninstalled afterwards."""
    nvml = FakeNvml.h100s(4)
    with nvml.installed():
        pynvml.nvmlInit()
        yield nvml
        if nvml.init_count:
            pynvml.nvmlShutdown()


def wait_until_waiting(fake: FakeNvml, n: int = 1) -> None:
    """Give another thread the chance to enter nvmlEventSetWait_v2 (no assertion on time)."""
    for _ in range(2000):
        if fake.calls["nvmlEventSetWait_v2"] >= n:
            return
        time.sleep(0.001)


def metrics_get(s1: object, s2: object, ids: list[int]) -> pynvml.c_nvmlGpmMetricsGet_t:
    req = pynvml.c_nvmlGpmMetricsGet_t()
    req.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    req.numMetrics = len(ids)
    req.sample1 = s1
    req.sample2 = s2
    for i, mid in enumerate(ids):
        req.metrics[i].metricId = mid
    return pynvml.nvmlGpmMetricsGet(req)


# ---------------------------------------------------------------- install, init, library


def test_install_swaps_and_restores_pynvml_state() -> None:
    before = pynvml.nvmlLib
    nvml = FakeNvml.h100s(2)
    pynvml._nvmlGetFunctionPointer_cache["stale"] = object()
    nvml.install()
    try:
        assert pynvml.nvmlLib is not before
        assert "stale" not in pynvml._nvmlGetFunctionPointer_cache
        pynvml.nvmlInit()
        assert pynvml._nvmlLib_refcount == 1
        assert pynvml.nvmlDeviceGetCount() == 2
        pynvml.nvmlShutdown()
        with pytest.raises(RuntimeError):
            nvml.install()
    finally:
        nvml.uninstall()
    assert pynvml.nvmlLib is before
    assert pynvml._nvmlGetFunctionPointer_cache == {}
    assert not nvml.installed_now


def test_init_shutdown_and_system_queries(fake: FakeNvml) -> None:
    assert fake.init_count == 1
    assert pynvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.54.15"
    assert pynvml.nvmlSystemGetCudaDriverVersion() == 12040
    assert pynvml.nvmlDeviceGetCount() == 4
    pynvml.nvmlShutdown()
    assert fake.init_count == 0
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_init_error_is_raised_as_its_exception_class() -> None:
    nvml = FakeNvml.h100s(1, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with nvml.installed():
        with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
            pynvml.nvmlInit()
        assert nvml.init_count == 0
        assert pynvml._nvmlLib_refcount == 0
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()


def test_no_nvml_library_makes_init_fail_deterministically() -> None:
    before = pynvml.nvmlLib
    with no_nvml_library():
        assert pynvml.nvmlLib is None
        with pytest.raises(pynvml.NVMLError_LibraryNotFound):
            pynvml.nvmlInit()
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
    assert pynvml.nvmlLib is before
    assert pynvml.CDLL is ctypes.CDLL


def test_no_nvml_library_inside_an_installed_fake_restores_the_fake(fake: FakeNvml) -> None:
    with no_nvml_library(), pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 4


def test_error_string_works_through_restype_assignment(fake: FakeNvml) -> None:
    assert pynvml.nvmlErrorString(pynvml.NVML_ERROR_GPU_IS_LOST) == "GPU is lost"
    assert pynvml.nvmlErrorString(4242) == "Unknown Error"
    assert fake.calls["nvmlErrorString"] == 2
    try:  # pynvml's NVMLError.__str__ asks the library for codes it does not know (and caches them)
        assert str(pynvml.NVMLError(4243)) == "Unknown Error"
        assert fake.calls["nvmlErrorString"] == 3
    finally:
        pynvml.NVMLError._errcode_to_string.pop(4243, None)


def test_init_v2_symbol_exists(fake: FakeNvml) -> None:
    fn = pynvml._nvmlGetFunctionPointer("nvmlInit_v2")
    assert fn() == pynvml.NVML_SUCCESS
    assert fake.init_count == 2


# ---------------------------------------------------------------- identity and handles


def test_handles_identify_devices(fake: FakeNvml) -> None:
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
    again = pynvml.nvmlDeviceGetHandleByIndex(2)
    assert handle_address(again) == handle_address(handles[2])
    assert len({handle_address(h) for h in handles}) == 4
    assert all(handle_address(h) != 0 for h in handles)
    assert [fake.index_of(h) for h in handles] == [0, 1, 2, 3]
    assert pynvml.nvmlDeviceGetIndex(handles[3]) == 3
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(4)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetName(pynvml.c_nvmlDevice_t())


def test_identity(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert pynvml.nvmlDeviceGetUUID(h) == "GPU-00000000-0000-0000-0000-000000000003"
    assert fake.devices[3].uuid == "GPU-00000000-0000-0000-0000-000000000003"
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    assert pci.busId == "00000000:1B:00.0"  # pynvml structs decode char[] to str
    assert pci.busIdLegacy == "0000:1B:00.0"
    assert (pci.domain, pci.bus, pci.device) == (0, 0x1B, 0)
    assert pynvml.nvmlDeviceGetArchitecture(h) == pynvml.NVML_DEVICE_ARCH_HOPPER
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000003")
    assert handle_address(by_uuid) == handle_address(h)
    by_pci = pynvml.nvmlDeviceGetHandleByPciBusId("00000000:1B:00.0")
    assert handle_address(by_pci) == handle_address(h)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-nope")


def test_pci_info_ext(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    info = pynvml.nvmlPciInfoExt_v1_t()
    info.version = pynvml.nvmlPciInfoExt_v1
    pynvml.nvmlDeviceGetPciInfoExt(h, ctypes.byref(info))
    assert info.busId == "00000000:19:00.0"
    assert info.bus == 0x19
    bad = pynvml.nvmlPciInfoExt_v1_t()
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetPciInfoExt(h, ctypes.byref(bad))


def test_explicit_identity_fields_are_kept() -> None:
    dev = FakeDevice(
        name="NVIDIA A100-SXM4-80GB",
        uuid="GPU-abc",
        pci_bus_id="00000001:A0:00.0",
        architecture=pynvml.NVML_DEVICE_ARCH_AMPERE,
    )
    with FakeNvml([FakeDevice(), dev]).installed():
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-80GB"
        assert pynvml.nvmlDeviceGetUUID(h) == "GPU-abc"
        assert pynvml.nvmlDeviceGetPciInfo(h).busId == "00000001:A0:00.0"
        assert pynvml.nvmlDeviceGetPciInfo(h).domain == 1
        assert pynvml.nvmlDeviceGetArchitecture(h) == pynvml.NVML_DEVICE_ARCH_AMPERE
        assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0)).endswith("000000000000")
        pynvml.nvmlShutdown()


def test_name_too_long_for_buffer_is_insufficient_size(fake: FakeNvml) -> None:
    fake.devices[0].name = "x" * 200
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))


# ---------------------------------------------------------------- telemetry values


def test_telemetry_values_come_back_exactly(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (97, 41)
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456_789
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 64
    assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1755
    assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == 0
    assert pynvml.nvmlDeviceGetRemappedRows(h) == (2, 0, 0, 0)
    for counter in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
        assert pynvml.nvmlDeviceGetTotalEccErrors(h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, counter) == 3
        assert pynvml.nvmlDeviceGetTotalEccErrors(h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter) == 0


def test_telemetry_follows_runtime_changes(fake: FakeNvml) -> None:
    dev = fake.devices[1]
    dev.power_mw = 250_500
    dev.energy_mj = 2**40 + 7
    dev.temperature_c = 88
    dev.sm_clock_mhz = 1410
    dev.clock_event_reasons = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwSlowdown
    dev.ecc_uncorrected = 5
    dev.remapped_rows = (4, 1, 1, 0)
    dev.utilization_gpu = 12
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 250_500
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 2**40 + 7
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 88
    assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1410
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == 0xC
    assert (
        pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC
        )
        == 5
    )
    assert pynvml.nvmlDeviceGetRemappedRows(h) == (4, 1, 1, 0)
    assert pynvml.nvmlDeviceGetUtilizationRates(h).gpu == 12
    # device 0 untouched
    assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(0)) == 612_000


def test_memory_info_v2_and_v1(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert mem.total == 80 * GiB
    assert mem.used == 60 * GiB
    assert mem.reserved == 512 * MiB
    assert mem.free == 80 * GiB - 60 * GiB - 512 * MiB
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert v1.total == 80 * GiB
    assert v1.used == 60 * GiB + 512 * MiB  # v1 "used" includes reserved, as the driver reports it
    assert v1.free == v1.total - v1.used
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 1
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=0x01000018)


def test_bad_sensor_and_clock_type(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTemperature(h, 7)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetClockInfo(h, 9)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTotalEccErrors(h, 5, pynvml.NVML_AGGREGATE_ECC)


# ---------------------------------------------------------------- processes


def test_no_processes_is_success_on_the_first_call(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_several_processes_use_the_two_call_protocol(fake: FakeNvml) -> None:
    fake.devices[2].processes = [(101, 10 * GiB), (202, 3 * GiB), (303, 0)]
    h = pynvml.nvmlDeviceGetHandleByIndex(2)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(101, 10 * GiB), (202, 3 * GiB), (303, 0)]
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(1)) == []


def test_process_memory_not_available_comes_back_as_none(fake: FakeNvml) -> None:
    fake.devices[0].processes = [(55, None)]
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(55, None)]


def test_process_utilization_gives_only_samples_newer_than_asked(fake: FakeNvml) -> None:
    fake.devices[1].process_samples = [(101, 60, 20, 1_000), (202, 30, 5, 1_500)]
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    got = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert [(s.pid, s.smUtil, s.memUtil, s.timeStamp) for s in got] == [
        (101, 60, 20, 1_000),
        (202, 30, 5, 1_500),
    ]
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 2  # size query, then the read
    got = pynvml.nvmlDeviceGetProcessUtilization(h, 1_000)
    assert [(s.pid, s.smUtil) for s in got] == [(202, 30)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, 1_500)
    fake.devices[1].process_samples.append((101, 75, 25, 2_000))
    got = pynvml.nvmlDeviceGetProcessUtilization(h, 1_500)
    assert [(s.pid, s.smUtil, s.memUtil) for s in got] == [(101, 75, 25)]


def test_process_utilization_size_query_and_not_supported(fake: FakeNvml) -> None:
    fake.devices[0].process_samples = [(1, 1, 1, 10), (2, 2, 2, 20)]
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
    count = ctypes.c_uint(0)
    assert fn(h, None, ctypes.byref(count), ctypes.c_ulonglong(0)) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 2
    small = (pynvml.c_nvmlProcessUtilizationSample_t * 1)()
    count.value = 1
    assert fn(h, small, ctypes.byref(count), ctypes.c_ulonglong(0)) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 2
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(pynvml.nvmlDeviceGetHandleByIndex(2), 0)
    fake.devices[0].not_supported = {"nvmlDeviceGetProcessUtilization"}
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)


def test_process_array_too_small_is_insufficient_size(fake: FakeNvml) -> None:
    fake.devices[0].processes = [(1, 1), (2, 2), (3, 3)]
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
    count = ctypes.c_uint(0)
    assert fn(h, ctypes.byref(count), None) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 3
    small = (pynvml.c_nvmlProcessInfo_v3_t * 2)()
    count.value = 2
    assert fn(h, ctypes.byref(count), small) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 3
    exact = (pynvml.c_nvmlProcessInfo_v3_t * 3)()
    assert fn(h, ctypes.byref(count), exact) == pynvml.NVML_SUCCESS
    assert [exact[i].pid for i in range(3)] == [1, 2, 3]


# ---------------------------------------------------------------- error injection


def test_not_supported_is_per_device_and_per_symbol(fake: FakeNvml) -> None:
    fake.devices[1].not_supported = {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetRemappedRows"}
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetRemappedRows(h1)
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 612_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h0) == 123_456_789


def test_lost_gpu_fails_every_per_device_call_and_can_recover(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    fake.devices[3].lost = True
    calls = [
        lambda: pynvml.nvmlDeviceGetName(h),
        lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2),
        lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
        lambda: pynvml.nvmlGpmQueryDeviceSupport(h),
        lambda: pynvml.nvmlDeviceGetHandleByIndex(3),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call()
    assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(2)) == 612_000
    fake.devices[3].lost = False
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000


def test_unknown_error_injection(fake: FakeNvml) -> None:
    fake.devices[0].unknown_error = {"nvmlDeviceGetTemperature"}
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)


def test_missing_symbol_is_function_not_found() -> None:
    nvml = FakeNvml.h100s(1, missing_symbols={"nvmlDeviceGetMemoryInfo_v2", "nvmlGpmSampleAlloc"})
    with nvml.installed():
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlGpmSampleAlloc()
        assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 80 * GiB
        assert nvml.missing_lookups["nvmlGpmSampleAlloc"] == 1
        # un-missing a symbol takes effect once pynvml's lookup cache is cleared
        nvml.missing_symbols.clear()
        nvml.clear_function_cache()
        assert pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).used == 60 * GiB
        pynvml.nvmlShutdown()


def test_unimplemented_symbol_is_function_not_found(fake: FakeNvml) -> None:
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetFanSpeed(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert fake.missing_lookups["nvmlDeviceGetFanSpeed"] == 1


def test_calls_are_counted_per_symbol(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for _ in range(3):
        pynvml.nvmlDeviceGetPowerUsage(h)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 3
    assert fake.calls["nvmlDeviceGetHandleByIndex_v2"] == 1
    assert fake.calls["nvmlInitWithFlags"] == 1
    assert fake.calls["nvmlDeviceGetTemperature"] == 0


# ---------------------------------------------------------------- events


def test_repeated_xids_are_each_delivered_in_order(fake: FakeNvml) -> None:
    h2 = pynvml.nvmlDeviceGetHandleByIndex(2)
    assert pynvml.nvmlDeviceGetSupportedEventTypes(h2) == SUPPORTED_EVENT_TYPES
    es = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(h2, pynvml.nvmlEventTypeXidCriticalError, es)
    fake.queue_xid(2, 79)
    fake.queue_xid(2, 79)
    fake.queue_xid(2, 48)
    got = []
    for _ in range(3):
        data = pynvml.nvmlEventSetWait_v2(es, 5)
        assert handle_address(data.device) == handle_address(h2)
        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
        got.append(data.eventData)
    assert got == [79, 79, 48]
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(es, 2)
    pynvml.nvmlEventSetFree(es)


def test_events_only_reach_sets_registered_for_that_device_and_type(fake: FakeNvml) -> None:
    es = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(
        pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, es
    )
    fake.queue_xid(1, 13)  # device 1 not registered
    fake.queue_double_bit_ecc(0)  # type not registered
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(es, 2)
    pynvml.nvmlDeviceRegisterEvents(
        pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeDoubleBitEccError, es
    )
    fake.queue_double_bit_ecc(0)
    data = pynvml.nvmlEventSetWait_v2(es, 5)
    assert data.eventType == pynvml.nvmlEventTypeDoubleBitEccError
    assert fake.index_of(data.device) == 0
    pynvml.nvmlEventSetFree(es)


def test_every_registered_set_gets_its_own_copy(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    a, b = pynvml.nvmlEventSetCreate(), pynvml.nvmlEventSetCreate()
    for es in (a, b):
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    fake.queue_xid(1, 94)
    assert pynvml.nvmlEventSetWait_v2(a, 5).eventData == 94
    assert pynvml.nvmlEventSetWait_v2(b, 5).eventData == 94
    for es in (a, b):
        pynvml.nvmlEventSetFree(es)


def test_registering_unsupported_types_or_on_a_lost_gpu_fails(fake: FakeNvml) -> None:
    es = pynvml.nvmlEventSetCreate()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeFatalPoisonError, es)
    fake.devices[0].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    pynvml.nvmlEventSetFree(es)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlEventSetFree(es)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlEventSetWait_v2(es, 1)


def test_wait_in_another_thread_is_woken_while_sampling_continues(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    es = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    result: list[object] = []

    def waiter() -> None:
        try:
            result.append(pynvml.nvmlEventSetWait_v2(es, 5_000).eventData)
        except pynvml.NVMLError as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_until_waiting(fake)  # then sample while it blocks
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000
    fake.queue_xid(3, 31)
    t.join(10)
    assert not t.is_alive()
    assert result == [31]
    pynvml.nvmlEventSetFree(es)


def test_shutdown_wakes_a_waiter(fake: FakeNvml) -> None:
    es = pynvml.nvmlEventSetCreate()
    result: list[object] = []

    def waiter() -> None:
        try:
            pynvml.nvmlEventSetWait_v2(es, 5_000)
        except pynvml.NVMLError as exc:
            result.append(type(exc))

    t = threading.Thread(target=waiter)
    t.start()
    wait_until_waiting(fake)
    pynvml.nvmlShutdown()
    t.join(10)
    assert result == [pynvml.NVMLError_Uninitialized]


def test_uninstall_wakes_a_waiter() -> None:
    nvml = FakeNvml.h100s(1)
    nvml.install()
    pynvml.nvmlInit()
    es = pynvml.nvmlEventSetCreate()
    fn = pynvml._nvmlGetFunctionPointer("nvmlEventSetWait_v2")
    result: list[int] = []
    data = pynvml.c_nvmlEventData_t()
    t = threading.Thread(target=lambda: result.append(fn(es, ctypes.byref(data), 5_000)))
    t.start()
    wait_until_waiting(nvml)
    nvml.uninstall()
    t.join(10)
    assert result == [pynvml.NVML_ERROR_UNINITIALIZED]


# ---------------------------------------------------------------- GPM


def test_gpm_support_query(fake: FakeNvml) -> None:
    fake.devices[1].gpm_supported = False
    assert pynvml.nvmlGpmQueryDeviceSupport(pynvml.nvmlDeviceGetHandleByIndex(0)).isSupportedDevice == 1
    assert pynvml.nvmlGpmQueryDeviceSupport(pynvml.nvmlDeviceGetHandleByIndex(1)).isSupportedDevice == 0
    s = pynvml.nvmlGpmSampleAlloc()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpmSampleGet(pynvml.nvmlDeviceGetHandleByIndex(1), s)
    pynvml.nvmlGpmSampleFree(s)


def test_gpm_metrics_between_two_samples(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    assert handle_address(s1) != handle_address(s2)
    assert fake.live_gpm_samples == {handle_address(s1), handle_address(s2)}
    pynvml.nvmlGpmSampleGet(h, s1)
    pynvml.nvmlGpmSampleGet(h, s2)
    ids = [*SEVEN_METRICS, pynvml.NVML_GPM_METRIC_INTEGER_UTIL]
    res = metrics_get(s1, s2, ids)
    for i, mid in enumerate(SEVEN_METRICS):
        assert res.metrics[i].nvmlReturn == pynvml.NVML_SUCCESS
        assert res.metrics[i].value == DEFAULT_GPM_PERCENT[mid]
    assert res.metrics[0].value == 71.5
    assert res.metrics[0].metricInfo.shortName == b"sm_util"
    assert res.metrics[7].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    pynvml.nvmlGpmSampleFree(s1)
    pynvml.nvmlGpmSampleFree(s2)
    assert fake.live_gpm_samples == set()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpmSampleFree(s1)


def test_gpm_rejects_same_sample_reversed_order_and_mixed_devices(fake: FakeNvml) -> None:
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    a, b, c = (pynvml.nvmlGpmSampleAlloc() for _ in range(3))
    pynvml.nvmlGpmSampleGet(h0, a)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(a, a, SEVEN_METRICS)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(a, b, SEVEN_METRICS)  # b never sampled
    pynvml.nvmlGpmSampleGet(h0, b)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(b, a, SEVEN_METRICS)  # sample2 older than sample1
    for _ in range(3):  # c's per-device counter (3) is now ahead of b's (2): only the device differs
        pynvml.nvmlGpmSampleGet(h1, c)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(b, c, SEVEN_METRICS)
    assert metrics_get(a, b, SEVEN_METRICS).metrics[0].value == 71.5
    for s in (a, b, c):
        pynvml.nvmlGpmSampleFree(s)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(a, b, SEVEN_METRICS)  # freed samples


def test_gpm_buffer_swap_sees_values_of_the_latest_interval(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(2)
    bufs = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    pynvml.nvmlGpmSampleGet(h, bufs[0])
    seen = []
    for sm in (10.0, 20.5, 33.3):
        fake.devices[2].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = sm
        pynvml.nvmlGpmSampleGet(h, bufs[1])
        seen.append(metrics_get(bufs[0], bufs[1], [pynvml.NVML_GPM_METRIC_SM_UTIL]).metrics[0].value)
        bufs.reverse()
    assert seen == [10.0, 20.5, 33.3]
    for s in bufs:
        pynvml.nvmlGpmSampleFree(s)


def test_gpm_value_averages_over_skipped_samples(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    a, b, c = (pynvml.nvmlGpmSampleAlloc() for _ in range(3))
    pynvml.nvmlGpmSampleGet(h, a)
    fake.devices[0].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 20.0
    pynvml.nvmlGpmSampleGet(h, b)
    fake.devices[0].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 40.0
    pynvml.nvmlGpmSampleGet(h, c)
    assert metrics_get(a, c, [pynvml.NVML_GPM_METRIC_SM_UTIL]).metrics[0].value == 30.0
    assert metrics_get(b, c, [pynvml.NVML_GPM_METRIC_SM_UTIL]).metrics[0].value == 40.0


def test_gpm_version_checks(fake: FakeNvml) -> None:
    req = pynvml.c_nvmlGpmMetricsGet_t()
    req.version = 99
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlGpmMetricsGet(req)
    support = pynvml.c_nvmlGpmSupport_t()
    support.version = 7
    fn = pynvml._nvmlGetFunctionPointer("nvmlGpmQueryDeviceSupport")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert fn(h, ctypes.byref(support)) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_gpm_sample_get_on_lost_gpu(fake: FakeNvml) -> None:
    s = pynvml.nvmlGpmSampleAlloc()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fake.devices[0].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlGpmSampleGet(h, s)
    pynvml.nvmlGpmSampleFree(s)


# ---------------------------------------------------------------- constructors and fixture


def test_h100s_routes_kwargs_to_devices_and_library() -> None:
    nvml = FakeNvml.h100s(3, driver_version="560.1.2", processes=[(7, 1)], power_mw=1)
    assert len(nvml.devices) == 3
    assert nvml.driver_version == "560.1.2"
    assert all(d.power_mw == 1 for d in nvml.devices)
    nvml.devices[0].processes.append((8, 2))
    assert nvml.devices[1].processes == [(7, 1)]  # not shared between devices
    assert [d.pci_bus_id for d in nvml.devices] == [
        "00000000:18:00.0",
        "00000000:19:00.0",
        "00000000:1A:00.0",
    ]
    with pytest.raises(TypeError):
        FakeNvml.h100s(1, bogus=True)


def test_no_nvml_fixture(no_nvml: None) -> None:
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()


def test_fake_nvml_fixture_installs_eight_h100s(fake_nvml: FakeNvml) -> None:
    assert pynvml.nvmlLib is not None
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 8
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(7)) == "NVIDIA H100 80GB HBM3"
    pynvml.nvmlShutdown()
    assert fake_nvml.calls["nvmlShutdown"] == 1
