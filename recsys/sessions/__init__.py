"""Live session tracking: recent events per session, user links, durable log.

`open_store(settings)` returns the Redis store when `REDIS_URL` is set and
the in-process store otherwise; both implement `SessionStore`.
"""

from __future__ import annotations

from recsys.sessions.base import (
    AppendResult,
    EventLog,
    LogEntry,
    SessionLimits,
    SessionStore,
)
from recsys.sessions.memory import InProcessStore
from recsys.settings import Settings

__all__ = [
    "AppendResult",
    "EventLog",
    "InProcessStore",
    "LogEntry",
    "SessionLimits",
    "SessionStore",
    "limits_from",
    "open_store",
]


def limits_from(settings: Settings) -> SessionLimits:
    return SessionLimits(
        max_events=settings.session_max_events,
        ttl_seconds=settings.session_ttl_seconds,
        user_max_sessions=settings.user_max_sessions,
        dedup_window=settings.dedup_window,
    )


def open_store(settings: Settings) -> SessionStore:
    """Return the store that `settings` selects; connects lazily."""
    if settings.redis_url is None:
        return InProcessStore(limits_from(settings))
    from recsys.sessions.redis_store import RedisStore

    return RedisStore(
        settings.redis_url,
        limits_from(settings),
        prefix=settings.redis_prefix,
        connect_timeout_seconds=settings.redis_connect_timeout_seconds,
        read_timeout_seconds=settings.redis_read_timeout_seconds,
    )
