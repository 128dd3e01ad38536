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
    H100_MIG_PROFILES,
    MAX_MIG_DEVICES,
    SUPPORTED_EVENT_TYPES,
    FakeDevice,
    FakeMigDevice,
    FakeNvml,
    handle_address,
    mig_devices,
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


# ---------------------------------------------------------------- MIG


@pytest.fixture
def mig() -> Iterator[FakeNvml]:
    """Two H100s in MIG mode with seven 1g.10gb slices each, installed and initialised."""
    nvml = FakeNvml.h100_mig(2)
    with nvml.installed():
        pynvml.nvmlInit()
        yield nvml
        if nvml.init_count:
            pynvml.nvmlShutdown()


def mig_handles(parent: object) -> list[object]:
    """Every MIG device handle of a parent, as an agent enumerates them (NotFound = empty slot)."""
    handles = []
    for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            handles.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i))
        except pynvml.NVMLError_NotFound:
            continue
    return handles


def test_mig_devices_take_sms_memory_and_the_placements_gpu_instance_ids() -> None:
    assert H100_MIG_PROFILES["1g.10gb"] == (16, 9984 * MiB)
    assert H100_MIG_PROFILES["7g.80gb"] == (132, 81152 * MiB)
    seven = mig_devices(["1g.10gb"] * 7)
    assert [m.gpu_instance_id for m in seven] == [7, 8, 9, 10, 11, 12, 13]
    assert {(m.profile, m.compute_instance_id, m.sm_count, m.memory_total) for m in seven} == {
        ("1g.10gb", 0, 16, 9984 * MiB)
    }
    mixed = mig_devices(["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    assert [(m.profile, m.gpu_instance_id, m.sm_count) for m in mixed] == [
        ("3g.40gb", 2, 60),
        ("2g.20gb", 3, 32),
        ("1g.10gb", 9, 16),
        ("1g.10gb", 10, 16),
    ]
    assert [m.gpu_instance_id for m in mig_devices(["4g.40gb", "3g.40gb"])] == [1, 2]
    assert [m.gpu_instance_id for m in mig_devices(["7g.80gb"])] == [0]
    for layout in (["1g.10gb"] * 8, ["7g.80gb", "1g.10gb"], ["4g.40gb", "4g.40gb"], ["5g.50gb"]):
        with pytest.raises(ValueError):
            mig_devices(layout)


def test_h100_mig_builds_gpus_in_mig_mode_with_their_own_slices() -> None:
    nvml = FakeNvml.h100_mig(2, profiles=["3g.40gb", "3g.40gb"], power_mw=5)
    assert [d.mig_mode for d in nvml.devices] == [1, 1]
    assert [d.power_mw for d in nvml.devices] == [5, 5]
    assert [m.profile for m in nvml.devices[1].mig_devices] == ["3g.40gb", "3g.40gb"]
    assert nvml.devices[0].mig_devices[0] is not nvml.devices[1].mig_devices[0]
    uuids = [m.uuid for d in nvml.devices for m in d.mig_devices]
    assert len(set(uuids)) == 4
    assert all(u.startswith("MIG-") and set(u[4:]) <= set("0123456789abcdef-") for u in uuids)
    assert FakeNvml.h100_mig(1, mig_mode=0).devices[0].mig_mode == 0
    with pytest.raises(TypeError):
        FakeNvml.h100_mig(1, mig_devices=[])


def test_mig_mode_and_max_mig_device_count(mig: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(h) == [1, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h) == MAX_MIG_DEVICES == 7
    mig.devices[0].mig_pending_mode = 0
    assert pynvml.nvmlDeviceGetMigMode(h) == [1, 0]
    mig.devices[1].mig_mode = 0
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetMigMode(h1) == [0, 0]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h1) == 0
    mig.devices[1].mig_capable = False
    for call in (
        lambda: pynvml.nvmlDeviceGetMigMode(h1),
        lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(h1),
        lambda: pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h1, 0),
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 0))


def test_enumerates_seven_1g_slices(mig: FakeNvml) -> None:
    assert pynvml.nvmlDeviceGetCount() == 2  # physical GPUs only
    parent = pynvml.nvmlDeviceGetHandleByIndex(1)
    handles = mig_handles(parent)
    assert len(handles) == 7
    assert len({handle_address(h) for h in handles} | {handle_address(parent)}) == 8
    again = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
    assert handle_address(again) == handle_address(handles[4])
    assert [pynvml.nvmlDeviceGetGpuInstanceId(h) for h in handles] == [7, 8, 9, 10, 11, 12, 13]
    assert {pynvml.nvmlDeviceGetComputeInstanceId(h) for h in handles} == {0}
    assert {pynvml.nvmlDeviceGetName(h) for h in handles} == {"NVIDIA H100 80GB HBM3 MIG 1g.10gb"}
    uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
    assert uuids == [m.uuid for m in mig.devices[1].mig_devices]
    assert len(set(uuids)) == 7 and all(u.startswith("MIG-") for u in uuids)
    assert all(pynvml.nvmlDeviceIsMigDeviceHandle(h).value == 1 for h in handles)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handles[2])
    assert handle_address(back) == handle_address(parent)
    assert mig.mig_of(handles[2]) == (1, mig.devices[1].mig_devices[2])
    assert mig.mig_of(parent) is None and mig.index_of(handles[2]) is None
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(uuids[5])
    assert handle_address(by_uuid) == handle_address(handles[5])
    assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(1)) == mig.devices[1].uuid


def test_empty_slot_is_not_found_and_past_the_max_is_invalid(mig: FakeNvml) -> None:
    del mig.devices[0].mig_devices[5:]
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetGpuInstanceId(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)) == 11
    for index in (5, 6):
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, index)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)
    assert len(mig_handles(parent)) == 5
    slice_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(slice_handle, 0)  # not a parent
    mig.devices[0].mig_mode = 0
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)


def test_mig_id_symbols_on_a_whole_gpu_handle(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]
    assert pynvml.nvmlDeviceIsMigDeviceHandle(h).value == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceId(h)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetComputeInstanceId(h)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)


def test_attributes_answer_for_mig_handles_only(mig: FakeNvml) -> None:
    mig.devices[1].mig_devices = [
        *mig_devices(["3g.40gb", "2g.20gb"]),
        FakeMigDevice(profile="1c.1g.10gb", gpu_instance_id=9),
    ]
    parent = pynvml.nvmlDeviceGetHandleByIndex(1)
    got = []
    for h in mig_handles(parent):
        a = pynvml.nvmlDeviceGetAttributes(h)
        got.append(
            (a.multiprocessorCount, a.gpuInstanceSliceCount, a.computeInstanceSliceCount, a.memorySizeMB)
        )
    assert got == [(60, 3, 3, 40192), (32, 2, 2, 19968), (16, 1, 1, 9984)]
    a = pynvml.nvmlDeviceGetAttributes(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0))
    assert (a.sharedCopyEngineCount, a.sharedDecoderCount, a.sharedEncoderCount) == (3, 3, 0)
    mig.devices[0].mig_devices = [FakeMigDevice(profile="1c.3g.40gb", gpu_instance_id=1, sm_count=16)]
    ci_slice = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
    assert pynvml.nvmlDeviceGetName(ci_slice) == "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb"
    a = pynvml.nvmlDeviceGetAttributes(ci_slice)
    assert (a.multiprocessorCount, a.gpuInstanceSliceCount, a.computeInstanceSliceCount) == (16, 3, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetAttributes(parent)
    mig.devices[1].mig_mode = 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetAttributes(parent)


def test_mig_handle_has_its_own_memory_and_processes(mig: FakeNvml) -> None:
    slices = mig.devices[0].mig_devices
    slices[3].memory_used = 2 * GiB
    slices[3].processes = [(4242, 2 * GiB - 64 * MiB), (4343, None)]
    h = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 3)
    v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.used, v2.reserved) == (9984 * MiB, 2 * GiB, 32 * MiB)
    assert v2.free == 9984 * MiB - 2 * GiB - 32 * MiB
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert (v1.total, v1.used) == (9984 * MiB, 2 * GiB + 32 * MiB)
    assert v1.free == v1.total - v1.used
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (4242, 2 * GiB - 64 * MiB, 10, 0),
        (4343, None, 10, 0),
    ]
    other = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 4)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(other) == []


def test_parent_in_mig_mode_aggregates_memory_and_processes(mig: FakeNvml) -> None:
    dev = mig.devices[1]
    dev.processes = [(1, 1)]  # the parent's own list is not what MIG mode reports
    dev.mig_devices[0].processes = [(100, 3 * GiB)]
    dev.mig_devices[6].processes = [(600, 5 * GiB), (601, 1 * GiB)]
    dev.mig_devices[6].memory_used = 6 * GiB + 512 * MiB
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert v2.total == 80 * GiB
    assert v2.used == 7 * 6 * GiB + 512 * MiB
    assert v2.reserved == 7 * 32 * MiB
    assert v2.free == 80 * GiB - v2.used - v2.reserved
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert v1.used == v2.used + v2.reserved
    slice_v1 = [pynvml.nvmlDeviceGetMemoryInfo(s).used for s in mig_handles(h)]
    assert v1.used == sum(slice_v1)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (100, 3 * GiB, 7, 0),
        (600, 5 * GiB, 13, 0),
        (601, 1 * GiB, 13, 0),
    ]
    dev.mig_devices.clear()
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).used == 0


def test_parent_in_mig_mode_has_no_utilization_but_keeps_the_rest(mig: FakeNvml) -> None:
    mig.devices[0].process_samples = [(100, 50, 10, 1_000)]
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetUtilizationRates(h)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456_789
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 64
    assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1755
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == 0
    assert pynvml.nvmlDeviceGetRemappedRows(h) == (2, 0, 0, 0)
    ecc = pynvml.nvmlDeviceGetTotalEccErrors(
        h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
    )
    assert ecc == 3
    assert pynvml.nvmlDeviceGetPciInfo(h).busId == "00000000:18:00.0"
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1


def test_mig_handle_answers_not_supported_for_whole_gpu_symbols(mig: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
    es = pynvml.nvmlEventSetCreate()
    s = pynvml.nvmlGpmSampleAlloc()
    calls = [
        lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
        lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
        lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
        lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
        lambda: pynvml.nvmlDeviceGetRemappedRows(h),
        lambda: pynvml.nvmlDeviceGetProcessUtilization(h, 0),
        lambda: pynvml.nvmlDeviceGetPciInfo(h),
        lambda: pynvml.nvmlDeviceGetArchitecture(h),
        lambda: pynvml.nvmlDeviceGetIndex(h),
        lambda: pynvml.nvmlDeviceGetSupportedEventTypes(h),
        lambda: pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es),
        lambda: pynvml.nvmlGpmQueryDeviceSupport(h),
        lambda: pynvml.nvmlGpmSampleGet(h, s),
        lambda: pynvml.nvmlGpmMigSampleGet(h, 7, s),
        lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(h),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    pynvml.nvmlEventSetFree(es)
    pynvml.nvmlGpmSampleFree(s)


def test_destroying_an_instance_makes_its_handle_stale(mig: FakeNvml) -> None:
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    handles = mig_handles(parent)
    gone = mig.devices[0].mig_devices.pop(2)  # nvidia-smi mig -dci/-dgi of GPU instance 9
    assert mig.mig_of(handles[2]) == (0, gone)
    for call in (
        lambda: pynvml.nvmlDeviceGetName(handles[2]),
        lambda: pynvml.nvmlDeviceGetUUID(handles[2]),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(handles[2]),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handles[2]),
        lambda: pynvml.nvmlDeviceGetAttributes(handles[2]),
        lambda: pynvml.nvmlDeviceGetGpuInstanceId(handles[2]),
        lambda: pynvml.nvmlDeviceIsMigDeviceHandle(handles[2]),
        lambda: pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handles[2]),
        lambda: pynvml.nvmlDeviceGetPowerUsage(handles[2]),
    ):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call()
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID(gone.uuid)
    now = mig_handles(parent)
    assert [pynvml.nvmlDeviceGetGpuInstanceId(h) for h in now] == [7, 8, 10, 11, 12, 13]
    kept = [handles[i] for i in (0, 1, 3, 4, 5, 6)]
    assert [handle_address(h) for h in now] == [handle_address(h) for h in kept]
    created = FakeMigDevice(gpu_instance_id=9)
    mig.devices[0].mig_devices.insert(2, created)  # a new instance in the freed placement
    fresh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)
    assert handle_address(fresh) not in {handle_address(h) for h in handles}
    assert mig.mig_of(fresh) == (0, created)
    assert pynvml.nvmlDeviceGetUUID(fresh).startswith("MIG-")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetName(handles[2])


def test_switching_mig_off_restores_the_whole_gpu(mig: FakeNvml) -> None:
    dev = mig.devices[0]
    dev.processes = [(77, 8 * GiB)]
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    slice_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    slice_uuid = pynvml.nvmlDeviceGetUUID(slice_handle)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetUtilizationRates(h)
    dev.mig_pending_mode = 0
    assert pynvml.nvmlDeviceGetMigMode(h) == [1, 0]  # disabled only after the reset
    dev.mig_mode, dev.mig_pending_mode = 0, None
    assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (97, 41)
    v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.used, v2.reserved) == (80 * GiB, 60 * GiB, 512 * MiB)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in procs] == [(77, 8 * GiB, 0xFFFFFFFF)]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetName(slice_handle)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID(slice_uuid)
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h) == 0


def test_lost_parent_loses_its_mig_handles(mig: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(1), 1)
    uuid = pynvml.nvmlDeviceGetUUID(h)
    mig.devices[1].lost = True
    for call in (
        lambda: pynvml.nvmlDeviceGetName(h),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
        lambda: pynvml.nvmlDeviceGetAttributes(h),
        lambda: pynvml.nvmlDeviceGetGpuInstanceId(h),
        lambda: pynvml.nvmlDeviceGetHandleByUUID(uuid),
        lambda: pynvml.nvmlDeviceGetPowerUsage(h),
    ):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call()
    other = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 1)
    assert pynvml.nvmlDeviceGetGpuInstanceId(other) == 8
    mig.devices[1].lost = False
    assert pynvml.nvmlDeviceGetGpuInstanceId(h) == 8


def test_error_injection_on_a_mig_device(mig: FakeNvml) -> None:
    slices = mig.devices[0].mig_devices
    slices[0].not_supported = {"nvmlDeviceGetAttributes_v2"}
    slices[0].unknown_error = {"nvmlDeviceGetMemoryInfo_v2"}
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    h0, h1 = (pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in (0, 1))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetAttributes(h0)
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(h0, version=pynvml.nvmlMemory_v2)
    assert pynvml.nvmlDeviceGetMemoryInfo(h0).total == 9984 * MiB
    assert pynvml.nvmlDeviceGetAttributes(h1).multiprocessorCount == 16
    assert pynvml.nvmlDeviceGetMemoryInfo(parent, version=pynvml.nvmlMemory_v2).total == 80 * GiB


def test_gpm_per_gpu_instance(mig: FakeNvml) -> None:
    slices = mig.devices[0].mig_devices
    slices[0].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 10.0
    slices[1].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 90.0
    del slices[1].gpm_percent[pynvml.NVML_GPM_METRIC_FP16_UTIL]
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    a, b, c, d = (pynvml.nvmlGpmSampleAlloc() for _ in range(4))
    pynvml.nvmlGpmMigSampleGet(h, 7, a)
    pynvml.nvmlGpmMigSampleGet(h, 8, c)
    pynvml.nvmlGpmMigSampleGet(h, 8, d)
    pynvml.nvmlGpmMigSampleGet(h, 7, b)  # GI 7's sequence continues across GI 8's samples
    res = metrics_get(a, b, SEVEN_METRICS)
    assert res.metrics[0].value == 10.0
    assert res.metrics[2].value == DEFAULT_GPM_PERCENT[pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL]
    res = metrics_get(c, d, SEVEN_METRICS)
    assert res.metrics[0].value == 90.0
    assert res.metrics[6].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # FP16 absent on GI 8
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(a, d, SEVEN_METRICS)  # GI 7 then GI 8
    pynvml.nvmlGpmSampleGet(h, c)  # the whole GPU
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        metrics_get(a, c, SEVEN_METRICS)
    slices[0].gpm_percent[pynvml.NVML_GPM_METRIC_SM_UTIL] = 30.0
    pynvml.nvmlGpmMigSampleGet(h, 7, d)
    assert metrics_get(a, d, [pynvml.NVML_GPM_METRIC_SM_UTIL]).metrics[0].value == 20.0
    assert metrics_get(b, d, [pynvml.NVML_GPM_METRIC_SM_UTIL]).metrics[0].value == 30.0
    for s in (a, b, c, d):
        pynvml.nvmlGpmSampleFree(s)


def test_gpm_mig_sample_errors(mig: FakeNvml) -> None:
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    s = pynvml.nvmlGpmSampleAlloc()
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlGpmMigSampleGet(h0, 3, s)
    mig.devices[0].mig_devices[2].gpm_supported = False
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpmMigSampleGet(h0, 9, s)
    pynvml.nvmlGpmMigSampleGet(h0, 10, s)
    mig.devices[1].mig_mode = 0
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpmMigSampleGet(h1, 7, s)
    mig.devices[0].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlGpmMigSampleGet(h0, 7, s)
    pynvml.nvmlGpmSampleFree(s)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpmMigSampleGet(h1, 7, s)  # freed sample


# ---------------------------------------------------------------- driver faults


def test_unload_fails_every_call_and_init_until_reload(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    fake.unload()
    for call in (
        pynvml.nvmlDeviceGetCount,
        lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        lambda: pynvml.nvmlDeviceGetHandleByIndex(0),
        pynvml.nvmlSystemGetDriverVersion,
        pynvml.nvmlShutdown,
        pynvml.nvmlInit,
    ):
        with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
            call()
    fake.reload()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 4
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetPowerUsage(h)  # a handle from before the unload
    fresh = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetPowerUsage(fresh) == 612_000
    assert handle_address(fresh) != handle_address(h)


def test_unload_can_answer_another_error_and_wakes_a_waiter(fake: FakeNvml) -> None:
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
    fake.unload(pynvml.NVML_ERROR_UNINITIALIZED)
    t.join(10)
    assert result == [pynvml.NVMLError_Uninitialized]
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_a_hung_symbol_blocks_without_holding_the_fake(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fake.hang("nvmlDeviceGetPowerUsage")
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(pynvml.nvmlDeviceGetPowerUsage(h)), daemon=True)
    t.start()
    assert fake.wait_until_blocked(1, timeout=10)
    # Other calls, from this thread, go on while the other one hangs.
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 64
    assert fake.blocked_calls == 1 and result == []
    fake.release()
    t.join(10)
    assert result == [612_000] and fake.blocked_calls == 0
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000, "released: the symbol answers again"


def test_a_hang_for_seconds_ends_by_itself(fake: FakeNvml) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fake.hang("nvmlDeviceGetPowerUsage", seconds=0.2)
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 612_000  # blocks for at most 0.2 s, then answers
    assert fake.blocked_calls == 0
    assert "nvmlDeviceGetPowerUsage" not in fake._hangs, "the hang is over"


def test_uninstall_releases_hung_calls() -> None:
    nvml = FakeNvml.h100s(1)
    nvml.install()
    pynvml.nvmlInit()
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetCount_v2")
    nvml.hang("nvmlDeviceGetCount_v2")
    count = ctypes.c_uint()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(fn(ctypes.byref(count))), daemon=True)
    t.start()
    assert nvml.wait_until_blocked(1, timeout=10)
    nvml.uninstall()
    t.join(10)
    assert not t.is_alive() and result == [pynvml.NVML_SUCCESS]


def test_removing_a_device_invalidates_its_handles_and_moves_the_others_down(fake: FakeNvml) -> None:
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
    uuids = [d.uuid for d in fake.devices]
    removed = fake.remove_device(1)
    assert removed.uuid == uuids[1]
    assert pynvml.nvmlDeviceGetCount() == 3
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetUUID(handles[1])
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(3)
    # GPU 2 is now GPU 1, and its old handle still reaches it.
    assert pynvml.nvmlDeviceGetUUID(handles[2]) == uuids[2]
    assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(1)) == uuids[2]
    assert handle_address(pynvml.nvmlDeviceGetHandleByIndex(1)) == handle_address(handles[2])
    assert pynvml.nvmlDeviceGetIndex(handles[3]) == 2


def test_events_follow_a_device_moved_down_by_a_removal(fake: FakeNvml) -> None:
    es = pynvml.nvmlEventSetCreate()
    for i in (1, 3):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    fake.queue_xid(1, 79)
    fake.remove_device(1)
    assert fake.pending_events() == 0, "the removed GPU's pending events go with it"
    fake.queue_xid(2, 48)  # was GPU 3
    data = pynvml.nvmlEventSetWait_v2(es, 1_000)
    assert data.eventData == 48 and fake.index_of(data.device) == 2
    pynvml.nvmlEventSetFree(es)


def test_adding_a_device_grows_the_count_with_a_new_identity(fake: FakeNvml) -> None:
    uuids = {d.uuid for d in fake.devices}
    fake.remove_device(3)
    index = fake.add_device()
    assert index == 3 and pynvml.nvmlDeviceGetCount() == 4
    added = pynvml.nvmlDeviceGetHandleByIndex(3)
    uuid = pynvml.nvmlDeviceGetUUID(added)
    assert uuid == fake.devices[3].uuid and uuid not in uuids
    assert pynvml.nvmlDeviceGetPciInfo_v3(added).busId not in {d.pci_bus_id for d in fake.devices[:3]}
    index = fake.add_device(FakeDevice(name="NVIDIA A100-SXM4-80GB", uuid="GPU-added"))
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index)) == "NVIDIA A100-SXM4-80GB"
    assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index)) == "GPU-added"


def test_removing_a_gpu_in_mig_mode_invalidates_its_mig_handles() -> None:
    nvml = FakeNvml.h100_mig(2, profiles=("3g.40gb", "3g.40gb"))
    with nvml.installed():
        pynvml.nvmlInit()
        parent = pynvml.nvmlDeviceGetHandleByIndex(1)
        mig0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
        mig1 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
        first = pynvml.nvmlDeviceGetUUID(mig1)
        nvml.remove_device(0)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetUUID(mig0)
        assert pynvml.nvmlDeviceGetUUID(mig1) == first, "the other GPU's MIG devices follow it"
        assert nvml.mig_of(mig1)[0] == 0
        pynvml.nvmlShutdown()
