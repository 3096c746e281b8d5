"""GET endpoints that show what the session tracker holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from recsys_api.deps import get_store, require_read_key

from recsys.errors import NotFoundError

router = APIRouter(tags=["sessions"], dependencies=[Depends(require_read_key)])


class SessionView(BaseModel):
    """A session's kept events, oldest first."""

    session_id: str
    events: list[dict[str, Any]]


class UserSessionsView(BaseModel):
    """A user's live sessions, the most recently written first."""

    user_id: str
    session_ids: list[str]


@router.get("/v1/sessions/{session_id}")
def get_session(session_id: str, request: Request) -> SessionView:
    events = get_store(request).get(session_id)
    if not events:
        raise NotFoundError(
            f"session {session_id!r} not found: it has no events or expired"
        )
    return SessionView(
        session_id=session_id, events=[event.to_dict() for event in events]
    )


@router.get("/v1/users/{user_id}/sessions")
def get_user_sessions(user_id: str, request: Request) -> UserSessionsView:
    session_ids = get_store(request).user_sessions(user_id)
    if not session_ids:
        raise NotFoundError(f"user {user_id!r} has no live sessions")
    return UserSessionsView(user_id=user_id, session_ids=session_ids)
