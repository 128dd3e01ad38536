"""3. Client overhead: Reporter.step() per call against an empty method call, with the agent up and
down; a tiny CPU torch training loop with and without the reporter; memory with the agent down."""

from __future__ import annotations

import gc
import logging
import random
import statistics
import sys
import time
import tracemalloc

from mfu_agent.client import Reporter

from .common import free_port, rss_bytes, server, summary

BATCH = 1000  # calls timed together: perf_counter_ns itself costs about as much as one step()


class _Empty:
    def step(self) -> None:
        pass

    def step_args(self, model_flops=None, tokens=None, hardware_flops=None, samples=None) -> None:
        pass


def _reporter(url: str, interval: float, max_backoff: float = 60.0) -> Reporter:
    return Reporter(
        job_id="bench-client",
        flops_per_step=6.0 * 1.2e9 * 8192,
        tokens_per_step=8192,
        dtype="bf16",
        url=url,
        rank=0,
        local_rank=0,
        world_size=1,
        gpus=[0],
        interval=interval,
        max_backoff=max_backoff,
        timeout=1.0,
    )


def _per_call_ns(calls: dict, batches: int) -> dict[str, list[float]]:
    """Per-call time of each callable, as the mean over a batch of BATCH calls; batches interleaved."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(batches):
        for name, fn in calls.items():
            started = time.perf_counter_ns()
            for _ in range(BATCH):
                fn()
            out[name].append((time.perf_counter_ns() - started) / BATCH)
    return out


def _step_cost(url: str, batches: int, interval: float, max_backoff: float) -> dict:
    reporter = _reporter(url, interval, max_backoff)
    empty = _Empty()
    try:
        times = _per_call_ns(
            {
                "empty_call": empty.step,
                "step": reporter.step,
                "empty_call_args": lambda: empty.step_args(model_flops=1e15, tokens=8192),
                "step_args": lambda: reporter.step(model_flops=1e15, tokens=8192),
            },
            batches,
        )
        stats = reporter.stats
    finally:
        reporter.close(timeout=0.5)
    result = {name: summary(t) for name, t in times.items()}
    result["step_minus_empty_median_ns"] = result["step"]["median"] - result["empty_call"]["median"]
    result["ratio_to_empty"] = result["step"]["median"] / result["empty_call"]["median"]
    result["ratio_args_to_empty"] = result["step_args"]["median"] / result["empty_call_args"]["median"]
    result["reporter_stats"] = {k: v for k, v in stats.items() if k != "last_error"}
    return result


def _torch_loop(url: str, rounds: int, steps: int) -> dict | None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional for the bench
        return None
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one thread: far less scheduling noise on a small shared machine
    model = torch.nn.Linear(256, 256)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(32, 256)
    reporter = _reporter(url, interval=1.0)

    def block(report: bool) -> float:
        started = time.perf_counter_ns()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            if report:
                reporter.step()
        return (time.perf_counter_ns() - started) / steps

    try:
        for _ in range(3):  # warm up: allocator, autograd graph caches
            block(False)
            block(True)
        arms: dict[str, list[float]] = {"without": [], "with": [], "without_again": []}
        orders = (("without", "with", "without_again"), ("with", "without_again", "without"),
                  ("without_again", "without", "with"))  # fmt: skip
        for i in range(rounds):
            for arm in orders[i % 3]:
                arms[arm].append(block(arm == "with"))
        # step() itself inside the loop, caches as the training step leaves them, against an empty
        # method call timed the same way (the two clock reads are in both).
        empty = _Empty()
        in_loop: dict[str, list[int]] = {"step": [], "empty_call": []}
        for i in range(10 if rounds > 20 else 4):
            for name, call in (("step", reporter.step), ("empty_call", empty.step))[:: 1 if i % 2 else -1]:
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    model(x).pow(2).mean().backward()
                    opt.step()
                    started = time.perf_counter_ns()
                    call()
                    in_loop[name].append(time.perf_counter_ns() - started)
    finally:
        reporter.close(timeout=0.5)
    med = {arm: statistics.median(v) for arm, v in arms.items()}
    base = [(a + b) / 2 for a, b in zip(arms["without"], arms["without_again"], strict=True)]
    paired = [w / b for w, b in zip(arms["with"], base, strict=True)]
    noise = [a / b for a, b in zip(arms["without_again"], arms["without"], strict=True)]
    return {
        "steps_per_block": steps,
        "rounds": rounds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "median_step_ns": med,
        "ratio_with_to_without": med["with"] / ((med["without"] + med["without_again"]) / 2),
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_iqr": [_q(paired, 0.25), _q(paired, 0.75)],
        "a_a_ratio_median": statistics.median(noise),
        "a_a_ratio_iqr": [_q(noise, 0.25), _q(noise, 0.75)],
        "a_a_ratio_p10_p90": [_q(noise, 0.1), _q(noise, 0.9)],
        "in_loop_ns": {name: summary(v) for name, v in in_loop.items()},
        "paired_ratio_median_ci95": _bootstrap_median_ci(paired),
        "a_a_ratio_median_ci95": _bootstrap_median_ci(noise),
    }


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _bootstrap_median_ci(values: list[float], resamples: int = 2000) -> list[float]:
    """95% bootstrap confidence interval of the median (fixed seed: the same data gives the same CI)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def _post_cost(url: str, posts: int) -> dict:
    """One report posted by Reporter.flush(): CPU time of the posting thread, and wall time (which
    includes the agent's answer). The sender thread pays this once per interval (default 5 s)."""
    reporter = _reporter(url, interval=3600.0)
    cpu, wall, ok = [], [], 0
    try:
        reporter.step()
        for _ in range(posts):
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            ok += reporter.flush(timeout=5.0)
            cpu.append(time.thread_time_ns() - c0)
            wall.append(time.perf_counter_ns() - w0)
    finally:
        reporter.close(timeout=0.5)
    return {"cpu_ns": summary(cpu), "wall_ns": summary(wall), "accepted": ok, "posts": posts}


def _memory_agent_down(steps: int) -> dict:
    """tracemalloc over `steps` step() calls with the agent down and the sender retrying ~50x/s."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every post is refused
    gc.collect()
    tracemalloc.start()
    try:
        reporter = _reporter(url, interval=0.01, max_backoff=0.02)
        checkpoints = []
        chunk = steps // 10
        started = time.perf_counter()
        for i in range(10):
            for _ in range(chunk):
                reporter.step()
            gc.collect()
            # urllib looks handler methods up by names it builds per request; CPython's type attribute
            # cache keeps up to 4096 such names alive. Bounded, and not the reporter's: cleared here.
            sys._clear_type_cache()
            checkpoints.append(
                {
                    "steps": (i + 1) * chunk,
                    "traced_bytes": tracemalloc.get_traced_memory()[0],
                    "rss_bytes": rss_bytes(),
                    "posts_failed": reporter.stats["posts_failed"],
                }
            )
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        reporter.close(timeout=0.2)
    finally:
        tracemalloc.stop()
    first, last = checkpoints[0], checkpoints[-1]
    return {
        "steps": steps,
        "seconds": elapsed,
        "checkpoints": checkpoints,
        "traced_growth_bytes": last["traced_bytes"] - first["traced_bytes"],
        "rss_growth_bytes": last["rss_bytes"] - first["rss_bytes"],
        "traced_peak_bytes": peak,
        "posts_failed": last["posts_failed"],
    }


def run(quick: bool, log) -> dict:
    client_log = logging.getLogger("mfu_agent.client")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # "cannot reach the agent" is the point of the agent-down runs
    try:
        return _run(quick, log)
    finally:
        client_log.setLevel(level)


def _run(quick: bool, log) -> dict:
    batches = 300 if quick else 1500
    result: dict = {"batch": BATCH}
    closed = f"http://127.0.0.1:{free_port()}"
    result["agent_down"] = _step_cost(closed, batches, interval=0.1, max_backoff=0.2)
    down = result["agent_down"]
    log(
        f"  step(), agent down: {down['step']['median']:.0f} ns (p99 {down['step']['p99']:.0f} ns), "
        f"empty call {down['empty_call']['median']:.0f} ns, ratio {down['ratio_to_empty']:.2f}"
    )
    with server("agent", gpus=8) as (_, port):
        url = f"http://127.0.0.1:{port}"
        result["agent_up"] = _step_cost(url, batches, interval=0.1, max_backoff=0.2)
        up = result["agent_up"]
        log(
            f"  step(), agent up:   {up['step']['median']:.0f} ns (p99 {up['step']['p99']:.0f} ns), "
            f"empty call {up['empty_call']['median']:.0f} ns, ratio {up['ratio_to_empty']:.2f}; "
            f"posts ok {up['reporter_stats']['posts_ok']}"
        )
        result["post"] = _post_cost(url, 20 if quick else 60)
        post = result["post"]
        log(
            f"  one post (flush): {post['cpu_ns']['median'] / 1e6:.2f} ms CPU in the posting thread, "
            f"{post['wall_ns']['median'] / 1e6:.2f} ms wall; {post['accepted']}/{post['posts']} accepted"
        )
        torch_result = _torch_loop(url, rounds=12 if quick else 45, steps=100 if quick else 200)
    result["torch_loop"] = torch_result
    if torch_result:
        med = torch_result["median_step_ns"]
        (lo, hi), (alo, ahi) = torch_result["paired_ratio_median_ci95"], torch_result["a_a_ratio_median_ci95"]
        in_loop = torch_result["in_loop_ns"]
        log(
            f"  step() inside the loop: median {in_loop['step']['median']:.0f} ns "
            f"(p99 {in_loop['step']['p99']:.0f}), empty call {in_loop['empty_call']['median']:.0f} ns"
        )
        log(
            f"  torch loop (Linear 256x256, batch 32, SGD): without {med['without'] / 1e3:.1f} µs/step, "
            f"with reporter {med['with'] / 1e3:.1f} µs/step, "
            f"paired ratio {torch_result['paired_ratio_median']:.4f} (95% CI {lo:.4f}-{hi:.4f}); "
            f"A/A {torch_result['a_a_ratio_median']:.4f} (95% CI {alo:.4f}-{ahi:.4f})"
        )
    result["memory_agent_down"] = _memory_agent_down(200_000 if quick else 1_000_000)
    mem = result["memory_agent_down"]
    first, last = mem["checkpoints"][0]["traced_bytes"], mem["checkpoints"][-1]["traced_bytes"]
    log(
        f"  memory, agent down, {mem['steps']:,} steps: tracemalloc {first:,} -> {last:,} bytes "
        f"(growth {mem['traced_growth_bytes']:,}), "
        f"{mem['posts_failed']} failed posts"
    )
    return result
