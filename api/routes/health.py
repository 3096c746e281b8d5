"""Liveness (/healthz) and readiness (/readyz).

Readiness runs every check in `app.state.readiness_checks`, a dict of name ->
callable(app) returning a dict with at least `"ready": bool`. The app adds the
session store check; other parts (such as the loaded build) add their own with
`recsys_api.app.add_readiness_check`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Return 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Return 200 when every readiness check passes, else 503 with details."""
    app = request.app
    checks: dict[str, dict[str, Any]] = {}
    for name, check in app.state.readiness_checks.items():
        checks[name] = await run_in_threadpool(check, app)
    ready = all(result["ready"] for result in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)
