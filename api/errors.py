"""The one place that maps exceptions to HTTP statuses and JSON error bodies.

Every error body has the shape
`{"error": {"code": ..., "message": ..., "field": ..., "value": ..., "expected": ...}}`
where `field`, `value` and `expected` appear only for invalid input. Details of
server-side failures (store unreachable, bugs) go to the log, not to clients.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.errors import (
    BuildError,
    ConfigError,
    NotFoundError,
    RecsysError,
    StoreUnavailableError,
    ValidationError,
)

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 1

# (error class, status, code, public message or None to show str(exc)),
# most specific first.
ERROR_STATUSES: list[tuple[type[RecsysError], int, str, str | None]] = [
    (ValidationError, 422, "invalid_input", None),
    (NotFoundError, 404, "not_found", None),
    (StoreUnavailableError, 503, "store_unavailable", "session store unavailable"),
    (BuildError, 503, "build_unavailable", "no usable build loaded"),
    (ConfigError, 500, "config_error", "server misconfigured"),
    (RecsysError, 500, "internal_error", "internal error"),
]


class HTTPError(Exception):
    """A failure that exists only at the HTTP boundary (401, 400, 413)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RecsysError, _recsys_error)
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _recsys_error(request: Request, exc: Exception) -> JSONResponse:
    status, code, public_message = next(
        (status, code, message)
        for error_class, status, code, message in ERROR_STATUSES
        if isinstance(exc, error_class)
    )
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    elif status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, ValidationError):
        body = error_body(
            code,
            str(exc),
            field=exc.field,
            value=_json_safe(exc.value),
            expected=exc.expected,
        )
    else:
        body = error_body(code, public_message or str(exc))
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(HTTPError, exc)
    return JSONResponse(
        error_body(exc.code, exc.message),
        status_code=exc.status,
        headers=exc.headers,
    )


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    first = cast(RequestValidationError, exc).errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    body = error_body(
        "invalid_input",
        f"invalid {field}: {first['msg']}",
        field=field,
        value=_json_safe(first.get("input")),
        expected=first["msg"],
    )
    return JSONResponse(body, status_code=422)


async def _starlette_http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    code = "not_found" if exc.status_code == 404 else "http_error"
    return JSONResponse(
        error_body(code, str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def _json_safe(value: Any) -> Any:
    # Render as JSONResponse does, so NaN or a lone surrogate falls back to
    # repr() here instead of failing the response.
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):
        return repr(value)
    return value
