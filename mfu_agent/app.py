"""The FastAPI app: joins the routers and runs the agent for the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from . import __version__
from .agent import Agent
from .api import landing, reports, system
from .api.drain import DrainRequestBody


def create_app(
    agent: Agent,
    routers: list[APIRouter] | None = None,
    manage_agent: bool = True,
    on_started: Callable[[], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
    docs: bool = False,
) -> FastAPI:
    """`docs` turns on /docs and /redoc, whose JavaScript and CSS come from a CDN (blank on an offline
    node); /openapi.json is always served."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_agent:
            agent.start()
        if on_started:
            on_started()
        try:
            yield
        finally:
            if on_stopping:
                on_stopping()
            if manage_agent:
                agent.stop()

    app = FastAPI(
        title="mfu-agent",
        version=__version__,
        lifespan=lifespan,
        description="GPU telemetry and live model FLOPs utilisation, as Prometheus metrics.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.add_middleware(DrainRequestBody)
    app.state.agent = agent
    app.include_router(system.router)
    app.include_router(reports.router)
    app.include_router(landing.router)
    for router in routers or []:
        app.include_router(router)
    return app
