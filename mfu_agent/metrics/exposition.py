"""/metrics as a stream of chunks: each family encoded by prometheus_client's own encoder as soon as it
is built, so a scrape holds one family's samples and text at a time instead of the whole page three
times over (the samples, the text, the bytes); at the series budget that is what keeps two concurrent
scrapes inside the DaemonSet's memory limit (docs/performance.md). The bytes are exactly the library's
for the whole registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

CHUNK_BYTES = 256 * 1024  # small families are sent together; a chunk is at least this, or the last
_EOF = b"# EOF\n"  # OpenMetrics' last line, which its encoder adds to every call


class _One(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def stream(collector: Collector, accept: str = "") -> tuple[Iterator[bytes], str]:
    """(chunks of the exposition, content type) for the format `accept` asks for."""
    encode, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")

    def chunks() -> Iterator[bytes]:
        pending: list[bytes] = []
        size = 0
        for family in collector.collect():
            text = encode(_One(family))
            if openmetrics:
                text = text.removesuffix(_EOF)
            pending.append(text)
            size += len(text)
            if size >= CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
        if openmetrics:
            pending.append(_EOF)
        yield b"".join(pending)

    return chunks(), content_type
