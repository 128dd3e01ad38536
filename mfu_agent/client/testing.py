"""A fake mfu-agent for tests: a stdlib HTTP server that records the reports it receives.

Standard library only::

    with FakeAgent() as agent:
        reporter = Reporter(job_id="j", flops_per_step=1e12, url=agent.url, interval=0.05)
        reporter.step()
        reporter.close()
        assert agent.latest()["model_flops_total"] == 1e12

``agent.respond_with(status)`` makes it answer every POST with that status (e.g. 503) until
``agent.respond_with(200)``; ``agent.respond_with([401, 401])`` answers the next two POSTs with 401
and then goes back to the default status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeAgent", "ReceivedPost"]


@dataclass
class ReceivedPost:
    """One POST the fake agent received."""

    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON body (None when it was not JSON)
    status: int  # what the fake agent answered
    received_at: float = field(default_factory=time.time)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """The reports in this POST (a batch list, or a single report object)."""
        if isinstance(self.body, list):
            return [r for r in self.body if isinstance(r, dict)]
        if isinstance(self.body, dict):
            return [self.body]
        return []


class FakeAgent:
    """Records POSTs on 127.0.0.1 (``port=0`` picks a free port). Thread safe."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._lock = threading.Condition()
        self._posts: list[ReceivedPost] = []
        self._default_status = 202
        self._scripted: list[int] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                status = agent._next_status()
                payload = json.dumps({"status": status}).encode()
                post = ReceivedPost(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                # Record before answering: once the client has its answer, the post is visible here.
                with agent._lock:
                    agent._posts.append(post)
                    agent._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    def start(self) -> FakeAgent:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
            self._thread.daemon = True
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- behaviour ---
    def respond_with(self, status: int | Iterable[int]) -> None:
        """An int sets the status for every POST; a list scripts the next POSTs' statuses."""
        with self._lock:
            if isinstance(status, int):
                self._default_status = status
                self._scripted = []
            else:
                self._scripted = list(status)

    def _next_status(self) -> int:
        with self._lock:
            return self._scripted.pop(0) if self._scripted else self._default_status

    # --- inspection ---
    @property
    def posts(self) -> list[ReceivedPost]:
        with self._lock:
            return list(self._posts)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Every report received in an accepted (2xx) POST, in order."""
        return [r for p in self.posts if 200 <= p.status < 300 for r in p.reports]

    def latest(self, job_id: str | None = None, rank: int | None = None) -> dict[str, Any] | None:
        """The last accepted report (optionally of one job / rank)."""
        for report in reversed(self.reports):
            if (job_id is None or report.get("job_id") == job_id) and (
                rank is None or report.get("rank") == rank
            ):
                return report
        return None

    def wait_for(self, predicate: Callable[[FakeAgent], bool], timeout: float = 10.0) -> bool:
        """Wait (bounded) until ``predicate(self)`` holds; returns whether it did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if predicate(self):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
