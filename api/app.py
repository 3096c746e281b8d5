"""The FastAPI app factory: settings, store, error handlers and routers.

`create_app()` is the entry point for uvicorn (`--factory`). The app holds no
logic of its own: routers translate HTTP to library calls, and
`recsys_api.errors` maps library errors to statuses. To add a resource,
append its router to `ROUTERS`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from recsys_api import metrics
from recsys_api.errors import install_error_handlers
from recsys_api.routes import events, health, recommendations, sessions

from recsys import __version__
from recsys.errors import StoreUnavailableError
from recsys.sessions import SessionStore, open_store
from recsys.settings import Settings

log = logging.getLogger(__name__)

ROUTERS: list[APIRouter] = [
    health.router,
    events.router,
    sessions.router,
    metrics.router,
    recommendations.router,
]

ReadinessCheck = Callable[[FastAPI], dict[str, Any]]


def create_app(
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    routers: Sequence[APIRouter] | None = None,
) -> FastAPI:
    """Build the app; settings come from the environment unless given.

    A store passed in stays open when the app shuts down, because its owner
    closes it; a store the app opened itself is closed on shutdown.
    """
    if settings is None:
        settings = Settings.from_env()
        settings.log_summary()
    owns_store = store is None
    app_store = open_store(settings) if store is None else store

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_store:
            app_store.close()

    app = FastAPI(title="recsys", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = app_store
    app.state.readiness_checks = {}
    add_readiness_check(app, "session_store", _check_store)
    install_error_handlers(app)
    for router in ROUTERS if routers is None else routers:
        app.include_router(router)
    if recommendations.router in (ROUTERS if routers is None else routers):
        recommendations.install(app)
    metrics.instrument(app)
    return app


def add_readiness_check(app: FastAPI, name: str, check: ReadinessCheck) -> None:
    """Register `check` under `name`; /readyz calls it on every request."""
    app.state.readiness_checks[name] = check


def _check_store(app: FastAPI) -> dict[str, Any]:
    store: SessionStore = app.state.store
    try:
        store.ping()
    except StoreUnavailableError as exc:
        log.warning("readiness: session store unavailable: %s", exc)
        return {"ready": False, "backend": store.backend, "error": "unavailable"}
    return {"ready": True, "backend": store.backend}
