"""POST /v1/events: validate events and append them to the session store."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from recsys_api.deps import get_settings, get_store, require_write_key
from recsys_api.errors import HTTPError
from starlette.concurrency import run_in_threadpool

from recsys.errors import ValidationError
from recsys.events import Event, validate_event
from recsys.sessions import SessionStore

router = APIRouter(tags=["events"])

# No event field needs more digits, and int() raises ValueError past 4,300.
_MAX_INT_DIGITS = 1000

_EVENT_SCHEMA = {
    "type": "object",
    "required": ["session_id", "event_type", "ts"],
    "properties": {
        "session_id": {"type": "string"},
        "user_id": {"type": "string"},
        "item_id": {"type": "string", "description": "required unless search"},
        "event_type": {
            "enum": ["click", "search", "cart_add", "cart_remove", "purchase"]
        },
        "query": {"type": "string", "description": "search events only"},
        "ts": {"type": "integer", "description": "Unix time in milliseconds"},
        "event_id": {"type": "string", "description": "for deduplication"},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _EVENT_SCHEMA,
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {
                            "events": {"type": "array", "items": _EVENT_SCHEMA}
                        },
                    },
                ]
            }
        }
    },
}


class IngestResponse(BaseModel):
    """Events stored and events ignored because their event_id was seen."""

    accepted: int
    duplicates: int


@router.post(
    "/v1/events",
    dependencies=[Depends(require_write_key)],
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def post_events(request: Request) -> IngestResponse:
    """Store one event, or a batch sent as {"events": [...]}, all or nothing."""
    settings = get_settings(request)
    body = await _read_body(request, settings.max_body_bytes)
    payload = _parse_json(body)
    store = get_store(request)
    if isinstance(payload, dict) and "events" in payload:
        batch = _batch(payload, settings.max_batch_events)
        return await run_in_threadpool(_store_batch, store, batch)
    if isinstance(payload, list):
        raise ValidationError(
            "body",
            "a JSON array",
            'one event object, or {"events": [...]} for a batch',
        )
    return await run_in_threadpool(_store_batch, store, [payload], single=True)


def _store_batch(
    store: SessionStore, raw_events: list[Any], *, single: bool = False
) -> IngestResponse:
    events = [validate_event(raw_events[0])] if single else _validate(raw_events)
    result = store.append_many(events)
    return IngestResponse(accepted=result.accepted, duplicates=result.duplicates)


def _validate(raw_events: list[Any]) -> list[Event]:
    events = []
    for index, raw in enumerate(raw_events):
        try:
            events.append(validate_event(raw))
        except ValidationError as exc:
            raise ValidationError(
                f"events[{index}].{exc.field}", exc.value, exc.expected
            ) from None
    return events


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(
                400, "invalid_header", f"invalid Content-Length: {declared!r}"
            )
        if int(declared) > limit:
            raise _too_large(limit, f"request body of {declared} bytes")
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit, "request body")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, what: str) -> HTTPError:
    return HTTPError(
        413,
        "payload_too_large",
        f"{what} exceeds the limit of {limit} bytes; send fewer events per request",
    )


def _parse_json(body: bytes) -> Any:
    # ValueError covers bad syntax, bad UTF-8 and the hooks below;
    # RecursionError covers arrays nested thousands deep.
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise HTTPError(
            400, "invalid_json", f"request body is not valid JSON: {exc}"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    # int() rejects these too, but with advice meant for Python programmers.
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(
            f"a number has {len(text):,} digits; at most {_MAX_INT_DIGITS:,} "
            "are accepted"
        )
    return int(text)


def _batch(payload: dict[str, Any], max_events: int) -> list[Any]:
    extra = sorted(set(payload) - {"events"})
    if extra:
        raise ValidationError(
            extra[0], payload[extra[0]], 'only "events" beside a batch of events'
        )
    batch = payload["events"]
    if not isinstance(batch, list):
        raise ValidationError("events", batch, "a JSON array of events")
    if not 1 <= len(batch) <= max_events:
        raise ValidationError(
            "events", f"{len(batch)} events", f"1 to {max_events} events per request"
        )
    return batch
