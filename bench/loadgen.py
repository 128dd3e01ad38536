"""Loopback load generator for POST /v1/reports, run in its own process:

    python -m bench.loadgen --port 8469 --batch 1 --concurrency 16 --seconds 10

Raw HTTP/1.1 keep-alive over asyncio streams, `concurrency` connections each with one request in
flight. A Python HTTP client library (httpx) costs more CPU per request than the server under test
does, and on a 2-core machine the generator would then measure itself; this one spends a few µs per
request. Every response is read whole; its status is counted (non-2xx and connection errors are
reported, never hidden). Bounded in time (--seconds after --warmup) and in count (--max-requests).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from .common import summary


def _report(job: int, rank: int, n_gpus: int, progress: float, now: float) -> dict:
    steps = int(progress * 2)
    return {
        "job_id": f"load-{job}",
        "rank": rank,
        "local_rank": rank % n_gpus,
        "world_size": 1024,
        "pid": 200_000 + rank,
        "gpus": [rank % n_gpus],
        "dtype": "bf16",
        "model_flops_total": 4e14 * progress,
        "hardware_flops_total": 5e14 * progress,
        "tokens_total": 8192 * steps,
        "samples_total": 4 * steps,
        "step": steps,
        "timestamp": now,
        "labels": {"pod": f"trainer-{job}-{rank}", "namespace": "ml", "hostname": "node-1"},
    }


class Worker:
    """One connection; owns its ranks, so every rank's counters only ever grow."""

    def __init__(self, index: int, args: argparse.Namespace) -> None:
        self.index = index
        self.args = args
        self.ranks = [index * args.batch + i for i in range(args.batch)] if args.batch > 1 else [index]
        self.progress = 0.0

    def body(self) -> bytes:
        self.progress += 0.5
        now = time.time()
        reports = [_report(self.index, r, self.args.gpus, self.progress, now) for r in self.ranks]
        payload = reports if self.args.batch > 1 else reports[0]
        return json.dumps(payload, separators=(",", ":")).encode()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes
) -> int:
    writer.write(
        b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _run(args: argparse.Namespace) -> dict:
    workers = [Worker(i, args) for i in range(args.concurrency)]
    started = time.perf_counter()
    measure_from = started + args.warmup
    stop_at = measure_from + args.seconds
    counts = {"requests": 0, "reports": 0, "non2xx": 0, "errors": 0, "warmup_requests": 0}
    statuses: dict[int, int] = {}
    latencies: list[int] = []
    first_error: list[str] = []

    async def work(worker: Worker) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except OSError as exc:
            counts["errors"] += 1
            first_error.append(repr(exc))
            return
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at or counts["requests"] >= args.max_requests:
                    return
                body = worker.body()
                t0 = time.perf_counter_ns()
                try:
                    status = await _exchange(reader, writer, args.port, body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    counts["errors"] += 1
                    if not first_error:
                        first_error.append(repr(exc))
                    return
                elapsed = time.perf_counter_ns() - t0
                if now < measure_from:
                    counts["warmup_requests"] += 1
                    continue
                counts["requests"] += 1
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    counts["reports"] += len(worker.ranks)
                else:
                    counts["non2xx"] += 1
                latencies.append(elapsed)
        finally:
            writer.close()

    await asyncio.gather(*(work(w) for w in workers))
    measured = min(time.perf_counter(), stop_at) - measure_from
    return {
        **counts,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": measured,
        "requests_per_s": counts["requests"] / measured if measured > 0 else 0.0,
        "reports_per_s": counts["reports"] / measured if measured > 0 else 0.0,
        "latency_ns": summary(latencies),
        "first_error": first_error[0] if first_error else None,
        "batch": args.batch,
        "concurrency": args.concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1, help="reports per request (1: a single object)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
