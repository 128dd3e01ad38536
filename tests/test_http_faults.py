"""The HTTP server under abuse, through a real agent process and real sockets (docs/reliability.md):
idle connections past the open-file limit, slowloris headers, slow bodies, over-limit bodies from
clients that write everything before reading, and JSON nested too deep."""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_process import AgentProcess

from mfu_agent.api.reports import MAX_BODY_BYTES, MAX_REPORTS_IN_FLIGHT
from mfu_agent.server import HEADER_TIMEOUT, REQUEST_TIMEOUT

REPORT = {"job_id": "j", "rank": 0, "gpus": [0], "model_flops_total": 1.0}


@contextlib.contextmanager
def open_files(at_least: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE raised to `at_least` for the block (skips if it cannot be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"needs {at_least} open files; the hard limit here is {hard}")
    if soft != resource.RLIM_INFINITY and soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class IdleFlood:
    """Holds `count` connections that never send a byte, opening a new one for each the server closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.selector = selectors.DefaultSelector()
        self.closed_by_server = 0
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        for _ in range(self.count):
            self._open()
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the server closed it: hold another one instead
                    self.selector.unregister(sock)
                    sock.close()
                    self.closed_by_server += 1
                    self._open()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def __enter__(self) -> IdleFlood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_idle_connections_past_the_open_file_limit_do_not_stop_scrapes_or_probes():
    # The agent as a default container or service runs it: 1,024 open files, and no higher hard limit
    # to raise it to. The attacker holds 1,100 idle connections, replacing each one the agent closes.
    agent = AgentProcess(nofile=(1024, 1024))
    with open_files(4096), agent, IdleFlood(agent.port, 1100) as flood:
        deadline = time.monotonic() + 60
        while flood.opened < 1100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flood.opened >= 1100
        answered = []
        for _ in range(10):  # over about five seconds: while idle connections are being replaced
            metrics = httpx.get(agent.url + "/metrics", timeout=30)
            health = httpx.get(agent.url + "/healthz", timeout=30)
            answered.append((metrics.status_code, "mfu_gpu_up" in metrics.text, health.status_code))
            time.sleep(0.5)
        assert answered == [(200, True, 200)] * 10
        assert flood.closed_by_server >= 1100 - 1024, "the agent closed idle connections to make room"
    out = agent.output
    assert "Too many open files" not in out and "Traceback" not in out
    assert out.count("closing the longest-idle ones") == 1, "one warning a minute, not one per connection"
    assert len(out) < 20_000, out[-3000:]


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs a hard open-file limit of 2048; it is {hard} here")
    with AgentProcess(nofile=(512, 2048)) as agent:
        limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
    out = agent.output
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["2048", "2048"], line
    assert "open-file limit raised from 512 to its hard limit 2048" in out


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_headers_and_stalled_bodies_are_cut_off():
    with AgentProcess() as agent:
        opened: dict[socket.socket, float] = {}
        # 100 connections sending their headers a byte every half second, for ever.
        drips = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", agent.port))
            opened[sock] = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
            sock.setblocking(False)
            drips.append(sock)
        # 5 reports whose headers are complete and whose body stops after 10 of its 1,000 bytes.
        stalled = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", agent.port))
            opened[sock] = time.monotonic()
            sock.sendall(
                b"POST /v1/reports HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"job_id":'
            )
            sock.setblocking(False)
            stalled.append(sock)
        started = time.monotonic()
        closed_at: dict[socket.socket, float] = {}
        health = []
        while len(closed_at) < len(drips) + len(stalled) and time.monotonic() - started < 120:
            for sock in drips + stalled:
                if sock in closed_at:
                    continue
                if _closed_by_peer(sock):
                    closed_at[sock] = time.monotonic() - opened[sock]  # how long it was open, at least
                elif sock in drips:
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
            health.append(httpx.get(agent.url + "/healthz", timeout=30).status_code)
            time.sleep(0.5)
        for sock in drips + stalled:
            sock.close()
        assert all(sock in closed_at for sock in drips), "every slowloris connection is closed"
        assert all(sock in closed_at for sock in stalled), "every stalled body is cut off"
        # The deadlines, not something else, closed them: none before its deadline (a lower bound,
        # which a slow machine only makes easier to meet).
        assert min(closed_at[s] for s in drips) >= HEADER_TIMEOUT
        assert min(closed_at[s] for s in stalled) >= REQUEST_TIMEOUT
        assert set(health) == {200}
    out = agent.output
    assert "Traceback" not in out and "ERROR" not in out, out[-3000:]


def test_report_bodies_being_read_at_once_are_bounded_and_the_rest_told_to_retry():
    with AgentProcess() as agent:
        stalled = []
        for _ in range(MAX_REPORTS_IN_FLIGHT):
            sock = socket.create_connection(("127.0.0.1", agent.port))
            sock.sendall(
                b"POST /v1/reports HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"job_id":'
            )
            stalled.append(sock)
        deadline = time.monotonic() + 30
        response = httpx.post(agent.url + "/v1/reports", json=REPORT, timeout=30)
        while response.status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.1)
            response = httpx.post(agent.url + "/v1/reports", json=REPORT, timeout=30)
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert "retry" in response.json()["error"]
        assert httpx.get(agent.url + "/metrics", timeout=30).status_code == 200
        for sock in stalled:
            sock.close()
        deadline = time.monotonic() + 30
        while response.status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
            response = httpx.post(agent.url + "/v1/reports", json=REPORT, timeout=30)
        assert response.status_code == 202, "the slots come back when those clients go away"
    out = agent.output
    assert "Traceback" not in out, out[-3000:]


def _urlopen(url: str, data, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("mib", [4, 8])
def test_an_over_limit_body_written_whole_before_reading_gets_its_413(mib, tmp_path):
    # urllib writes the whole body, then reads the answer, and sends Connection: close.
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    body = json.dumps({**REPORT, "labels": {"pod": "p" * 200}, "pad": "x" * (mib << 20)}).encode()
    assert len(body) > MAX_BODY_BYTES
    with AgentProcess("--report-token-file", str(token)) as agent:
        url = agent.url + "/v1/reports"
        auth = {"Authorization": "Bearer s3cret"}
        status, answer = _urlopen(url, body, auth)  # Content-Length over the limit
        assert (status, answer) == (413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # chunked: no length
        status, answer = _urlopen(url, chunks, auth)
        assert (status, answer) == (413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
        status, answer = _urlopen(url, body, {"Authorization": "Bearer wrong"})  # refused before reading
        assert (status, answer) == (401, {"error": "missing or wrong bearer token"})
        assert _urlopen(url, json.dumps(REPORT).encode(), auth)[0] == 202
    out = agent.output
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_json_nested_too_deep_gets_400(depth):
    with AgentProcess() as agent:
        url = agent.url + "/v1/reports"
        for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
            assert response.status_code == 400, response.text
            assert "nested too deeply" in response.json()["error"]
        # Deep, but within what the JSON parser takes: a field of the wrong type, not a crash.
        deep = {**REPORT, "labels": {"pod": json.loads("[" * 400 + "]" * 400)}}
        response = httpx.post(url, json=deep, timeout=30)
        assert response.status_code == 422 and response.json()["field"] == "labels.pod"
        assert httpx.post(url, json=REPORT, timeout=30).status_code == 202
    out = agent.output
    assert "Traceback" not in out, out[-3000:]


def test_accept_errors_for_want_of_descriptors_are_logged_once_a_minute(caplog):
    # Should the agent still run out of descriptors, asyncio would log each retry of accept() with a
    # traceback (tens of MB a minute); the agent's handler logs one line a minute instead.
    import asyncio
    import errno

    from mfu_agent.server import _loop_exception_handler

    loop = asyncio.new_event_loop()
    passed_on = []
    loop.default_exception_handler = passed_on.append  # type: ignore[method-assign]
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        for _ in range(1000):
            _loop_exception_handler(
                loop, {"message": "socket.accept() out of system resource", "exception": emfile}
            )
        _loop_exception_handler(loop, {"message": "something else", "exception": ValueError("x")})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "mfu_agent.server"]
    assert lines == ["cannot accept connections: Too many open files (logged once a minute)"]
    assert [c["message"] for c in passed_on] == ["something else"], "anything else goes to asyncio's handler"
