"""A fake libnvidia-ml for tests, installed at the ctypes boundary of the real pynvml.

The real ``pynvml`` wrappers (package nvidia-ml-py) stay in the call path: only ``pynvml.nvmlLib``
is swapped for an object whose attributes are the C symbols. Each symbol receives exactly the
ctypes arguments pynvml passes (``byref(...)`` objects, string buffers, ``c_uint`` values, ctypes
arrays, opaque POINTER handles), writes its results into them as the driver would, and returns an
``nvmlReturn_t`` code, which pynvml then maps to its exception classes.

* A symbol that is absent (listed in ``missing_symbols``, or simply not implemented here) makes
  pynvml raise ``NVMLError_FunctionNotFound``; lookups of absent symbols are counted in
  ``FakeNvml.missing_lookups``.
* Opaque handles (devices, event sets, GPM samples) are pointers to small buffers that the fake
  owns and never releases, so each address is valid memory and never reused. A device always gets
  the same address, so handles from separate calls compare equal by address (``handle_address``)
  but NOT with ``==`` (ctypes pointers compare by identity).
* Every call takes one lock; ``nvmlEventSetWait_v2`` waits on a Condition of that lock, so other
  threads can sample (and ``queue_xid``) while an event thread is blocked in a wait.
* MIG: a device with ``mig_mode`` 1 exposes its ``mig_devices`` (FakeMigDevice) through
  ``nvmlDeviceGetMigDeviceHandleByIndex``. A MIG handle answers identity, memory, processes,
  attributes and the MIG id symbols for its slice and NVML_ERROR_NOT_SUPPORTED for every other
  per-device symbol; it is valid while its FakeMigDevice object is in the parent's ``mig_devices``
  and the parent is in MIG mode, NVML_ERROR_INVALID_ARGUMENT after. The parent in MIG mode has no
  utilization rates or process utilization; its memory and processes aggregate its MIG devices'.
* Interconnect: a whole GPU's GPM samples carry its PCIe throughput and, with NVLink links
  (``nvlink_links`` > 0), its NVLink throughput summed over links, in MiB/s as nvml.h specifies; GPU
  instances (nvmlGpmMigSampleGet) carry neither. ``nvlink_errors`` holds each link's error counters
  (NVML_NVLINK_ERROR_DL_*), read per link by nvmlDeviceGetNvLinkErrorCounter and summed over links by
  the NVML_FI_DEV_NVLINK_*_ERROR_COUNT_TOTAL fields of nvmlDeviceGetFieldValues (which answers each
  field's own nvmlReturn: NOT_SUPPORTED for NVLink fields on a GPU without NVLink, for the fields in
  ``unsupported_fields`` and for every field this fake does not model). Without NVLink the per-link
  symbols answer NOT_SUPPORTED; a link index past the GPU's links, INVALID_ARGUMENT.
* GPM refusals: a device's ``gpm_error`` (NVML_ERROR_NO_PERMISSION, NVML_ERROR_IN_USE) is what its
  GPM sample calls answer while nvmlGpmQueryDeviceSupport still says yes, as a driver that restricts
  profiling to administrators, or whose counters another profiler holds, does.
* Driver faults, for a test to drive while the code under test runs: ``unload()`` (the kernel driver
  goes away: every call answers NVML_ERROR_DRIVER_NOT_LOADED, or the error given, and nvmlInit
  answers DRIVER_NOT_LOADED) and ``reload()`` (nvmlInit works again; the library is uninitialised
  and every handle handed out before is invalid); ``hang(symbol, seconds=None)`` (calls of that C
  symbol block, outside the fake's lock, until ``release()`` or for ``seconds``);
  ``remove_device(index)`` (the GPU falls off: nvmlDeviceGetCount shrinks, the GPUs after it move
  down one index keeping their handles, its own handles answer INVALID_ARGUMENT) and
  ``add_device()`` (a GPU appears at the next index).
"""

from __future__ import annotations

import collections
import copy
import ctypes
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any

import pynvml
import pytest

__all__ = [
    "DEFAULT_GPM_PERCENT",
    "NVLINK_TOTAL_FIELDS",
    "H100_MIG_PROFILES",
    "MAX_MIG_DEVICES",
    "MEM_CLOCK_MHZ",
    "MEM_CLOCK_MAX_MHZ",
    "SUPPORTED_EVENT_TYPES",
    "FakeDevice",
    "FakeMigDevice",
    "FakeNvml",
    "fake_nvml",
    "handle_address",
    "mig_devices",
    "no_nvml",
    "no_nvml_library",
]

DEFAULT_GPM_PERCENT: dict[int, float] = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 71.5,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 38.25,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 52.0,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 44.5,
    pynvml.NVML_GPM_METRIC_FP64_UTIL: 0.0,
    pynvml.NVML_GPM_METRIC_FP32_UTIL: 6.75,
    pynvml.NVML_GPM_METRIC_FP16_UTIL: 1.5,
}

# The nvmlDeviceGetFieldValues fields that sum one NVLink error counter over every link.
NVLINK_TOTAL_FIELDS: dict[int, int] = {
    pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA,
}
_GPM_TRAFFIC_UNIT = b"MiB/sec"

# Event types every fake device supports (nvmlDeviceGetSupportedEventTypes).
SUPPORTED_EVENT_TYPES: int = (
    pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypePState
    | pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeClock
)

# Clocks the FakeDevice dataclass has no field for (NVML_CLOCK_MEM).
MEM_CLOCK_MHZ = 2619
MEM_CLOCK_MAX_MHZ = 2619

_NOT_AVAILABLE_UINT = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId outside MIG
_NOT_AVAILABLE_ULL = 0xFFFFFFFFFFFFFFFF

_MiB = 1024**2
_GiB = 1024**3

# nvmlDeviceGetMaxMigDeviceCount of a GPU in MIG mode.
MAX_MIG_DEVICES = 7

# MIG profiles of an H100 80GB (nvidia-smi mig -lgip): profile -> (SM count, memory bytes).
H100_MIG_PROFILES: dict[str, tuple[int, int]] = {
    "1g.10gb": (16, 9 * _GiB + 768 * _MiB),
    "1g.20gb": (26, 19 * _GiB + 512 * _MiB),
    "2g.20gb": (32, 19 * _GiB + 512 * _MiB),
    "3g.40gb": (60, 39 * _GiB + 256 * _MiB),
    "4g.40gb": (64, 39 * _GiB + 256 * _MiB),
    "7g.80gb": (132, 79 * _GiB + 256 * _MiB),
}

# GPU instance placements on an 8-memory-slice GPU (A100, H100): slice class (or a profile taking
# more memory than its class) -> (memory slices, ((placement start, GPU instance id), ...)), in the
# order mig_devices tries them (a 3g takes the upper half first). The ids are the driver's numbering.
_MIG_PLACEMENTS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    "1g": (1, tuple((start, 7 + start) for start in range(7))),
    "1g.20gb": (2, ((0, 7), (2, 9), (4, 11), (6, 13))),
    "2g": (2, ((0, 3), (2, 4), (4, 5))),
    "3g": (4, ((4, 2), (0, 1))),
    "4g": (4, ((0, 1),)),
    "7g": (8, ((0, 0),)),
}
_MIG_MEMORY_SLICES = 8

# "1g.10gb", "1c.3g.40gb", "1g.10gb+me": optional compute-instance slices, GPU-instance slices.
_MIG_PROFILE_RE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.")

_GPM_METRIC_NAMES: dict[int, str] = {
    pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: "gr_util",
    pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_util",
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy",
    pynvml.NVML_GPM_METRIC_INTEGER_UTIL: "integer_util",
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "any_tensor_util",
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_bw_util",
    pynvml.NVML_GPM_METRIC_FP64_UTIL: "fp64_util",
    pynvml.NVML_GPM_METRIC_FP32_UTIL: "fp32_util",
    pynvml.NVML_GPM_METRIC_FP16_UTIL: "fp16_util",
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: "pcie_tx_per_sec",
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: "pcie_rx_per_sec",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: "nvlink_total_rx_per_sec",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: "nvlink_total_tx_per_sec",
}


_GPM_TRAFFIC_IDS = frozenset(
    {
        pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
    }
)


def default_uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012x}"


def default_pci_bus_id(index: int) -> str:
    return f"00000000:{0x18 + index:02X}:00.0"


def default_mig_uuid(parent_index: int, gpu_instance_id: int, compute_instance_id: int) -> str:
    return f"MIG-00000000-0000-4000-8000-{parent_index:04x}{gpu_instance_id:04x}{compute_instance_id:04x}"


def _mig_slices(profile: str) -> tuple[int, int]:
    """(GPU instance slices, compute instance slices) of a profile name; (0, 0) if unparsable."""
    match = _MIG_PROFILE_RE.match(profile)
    if match is None:
        return 0, 0
    gi = int(match.group(2))
    return gi, int(match.group(1)) if match.group(1) else gi


@dataclass
class FakeMigDevice:
    """One MIG device (a compute instance of a GPU instance) of a FakeDevice in MIG mode."""

    profile: str = "1g.10gb"  # what follows "MIG " in the device name
    gpu_instance_id: int = 0
    compute_instance_id: int = 0
    uuid: str = ""  # default: default_mig_uuid(parent index, GI, CI), filled in by FakeNvml
    sm_count: int = 16
    memory_total: int = 9 * _GiB + 768 * _MiB  # bytes
    memory_used: int = 6 * _GiB
    memory_reserved: int = 32 * _MiB
    # (pid, used memory bytes); None memory is reported as NVML_VALUE_NOT_AVAILABLE
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    gpm_supported: bool = True
    gpm_percent: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_GPM_PERCENT))
    not_supported: set[str] = field(default_factory=set)  # symbols returning NVML_ERROR_NOT_SUPPORTED
    unknown_error: set[str] = field(default_factory=set)  # symbols returning NVML_ERROR_UNKNOWN


def mig_devices(
    profiles: Sequence[str], table: dict[str, tuple[int, int]] = H100_MIG_PROFILES
) -> list[FakeMigDevice]:
    """MIG devices for a layout, in the order given: SMs and memory from ``table``, compute instance
    0, and the GPU instance id of the placement each gets (7g 0; 4g and 3g 1-2; 2g 3-5; 1g 7-13),
    placements chosen in list order, backtracking so that every layout that fits gets placed.
    ValueError if a profile is unknown or the layout does not fit."""
    options = []
    for profile in profiles:
        if profile not in table:
            raise ValueError(f"unknown MIG profile {profile!r}")
        placements = _MIG_PLACEMENTS.get(profile) or _MIG_PLACEMENTS.get(f"{_mig_slices(profile)[0]}g")
        if placements is None:
            raise ValueError(f"no GPU instance placements for MIG profile {profile!r}")
        options.append(placements)

    def place(i: int, used: frozenset[int]) -> list[int] | None:
        if i == len(options):
            return []
        size, starts = options[i]
        for start, gi in starts:
            slices = frozenset(range(start, start + size))
            rest = None if used & slices else place(i + 1, used | slices)
            if rest is not None:
                return [gi, *rest]
        return None

    ids = place(0, frozenset())
    if ids is None:
        raise ValueError(f"MIG layout {list(profiles)} does not fit in {_MIG_MEMORY_SLICES} memory slices")
    return [
        FakeMigDevice(profile=p, gpu_instance_id=gi, sm_count=table[p][0], memory_total=table[p][1])
        for p, gi in zip(profiles, ids, strict=True)
    ]


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""  # default: default_uuid(index), filled in by FakeNvml
    pci_bus_id: str = ""  # default: default_pci_bus_id(index), filled in by FakeNvml
    architecture: int = pynvml.NVML_DEVICE_ARCH_HOPPER
    utilization_gpu: int = 97  # percent
    utilization_memory: int = 41
    memory_total: int = 80 * 1024**3  # bytes
    memory_used: int = 60 * 1024**3
    memory_reserved: int = 512 * 1024**2
    power_mw: int = 612_000
    power_limit_mw: int = 700_000
    energy_mj: int = 123_456_789
    temperature_c: int = 64
    sm_clock_mhz: int = 1755
    sm_clock_max_mhz: int = 1980
    clock_event_reasons: int = 0  # bitmask of pynvml.nvmlClocksEventReason*
    ecc_corrected: int = 3  # served for both volatile and aggregate counters
    ecc_uncorrected: int = 0
    remapped_rows: tuple[int, int, int, int] = (2, 0, 0, 0)  # corrected, uncorrected, pending, failure
    # (pid, used GPU memory bytes); None memory is reported as NVML_VALUE_NOT_AVAILABLE
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    # nvmlDeviceGetProcessUtilization's buffer: (pid, SM %, memory %, timestamp µs). Append samples
    # with later timestamps to advance it; only those newer than lastSeenTimeStamp are returned.
    process_samples: list[tuple[int, int, int, int]] = field(default_factory=list)
    gpm_supported: bool = True
    gpm_percent: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_GPM_PERCENT))
    # What nvmlGpmSampleGet (and nvmlGpmMigSampleGet for its GPU instances) answers instead of a sample,
    # while nvmlGpmQueryDeviceSupport still says yes: NVML_ERROR_NO_PERMISSION (the driver restricts
    # profiling to administrators: NVreg_RestrictProfilingToAdminUsers=1 and no CAP_SYS_ADMIN) or
    # NVML_ERROR_IN_USE (another tool holds the performance counters). None: samples are given.
    gpm_error: int | None = None
    # GPM interconnect throughput in MiB/s (NVML_GPM_METRIC_PCIE_{RX,TX}_PER_SEC and, with NVLink,
    # NVML_GPM_METRIC_NVLINK_TOTAL_{RX,TX}_PER_SEC): rx into the GPU, tx out of it.
    pcie_rx_mib_per_second: float = 3276.75
    pcie_tx_mib_per_second: float = 1536.5
    nvlink_rx_mib_per_second: float = 145000.25
    nvlink_tx_mib_per_second: float = 143500.5
    nvlink_links: int = 18  # an H100 SXM's; 0: no NVLink
    # nvlink_errors[link][NVML_NVLINK_ERROR_DL_*]: each link's error counters; missing ones read 0.
    nvlink_errors: list[list[int]] = field(default_factory=list)
    unsupported_fields: set[int] = field(default_factory=set)  # field ids answering NOT_SUPPORTED
    not_supported: set[str] = field(default_factory=set)  # symbols returning NVML_ERROR_NOT_SUPPORTED
    lost: bool = False  # every per-device symbol returns NVML_ERROR_GPU_IS_LOST
    unknown_error: set[str] = field(default_factory=set)  # symbols returning NVML_ERROR_UNKNOWN
    mig_capable: bool = True  # False: the MIG symbols answer NVML_ERROR_NOT_SUPPORTED
    mig_mode: int = 0  # current MIG mode: pynvml.NVML_DEVICE_MIG_ENABLE (1) or _DISABLE (0)
    mig_pending_mode: int | None = None  # None: same as mig_mode
    mig_devices: list[FakeMigDevice] = field(default_factory=list)  # exposed while in MIG mode


_DEVICE_FIELDS = frozenset(f.name for f in fields(FakeDevice))
_NVML_KWARGS = frozenset({"devices", "driver_version", "missing_symbols", "init_error"})


class _Ret(Exception):
    """Raised inside a symbol implementation to return an NVML error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _EventSet:
    registrations: dict[int, int] = field(default_factory=dict)  # device index -> event type mask
    queue: collections.deque[tuple[int, int, int]] = field(default_factory=collections.deque)
    freed: bool = False


@dataclass
class _GpmSample:
    device_index: int | None = None
    gpu_instance_id: int | None = None  # set by nvmlGpmMigSampleGet
    seq: int = 0
    cum: dict[int, tuple[Fraction, int]] = field(default_factory=dict)  # metric -> (sum of %, steps)
    present: frozenset[int] = frozenset()  # metrics configured when this sample was taken


@dataclass
class _Hang:
    until: float | None  # time.monotonic() when calls stop blocking; None: until released
    released: threading.Event = field(default_factory=threading.Event)


_CArgType = type(ctypes.byref(ctypes.c_int()))


def _target(arg: Any) -> Any:
    """The object an out-parameter points at: byref(x) -> x, pointer(x) -> x, x -> x."""
    if isinstance(arg, _CArgType):
        return arg._obj
    if isinstance(arg, ctypes._Pointer):
        return arg.contents
    return arg


def _int(arg: Any) -> int:
    return int(arg.value) if hasattr(arg, "value") else int(arg)


def handle_address(handle: Any) -> int:
    """The address an opaque NVML handle (device, event set, GPM sample) points at; 0 for NULL."""
    if handle is None:
        return 0
    if isinstance(handle, int):
        return handle
    if isinstance(handle, ctypes.c_void_p):
        return handle.value or 0
    if isinstance(handle, _CArgType):
        return handle_address(handle._obj)
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _write_pointer(out: Any, address: int) -> None:
    """Store ``address`` in the pointer variable behind ``out`` (a byref(POINTER()) argument)."""
    ctypes.c_void_p.from_buffer(_target(out)).value = address


def _write_str(buf: Any, length: Any, text: str) -> None:
    data = text.encode() + b"\0"
    if len(data) > _int(length):
        raise _Ret(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    ctypes.memmove(buf, data, len(data))


class _Symbol:
    """One C symbol: a callable object, so pynvml may set ``.restype``/``.argtypes`` on it."""

    def __init__(self, fake: FakeNvml, name: str, impl: Callable[..., int]) -> None:
        self.__name__ = name
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None
        self.errcheck: Any = None
        self._fake = fake
        self._impl = impl

    def __call__(self, *args: Any) -> Any:
        return self._fake._dispatch(self.__name__, self._impl, args)

    def __repr__(self) -> str:
        return f"<fake NVML symbol {self.__name__}>"


class _FakeLib:
    """Stands in for the CDLL: attribute lookup is symbol lookup; an absent symbol raises AttributeError."""

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake

    def __getattr__(self, name: str) -> _Symbol:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._fake._symbol(name)


class FakeNvml:
    """A scriptable libnvidia-ml. Mutate ``devices`` (and their fields) at run time freely."""

    def __init__(
        self,
        devices: list[FakeDevice] | None = None,
        driver_version: str = "550.54.15",
        missing_symbols: set[str] | None = None,
        init_error: int | None = None,
    ) -> None:
        self.devices: list[FakeDevice] = list(devices) if devices is not None else []
        for i, dev in enumerate(self.devices):
            dev.uuid = dev.uuid or default_uuid(i)
            dev.pci_bus_id = dev.pci_bus_id or default_pci_bus_id(i)
            for mig in dev.mig_devices:
                mig.uuid = self._mig_uuid(i, mig)
        self.driver_version = driver_version
        self.cuda_driver_version = 12040
        # pynvml caches symbol lookups: change this before install() or call clear_function_cache().
        self.missing_symbols: set[str] = set(missing_symbols or ())
        self.init_error = init_error
        self.init_count = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.missing_lookups: collections.Counter[str] = collections.Counter()
        self.live_gpm_samples: set[int] = set()  # addresses of samples allocated and not yet freed

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buffers: list[ctypes.Array[ctypes.c_char]] = []  # keeps every handed-out address valid
        self._device_addr: dict[int, int] = {}  # device index -> address
        self._addr_device: dict[int, int] = {}  # address -> device index
        self._mig_addr: dict[tuple[int, int], int] = {}  # (parent index, id(FakeMigDevice)) -> address
        self._addr_mig: dict[int, tuple[int, FakeMigDevice]] = {}  # address -> (parent index, MIG device)
        self._event_sets: dict[int, _EventSet] = {}
        self._gpm_samples: dict[int, _GpmSample] = {}
        # per (device index, GPU instance id or None for the whole GPU)
        self._gpm_seq: dict[tuple[int, int | None], int] = {}
        self._gpm_cum: dict[tuple[int, int | None], dict[int, tuple[Fraction, int]]] = {}
        self._symbols: dict[str, _Symbol] = {}
        self._lib = _FakeLib(self)
        self._saved: tuple[Any, int] | None = None
        self._generation = 0  # bumped by uninstall() and unload(), so blocked waits return instead of hanging
        self._unloaded: int | None = None  # while the driver is unloaded: what every call answers
        self._serial = len(self.devices)  # numbers the default UUIDs of devices added later
        self._retired: list[Any] = []  # MIG devices of retired handles, kept alive so ids are not reused
        self._hang_cond = threading.Condition(threading.Lock())  # never the global lock: see hang()
        self._hangs: dict[str, _Hang] = {}
        self._blocked = 0  # calls blocked in a hang now

    # ----------------------------------------------------------------- construction helpers

    @classmethod
    def h100s(cls, count: int = 8, **kwargs: Any) -> FakeNvml:
        """``count`` default H100s. Keyword arguments naming FakeNvml parameters (driver_version,
        missing_symbols, init_error) go to FakeNvml; the rest are FakeDevice fields for every device."""
        unknown = set(kwargs) - _DEVICE_FIELDS - _NVML_KWARGS
        if unknown:
            raise TypeError(f"unknown FakeNvml.h100s arguments: {sorted(unknown)}")
        if "devices" in kwargs:
            raise TypeError("FakeNvml.h100s builds the devices itself")
        dev_kwargs = {k: v for k, v in kwargs.items() if k in _DEVICE_FIELDS}
        nvml_kwargs = {k: v for k, v in kwargs.items() if k in _NVML_KWARGS}
        devices = [FakeDevice(**copy.deepcopy(dev_kwargs)) for _ in range(count)]
        return cls(devices, **nvml_kwargs)

    @classmethod
    def h100_mig(cls, count: int = 1, profiles: Sequence[str] = ("1g.10gb",) * 7, **kwargs: Any) -> FakeNvml:
        """``count`` H100s in MIG mode, each with MIG devices ``mig_devices(profiles)``; other keyword
        arguments as for ``h100s``."""
        if "mig_devices" in kwargs:
            raise TypeError("FakeNvml.h100_mig builds the MIG devices itself")
        kwargs.setdefault("mig_mode", pynvml.NVML_DEVICE_MIG_ENABLE)
        return cls.h100s(count, mig_devices=mig_devices(profiles), **kwargs)

    # ----------------------------------------------------------------- install / uninstall

    @property
    def installed_now(self) -> bool:
        return self._saved is not None

    def install(self) -> None:
        if self._saved is not None:
            raise RuntimeError("FakeNvml is already installed")
        with pynvml.libLoadLock:
            self._saved = (pynvml.nvmlLib, pynvml._nvmlLib_refcount)
            pynvml.nvmlLib = self._lib
            pynvml._nvmlLib_refcount = 0
            pynvml._nvmlGetFunctionPointer_cache.clear()

    def uninstall(self) -> None:
        if self._saved is None:
            return
        with pynvml.libLoadLock:
            pynvml.nvmlLib, pynvml._nvmlLib_refcount = self._saved
            pynvml._nvmlGetFunctionPointer_cache.clear()
            self._saved = None
        self.release()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    @contextmanager
    def installed(self) -> Iterator[FakeNvml]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    @staticmethod
    def clear_function_cache() -> None:
        """Forget pynvml's cached symbol lookups (after changing ``missing_symbols``)."""
        with pynvml.libLoadLock:
            pynvml._nvmlGetFunctionPointer_cache.clear()

    # ----------------------------------------------------------------- test-side controls

    def queue_xid(self, device_index: int, xid: int) -> None:
        """Queue an XID critical-error event for every event set registered for it on that device."""
        self._queue_event(device_index, pynvml.nvmlEventTypeXidCriticalError, xid)

    def queue_double_bit_ecc(self, device_index: int) -> None:
        self._queue_event(device_index, pynvml.nvmlEventTypeDoubleBitEccError, 0)

    def queue_event(self, device_index: int, event_type: int, event_data: int = 0) -> None:
        self._queue_event(device_index, event_type, event_data)

    def index_of(self, handle: Any) -> int | None:
        """The device index a handle refers to, or None if it is not a (whole GPU) device handle of
        this fake."""
        return self._addr_device.get(handle_address(handle))

    def mig_of(self, handle: Any) -> tuple[int, FakeMigDevice] | None:
        """(parent index, MIG device) a MIG handle was handed out for, even if that MIG device is gone
        since; None if it is not a MIG handle of this fake."""
        return self._addr_mig.get(handle_address(handle))

    def pending_events(self) -> int:
        with self._lock:
            return sum(len(s.queue) for s in self._event_sets.values())

    # ----------------------------------------------------------------- test-side controls: faults

    def unload(self, error: int = pynvml.NVML_ERROR_DRIVER_NOT_LOADED) -> None:
        """The kernel driver goes away under the running process: from now on every call answers
        ``error`` (nvmlInit: NVML_ERROR_DRIVER_NOT_LOADED) until ``reload()``. The library's state goes
        with it: it is no longer initialised, event sets and GPM samples are gone (blocked event waits
        return), and the handles handed out so far stay invalid after the reload."""
        with self._cond:
            self._unloaded = error
            self.init_count = 0
            for es in self._event_sets.values():
                es.freed = True
            self._event_sets.clear()
            self._gpm_samples.clear()
            self.live_gpm_samples.clear()
            self._retire_handles()
            self._generation += 1
            self._cond.notify_all()

    def reload(self) -> None:
        """The driver is back: nvmlInit works again; until it is called, calls answer UNINITIALIZED."""
        with self._cond:
            self._unloaded = None
            self._retire_handles()

    @property
    def unloaded(self) -> bool:
        return self._unloaded is not None

    def hang(self, symbol: str, seconds: float | None = None) -> None:
        """Calls of the C symbol ``symbol`` (pynvml's name for it, e.g. ``nvmlDeviceGetPowerUsage``,
        ``nvmlDeviceGetCount_v2``) block until ``release()``, or, with ``seconds``, until that many
        seconds from now, after which the symbol answers normally again. A blocked call holds none of
        the fake's locks: other threads' calls, and the test, carry on."""
        deadline = time.monotonic() + seconds if seconds is not None else None
        with self._hang_cond:
            old = self._hangs.pop(symbol, None)
            if old is not None:
                old.released.set()
            self._hangs[symbol] = _Hang(deadline)

    def release(self, symbol: str | None = None) -> None:
        """Unblocks the calls hanging in ``symbol`` (every symbol when None); it answers normally again."""
        with self._hang_cond:
            for name in [symbol] if symbol is not None else list(self._hangs):
                hang = self._hangs.pop(name, None)
                if hang is not None:
                    hang.released.set()

    @property
    def blocked_calls(self) -> int:
        """How many calls are blocked in a hang right now."""
        with self._hang_cond:
            return self._blocked

    def wait_until_blocked(self, count: int = 1, timeout: float = 30.0) -> bool:
        """True once at least ``count`` calls are blocked in a hang; False if not within ``timeout``."""
        with self._hang_cond:
            return self._hang_cond.wait_for(lambda: self._blocked >= count, timeout)

    def add_device(self, device: FakeDevice | None = None) -> int:
        """A GPU appears at the next index (nvmlDeviceGetCount grows); returns its index. Its UUID and
        bus id default to ones no device of this fake had."""
        dev = device if device is not None else FakeDevice()
        with self._cond:
            serial = self._serial
            self._serial += 1
            dev.uuid = dev.uuid or default_uuid(serial)
            dev.pci_bus_id = dev.pci_bus_id or default_pci_bus_id(serial)
            for mig in dev.mig_devices:
                mig.uuid = self._mig_uuid(serial, mig)
            self.devices.append(dev)
            return len(self.devices) - 1

    def remove_device(self, index: int) -> FakeDevice:
        """The GPU at ``index`` falls off the bus: nvmlDeviceGetCount shrinks, its handles (and its MIG
        devices' handles) answer NVML_ERROR_INVALID_ARGUMENT, and the GPUs after it move down one index,
        their handles staying valid. Returns the device removed."""
        with self._cond:
            if not 0 <= index < len(self.devices):
                raise ValueError(f"no fake device {index}")
            dev = self.devices.pop(index)

            def moved(i: int) -> int:
                return i - 1 if i > index else i

            gone = self._device_addr.pop(index, None)
            self._device_addr = {moved(i): addr for i, addr in self._device_addr.items()}
            self._addr_device = {addr: i for i, addr in self._device_addr.items()}
            if gone is not None:
                self._retired.append(gone)
            self._retired.extend(m for i, m in self._addr_mig.values() if i == index)
            self._addr_mig = {a: (moved(i), m) for a, (i, m) in self._addr_mig.items() if i != index}
            self._mig_addr = {(i, id(m)): a for a, (i, m) in self._addr_mig.items()}
            for es in self._event_sets.values():
                es.registrations = {moved(i): t for i, t in es.registrations.items() if i != index}
                es.queue = collections.deque((moved(i), t, d) for i, t, d in es.queue if i != index)
            self._gpm_seq = {(moved(i), gi): v for (i, gi), v in self._gpm_seq.items() if i != index}
            self._gpm_cum = {(moved(i), gi): v for (i, gi), v in self._gpm_cum.items() if i != index}
            for record in self._gpm_samples.values():
                if record.device_index is not None:
                    record.device_index = None if record.device_index == index else moved(record.device_index)
            return dev

    def _retire_handles(self) -> None:
        """Every handle handed out so far becomes invalid (INVALID_ARGUMENT); new ones get new addresses."""
        self._retired.extend(m for _, m in self._addr_mig.values())
        self._device_addr.clear()
        self._addr_device.clear()
        self._mig_addr.clear()
        self._addr_mig.clear()

    def _wait_if_hung(self, name: str) -> None:
        with self._hang_cond:
            hang = self._hangs.get(name)
            if hang is None:
                return
            self._blocked += 1
            self._hang_cond.notify_all()
        try:
            hang.released.wait(None if hang.until is None else max(0.0, hang.until - time.monotonic()))
        finally:
            with self._hang_cond:
                self._blocked -= 1
                over = hang.until is not None and time.monotonic() >= hang.until
                if over and self._hangs.get(name) is hang:
                    del self._hangs[name]  # the hang is over: the symbol answers again
                self._hang_cond.notify_all()

    def _queue_event(self, device_index: int, event_type: int, event_data: int) -> None:
        if not 0 <= device_index < len(self.devices):
            raise ValueError(f"no fake device {device_index}")
        with self._cond:
            for es in self._event_sets.values():
                if es.registrations.get(device_index, 0) & event_type:
                    es.queue.append((device_index, event_type, event_data))
            self._cond.notify_all()

    # ----------------------------------------------------------------- dispatch machinery

    def _symbol(self, name: str) -> _Symbol:
        impl = getattr(self, "_c_" + name, None)
        if impl is None or name in self.missing_symbols:
            self.missing_lookups[name] += 1
            raise AttributeError(name)
        sym = self._symbols.get(name)
        if sym is None:
            sym = self._symbols[name] = _Symbol(self, name, impl)
        return sym

    def _dispatch(self, name: str, impl: Callable[..., int], args: tuple[Any, ...]) -> int:
        self._wait_if_hung(name)
        with self._lock:
            self.calls[name] += 1
            if self._unloaded is not None and name != "nvmlErrorString":
                return pynvml.NVML_ERROR_DRIVER_NOT_LOADED if name.startswith("nvmlInit") else self._unloaded
            try:
                return impl(*args)
            except _Ret as ret:
                return ret.code

    def _require_init(self) -> None:
        if self.init_count <= 0:
            raise _Ret(pynvml.NVML_ERROR_UNINITIALIZED)

    def _new_address(self) -> int:
        buf = ctypes.create_string_buffer(16)
        self._buffers.append(buf)
        return ctypes.addressof(buf)

    def _handle_for(self, index: int) -> int:
        addr = self._device_addr.get(index)
        if addr is None:
            addr = self._device_addr[index] = self._new_address()
            self._addr_device[addr] = index
        return addr

    def _device_handle(self, index: int) -> Any:
        return ctypes.cast(ctypes.c_void_p(self._handle_for(index)), pynvml.c_nvmlDevice_t)

    def _mig_handle_for(self, index: int, mig: FakeMigDevice) -> int:
        key = (index, id(mig))
        addr = self._mig_addr.get(key)
        if addr is None:
            addr = self._mig_addr[key] = self._new_address()
            self._addr_mig[addr] = (index, mig)  # keeps mig alive, so id(mig) is not reused
        return addr

    @staticmethod
    def _in_mig_mode(dev: FakeDevice) -> bool:
        return dev.mig_capable and dev.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE

    @staticmethod
    def _mig_uuid(index: int, mig: FakeMigDevice) -> str:
        return mig.uuid or default_mig_uuid(index, mig.gpu_instance_id, mig.compute_instance_id)

    @staticmethod
    def _check_mig(name: str, dev: FakeDevice, mig: FakeMigDevice) -> None:
        if dev.lost:
            raise _Ret(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in mig.unknown_error:
            raise _Ret(pynvml.NVML_ERROR_UNKNOWN)
        if name in mig.not_supported:
            raise _Ret(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _check_device(self, name: str, index: int) -> FakeDevice:
        if not 0 <= index < len(self.devices):
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = self.devices[index]
        if dev.lost:
            raise _Ret(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in dev.unknown_error:
            raise _Ret(pynvml.NVML_ERROR_UNKNOWN)
        if name in dev.not_supported:
            raise _Ret(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev

    def _any_device(self, name: str, handle: Any) -> tuple[int, FakeDevice, FakeMigDevice | None]:
        """(device index, device, None) for a GPU handle; (parent index, parent, MIG device) for a
        live MIG handle."""
        self._require_init()
        addr = handle_address(handle)
        index = self._addr_device.get(addr)
        if index is not None:
            return index, self._check_device(name, index), None
        entry = self._addr_mig.get(addr)
        if entry is None:
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        index, mig = entry
        if not 0 <= index < len(self.devices):
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = self.devices[index]
        if not self._in_mig_mode(dev) or not any(m is mig for m in dev.mig_devices):
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check_mig(name, dev, mig)
        return index, dev, mig

    def _device(self, name: str, handle: Any) -> tuple[int, FakeDevice]:
        """A GPU handle's index and device; a MIG handle answers NVML_ERROR_NOT_SUPPORTED."""
        index, dev, mig = self._any_device(name, handle)
        if mig is not None:
            raise _Ret(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return index, dev

    def _mig(self, name: str, handle: Any, non_mig: int) -> tuple[int, FakeDevice, FakeMigDevice]:
        """A MIG handle's parent index, parent and MIG device; a GPU handle answers ``non_mig``."""
        index, dev, mig = self._any_device(name, handle)
        if mig is None:
            raise _Ret(non_mig)
        return index, dev, mig

    def _event_set(self, handle: Any) -> _EventSet:
        es = self._event_sets.get(handle_address(handle))
        if es is None:
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return es

    def _gpm_sample(self, handle: Any) -> _GpmSample:
        sample = self._gpm_samples.get(handle_address(handle))
        if sample is None:
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return sample

    # ----------------------------------------------------------------- C symbols: library / system

    def _c_nvmlInitWithFlags(self, flags: Any = 0) -> int:
        if self.init_error is not None:
            return self.init_error
        self.init_count += 1
        return pynvml.NVML_SUCCESS

    def _c_nvmlInit_v2(self) -> int:
        return self._c_nvmlInitWithFlags(0)

    def _c_nvmlShutdown(self) -> int:
        self._require_init()
        self.init_count -= 1
        self._cond.notify_all()
        return pynvml.NVML_SUCCESS

    def _c_nvmlErrorString(self, result: Any) -> bytes:
        code = _int(result)
        return pynvml.NVMLError._errcode_to_string.get(code, "Unknown Error").encode()

    def _c_nvmlSystemGetDriverVersion(self, buf: Any, length: Any) -> int:
        self._require_init()
        _write_str(buf, length, self.driver_version)
        return pynvml.NVML_SUCCESS

    def _c_nvmlSystemGetNVMLVersion(self, buf: Any, length: Any) -> int:
        self._require_init()
        _write_str(buf, length, f"{self.cuda_driver_version // 1000}.{self.driver_version}")
        return pynvml.NVML_SUCCESS

    def _c_nvmlSystemGetCudaDriverVersion(self, out: Any) -> int:
        self._require_init()
        _target(out).value = self.cuda_driver_version
        return pynvml.NVML_SUCCESS

    _c_nvmlSystemGetCudaDriverVersion_v2 = _c_nvmlSystemGetCudaDriverVersion

    # ----------------------------------------------------------------- C symbols: device enumeration

    def _c_nvmlDeviceGetCount_v2(self, out: Any) -> int:
        self._require_init()
        _target(out).value = len(self.devices)
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        self._require_init()
        i = _int(index)
        self._check_device("nvmlDeviceGetHandleByIndex_v2", i)
        _write_pointer(out, self._handle_for(i))
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _text(arg: Any) -> str:
        text = _target(arg).value
        return text.decode() if isinstance(text, bytes) else str(text)

    def _lookup_by(self, name: str, key: Callable[[int, FakeDevice], str], wanted: Any, out: Any) -> int:
        self._require_init()
        text = self._text(wanted)
        for i, dev in enumerate(self.devices):
            if key(i, dev).lower() == text.lower():
                self._check_device(name, i)
                _write_pointer(out, self._handle_for(i))
                return pynvml.NVML_SUCCESS
        return pynvml.NVML_ERROR_NOT_FOUND

    def _c_nvmlDeviceGetHandleByUUID(self, uuid: Any, out: Any) -> int:
        name = "nvmlDeviceGetHandleByUUID"
        ret = self._lookup_by(name, lambda i, d: d.uuid or default_uuid(i), uuid, out)
        if ret != pynvml.NVML_ERROR_NOT_FOUND:
            return ret
        text = self._text(uuid).lower()
        for i, dev in enumerate(self.devices):
            if not self._in_mig_mode(dev):
                continue
            for mig in dev.mig_devices:
                if self._mig_uuid(i, mig).lower() == text:
                    self._check_mig(name, dev, mig)
                    _write_pointer(out, self._mig_handle_for(i, mig))
                    return pynvml.NVML_SUCCESS
        return pynvml.NVML_ERROR_NOT_FOUND

    def _c_nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: Any, out: Any) -> int:
        name = "nvmlDeviceGetHandleByPciBusId_v2"
        return self._lookup_by(name, lambda i, d: d.pci_bus_id or default_pci_bus_id(i), bus_id, out)

    def _c_nvmlDeviceGetIndex(self, handle: Any, out: Any) -> int:
        index, _ = self._device("nvmlDeviceGetIndex", handle)
        _target(out).value = index
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: identity

    def _c_nvmlDeviceGetName(self, handle: Any, buf: Any, length: Any) -> int:
        _, dev, mig = self._any_device("nvmlDeviceGetName", handle)
        _write_str(buf, length, dev.name if mig is None else f"{dev.name} MIG {mig.profile}")
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetUUID(self, handle: Any, buf: Any, length: Any) -> int:
        index, dev, mig = self._any_device("nvmlDeviceGetUUID", handle)
        uuid = (dev.uuid or default_uuid(index)) if mig is None else self._mig_uuid(index, mig)
        _write_str(buf, length, uuid)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _parse_bus_id(bus_id: str) -> tuple[int, int, int]:
        domain, bus, devfn = bus_id.split(":")
        return int(domain, 16), int(bus, 16), int(devfn.split(".")[0], 16)

    def _c_nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> int:
        index, dev = self._device("nvmlDeviceGetPciInfo_v3", handle)
        bus_id = dev.pci_bus_id or default_pci_bus_id(index)
        domain, bus, device = self._parse_bus_id(bus_id)
        info = _target(out)
        info.busIdLegacy = f"{domain:04X}:{bus:02X}:{device:02X}.0".encode()
        info.domain = domain
        info.bus = bus
        info.device = device
        info.pciDeviceId = 0x233010DE
        info.pciSubSystemId = 0x16C110DE
        info.busId = bus_id.encode()
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetPciInfoExt(self, handle: Any, out: Any) -> int:
        index, dev = self._device("nvmlDeviceGetPciInfoExt", handle)
        info = _target(out)
        if info.version != pynvml.nvmlPciInfoExt_v1:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        bus_id = dev.pci_bus_id or default_pci_bus_id(index)
        info.domain, info.bus, info.device = self._parse_bus_id(bus_id)
        info.pciDeviceId = 0x233010DE
        info.pciSubSystemId = 0x16C110DE
        info.baseClass = 0x3
        info.subClass = 0x2
        info.busId = bus_id.encode()
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetArchitecture", handle)
        _target(out).value = dev.architecture
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: MIG

    def _c_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        _, dev = self._device("nvmlDeviceGetMigMode", handle)
        if not dev.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        _target(current).value = dev.mig_mode
        _target(pending).value = dev.mig_mode if dev.mig_pending_mode is None else dev.mig_pending_mode
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetMaxMigDeviceCount", handle)
        if not dev.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        _target(out).value = MAX_MIG_DEVICES if self._in_mig_mode(dev) else 0
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> int:
        parent, dev, mig = self._any_device("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if mig is not None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if not dev.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        i = _int(index)
        if not self._in_mig_mode(dev) or i >= MAX_MIG_DEVICES:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if i >= len(dev.mig_devices):
            return pynvml.NVML_ERROR_NOT_FOUND
        _write_pointer(out, self._mig_handle_for(parent, dev.mig_devices[i]))
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceIsMigDeviceHandle(self, handle: Any, out: Any) -> int:
        _, _, mig = self._any_device("nvmlDeviceIsMigDeviceHandle", handle)
        _target(out).value = 0 if mig is None else 1
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetGpuInstanceId(self, handle: Any, out: Any) -> int:
        _, _, mig = self._mig("nvmlDeviceGetGpuInstanceId", handle, pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(out).value = mig.gpu_instance_id
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetComputeInstanceId(self, handle: Any, out: Any) -> int:
        _, _, mig = self._mig("nvmlDeviceGetComputeInstanceId", handle, pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(out).value = mig.compute_instance_id
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any, out: Any) -> int:
        name = "nvmlDeviceGetDeviceHandleFromMigDeviceHandle"
        parent, _, _ = self._mig(name, handle, pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _write_pointer(out, self._handle_for(parent))
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetAttributes_v2(self, handle: Any, out: Any) -> int:
        # "This API currently only supports MIG device handles."
        _, _, mig = self._mig("nvmlDeviceGetAttributes_v2", handle, pynvml.NVML_ERROR_NOT_SUPPORTED)
        gi_slices, ci_slices = _mig_slices(mig.profile)
        attrs = _target(out)
        attrs.multiprocessorCount = mig.sm_count
        attrs.gpuInstanceSliceCount = gi_slices
        attrs.computeInstanceSliceCount = ci_slices
        attrs.memorySizeMB = mig.memory_total // _MiB
        # engines of an H100 slice (nvidia-smi mig -lgip): no NVENC, OFA only on the full GPU
        attrs.sharedCopyEngineCount = 8 if gi_slices == 7 else gi_slices
        attrs.sharedDecoderCount = gi_slices
        attrs.sharedEncoderCount = 0
        attrs.sharedJpegCount = gi_slices
        attrs.sharedOfaCount = 1 if gi_slices == 7 else 0
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: telemetry

    def _c_nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetUtilizationRates", handle)
        if self._in_mig_mode(dev):
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        util = _target(out)
        util.gpu = dev.utilization_gpu
        util.memory = dev.utilization_memory
        return pynvml.NVML_SUCCESS

    def _memory(self, name: str, handle: Any) -> tuple[int, int, int]:
        """(total, used, reserved) bytes: a MIG device's own; a GPU in MIG mode: its total, and the
        used and reserved memory of its MIG devices summed."""
        _, dev, mig = self._any_device(name, handle)
        if mig is not None:
            return mig.memory_total, mig.memory_used, mig.memory_reserved
        if self._in_mig_mode(dev):
            used = sum(m.memory_used for m in dev.mig_devices)
            return dev.memory_total, used, sum(m.memory_reserved for m in dev.mig_devices)
        return dev.memory_total, dev.memory_used, dev.memory_reserved

    def _c_nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        # v1 semantics: "used" includes the driver-reserved memory; free = total - used.
        total, used, reserved = self._memory("nvmlDeviceGetMemoryInfo", handle)
        mem = _target(out)
        mem.total = total
        mem.used = used + reserved
        mem.free = max(total - used - reserved, 0)
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> int:
        total, used, reserved = self._memory("nvmlDeviceGetMemoryInfo_v2", handle)
        mem = _target(out)
        if mem.version != pynvml.nvmlMemory_v2:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        mem.total = total
        mem.reserved = reserved
        mem.used = used
        mem.free = max(total - reserved - used, 0)
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetPowerUsage", handle)
        _target(out).value = dev.power_mw
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetEnforcedPowerLimit", handle)
        _target(out).value = dev.power_limit_mw
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        _target(out).value = dev.energy_mj
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetTemperature", handle)
        if _int(sensor) != pynvml.NVML_TEMPERATURE_GPU:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        _target(out).value = dev.temperature_c
        return pynvml.NVML_SUCCESS

    def _clock(self, name: str, handle: Any, clock_type: Any, out: Any, maximum: bool) -> int:
        _, dev = self._device(name, handle)
        kind = _int(clock_type)
        if kind in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_GRAPHICS):
            value = dev.sm_clock_max_mhz if maximum else dev.sm_clock_mhz
        elif kind == pynvml.NVML_CLOCK_MEM:
            value = MEM_CLOCK_MAX_MHZ if maximum else MEM_CLOCK_MHZ
        elif kind == pynvml.NVML_CLOCK_VIDEO:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        else:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        _target(out).value = value
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetClockInfo(self, handle: Any, clock_type: Any, out: Any) -> int:
        return self._clock("nvmlDeviceGetClockInfo", handle, clock_type, out, maximum=False)

    def _c_nvmlDeviceGetMaxClockInfo(self, handle: Any, clock_type: Any, out: Any) -> int:
        return self._clock("nvmlDeviceGetMaxClockInfo", handle, clock_type, out, maximum=True)

    def _c_nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetCurrentClocksEventReasons", handle)
        _target(out).value = dev.clock_event_reasons
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        _target(out).value = dev.clock_event_reasons
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetTotalEccErrors(
        self, handle: Any, error_type: Any, counter_type: Any, out: Any
    ) -> int:
        _, dev = self._device("nvmlDeviceGetTotalEccErrors", handle)
        if _int(counter_type) not in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        kind = _int(error_type)
        if kind == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            _target(out).value = dev.ecc_corrected
        elif kind == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            _target(out).value = dev.ecc_uncorrected
        else:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetRemappedRows(
        self, handle: Any, corr: Any, unc: Any, pending: Any, failure: Any
    ) -> int:
        _, dev = self._device("nvmlDeviceGetRemappedRows", handle)
        for out, value in zip((corr, unc, pending, failure), dev.remapped_rows, strict=True):
            _target(out).value = value
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        _, dev, mig = self._any_device("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        if mig is None and not self._in_mig_mode(dev):
            procs = [(pid, used, _NOT_AVAILABLE_UINT, _NOT_AVAILABLE_UINT) for pid, used in dev.processes]
        else:
            migs = dev.mig_devices if mig is None else [mig]
            procs = [
                (pid, used, m.gpu_instance_id, m.compute_instance_id)
                for m in migs
                for pid, used in m.processes
            ]
        c_count = _target(count)
        capacity = c_count.value
        if capacity < len(procs):
            c_count.value = len(procs)
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        if procs and infos is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if isinstance(infos, ctypes.Array) and len(infos) < len(procs):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        for i, (pid, used, gi, ci) in enumerate(procs):
            entry = infos[i]
            entry.pid = pid
            # pynvml turns NVML_VALUE_NOT_AVAILABLE back into None
            entry.usedGpuMemory = _NOT_AVAILABLE_ULL if used is None else used
            entry.gpuInstanceId = gi
            entry.computeInstanceId = ci
        c_count.value = len(procs)
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetProcessUtilization(
        self, handle: Any, utilization: Any, count: Any, last_seen: Any
    ) -> int:
        _, dev = self._device("nvmlDeviceGetProcessUtilization", handle)
        if self._in_mig_mode(dev):
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        c_count = _target(count)
        since = _int(last_seen)
        samples = [s for s in dev.process_samples if s[3] > since]
        if not samples:
            return pynvml.NVML_ERROR_NOT_FOUND
        if utilization is None or c_count.value < len(samples):
            c_count.value = len(samples)
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, sm, mem, stamp) in enumerate(samples):
            entry = utilization[i]
            entry.pid, entry.timeStamp, entry.smUtil, entry.memUtil = pid, stamp, sm, mem
            entry.encUtil = entry.decUtil = 0
        c_count.value = len(samples)
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: events

    def _c_nvmlDeviceGetSupportedEventTypes(self, handle: Any, out: Any) -> int:
        self._device("nvmlDeviceGetSupportedEventTypes", handle)
        _target(out).value = SUPPORTED_EVENT_TYPES
        return pynvml.NVML_SUCCESS

    def _c_nvmlEventSetCreate(self, out: Any) -> int:
        self._require_init()
        addr = self._new_address()
        self._event_sets[addr] = _EventSet()
        _write_pointer(out, addr)
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceRegisterEvents(self, handle: Any, event_types: Any, event_set: Any) -> int:
        index, _ = self._device("nvmlDeviceRegisterEvents", handle)
        es = self._event_set(event_set)
        types = _int(event_types)
        if types & ~SUPPORTED_EVENT_TYPES:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        es.registrations[index] = es.registrations.get(index, 0) | types
        return pynvml.NVML_SUCCESS

    def _c_nvmlEventSetWait_v2(self, event_set: Any, out: Any, timeout_ms: Any) -> int:
        self._require_init()
        es = self._event_set(event_set)
        timeout = _int(timeout_ms) / 1000.0
        generation = self._generation
        self._cond.wait_for(
            lambda: bool(es.queue) or es.freed or self.init_count <= 0 or self._generation != generation,
            timeout=timeout,
        )
        if self._unloaded is not None:
            return self._unloaded
        if es.freed:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if self.init_count <= 0 or self._generation != generation:
            return pynvml.NVML_ERROR_UNINITIALIZED
        if not es.queue:
            return pynvml.NVML_ERROR_TIMEOUT
        index, event_type, event_data = es.queue.popleft()
        data = _target(out)
        data.device = self._device_handle(index)
        data.eventType = event_type
        data.eventData = event_data
        data.gpuInstanceId = _NOT_AVAILABLE_UINT
        data.computeInstanceId = _NOT_AVAILABLE_UINT
        return pynvml.NVML_SUCCESS

    def _c_nvmlEventSetFree(self, event_set: Any) -> int:
        self._require_init()
        addr = handle_address(event_set)
        es = self._event_sets.pop(addr, None)
        if es is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        es.freed = True
        self._cond.notify_all()
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: GPM

    def _c_nvmlGpmQueryDeviceSupport(self, handle: Any, out: Any) -> int:
        _, dev = self._device("nvmlGpmQueryDeviceSupport", handle)
        support = _target(out)
        if support.version != pynvml.NVML_GPM_SUPPORT_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        support.isSupportedDevice = 1 if dev.gpm_supported else 0
        return pynvml.NVML_SUCCESS

    def _c_nvmlGpmSampleAlloc(self, out: Any) -> int:
        self._require_init()
        addr = self._new_address()
        self._gpm_samples[addr] = _GpmSample()
        self.live_gpm_samples.add(addr)
        _write_pointer(out, addr)
        return pynvml.NVML_SUCCESS

    def _c_nvmlGpmSampleFree(self, sample: Any) -> int:
        self._require_init()
        addr = handle_address(sample)
        if self._gpm_samples.pop(addr, None) is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        self.live_gpm_samples.discard(addr)
        return pynvml.NVML_SUCCESS

    def _take_gpm_sample(
        self, record: _GpmSample, index: int, gpu_instance_id: int | None, percent: dict[int, float]
    ) -> None:
        key = (index, gpu_instance_id)
        seq = self._gpm_seq.get(key, 0) + 1
        self._gpm_seq[key] = seq
        cum = self._gpm_cum.setdefault(key, {})
        for metric, value in percent.items():
            total, steps = cum.get(metric, (Fraction(0), 0))
            cum[metric] = (total + Fraction(value), steps + 1)
        record.device_index = index
        record.gpu_instance_id = gpu_instance_id
        record.seq = seq
        record.cum = dict(cum)
        record.present = frozenset(percent)

    def _c_nvmlGpmSampleGet(self, handle: Any, sample: Any) -> int:
        index, dev = self._device("nvmlGpmSampleGet", handle)
        record = self._gpm_sample(sample)
        if not dev.gpm_supported:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        if dev.gpm_error is not None:
            return dev.gpm_error
        self._take_gpm_sample(record, index, None, {**dev.gpm_percent, **self._gpm_traffic(dev)})
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _gpm_traffic(dev: FakeDevice) -> dict[int, float]:
        traffic = {
            pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: dev.pcie_rx_mib_per_second,
            pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: dev.pcie_tx_mib_per_second,
        }
        if dev.nvlink_links > 0:
            traffic[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC] = dev.nvlink_rx_mib_per_second
            traffic[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC] = dev.nvlink_tx_mib_per_second
        return traffic

    @staticmethod
    def _gpu_instance(dev: FakeDevice, gpu_instance_id: int) -> FakeMigDevice | None:
        """The first MIG device of that GPU instance, if any."""
        return next((m for m in dev.mig_devices if m.gpu_instance_id == gpu_instance_id), None)

    def _c_nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: Any, sample: Any) -> int:
        name = "nvmlGpmMigSampleGet"
        index, dev = self._device(name, handle)
        record = self._gpm_sample(sample)
        if not self._in_mig_mode(dev):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        gi = _int(gpu_instance_id)
        mig = self._gpu_instance(dev, gi)
        if mig is None:
            return pynvml.NVML_ERROR_NOT_FOUND
        self._check_mig(name, dev, mig)
        if not mig.gpm_supported:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        if dev.gpm_error is not None:
            return dev.gpm_error
        self._take_gpm_sample(record, index, gi, mig.gpm_percent)
        return pynvml.NVML_SUCCESS

    def _c_nvmlGpmMetricsGet(self, out: Any) -> int:
        self._require_init()
        req = _target(out)
        if req.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        if req.numMetrics > pynvml.NVML_GPM_METRIC_MAX:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        addr1, addr2 = handle_address(req.sample1), handle_address(req.sample2)
        if addr1 == addr2:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        s1, s2 = self._gpm_sample(req.sample1), self._gpm_sample(req.sample2)
        if s1.device_index is None or s2.device_index is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if (s1.device_index, s1.gpu_instance_id) != (s2.device_index, s2.gpu_instance_id):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if s2.seq <= s1.seq:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if 0 <= s2.device_index < len(self.devices):
            dev = self.devices[s2.device_index]
            gi = s2.gpu_instance_id
            injected = dev if gi is None else self._gpu_instance(dev, gi)
            if injected is not None:
                if "nvmlGpmMetricsGet" in injected.unknown_error:
                    return pynvml.NVML_ERROR_UNKNOWN
                if "nvmlGpmMetricsGet" in injected.not_supported:
                    return pynvml.NVML_ERROR_NOT_SUPPORTED
        for i in range(req.numMetrics):
            metric = req.metrics[i]
            mid = metric.metricId
            if mid not in s2.present:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                metric.value = 0.0
                continue
            total2, steps2 = s2.cum[mid]
            total1, steps1 = s1.cum.get(mid, (Fraction(0), 0))
            metric.value = float((total2 - total1) / (steps2 - steps1))
            metric.nvmlReturn = pynvml.NVML_SUCCESS
            short = _GPM_METRIC_NAMES.get(mid, f"metric_{mid}").encode()
            metric.metricInfo.shortName = short
            metric.metricInfo.longName = short
            metric.metricInfo.unit = _GPM_TRAFFIC_UNIT if mid in _GPM_TRAFFIC_IDS else b"%"
        return pynvml.NVML_SUCCESS

    # ----------------------------------------------------------------- C symbols: NVLink and fields

    @staticmethod
    def _nvlink_error(dev: FakeDevice, link: int, counter: int) -> int:
        counts = dev.nvlink_errors[link] if link < len(dev.nvlink_errors) else []
        return counts[counter] if counter < len(counts) else 0

    @staticmethod
    def _check_link(dev: FakeDevice, link: Any) -> int:
        if dev.nvlink_links <= 0:
            raise _Ret(pynvml.NVML_ERROR_NOT_SUPPORTED)
        index = _int(link)
        if not 0 <= index < min(dev.nvlink_links, pynvml.NVML_NVLINK_MAX_LINKS):
            raise _Ret(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def _c_nvmlDeviceGetNvLinkState(self, handle: Any, link: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetNvLinkState", handle)
        self._check_link(dev, link)
        _target(out).value = pynvml.NVML_FEATURE_ENABLED
        return pynvml.NVML_SUCCESS

    def _c_nvmlDeviceGetNvLinkErrorCounter(self, handle: Any, link: Any, counter: Any, out: Any) -> int:
        _, dev = self._device("nvmlDeviceGetNvLinkErrorCounter", handle)
        index = self._check_link(dev, link)
        kind = _int(counter)
        if not 0 <= kind < pynvml.NVML_NVLINK_ERROR_COUNT:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        _target(out).value = self._nvlink_error(dev, index, kind)
        return pynvml.NVML_SUCCESS

    def _field_value(self, dev: FakeDevice, field_id: int) -> tuple[int, int, str, int]:
        """(nvmlReturn, valueType, c_nvmlValue_t member, value) of one field."""
        not_supported = (pynvml.NVML_ERROR_NOT_SUPPORTED, 0, "", 0)
        if field_id in dev.unsupported_fields or dev.nvlink_links <= 0:
            return not_supported
        if field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", dev.nvlink_links
        counter = NVLINK_TOTAL_FIELDS.get(field_id)
        if counter is None:
            return not_supported  # a field this fake does not model
        total = sum(self._nvlink_error(dev, link, counter) for link in range(dev.nvlink_links))
        return pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal", total

    def _c_nvmlDeviceGetFieldValues(self, handle: Any, count: Any, values: Any) -> int:
        _, dev = self._device("nvmlDeviceGetFieldValues", handle)
        n = _int(count)
        if n <= 0:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        array = _target(values)
        now_us = int(time.time() * 1_000_000)
        for i in range(n):
            value = array[i]
            ret, value_type, member, number = self._field_value(dev, int(value.fieldId))
            value.timestamp = now_us
            value.latencyUsec = 0
            value.nvmlReturn = ret
            if ret == pynvml.NVML_SUCCESS:
                value.valueType = value_type
                setattr(value.value, member, number)
        return pynvml.NVML_SUCCESS


@contextmanager
def no_nvml_library() -> Iterator[None]:
    """Make pynvml behave as on a host without the driver: loading libnvidia-ml.so.1 raises OSError,
    so ``pynvml.nvmlInit()`` raises ``NVMLError_LibraryNotFound``. Restores pynvml on exit."""

    def _no_library(name: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    had_cdll = "CDLL" in vars(pynvml)
    saved_cdll = vars(pynvml).get("CDLL")
    with pynvml.libLoadLock:
        saved = (pynvml.nvmlLib, pynvml._nvmlLib_refcount)
        pynvml.nvmlLib = None
        pynvml._nvmlLib_refcount = 0
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.CDLL = _no_library
    try:
        yield
    finally:
        with pynvml.libLoadLock:
            if had_cdll:
                pynvml.CDLL = saved_cdll
            else:
                del pynvml.CDLL
            pynvml.nvmlLib, pynvml._nvmlLib_refcount = saved
            pynvml._nvmlGetFunctionPointer_cache.clear()


@pytest.fixture
def fake_nvml() -> Iterator[FakeNvml]:
    """Eight default H100s, installed into pynvml for the duration of the test (not yet nvmlInit'ed)."""
    fake = FakeNvml.h100s(8)
    with fake.installed():
        yield fake


@pytest.fixture
def no_nvml() -> Iterator[None]:
    """pynvml as on a machine without libnvidia-ml.so.1."""
    with no_nvml_library():
        yield
