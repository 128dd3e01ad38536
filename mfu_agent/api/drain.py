"""Read what is left of a request body before answering, so the client sees the answer.

A handler that refuses a request early (401, 413, 429) has not read its body. If the connection is then
closed (the client sent `Connection: close`, as urllib does, or the server must close), the kernel
resets it because unread data is still arriving, and a client that writes its whole body before
reading gets "connection reset" instead of the status. So before the response starts, the rest of the
body is read and thrown away, up to `max_bytes` in all and for `timeout` seconds at most; past those,
or when the client waits for `100 Continue` and was never asked for the body, the response says
`Connection: close` instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

MAX_DISCARD_BYTES = 16 * 1024 * 1024
DISCARD_TIMEOUT = 10.0

Message = dict[str, Any]


class DrainRequestBody:
    def __init__(
        self, app: Any, max_bytes: int = MAX_DISCARD_BYTES, timeout: float = DISCARD_TIMEOUT
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        if not chunked and (length is None or length.strip() in (b"", b"0")):
            await self.app(scope, receive, send)  # no body to leave behind
            return
        declared = int(length) if length is not None and length.strip().isdigit() else None
        expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        state = {"done": False, "asked": False, "seen": 0}

        async def tracked_receive() -> Message:
            message = await receive()
            state["asked"] = True
            note(message)
            return message

        def note(message: Message) -> None:
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                state["done"] = True
            state["seen"] += len(message.get("body", b""))

        async def drain() -> None:
            if expects_continue and not state["asked"]:
                return  # the client has not sent the body and will not: it waits for our answer
            if declared is not None and declared > self.max_bytes:
                return
            deadline = time.monotonic() + self.timeout
            while not state["done"] and state["seen"] <= self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    note(await asyncio.wait_for(receive(), left))
                except asyncio.TimeoutError:
                    return

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["done"]:
                await drain()
                if not state["done"]:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, draining_send)
