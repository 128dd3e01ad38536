"""Which container holds each GPU and MIG device: the kubelet's PodResources List, cached and refreshed.

A thread of its own calls List every REFRESH_SECONDS (sooner when a lookup misses, at most every
RETRY_SECONDS), with a deadline of a few seconds; nothing that samples the GPUs or serves a scrape ever
waits on the kubelet. When List fails the last good answer is kept for KEEP_SECONDS, then dropped: past
that, devices have no names rather than names that may be out of date.

Device ids: the NVIDIA device plugin names devices by GPU and MIG UUID (`GPU-<uuid>`, `MIG-<uuid>`),
for any resource name (`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, renamed or `.shared` resources).
With time-slicing each replica is `<uuid>::<n>`, so one GPU may be held by several containers: that GPU
has several holders and the caller must not pick one. Ids of other forms (a device plugin run with
`deviceIDStrategy: index`, other vendors' devices) cannot be matched to a device and are ignored.

No socket (not on Kubernetes, or not mounted): the source is off, said once at info level, and the socket
is looked for again at each refresh. A socket seen once and then gone (the kubelet restarting) counts as
an error, and so does one the agent may not connect to: the kubelet creates the socket and its directory
root-only, so connecting takes root (connect() on a unix socket needs write access to it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..logs import RepeatedLog

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0
RETRY_SECONDS = 5.0
KEEP_SECONDS = 120.0
TIMEOUT_SECONDS = 2.0

_HEX = "[0-9a-fA-F]"
_UUID = rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# A GPU or MIG UUID, with the device plugin's time-slicing replica suffix "::<n>" when there is one.
DEVICE_ID = re.compile(rf"^(?P<uuid>(?:GPU|MIG)-{_UUID})(?:::[0-9]+)?$")


@dataclass(frozen=True, slots=True, order=True)
class KubeNames:
    namespace: str
    pod: str
    container: str


def device_uuid(device_id: str) -> str | None:
    """The GPU or MIG UUID a kubelet device id names, or None when it names none."""
    match = DEVICE_ID.match(device_id.strip())
    return match.group("uuid") if match else None


def holders_by_device(allocations: Iterable) -> tuple[dict[str, frozenset[KubeNames]], int]:
    """uuid -> the containers holding it, and how many ids of NVIDIA resources (nvidia.com/...) could not
    be read as a UUID (other vendors' devices are no concern of ours)."""
    found: dict[str, set[KubeNames]] = {}
    unmatched = 0
    for a in allocations:
        uuid = device_uuid(a.device_id)
        if uuid is None:
            unmatched += a.resource_name.startswith("nvidia.com/")
            continue
        found.setdefault(uuid, set()).add(KubeNames(a.namespace, a.pod, a.container))
    return {uuid: frozenset(names) for uuid, names in found.items()}, unmatched


def error_kind(exc: BaseException) -> str:
    """A bounded label for a failed List: the gRPC status code (unavailable, deadline_exceeded, ...),
    bad_response for an answer that does not parse, other for anything else."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            name = getattr(code(), "name", None)
        except Exception:  # noqa: BLE001 - a broken exception object still gets a label
            name = None
        if isinstance(name, str) and name:
            return name.lower()
    if type(exc).__name__ == "DecodeError":
        return "bad_response"
    return "other"


class KubeletDevices:
    """Thread-safe. `holders(uuid)` answers from the last good List; `start()` runs the refresher."""

    def __init__(
        self,
        socket_path: str,
        refresh_seconds: float = REFRESH_SECONDS,
        keep_seconds: float = KEEP_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket_path = socket_path
        self.refresh_seconds = refresh_seconds
        self.keep_seconds = keep_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._holders: dict[str, frozenset[KubeNames]] = {}  # swapped whole, never changed in place
        self._lock = threading.Lock()
        self._errors: Counter[str] = Counter()
        self._client = None
        self._seen_socket = False  # the socket existed once: from then on, its absence is an error
        self._said_absent = False
        self._said_unmatched = False
        self._up: bool | None = None  # None: off (no socket yet)
        self._good_at: float | None = None  # clock time of the last good List
        self._last_success: float | None = None  # Unix time of it
        self._tried_at = -float("inf")
        self.generation = 0  # bumped whenever the holders change
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RepeatedLog(log)

    # -- reading ---------------------------------------------------------------------------------

    def holders(self, uuid: str) -> frozenset[KubeNames]:
        return self._holders.get(uuid, frozenset())

    @property
    def active(self) -> bool:
        """True once the socket has been found: then kubelet metrics are exported."""
        return self._up is not None

    def health(self) -> tuple[bool | None, dict[str, int], float | None]:
        """(up: None while off, errors by kind, Unix time of the last good List)."""
        with self._lock:
            return self._up, dict(self._errors), self._last_success

    def series(self) -> int:
        """Series its metrics put on /metrics (metrics/kubelet.py)."""
        with self._lock:
            if self._up is None:
                return 0
            return 2 + len(self._errors)

    def missed(self) -> None:
        """A device with processes has no holder: refresh soon (a pod may have just started)."""
        if self._up is not None and self._clock() - self._tried_at >= RETRY_SECONDS:
            self._wake.set()

    # -- refreshing ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """One List, its answer swapped in; on failure the last good answer is kept or dropped."""
        now = self._clock()
        self._tried_at = now
        problem = _socket_problem(self.socket_path)
        if problem == "permission_denied":
            self._seen_socket = True  # it is there, mounted, and cannot be used: an error to see
            self._failed(
                now,
                problem,
                f"uid {os.geteuid()} may not connect to {self.socket_path} (the kubelet makes it and its "
                "directory root-only; run the agent as root for pod names, see docs/deploy.md)",
            )
            return
        if problem == "no_socket":
            if self._seen_socket:
                self._failed(now, "no_socket", f"the kubelet socket {self.socket_path} is gone")
            elif not self._said_absent:
                self._said_absent = True
                log.info(
                    "no kubelet PodResources socket at %s: pod, namespace and container names are off "
                    "(not on Kubernetes, or the socket is not mounted; pod UIDs still come from cgroups)",
                    self.socket_path,
                )
            return
        self._seen_socket = True
        try:
            if self._client is None:
                from .podresources import PodResourcesClient

                self._client = PodResourcesClient(self.socket_path, self.timeout_seconds)
            listed = self._client.list()
        except Exception as exc:  # noqa: BLE001 - every failure is counted and logged, none stops us
            self._failed(now, error_kind(exc), f"{type(exc).__name__}: {_one_line(exc)}")
            return
        holders, unmatched = holders_by_device(listed)
        if unmatched and not holders and not self._said_unmatched:
            self._said_unmatched = True
            log.warning(
                "the kubelet lists %d nvidia.com device id(s), none of them a GPU or MIG UUID: "
                "GPU processes get no pod names (run the NVIDIA device plugin with deviceIDStrategy=uuid)",
                unmatched,
            )
        with self._lock:
            if self._up is False:
                log.info("kubelet PodResources List answers again")
            if holders != self._holders:
                self._holders = holders
                self.generation += 1
            self._up = True
            self._good_at = now
            self._last_success = self._wall_clock()

    def _failed(self, now: float, kind: str, why: str) -> None:
        with self._lock:
            self._errors[kind] += 1
            self._up = False
            kept = self._good_at is not None and now - self._good_at <= self.keep_seconds
            if not kept and self._holders:
                self._holders = {}
                self.generation += 1
        self._log.log(
            ("kubelet", kind),
            logging.WARNING,
            "kubelet PodResources List failed (%s): %s; %s",
            kind,
            why,
            "keeping the last answer for now" if kept else "GPU processes have no pod names until it answers",
            repeat=f"kubelet PodResources List failures ({kind})",
        )

    def start(self) -> None:
        if not self.socket_path or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kubelet-podresources", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:  # the first refresh always runs, however soon the agent stops
            self.refresh()
            self._log.flush()
            self._wake.wait(self.refresh_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout_seconds + 1)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None


def _socket_problem(path: str) -> str:
    """ "" when `path` can be connected to; else no_socket or permission_denied."""
    try:
        os.stat(path)
    except PermissionError:  # a root-only directory on the way
        return "permission_denied"
    except OSError:
        return "no_socket"
    return "" if os.access(path, os.W_OK) else "permission_denied"  # connect() needs write access


def _one_line(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return " ".join(str(text).split())[:300]
