"""The HTTP server: uvicorn with limits that keep /metrics and /healthz answering under abuse.

uvicorn's own h11 protocol closes an idle connection only after a response (`timeout_keep_alive`) and
has no deadline for a request's headers or body, so a client that opens connections and sends nothing,
or a byte at a time, holds them forever, and with them the process's file descriptors. Its
`limit_concurrency` counts open connections, so idle connections alone make it answer 503 to the
scraper. Here instead:

* every connection must deliver a request's headers within `header_timeout` of being opened or of its
  previous response, and finish that request (body in, response out) within `request_timeout`;
  an idle connection with no byte at all is closed after the keep-alive timeout;
* at most `max_connections` connections are kept (below the open-file limit, which is raised to its
  hard limit at start): a new connection over it closes the longest-idle one (idle: no request in
  progress, which includes a request whose headers are still arriving), so a prober always gets in;
* accept() errors for lack of file descriptors are logged once a minute, not once per try.

The address is bound before anything else starts (`listen_sockets`), so a busy port is one line and no
"startup complete" before it. uvicorn logs through the process's own handler and format (logs.py). A
signal that stops the server is not raised again once it has shut down (uvicorn would, and the process
would die of it with a traceback or -15): Ctrl-C and SIGTERM are a clean stop, exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("mfu_agent.server")

HEADER_TIMEOUT = 10.0  # seconds from connect (or the previous response) to a request's last header byte
REQUEST_TIMEOUT = 30.0  # seconds from a request's headers to the end of its response
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle connection is kept (uvicorn's default)
MAX_CONNECTIONS = 4096  # about 5 KiB of memory each while idle
FD_RESERVE = 64  # file descriptors left for everything but client connections (NVML, files)
# asyncio accepts up to `backlog` connections at each wake-up, and a connection pushed out to make room
# gives its descriptor back only a few wake-ups later: accepting few at a time keeps that overshoot
# small, and ACCEPT_HEADROOM descriptors cover it. The kernel still queues LISTEN_BACKLOG connections.
ACCEPT_BATCH = 16
ACCEPT_HEADROOM = 8 * ACCEPT_BATCH
LISTEN_BACKLOG = 1024
MAX_HEADER_BYTES = 16 * 1024  # a request's headers; more gets 400 (h11's default, made explicit)
WARN_EVERY = 60.0


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT


def raise_open_file_limit() -> int | None:
    """Raises the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover (not POSIX)
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.debug("open-file limit %s (hard limit %s)", soft, hard)
        return soft if soft != resource.RLIM_INFINITY else None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.info("open-file limit stays at %d: cannot raise it to %d (%s)", soft, target, exc)
        return soft
    log.info("open-file limit raised from %d to its hard limit %d", soft, target)
    return target


def limits_for(open_files: int | None) -> Limits:
    """The connection cap for an open-file limit: MAX_CONNECTIONS, or fewer where the limit is low."""
    if open_files is None:
        return Limits()
    return Limits(max_connections=max(8, min(MAX_CONNECTIONS, open_files - FD_RESERVE - ACCEPT_HEADROOM)))


class _Shared:
    """State shared by the connections of one server."""

    def __init__(self) -> None:
        self.idle: dict[GuardedH11Protocol, None] = {}  # insertion order: longest idle first
        self.live = 0  # open connections not already being closed to make room
        self.last_warning = -WARN_EVERY


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a header deadline and a request deadline."""

    limits = Limits()

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        shared = getattr(server_state, "mfu_shared", None)
        if shared is None:
            shared = server_state.mfu_shared = _Shared()
        self._shared: _Shared = shared
        self._deadline: asyncio.TimerHandle | None = None
        self._seen_cycle: Any = None
        self._evicted = False

    # -- connection life ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._shared.live += 1
        self._become_idle()
        self._make_room()
        if self._evicted:
            return
        self._arm(self.limits.header_timeout)
        # A connection that never sends a byte is idle like one between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._evicted:
            self._shared.live -= 1
            self._evicted = True
        self._shared.idle.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            # A request's headers are complete: it is in progress until its response is.
            self._seen_cycle = self.cycle
            self._shared.idle.pop(self, None)
            self._arm(self.limits.request_timeout)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._become_idle()
            self._arm(self.limits.header_timeout)
        super().on_response_complete()

    # -- limits ------------------------------------------------------------------------------------

    def _become_idle(self) -> None:
        self._shared.idle.pop(self, None)
        self._shared.idle[self] = None

    def _make_room(self) -> None:
        shared = self._shared
        excess = shared.live - self.limits.max_connections
        if excess <= 0:
            return
        now = time.monotonic()
        if now - shared.last_warning >= WARN_EVERY:
            shared.last_warning = now
            log.warning(
                "%d connections open, the limit is %d: closing the longest-idle ones (logged once a minute)",
                shared.live,
                self.limits.max_connections,
            )
        while excess > 0:
            oldest = next(iter(shared.idle), None)
            if oldest is None or oldest is self:
                break
            oldest._evict()
            excess -= 1
        if excess > 0:  # every other connection is in the middle of a request
            self._evict()

    def _evict(self) -> None:
        if not self._evicted:
            self._evicted = True
            self._shared.live -= 1
        self._shared.idle.pop(self, None)
        self._disarm()
        self.transport.abort()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        log.debug("closing connection from %s: deadline passed", self.client)
        # abort(), not close(): close() waits to flush what a client that never reads would never take.
        self.transport.abort()


def protocol_for(limits: Limits) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        # asyncio logs this with a traceback at every retry of accept(): megabytes a minute.
        now = time.monotonic()
        last = getattr(loop, "_mfu_last_accept_warning", -WARN_EVERY)
        if now - last >= WARN_EVERY:
            loop._mfu_last_accept_warning = now  # type: ignore[attr-defined]
            log.warning("cannot accept connections: %s (logged once a minute)", exc.strerror or exc)
        return
    loop.default_exception_handler(context)


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for host:port, one per address the host has, as asyncio's create_server would
    bind them (SO_REUSEADDR; IPv6 sockets IPv6 only). Raises OSError (socket.gaierror for a host name
    that does not resolve) with nothing left open."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, less raising the signal again after the graceful shutdown."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stopping = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stopping}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def serve(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(_loop_exception_handler)
        await super().serve(sockets)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        # uvicorn gives asyncio's accept batch to listen() as well: queue more in the kernel.
        for server in getattr(self, "servers", []):
            for listener in server.sockets or ():
                with listener.dup() as sock:
                    sock.listen(LISTEN_BACKLOG)


def make_server(app: Any, host: str, port: int, log_level: str, limits: Limits | None = None) -> Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=None,  # its loggers propagate to the process's handler (logs.configure_logging)
        http=protocol_for(limits or Limits()),
        ws="none",
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=10,
        backlog=ACCEPT_BATCH,
    )
    return Server(config)
