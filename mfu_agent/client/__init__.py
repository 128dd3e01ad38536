"""Training-side client: report cumulative model FLOPs to the mfu-agent on this node.

Standard library only (safe to import in any training environment)::

    from mfu_agent.client import Reporter

    reporter = Reporter(flops_per_step=6 * n_params * tokens_per_step, tokens_per_step=tokens_per_step)
    for batch in loader:
        ...
        optimizer.step()
        reporter.step()  # a few microseconds, never raises, never blocks
    reporter.close()

See docs/client.md.
"""

from mfu_agent.client._reporter import DEFAULT_URL, DTYPES, LABEL_KEYS, Reporter, normalize_dtype

__all__ = ["DEFAULT_URL", "DTYPES", "LABEL_KEYS", "Reporter", "normalize_dtype"]
