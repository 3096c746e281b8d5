"""Request dependencies: the app's settings and store, and API key checks.

The key is compared with `hmac.compare_digest` and never logged.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from recsys_api.errors import HTTPError

from recsys.sessions import SessionStore
from recsys.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.store
    return store


# FastAPI runs coroutine dependencies on the event loop, so the key checks are
# coroutines. As plain functions, each would cost a trip through the thread pool.


async def require_write_key(request: Request) -> None:
    """Reject the request with 401 unless it carries the configured API key."""
    _check_key(request, get_settings(request))


async def require_read_key(request: Request) -> None:
    """Like `require_write_key`, when RECSYS_REQUIRE_KEY_FOR_READS is set."""
    settings = get_settings(request)
    if settings.require_key_for_reads:
        _check_key(request, settings)


def _check_key(request: Request, settings: Settings) -> None:
    if settings.api_key is None:
        raise _unauthorized(
            "the server has no API key configured; set RECSYS_API_KEY to accept "
            "this request"
        )
    supplied = _supplied_key(request)
    if supplied is None:
        raise _unauthorized(
            "missing API key; send it in the X-API-Key header or as "
            "Authorization: Bearer <key>"
        )
    if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
        raise _unauthorized("invalid API key")


def _supplied_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
