"""The ingestion and standing-cost baseline: a bare FastAPI app that parses the same JSON and does
nothing else, served by the same server as `mfu-agent run` (mfu_agent/server.py: uvicorn with h11, its
connection guard, keep-alive and backlog settings), so that a ratio measures the endpoints alone.

    python -m bench.bare_server --port 8470
"""

from __future__ import annotations

import argparse
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from mfu_agent.server import limits_for, make_server, raise_open_file_limit


def create_app() -> FastAPI:
    app = FastAPI(title="bare")

    @app.post("/v1/reports", status_code=202)
    async def post_reports(request: Request) -> JSONResponse:
        payload = json.loads(await request.body())
        count = len(payload) if isinstance(payload, list) else 1
        return JSONResponse({"accepted": count}, status_code=202)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok\n"

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return "# nothing here\n"

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    # The same server as mfu_agent.cli.run.serve.
    limits = limits_for(raise_open_file_limit())
    make_server(create_app(), "127.0.0.1", args.port, args.log_level, limits).run()


if __name__ == "__main__":
    main()
