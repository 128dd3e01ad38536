"""GET /: a page for people. What the agent is, its node, links to the API, and live tables of GPUs and
jobs that the page's own script fills from /v1/gpus and /v1/jobs (landing.html: one self-contained
document, no external assets)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .. import __version__

router = APIRouter()

TEMPLATE = resources.files(__package__).joinpath("landing.html").read_text(encoding="utf-8")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def _inline_hash(tag: str) -> str:
    """The CSP source for the template's one inline <tag> block, which the placeholders never touch."""
    (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", TEMPLATE, re.S)
    assert not PLACEHOLDER.search(block), f"a placeholder inside <{tag}> would change its hash"
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


# Only the page's own script and style run; it talks to this agent alone and cannot be framed.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_inline_hash('script')}; style-src {_inline_hash('style')}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get(
    "/",
    response_class=HTMLResponse,
    summary="A page for people: the node, links, and live tables of GPUs and jobs with their MFU",
)
def landing(request: Request) -> HTMLResponse:
    agent = request.app.state.agent
    pages = [url for url in (request.app.docs_url, request.app.redoc_url) if url]  # on with --docs
    if pages:
        api_docs = " ".join(f'<a href="{url.lstrip("/")}">{html.escape(url)}</a>' for url in pages)
    else:
        api_docs = '<span class="off" title="start the agent with --docs">/docs: off</span>'
    values = {
        "node": html.escape(agent.options.node_name or "\u2014"),
        "version": html.escape(__version__),
        "backend": html.escape(agent.backend.name),
        "window": f"{agent.options.mfu_window_seconds:g}",
        "api_docs": api_docs,
    }
    page = PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE)  # one pass: values are not rescanned
    return HTMLResponse(page, headers=HEADERS)
