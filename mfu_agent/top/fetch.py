"""Where the agent is, and one fetch of its GPUs and jobs (standard library HTTP)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8469"
# No proxy, as for the client: the agent is on this node or a node next to it, and a cluster-wide
# HTTP_PROXY must not stand between them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FetchError(Exception):
    """The agent could not be read; the message is one line naming the URL and why."""


@dataclass(frozen=True)
class NodeData:
    gpus: dict[str, Any]  # GET /v1/gpus
    jobs: dict[str, Any]  # GET /v1/jobs


def default_url() -> str:
    """MFU_AGENT_URL (as the training client reads it), else the agent's MFU_AGENT_LISTEN address
    (a wildcard host read as loopback), else http://127.0.0.1:8469."""
    url = os.environ.get("MFU_AGENT_URL", "").strip()
    if url:
        return url
    listen = os.environ.get("MFU_AGENT_LISTEN", "").strip()
    if listen:
        from ..cli.options import parse_listen

        host, port = parse_listen(listen)  # a bad value is refused as the agent would refuse it
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return DEFAULT_URL


def fetch_node(url: str, timeout: float) -> NodeData:
    base = url.rstrip("/")
    return NodeData(gpus=_get_json(base + "/v1/gpus", timeout), jobs=_get_json(base + "/v1/jobs", timeout))


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read())
        raise FetchError(f"{url}: HTTP {exc.code}{': ' + detail if detail else ''}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise FetchError(f"cannot reach {url}: {exc}") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError(f"{url} did not answer with JSON: is this an mfu-agent?") from None
    if not isinstance(data, dict):
        raise FetchError(f"{url} did not answer like an mfu-agent (expected a JSON object)")
    return data


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("error") or "")
    return ""
