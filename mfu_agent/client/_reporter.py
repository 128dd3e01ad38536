"""The training-side reporter: cumulative model FLOPs posted to the node's mfu-agent.

Standard library only. Nothing here may import the rest of ``mfu_agent`` (which pulls in
fastapi, NVML bindings, ...): a training job installs the package for this module alone.

Design
------
* ``Reporter.step()`` is the only call on the training loop's hot path. It adds a few numbers to
  cumulative counters under a lock that nothing else holds for longer than a snapshot, reads
  ``time.time()`` and returns. No I/O, no queue, no allocation that survives the call. It never
  raises: a bad argument is logged once and ignored.
* A daemon thread posts the *latest* cumulative state every ``interval`` seconds. Counters are
  cumulative (like Prometheus counters), so a lost report loses nothing and there is never a
  backlog to resend: memory stays constant however long the agent is down.
* Failures back off exponentially with jitter (capped), are logged once per kind of failure and
  once on recovery. 400/413/422 mean "this report is bad": logged once, dropped, not retried
  early. 401/429/5xx/connection errors are retried with backoff.
* Every post has one deadline (``timeout`` after it starts) that bounds each of its network steps:
  the DNS lookup (run in a daemon thread and waited for at most until the deadline, since
  ``getaddrinfo`` takes no timeout; its answer is cached for a while), the connect, the TLS
  handshake and every send and receive. ``close(timeout)`` therefore returns within its timeout
  whatever the network does.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_URL", "DTYPES", "LABEL_KEYS", "Reporter"]

logger = logging.getLogger("mfu_agent.client")

DEFAULT_URL = "http://127.0.0.1:8469"
REPORTS_PATH = "/v1/reports"
DTYPES = ("fp8", "bf16", "fp16", "tf32", "fp32", "fp64", "int8")
LABEL_KEYS = ("pod", "namespace", "slurm_job_id", "hostname")
JOB_ID_RE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# What the agent accepts (mfu_agent.api.models); checked here so a report is never refused forever.
LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9._:/@+-]{1,253}")
GPU_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9-]{1,80}")
MAX_INDEX = 1_000_000
MAX_GPU_INDEX = 1023
MAX_GPUS = 16  # the agent's bound per report (docs/api.md)
MAX_LABEL_CHARACTERS = 512  # the agent's bound on all label values of a report together
# Phases a training loop marks with ``with reporter.phase(name):`` (the agent's bound: 8 names a rank).
PHASES = ("checkpoint", "eval", "data_wait")
OTHER_PHASE = "other"
MAX_USER_PHASES = 4
PHASE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_STEP = 2**63 - 1

# Spellings people (and frameworks) use for the dtypes the agent knows.
_DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "float64": "fp64",
    "double": "fp64",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "tensorfloat32": "tf32",
}

_NO_RETRY_STATUS = frozenset({400, 413, 422})

# Where launchers put a process's global rank, local rank and world size (first found wins).
RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK_VARS = (
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
)
WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

_rank_warning_logged = False


_live: weakref.WeakSet[Reporter] = weakref.WeakSet()
_atexit_registered = False
_atexit_lock = threading.Lock()


def normalize_dtype(dtype: object) -> str:
    """Map ``"bf16"``, ``"bfloat16"``, ``torch.bfloat16``, ... to the agent's dtype names.

    Raises ValueError for anything the agent does not know.
    """
    text = str(dtype).strip().lower()
    if text.startswith("torch."):
        text = text[len("torch.") :]
    text = _DTYPE_ALIASES.get(text, text)
    if text not in DTYPES:
        raise ValueError(f"mfu_agent.client: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return text


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _env_job_id() -> str | None:
    job_id = _env("MFU_JOB_ID")
    if job_id is None:
        job_id = _env("TORCHELASTIC_RUN_ID")
        if job_id == "none":  # torchrun's default --rdzv-id: not a job identity
            job_id = None
    if job_id is None:
        job_id = _env("SLURM_JOB_ID")
    return job_id


def _warn_no_rank() -> None:
    global _rank_warning_logged
    if not _rank_warning_logged:
        _rank_warning_logged = True
        logger.warning(
            "mfu_agent.client: no rank given and none of %s is set: reporting as rank 0. If several "
            "processes of this job report, pass rank= (or set RANK) in each: the agent refuses a second "
            "process on the same rank (HTTP 409) rather than mix their counters. (logged once)",
            ", ".join(RANK_VARS),
        )


def _int_arg(
    name: str, value: object, env_names: tuple[str, ...], minimum: int, maximum: int = MAX_INDEX
) -> int | None:
    source = name
    if value is None:
        for env_name in env_names:
            env_value = _env(env_name)
            if env_value is not None:
                value, source = env_value, f"environment variable {env_name}"
                break
        else:
            return None
    if isinstance(value, bool):
        raise ValueError(f"mfu_agent.client: {source} must be an integer, got {value!r}")
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"mfu_agent.client: {source} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"mfu_agent.client: {source} must be an integer, got {value!r}")
    if not minimum <= number <= maximum:
        raise ValueError(f"mfu_agent.client: {source} must be in {minimum}..{maximum}, got {number}")
    return number


def _per_step(name: str, value: object, dtype: str) -> dict[str, float] | None:
    """A per-step FLOP amount: a number (in ``dtype``) or a ``{dtype: FLOPs}`` mapping."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"mfu_agent.client: {name} must not be an empty mapping")
        amounts: dict[str, float] = {}
        for key, amount in value.items():
            dt = normalize_dtype(key)
            if dt in amounts:
                raise ValueError(f"mfu_agent.client: {name} names dtype {dt} twice")
            amounts[dt] = _default_per_step(f"{name}[{key!r}]", amount)  # type: ignore[assignment]
        return amounts
    return {dtype: _default_per_step(name, value)}  # type: ignore[dict-item]


def _default_per_step(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"mfu_agent.client: {name} must be a number >= 0, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"mfu_agent.client: {name} must be a number >= 0, got {value!r}") from None
    if not (0.0 <= number < math.inf):
        raise ValueError(f"mfu_agent.client: {name} must be a finite number >= 0, got {value!r}")
    return number


def _read_token(token: str | None) -> str | None:
    if token is not None:
        token = token.strip()
        return token or None
    token = _env("MFU_AGENT_TOKEN")
    if token is not None:
        return token
    path = _env("MFU_AGENT_TOKEN_FILE")
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"mfu_agent.client: cannot read MFU_AGENT_TOKEN_FILE {path!r}: {exc}") from None
    if not token:
        raise ValueError(f"mfu_agent.client: MFU_AGENT_TOKEN_FILE {path!r} is empty")
    return token


def _label_value(value: str) -> str:
    """Environment-derived label values are made acceptable rather than refused."""
    return re.sub(r"[^A-Za-z0-9._:/@+-]", "_", value)[:253]


def _default_labels() -> dict[str, str]:
    labels: dict[str, str] = {}
    pod = _env("POD_NAME")
    if pod is None and _env("KUBERNETES_SERVICE_HOST") is not None:
        pod = _env("HOSTNAME")
    if pod is not None:
        labels["pod"] = _label_value(pod)
    namespace = _env("POD_NAMESPACE")
    if namespace is not None:
        labels["namespace"] = _label_value(namespace)
    slurm_job_id = _env("SLURM_JOB_ID")
    if slurm_job_id is not None:
        labels["slurm_job_id"] = _label_value(slurm_job_id)
    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = ""
    if hostname:
        labels["hostname"] = _label_value(hostname)
    return labels


def _check_labels(labels: Mapping[str, str | None]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if value is None or value == "":  # an explicit empty value removes a default label
            continue
        if key not in LABEL_KEYS:
            raise ValueError(
                f"mfu_agent.client: label {key!r} is not supported (allowed: {', '.join(LABEL_KEYS)})"
            )
        if not isinstance(value, str) or not LABEL_VALUE_RE.fullmatch(value):
            raise ValueError(
                f"mfu_agent.client: label {key}={value!r} must be 1..253 characters of [A-Za-z0-9._:/@+-]"
            )
        checked[key] = value
    return checked


def _fit_labels(labels: dict[str, str], given: set[str]) -> dict[str, str]:
    """Labels within the agent's MAX_LABEL_CHARACTERS: the caller's own must fit (ValueError); labels
    taken from the environment are left out, hostname first, until they do (logged once)."""
    if sum(len(labels[k]) for k in given if k in labels) > MAX_LABEL_CHARACTERS:
        raise ValueError(
            f"mfu_agent.client: labels may hold at most {MAX_LABEL_CHARACTERS} characters in all, "
            f"got {sum(len(v) for v in labels.values())}"
        )
    fitted = dict(labels)
    for key in ("hostname", "slurm_job_id", "namespace", "pod"):
        if sum(map(len, fitted.values())) <= MAX_LABEL_CHARACTERS:
            break
        if key in fitted and key not in given:
            logger.warning(
                "mfu_agent.client: label %s left out: the labels would exceed the agent's %d characters",
                key,
                MAX_LABEL_CHARACTERS,
            )
            del fitted[key]
    return fitted


def _check_gpus(gpus: Iterable[int | str] | None) -> list[int | str] | None:
    if gpus is None:
        return None
    if isinstance(gpus, (str, int)):
        gpus = [gpus]
    checked: list[int | str] = []
    for gpu in gpus:
        if isinstance(gpu, bool) or not isinstance(gpu, (int, str)):
            raise ValueError(
                f"mfu_agent.client: gpus must hold GPU indices (int) or UUIDs (str), got {gpu!r}"
            )
        if isinstance(gpu, int) and not 0 <= gpu <= MAX_GPU_INDEX:
            raise ValueError(f"mfu_agent.client: GPU index must be in 0..{MAX_GPU_INDEX}, got {gpu}")
        if isinstance(gpu, str):
            gpu = gpu.strip()
            if not GPU_UUID_RE.fullmatch(gpu):
                raise ValueError(f"mfu_agent.client: GPU UUID {gpu!r} must look like GPU-... or MIG-...")
        checked.append(gpu)
    if len(checked) > MAX_GPUS:
        raise ValueError(f"mfu_agent.client: at most {MAX_GPUS} GPUs per rank, got {len(checked)}")
    return checked or None


# NVIDIA_VISIBLE_DEVICES values that name no list of devices (NVIDIA container runtime).
_NO_DEVICE_LIST = frozenset({"", "all", "none", "void"})
_visible_warning_logged = False


def _nvidia_visible_devices(value: str | None) -> list[int | str | None] | None:
    """NVIDIA_VISIBLE_DEVICES as the container's devices, in order: a host NVML index, a GPU-/MIG-
    UUID, or None for an entry the agent could not be told (``0:1``, a MIG device by index).
    None when the variable names no list."""
    if value is None or value.strip().lower() in _NO_DEVICE_LIST:
        return None
    devices: list[int | str | None] = []
    for entry in value.split(","):
        entry = entry.strip()
        if entry.isdecimal() and entry.isascii():
            index = int(entry)
            devices.append(index if index <= MAX_GPU_INDEX else None)
        else:
            devices.append(entry if GPU_UUID_RE.fullmatch(entry) else None)
    return devices


def _cuda_visible_devices(
    value: str, nvidia: list[int | str | None] | None, pci_order: bool
) -> list[int | str | None]:
    """CUDA_VISIBLE_DEVICES as the process's devices, in CUDA's order, up to the first entry CUDA
    would refuse (it ignores that one and the rest). None for a device that cannot be named."""
    devices: list[int | str | None] = []
    if value.strip() == "":
        return devices  # set but empty: no device is visible
    for entry in value.split(","):
        entry = entry.strip()
        if entry.isdecimal() and entry.isascii():
            index = int(entry)
            if nvidia is not None:  # an index into the container's devices
                if index >= len(nvidia):
                    break
                devices.append(nvidia[index])
            elif index > MAX_GPU_INDEX:
                break
            else:  # an NVML index only when CUDA numbers devices in PCI bus order, as NVML does
                devices.append(index if pci_order else None)
        elif entry.startswith(("GPU-", "MIG-")):  # a UUID (or a prefix of one) stands for itself
            devices.append(entry if GPU_UUID_RE.fullmatch(entry) else None)
        else:
            break
    return devices


def _env_gpus(local_rank: int | None) -> tuple[list[int | str] | None, str | None, str | None]:
    """The device this process's ``local_rank`` runs on, from CUDA_VISIBLE_DEVICES /
    NVIDIA_VISIBLE_DEVICES: ``(gpus, source, warning)``. ``gpus`` is None when the environment does
    not name it (then the agent finds the GPU by pid or local_rank, as before); ``source`` names the
    variables it came from; ``warning`` says why local_rank could not be resolved."""
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    nvidia_value = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    nvidia = _nvidia_visible_devices(nvidia_value)
    if cuda is not None:
        pci_order = (os.environ.get("CUDA_DEVICE_ORDER") or "").strip().upper() == "PCI_BUS_ID"
        devices = _cuda_visible_devices(cuda, nvidia, pci_order)
        source = "CUDA_VISIBLE_DEVICES" if nvidia is None else "CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES"
    elif nvidia is not None:
        devices, source = nvidia, "NVIDIA_VISIBLE_DEVICES"
    else:
        return None, None, None
    if len(devices) == 1:  # the only device the process can use, whatever local_rank says
        device = devices[0]
    elif local_rank is None:
        return None, None, None
    elif local_rank < len(devices):
        device = devices[local_rank]
    else:
        shown = f"CUDA_VISIBLE_DEVICES={cuda!r}" if cuda is not None else ""
        if nvidia is not None:
            shown += (", " if shown else "") + f"NVIDIA_VISIBLE_DEVICES={nvidia_value!r}"
        return (
            None,
            None,
            f"mfu_agent.client: local_rank {local_rank} is past the {len(devices)} device(s) that "
            f"{shown} make(s) visible to this process, so the report does not name its GPU (the agent "
            "falls back to the process id, then local_rank). Pass gpus=[...] to name it.",
        )
    if device is None:
        return None, None, None
    return [device], source, None


def _warn_visible_once(message: str) -> None:
    global _visible_warning_logged
    if not _visible_warning_logged:
        _visible_warning_logged = True
        logger.warning("%s (logged once)", message)


# --------------------------------------------------------------------------------------------------
# the agent's URL and the network: every step of a post bounded by one deadline
# --------------------------------------------------------------------------------------------------
_URL_EXAMPLE = "e.g. http://127.0.0.1:8469, http://localhost:8469 or http://[::1]:8469"
_HOST_NAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_BAD_PATH_CHAR_RE = re.compile(r"[\x00-\x20\x7f]")
#: How long a resolved address is used before the name is looked up again (sooner after a failure).
DNS_CACHE_SECONDS = 30.0


class _AgentUrl(NamedTuple):
    """An agent URL taken apart: what a post connects to, and what it says in its request line."""

    base: str  # the URL as given, without a trailing "/" or "/v1/reports"
    scheme: str  # "http" or "https"
    host: str  # a name, or an IP literal without brackets (an IPv6 zone unquoted: fe80::1%eth0)
    port: int
    host_header: str  # the Host header: the host (IPv6 in brackets) and a port other than the default
    path: str  # the request path: the URL's path + /v1/reports


def _parse_agent_url(value: object, source: str) -> _AgentUrl:
    """Checks an agent URL once, at start. Raises ValueError naming ``source`` and saying what is wrong."""
    where = f"mfu_agent.client: {source}"
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    text = value.strip()
    if "://" not in text:
        hint = f" (did you mean 'http://{text}'?)" if text else ""
        raise ValueError(
            f"{where} {value!r} has no scheme: it must start with http:// or https://{hint}; {_URL_EXAMPLE}"
        )
    text = text.rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{where} {value!r} is not a usable URL ({exc}); {_URL_EXAMPLE}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"{where} {value!r}: scheme {parts.scheme!r} is not supported, only http:// and https://; "
            f"{_URL_EXAMPLE}"
        )
    if "@" in parts.netloc:
        raise ValueError(
            f"{where} {value!r} carries credentials; they are not supported (use MFU_AGENT_TOKEN)"
        )
    if not parts.hostname:
        raise ValueError(f"{where} {value!r} has no host; {_URL_EXAMPLE}")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{where} {value!r}: port {port} is not in 1..65535")
    if parts.query or parts.fragment:
        raise ValueError(f"{where} {value!r} must not have a query (?...) or a fragment (#...)")
    host = unquote(parts.hostname)
    if ":" in host:  # an IPv6 literal ("[...]" in the URL); urlsplit checked it, this is belt and braces
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{where} {value!r}: {host!r} is not an IPv6 address") from None
    elif not _HOST_NAME_RE.fullmatch(host):
        raise ValueError(f"{where} {value!r}: {host!r} is not a host name or an IP address")
    path = parts.path
    if _BAD_PATH_CHAR_RE.search(path):
        raise ValueError(f"{where} {value!r}: the path must not contain spaces or control characters")
    if path.endswith(REPORTS_PATH):
        path = path[: -len(REPORTS_PATH)]
        text = text[: -len(REPORTS_PATH)]
    default_port = 443 if scheme == "https" else 80
    port = default_port if port is None else port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    return _AgentUrl(text, scheme, host, port, host_header, path.rstrip("/") + REPORTS_PATH)


class _DnsTimeout(Exception):
    """The name lookup did not finish before the post's deadline (it goes on in the background)."""


class _Lookup:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[tuple[Any, ...]] | None = None
        self.error: BaseException | None = None


class _Resolver:
    """The agent's addresses, looked up in a daemon thread and waited for with a deadline.

    ``socket.getaddrinfo`` takes no timeout (a broken resolver can hang it for tens of seconds), so
    a post never calls it itself: it waits for a lookup thread until its own deadline. At most one
    lookup runs at a time; a later post waits for the same one. An answer is kept for
    DNS_CACHE_SECONDS, and forgotten when no address of it can be connected to. An IP literal is
    never looked up.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._cached: list[tuple[Any, ...]] | None = None
        self._expires = 0.0
        self._pending: _Lookup | None = None
        self._fixed: list[tuple[Any, ...]] | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and "%" not in host:  # zoned IPv6 literals go through getaddrinfo
            if ip.version == 4:
                self._fixed = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port))]
            else:
                self._fixed = [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port, 0, 0))]

    def addresses(self, deadline: float) -> list[tuple[Any, ...]]:
        """(family, type, proto, sockaddr) of each address. Raises _DnsTimeout past ``deadline``,
        or what getaddrinfo raised (socket.gaierror)."""
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._cached is not None and time.monotonic() < self._expires:
                return self._cached
            lookup = self._pending
            if lookup is None:
                lookup = self._pending = _Lookup()
                threading.Thread(
                    target=self._lookup, args=(lookup,), name="mfu-agent-reporter-dns", daemon=True
                ).start()
        if not lookup.done.wait(max(0.0, deadline - time.monotonic())):
            raise _DnsTimeout(
                f"the DNS lookup of {self.host!r} did not finish within the timeout "
                "(it goes on in the background)"
            )
        if lookup.error is not None:
            raise lookup.error
        assert lookup.result is not None
        return lookup.result

    def _lookup(self, lookup: _Lookup) -> None:
        try:
            found = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
            lookup.result = [(family, type_, proto, sockaddr) for family, type_, proto, _, sockaddr in found]
            if not lookup.result:
                raise socket.gaierror(f"no address for {self.host!r}")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting post
            lookup.error = exc
            lookup.result = None
        with self._lock:
            if lookup.result is not None:
                self._cached, self._expires = lookup.result, time.monotonic() + DNS_CACHE_SECONDS
            if self._pending is lookup:
                self._pending = None
        lookup.done.set()

    def prefer(self, address: tuple[Any, ...]) -> None:
        """Try ``address`` first next time (the one that answered)."""
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] != address and address in cached:
                self._cached = [address] + [a for a in cached if a != address]

    def forget(self) -> None:
        """No address answered: look the name up again on the next post."""
        with self._lock:
            self._cached = None


class _DeadlineIO:
    """Socket mixin: each send and receive waits at most until the post's deadline (a plain
    socket timeout would allow that long per call, however many calls a slow peer causes)."""

    _deadline = math.inf

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self.settimeout(remaining)  # type: ignore[attr-defined]

    def sendall(self, *args: Any) -> Any:
        self._arm()
        return super().sendall(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> Any:
        self._arm()
        return super().send(*args)  # type: ignore[misc]

    def recv(self, *args: Any) -> Any:
        self._arm()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> Any:
        self._arm()
        return super().recv_into(*args)  # type: ignore[misc]


class _DeadlineSocket(_DeadlineIO, socket.socket):
    pass


_tls_context_cache: list[Any] = []


def _tls_context() -> Any:
    """The default verifying TLS context (as urllib uses), whose sockets keep the post's deadline."""
    if not _tls_context_cache:
        import ssl

        class _DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
            pass

        context = ssl.create_default_context()
        context.sslsocket_class = _DeadlineSSLSocket
        _tls_context_cache.append(context)
    return _tls_context_cache[0]


def _connect(target: _AgentUrl, resolver: _Resolver, deadline: float) -> socket.socket:
    """A connected socket (TLS for https) whose every operation ends by ``deadline``. No proxy: the
    agent runs on this node, and a cluster-wide HTTP(S)_PROXY must not swallow its reports."""
    error: OSError | None = None
    for family, type_, proto, sockaddr in resolver.addresses(deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = TimeoutError("timed out")
            break
        sock = _DeadlineSocket(family, type_, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        resolver.prefer((family, type_, proto, sockaddr))
        sock._deadline = deadline
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.scheme == "https":
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            tls = _tls_context().wrap_socket(sock, server_hostname=target.host)
            tls._deadline = deadline
            return tls  # type: ignore[no-any-return]
        return sock
    resolver.forget()
    raise error if error is not None else OSError(f"no address to connect to for {target.host!r}")


def _exchange(
    target: _AgentUrl, resolver: _Resolver, body: bytes, headers: dict[str, str], deadline: float
) -> tuple[int, str | None, str]:
    """POST ``body`` to the agent: ``(status, Retry-After header, detail)``; detail is the start of
    the answer's body for a status outside 2xx. Raises _DnsTimeout, socket.gaierror, OSError
    (TimeoutError included) or http.client.HTTPException."""
    sock = _connect(target, resolver, deadline)
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.sock = sock  # connected already: http.client will not connect (nor resolve) itself
    try:
        connection.request("POST", target.path, body, {"Host": target.host_header, **headers})
        response = connection.getresponse()
        status = response.status
        retry_after = response.getheader("Retry-After")
        if 200 <= status < 300:
            response.read(65536)
            return status, retry_after, ""
        try:
            text = response.read(300).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException):
            text = ""
        return status, retry_after, (f": {text}" if text else "")
    finally:
        connection.close()


def _count(value: float) -> int | float:
    """Counts (tokens, samples) go out as integers when they are whole numbers."""
    return int(value) if value.is_integer() else value


def _close_all_at_exit() -> None:
    for reporter in list(_live):
        reporter.close(timeout=1.0)


def _after_fork_in_child() -> None:
    # A forked child (e.g. a fork-started DataLoader worker) inherits the parent's reporters but
    # not their sender threads, and possibly a lock held by one of them at the moment of the fork.
    # Give the child fresh locks so step() can never block there, and retire the copies: the
    # parent keeps reporting; the child must not post the parent's counters under the parent's pid.
    for reporter in list(_live):
        reporter._lock = threading.Lock()
        reporter._send_lock = threading.Lock()
        reporter._close_lock = threading.Lock()
        reporter._closed = True
        reporter._stop.set()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _sender_loop(ref: weakref.ReferenceType[Reporter], stop: threading.Event) -> None:
    # Holds the Reporter only weakly between posts, so an abandoned Reporter can be collected.
    while True:
        reporter = ref()
        if reporter is None:
            return
        delay = reporter._next_delay()
        del reporter
        if stop.wait(delay):
            return
        reporter = ref()
        if reporter is None:
            return
        reporter._send_scheduled()
        del reporter


class Reporter:
    """Reports a training rank's cumulative model FLOPs to the mfu-agent on its node.

    Call :meth:`step` once per optimizer step; a daemon thread posts the latest cumulative
    counters every ``interval`` seconds. Call :meth:`close` (or use ``with Reporter(...)``) at
    the end of training to deliver the final totals as the final report.

    Only construction can raise (``ValueError`` for bad configuration, an unusable ``url=``
    included). An unusable ``MFU_AGENT_URL`` does not raise: it is logged once as an error and the
    reporter sends nothing (``stats["disabled"]`` says why). ``step``, ``flush`` and ``close``
    never raise.
    """

    def __init__(
        self,
        job_id: str | None = None,
        flops_per_step: float | Mapping[str, float] | None = None,
        tokens_per_step: float | None = None,
        dtype: str | None = None,
        url: str | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        gpus: Iterable[int | str] | None = None,
        hardware_flops_per_step: float | None = None,
        samples_per_step: float | None = None,
        interval: float = 5.0,
        token: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        timeout: float = 2.0,
        max_backoff: float = 60.0,
        job_flops_per_step: float | Mapping[str, float] | None = None,
        job_tokens_per_step: float | None = None,
        start_step: int | None = None,
    ) -> None:
        # --- configuration (the only place that raises) ---------------------------------------
        if job_id is None:
            job_id = _env_job_id()
            if job_id is None:
                raise ValueError(
                    "mfu_agent.client: no job id: pass job_id=... or set MFU_JOB_ID "
                    "(TORCHELASTIC_RUN_ID and SLURM_JOB_ID are used when set)"
                )
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            raise ValueError(
                f"mfu_agent.client: job id {job_id!r} must be 1..128 characters of [A-Za-z0-9._:/-]"
            )
        dtype_given = dtype is not None
        dtype = normalize_dtype(dtype if dtype_given else "bf16")

        # An unusable url= is a programming error: raise. An unusable MFU_AGENT_URL is the
        # environment's: never kill a training run over telemetry, so log one error (below) and
        # report nothing (``stats["disabled"]`` says why).
        disabled: str | None = None
        env_url = _env("MFU_AGENT_URL") if url is None else None
        target: _AgentUrl | None
        if env_url is None:
            target = _parse_agent_url(DEFAULT_URL if url is None else url, "url")
        else:
            try:
                target = _parse_agent_url(env_url, "MFU_AGENT_URL")
            except ValueError as exc:
                target, disabled = None, str(exc)

        rank_value = _int_arg("rank", rank, RANK_VARS, 0)
        local_rank_value = _int_arg("local_rank", local_rank, LOCAL_RANK_VARS, 0)
        world_size_value = _int_arg("world_size", world_size, WORLD_SIZE_VARS, 1)
        if rank_value is not None and world_size_value is not None and rank_value >= world_size_value:
            raise ValueError(
                f"mfu_agent.client: rank {rank_value} is not below world_size {world_size_value}"
            )
        if rank_value is None and world_size_value != 1:
            _warn_no_rank()

        start_step_value = None
        if start_step is not None:
            start_step_value = _int_arg("start_step", start_step, (), 0, MAX_STEP)
        for name, value in (("interval", interval), ("timeout", timeout), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(
                    f"mfu_agent.client: {name} must be a positive number of seconds, got {value!r}"
                )

        merged_labels: dict[str, str | None] = dict(_default_labels())
        if labels is not None:
            merged_labels.update(labels)
        checked_labels = _fit_labels(_check_labels(merged_labels), set(labels or ()))

        self.job_id: str = job_id
        self.dtype: str = dtype
        #: The agent's base URL (without a trailing "/" or "/v1/reports") and the reports endpoint.
        self.url: str = target.base if target is not None else str(env_url)
        self.endpoint: str = self.url + REPORTS_PATH
        self._target = target
        self._resolver = _Resolver(target.host, target.port) if target is not None else None
        self.rank: int = rank_value if rank_value is not None else 0
        self.local_rank: int | None = local_rank_value
        self.world_size: int | None = world_size_value
        self.pid: int = os.getpid()
        self.gpus: list[int | str] | None = _check_gpus(gpus)
        #: Where ``gpus`` came from: "gpus" (the argument), the environment variable(s) the device of
        #: local_rank was resolved from, or None (not named: the agent uses pid, then local_rank).
        self.gpus_source: str | None = "gpus" if self.gpus is not None else None
        if gpus is None:  # ``gpus=[]`` names nothing and asks for no resolution either
            self.gpus, self.gpus_source, visible_warning = _env_gpus(local_rank_value)
            if visible_warning is not None:
                _warn_visible_once(visible_warning)
        self.labels: dict[str, str] = checked_labels
        self.interval: float = float(interval)
        self.timeout: float = float(timeout)
        self.max_backoff: float = max(float(max_backoff), self.interval)
        if token is not None and not isinstance(token, str):
            raise ValueError("mfu_agent.client: token must be a string")
        self._token: str | None = _read_token(token)

        self._d_model = _per_step("flops_per_step", flops_per_step, dtype)
        self._d_hw = _per_step("hardware_flops_per_step", hardware_flops_per_step, dtype)
        self._d_tokens = _default_per_step("tokens_per_step", tokens_per_step)
        self._d_samples = _default_per_step("samples_per_step", samples_per_step)
        if job_flops_per_step is not None or job_tokens_per_step is not None:
            # The whole job's step, shared evenly: right under any mix of data, tensor, pipeline,
            # context and expert parallelism, since every rank takes part in every step.
            if flops_per_step is not None or (
                job_tokens_per_step is not None and tokens_per_step is not None
            ):
                raise ValueError(
                    "mfu_agent.client: pass job_flops_per_step (the whole job's step) or flops_per_step "
                    "(this rank's share), not both; likewise job_tokens_per_step and tokens_per_step"
                )
            if world_size_value is None:
                raise ValueError(
                    "mfu_agent.client: job_flops_per_step / job_tokens_per_step need the world size to share "
                    "the job's step among its ranks: pass world_size=... or set WORLD_SIZE"
                )
            job_model = _per_step("job_flops_per_step", job_flops_per_step, dtype)
            if job_model is not None:
                self._d_model = {dt: amount / world_size_value for dt, amount in job_model.items()}
            job_tokens = _default_per_step("job_tokens_per_step", job_tokens_per_step)
            if job_tokens is not None:
                self._d_tokens = job_tokens / world_size_value
        # The rank's precision: the dtype label of its non-FLOP series; with a mapping, the fastest
        # dtype in it unless ``dtype`` names one of its keys.
        if self._d_model is not None and not (dtype_given and dtype in self._d_model):
            if dtype_given:
                raise ValueError(
                    f"mfu_agent.client: dtype {dtype} is not one of the dtypes the FLOPs per step name "
                    f"({', '.join(self._d_model)})"
                )
            dtype = next(dt for dt in DTYPES if dt in self._d_model)
            self.dtype = dtype
        self.instance: str = secrets.token_hex(8)

        # Static part of every report.
        static: dict[str, Any] = {
            "job_id": self.job_id,
            "rank": self.rank,
            "pid": self.pid,
            "instance": self.instance,
            "interval": self.interval,
            "dtype": dtype,
        }
        if self.local_rank is not None:
            static["local_rank"] = self.local_rank
        if self.world_size is not None:
            static["world_size"] = self.world_size
        if self.gpus is not None:
            static["gpus"] = list(self.gpus)
        if self.labels:
            static["labels"] = dict(self.labels)
        #: The step training resumed from (a checkpoint's), or None: reported steps count on from it.
        self.start_step: int | None = start_step_value
        if start_step_value is not None:
            static["start_step"] = start_step_value
        self._static = static
        self._step_base = start_step_value or 0

        # --- hot-path state: plain numbers behind one short lock --------------------------------
        self._lock = threading.Lock()
        self._model: dict[str, float] = dict.fromkeys(self._d_model or {dtype: 0.0}, 0.0)
        self._hw: dict[str, float] = dict.fromkeys(self._d_hw or {}, 0.0)
        self._tokens = 0.0
        self._samples = 0.0
        self._steps = 0
        self._ts = time.time()
        # Optional counters are reported once they were ever given (as a default or per step).
        self._has_tokens = self._d_tokens is not None
        self._has_samples = self._d_samples is not None
        # The defaults step() adds when called without arguments.
        self._add_model = tuple((self._d_model or {}).items())
        self._add_hw = tuple((self._d_hw or {}).items())
        self._add_tokens = self._d_tokens or 0.0
        self._add_samples = self._d_samples or 0.0
        # Phases (guarded by _lock): seconds per phase name, and the open phases, innermost last.
        self._phase_seconds: dict[str, float] = {}
        self._open_phases: list[list[Any]] = []  # [name, time.monotonic() it started or resumed]

        # --- sender state (guarded by _send_lock) ---------------------------------------------
        self._send_lock = threading.Lock()
        self._failures = 0  # consecutive failed attempts (backoff exponent)
        self._retry_after: float | None = None
        self._logged: set[str] = set()  # failure kinds already logged during this outage
        self._arg_logged: set[str] = set()  # bad step() arguments already logged
        self._rng = random.Random()
        self._stats = {"posts_ok": 0, "posts_failed": 0, "reports_dropped": 0}
        self._failure_kinds: dict[str, int] = {}
        self._last_failure: str | None = None
        self._last_error: str | None = None
        self._last_status: int | None = None
        self._disabled = disabled
        self._final_report: str | None = None

        self._closed = False
        self._close_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_sender_loop,
            args=(weakref.ref(self), self._stop),
            name=f"mfu-agent-reporter-{self.job_id}-{self.rank}",
            daemon=True,
        )
        if disabled is not None:
            logger.error(
                "%s. Reporting is off for this process (job %s rank %d): nothing is sent to the agent; "
                "training is not affected.",
                disabled,
                self.job_id,
                self.rank,
            )
            return
        self._thread.start()
        _register_for_exit(self)

    # ------------------------------------------------------------------------------------------
    # hot path
    # ------------------------------------------------------------------------------------------
    def step(
        self,
        model_flops: float | Mapping[str, float] | None = None,
        tokens: float | None = None,
        hardware_flops: float | Mapping[str, float] | None = None,
        samples: float | None = None,
    ) -> None:
        """Count one optimizer step. Adds the given amounts (or the per-step defaults).

        ``model_flops`` and ``hardware_flops`` are a number (in the reporter's dtype) or a
        ``{dtype: FLOPs}`` mapping. Never blocks on I/O and never raises; a bad amount (negative,
        NaN, not a number, unknown dtype) is logged once and ignored, the step itself is still counted.
        """
        try:
            if (
                model_flops is None
                and tokens is None
                and hardware_flops is None
                and samples is None
                and self._d_model is not None
            ):
                now = time.time()
                with self._lock:
                    model, hw = self._model, self._hw
                    for dt, amount in self._add_model:
                        model[dt] += amount
                    for dt, amount in self._add_hw:
                        hw[dt] += amount
                    self._tokens += self._add_tokens
                    self._samples += self._add_samples
                    self._steps += 1
                    self._ts = now
                return
            if model_flops is None and self._d_model is None:
                self._log_arg_once(
                    "no_flops",
                    "mfu_agent.client: step() without model_flops on a Reporter without flops_per_step "
                    "counts 0 model FLOPs; MFU will read 0",
                )
            mf = self._add_model if model_flops is None else self._flops("model_flops", model_flops)
            hf = self._add_hw if hardware_flops is None else self._flops("hardware_flops", hardware_flops)
            tk = self._add_tokens if tokens is None else self._amount("tokens", tokens)
            sm = self._add_samples if samples is None else self._amount("samples", samples)
            now = time.time()
            with self._lock:
                for dt, amount in mf:
                    self._model[dt] = self._model.get(dt, 0.0) + amount
                for dt, amount in hf:
                    self._hw[dt] = self._hw.get(dt, 0.0) + amount
                self._tokens += tk
                self._samples += sm
                self._steps += 1
                self._ts = now
                if tokens is not None:
                    self._has_tokens = True
                if samples is not None:
                    self._has_samples = True
        except Exception as exc:  # pragma: no cover - defensive: step() must never raise
            self._log_arg_once("step", f"mfu_agent.client: step() failed and was ignored: {exc!r}")

    def _flops(self, name: str, value: object) -> tuple[tuple[str, float], ...]:
        if isinstance(value, Mapping):
            amounts = []
            for key, amount in value.items():
                try:
                    dt = normalize_dtype(key)
                except ValueError:
                    self._log_arg_once(
                        name, f"mfu_agent.client: step({name}=...) names unknown dtype {key!r}; ignored"
                    )
                    continue
                amounts.append((dt, self._amount(name, amount)))
            return tuple(amounts)
        return ((self.dtype, self._amount(name, value)),)

    def _amount(self, name: str, value: object) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if 0.0 <= number < math.inf and not isinstance(value, bool):
            return number
        self._log_arg_once(
            name, f"mfu_agent.client: step({name}={value!r}) is not a finite number >= 0; ignored"
        )
        return 0.0

    def _log_arg_once(self, kind: str, message: str) -> None:
        try:
            if kind not in self._arg_logged:
                self._arg_logged.add(kind)
                logger.warning(message + " (logged once)")
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------------------------------
    # phases
    # ------------------------------------------------------------------------------------------
    def phase(self, name: str) -> _Phase:
        """``with reporter.phase("checkpoint"):`` marks the time inside as that phase, not training.

        ``name``: ``"checkpoint"``, ``"eval"``, ``"data_wait"``, or up to 4 names of your own
        (``[a-z][a-z0-9_]``, at most 32 characters); any other name is logged once and counted as
        ``"other"``. Never raises. Nested phases: the time counts to the innermost one. The seconds are
        sent, as cumulative counters, with the next report (a phase still open counts up to the moment of
        the report).
        """
        try:
            return _Phase(self, self._phase_name(name))
        except Exception as exc:  # pragma: no cover - defensive: never raise into training
            self._log_arg_once("phase", f"mfu_agent.client: phase() failed: {exc!r}")
            return _Phase(self, OTHER_PHASE)

    def _phase_name(self, name: object) -> str:
        if name in PHASES or name == OTHER_PHASE:
            return name  # type: ignore[return-value]
        if not isinstance(name, str) or not PHASE_NAME_RE.fullmatch(name):
            self._log_arg_once(
                f"phase:{name!r}"[:80],
                f"mfu_agent.client: phase name {name!r} is not 1..32 characters of [a-z0-9_] starting with a "
                f"letter; counted as {OTHER_PHASE!r}",
            )
            return OTHER_PHASE
        with self._lock:
            if name in self._phase_seconds:
                return name
            own = sum(1 for n in self._phase_seconds if n not in PHASES and n != OTHER_PHASE)
            if own < MAX_USER_PHASES:
                self._phase_seconds[name] = 0.0
                return name
        self._log_arg_once(
            "phase:too_many",
            f"mfu_agent.client: phase {name!r} counted as {OTHER_PHASE!r}: at most {MAX_USER_PHASES} phase "
            f"names of your own besides {', '.join(PHASES)}",
        )
        return OTHER_PHASE

    def _enter_phase(self, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            seconds, open_phases = self._phase_seconds, self._open_phases
            if open_phases:  # pause the enclosing phase
                outer = open_phases[-1]
                seconds[outer[0]] = seconds.get(outer[0], 0.0) + (now - outer[1])
            open_phases.append([name, now])
            seconds.setdefault(name, 0.0)

    def _exit_phase(self, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            seconds, open_phases = self._phase_seconds, self._open_phases
            if not open_phases or open_phases[-1][0] != name:
                return  # phases closed out of order (threads): nothing to count safely
            _, started = open_phases.pop()
            seconds[name] = seconds.get(name, 0.0) + (now - started)
            if open_phases:  # resume the enclosing phase
                open_phases[-1][1] = now

    def _phases_now(self) -> dict[str, float]:
        """Cumulative seconds per phase, the open one up to now. Caller holds ``_lock``."""
        seconds = dict(self._phase_seconds)
        if self._open_phases:
            name, started = self._open_phases[-1]
            seconds[name] = seconds.get(name, 0.0) + max(0.0, time.monotonic() - started)
        return seconds

    # ------------------------------------------------------------------------------------------
    # read-only views
    # ------------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Optimizer steps counted so far."""
        return self._steps

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> dict[str, Any]:
        """The report that would be posted now (a fresh dict)."""
        with self._lock:
            model, hw, tokens, samples = dict(self._model), dict(self._hw), self._tokens, self._samples
            steps, ts = self._steps, self._ts
            has_tokens, has_samples = self._has_tokens, self._has_samples
            phases = self._phases_now() if self._phase_seconds else None
        report = dict(self._static)
        report["model_flops_total"] = self._flops_form(model)
        if hw:
            report["hardware_flops_total"] = self._flops_form(hw)
        if has_tokens:
            report["tokens_total"] = _count(tokens)
        if has_samples:
            report["samples_total"] = _count(samples)
        report["step"] = self._step_base + steps
        report["timestamp"] = ts
        if phases:
            report["phase_seconds_total"] = phases
        return report

    def _flops_form(self, amounts: dict[str, float]) -> float | dict[str, float]:
        # One dtype, the reporter's own: the plain number form every agent version understands.
        if len(amounts) == 1 and self.dtype in amounts:
            return amounts[self.dtype]
        return amounts

    @property
    def stats(self) -> dict[str, Any]:
        """Delivery statistics.

        ``posts_ok``, ``posts_failed``, ``reports_dropped``; ``consecutive_failures``;
        ``last_status`` (HTTP status of the last answer), ``last_error`` and ``last_failure`` (the
        kind of the last failed post: "dns", "connection", "timeout", "server_error", ...; both None
        after a success); ``failures_by_kind`` (failed posts per kind, since start);
        ``final_report`` (None until :meth:`close`, then "delivered", "failed" or "skipped");
        ``disabled`` (None, or why this reporter sends nothing: an unusable MFU_AGENT_URL).
        """
        # Read without the send lock (a post may be in flight); each value is read atomically.
        stats: dict[str, Any] = dict(self._stats)
        stats["consecutive_failures"] = self._failures
        stats["last_status"] = self._last_status
        stats["last_error"] = self._last_error
        stats["last_failure"] = self._last_failure
        stats["failures_by_kind"] = dict(self._failure_kinds)
        stats["final_report"] = self._final_report
        stats["disabled"] = self._disabled
        return stats

    # ------------------------------------------------------------------------------------------
    # delivery
    # ------------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Post the current cumulative state now, in the calling thread, and wait for the answer.

        Returns True when the agent accepted it. Waits at most ``timeout`` seconds (default: the
        reporter's HTTP timeout) for the post, DNS lookup included, plus up to as long again for a
        post the background thread may have in flight. Never raises.
        """
        try:
            limit = self.timeout if timeout is None else float(timeout)
            if not (limit > 0) or self._disabled is not None:
                return False
            if not self._send_lock.acquire(timeout=min(limit, threading.TIMEOUT_MAX)):
                return False
            try:
                return self._post_locked(time.monotonic() + limit)
            finally:
                self._send_lock.release()
        except Exception as exc:  # pragma: no cover - defensive
            self._log_arg_once("flush", f"mfu_agent.client: flush() failed: {exc!r}")
            return False

    def close(self, timeout: float | None = None) -> None:
        """Deliver the final totals as the final report (``"final": true``) and stop the sender
        thread. Idempotent.

        Returns within ``timeout`` seconds (default: the HTTP timeout, at most 2 s) whatever the
        network does: waiting for a post in flight, the DNS lookup, connecting and the answer all
        share that one deadline. The final report is tried once: if it fails (or there is no time
        left for it) nothing more is sent; ``stats["final_report"]`` says what happened.
        """
        try:
            with self._close_lock:
                if self._closed:
                    return
                self._closed = True
            self._stop.set()
            limit = min(self.timeout, 2.0) if timeout is None else float(timeout)
            deadline = time.monotonic() + (min(limit, threading.TIMEOUT_MAX) if limit > 0 else 0.0)
            self._send_final(deadline)
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
            _live.discard(self)
        except Exception as exc:  # pragma: no cover - defensive
            self._log_arg_once("close", f"mfu_agent.client: close() failed: {exc!r}")

    def _send_final(self, deadline: float) -> None:
        """One final report, by ``deadline``. Sent even when no step was counted: the agent can then
        drop a rank that only registered."""
        if self._disabled is not None:
            self._final_report = "skipped"
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # close(timeout=0): asked not to wait
            self._final_report = "skipped"
            return
        if not self._send_lock.acquire(timeout=remaining):
            self._final_report = "skipped"
            logger.warning(
                "mfu_agent.client: no final report (job %s rank %d): a report was still in flight when "
                "close()'s timeout ran out; the agent drops the rank once it stays silent",
                self.job_id,
                self.rank,
            )
            return
        try:
            self._final_report = "delivered" if self._post_locked(deadline, final=True) else "failed"
        finally:
            self._send_lock.release()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Reporter(job_id={self.job_id!r}, rank={self.rank}, url={self.url!r}, "
            f"steps={self._steps}, closed={self._closed})"
        )

    # --- sender thread ------------------------------------------------------------------------
    def _next_delay(self) -> float:
        with self._send_lock:
            failures, retry_after = self._failures, self._retry_after
        if failures == 0:
            return self.interval
        backoff = min(self.max_backoff, self.interval * (2.0 ** min(failures, 30)))
        delay = backoff * self._rng.uniform(0.5, 1.0)  # jitter: ranks do not retry in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _send_scheduled(self) -> None:
        try:
            with self._send_lock:
                if not self._stop.is_set():  # close() sends the final report instead
                    self._post_locked(time.monotonic() + self.timeout)
        except Exception as exc:  # pragma: no cover - the sender thread must never die
            self._log_arg_once("sender", f"mfu_agent.client: sender error: {exc!r}")

    def _post_locked(self, deadline: float, final: bool = False) -> bool:
        """One POST of the latest state, every step of it over by ``deadline`` (time.monotonic()).
        Caller holds ``_send_lock``."""
        if self._target is None or self._resolver is None:
            return False
        report = self.snapshot()
        if final:
            report["final"] = True
        body = json.dumps([report], separators=(",", ":"), allow_nan=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "mfu-agent-client"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            status, retry_header, detail = _exchange(self._target, self._resolver, body, headers, deadline)
        except _DnsTimeout as exc:
            return self._failed("dns", str(exc), None, None)
        except socket.gaierror as exc:
            return self._failed("dns", f"cannot resolve {self._target.host!r}: {exc}", None, None)
        except TimeoutError as exc:
            return self._failed("timeout", f"{type(exc).__name__}: {exc}", None, None)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return self._failed("connection", f"{type(exc).__name__}: {exc}", None, None)
        except Exception as exc:  # pragma: no cover - anything else http.client may throw
            return self._failed("error", repr(exc), None, None)
        if 200 <= status < 300:
            self._succeeded(status)
            return True
        if final and status in (400, 422) and "final" in detail and time.monotonic() < deadline:
            # An agent older than the "final" field refuses it: send the final totals without it.
            if "old_agent" not in self._arg_logged:
                self._arg_logged.add("old_agent")
                logger.info(
                    "mfu_agent.client: the agent at %s does not know the report field 'final'; the final "
                    "totals are sent without it (the agent drops the rank once it stays silent)",
                    self.endpoint,
                )
            return self._post_locked(deadline, final=False)
        retry_after = _parse_retry_after(retry_header)
        return self._failed(_status_kind(status), f"HTTP {status}{detail}", status, retry_after)

    def _succeeded(self, status: int) -> None:
        self._stats["posts_ok"] += 1
        self._last_status = status
        if self._logged:
            logger.info(
                "mfu_agent.client: reports to %s are delivered again "
                "(job %s rank %d, after %d failed attempts)",
                self.endpoint,
                self.job_id,
                self.rank,
                self._failures,
            )
            self._logged.clear()
        self._failures = 0
        self._retry_after = None
        self._last_error = None
        self._last_failure = None

    def _failed(self, kind: str, detail: str, status: int | None, retry_after: float | None) -> bool:
        self._stats["posts_failed"] += 1
        self._failure_kinds[kind] = self._failure_kinds.get(kind, 0) + 1
        self._last_failure = kind
        self._last_status = status
        self._last_error = detail
        if kind == "conflict":
            # Another process owns this (job_id, rank). Nothing of ours was counted; keep posting at
            # the normal pace so the rank is taken over as soon as the agent hands it over.
            self._stats["reports_dropped"] += 1
            message = (
                "the agent refused this rank: another process reports the same job_id and rank (pass a "
                "distinct rank= or set RANK per process); retrying at the normal pace"
            )
        elif kind == "rejected":
            # The agent says this report is bad: drop it and carry on at the normal pace (the
            # next report carries newer cumulative totals anyway). No backoff, no early retry.
            self._stats["reports_dropped"] += 1
            message = "the agent rejected a report and it was dropped"
        else:
            self._failures += 1
            self._retry_after = retry_after
            message = {
                "unauthorized": "the agent refused the token (check MFU_AGENT_TOKEN); retrying with backoff",
                "over_capacity": "the agent is over capacity; retrying with backoff",
                "server_error": "the agent failed; retrying with backoff",
                "timeout": "the agent did not answer in time; retrying with backoff",
                "connection": "cannot reach the agent; retrying with backoff",
                "dns": "cannot resolve the agent's host name in time; retrying with backoff",
            }.get(kind, "reporting failed; retrying with backoff")
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(
                "mfu_agent.client: %s (%s; POST %s, job %s rank %d). Training is not affected; "
                "counters keep accumulating. Logged once until delivery recovers.",
                message,
                detail,
                self.endpoint,
                self.job_id,
                self.rank,
            )
        return False


class _Phase:
    """The context manager :meth:`Reporter.phase` returns; exceptions inside pass through."""

    __slots__ = ("_name", "_reporter")

    def __init__(self, reporter: Reporter, name: str) -> None:
        self._reporter = reporter
        self._name = name

    def __enter__(self) -> _Phase:
        with contextlib.suppress(Exception):  # never raise into training
            self._reporter._enter_phase(self._name)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self._reporter._exit_phase(self._name)


def _status_kind(status: int) -> str:
    if status in _NO_RETRY_STATUS:
        return "rejected"
    if status == 409:
        return "conflict"
    if status == 401 or status == 403:
        return "unauthorized"
    if status == 429:
        return "over_capacity"
    if status >= 500:
        return "server_error"
    return "http_error"


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < math.inf else None


def _register_for_exit(reporter: Reporter) -> None:
    global _atexit_registered
    _live.add(reporter)
    if not _atexit_registered:
        with _atexit_lock:
            if not _atexit_registered:
                atexit.register(_close_all_at_exit)
                _atexit_registered = True
