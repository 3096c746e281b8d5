"""The event model: what clients send and what every dataset adapter writes.

An event is one of `click`, `search`, `cart_add`, `cart_remove` or
`purchase`. Timestamps are Unix milliseconds, UTC. `validate_event` is the one
place that checks a raw mapping and raises `ValidationError` naming the field,
the value received and what is valid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from recsys.errors import ValidationError

EVENT_TYPES: Final = ("click", "search", "cart_add", "cart_remove", "purchase")

# Timestamps below this (2001-09-09 in ms) are almost surely seconds.
MIN_TS_MS: Final = 1_000_000_000_000
# Events may run ahead of the server clock by clock skew, not by more.
MAX_FUTURE_SKEW_MS: Final = 24 * 3600 * 1000
MAX_ID_LENGTH: Final = 256
MAX_QUERY_LENGTH: Final = 1024
FIELDS: Final = (
    "session_id",
    "user_id",
    "item_id",
    "event_type",
    "query",
    "ts",
    "event_id",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event."""

    session_id: str
    event_type: str
    ts: int
    item_id: str | None = None
    user_id: str | None = None
    query: str | None = None
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_id(field: str, value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise ValidationError(field, value, "a non-empty string")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(field, value, "a non-empty string or an integer")
    if isinstance(value, int) and abs(value) >= 10**MAX_ID_LENGTH:
        # Checked before str(), which raises ValueError past 4,300 digits.
        raise ValidationError(
            field, "an integer too large", f"at most {MAX_ID_LENGTH} characters"
        )
    text = str(value)
    if not text.strip():
        raise ValidationError(field, value, "a non-empty string")
    _check_utf8(field, text)
    if len(text) > MAX_ID_LENGTH:
        raise ValidationError(
            field, text[:40] + "...", f"at most {MAX_ID_LENGTH} characters"
        )
    return text


def _check_utf8(field: str, text: str) -> None:
    # JSON escapes such as "\ud800" decode to lone surrogates, which no UTF-8
    # writer (Redis, Parquet, the JSON response) can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        excerpt = text[max(0, exc.start - 20) : exc.start + 20]
        raise ValidationError(
            field,
            excerpt.encode("utf-8", "backslashreplace").decode("utf-8"),
            f"valid Unicode text; character {exc.start + 1} is a lone surrogate",
        ) from None


def _check_ts(value: Any, now_ms: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("ts", value, "Unix time in milliseconds (an integer)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("ts", str(value), "a finite number of milliseconds")
    if isinstance(value, float) and not value.is_integer():
        raise ValidationError("ts", value, "whole Unix milliseconds, not a fraction")
    if abs(value) >= 2**63:
        # Too large to store as int64, and str() raises past 4,300 digits.
        raise ValidationError("ts", "a number too large", "Unix time in milliseconds")
    ts = int(value)
    if ts < MIN_TS_MS:
        if 100_000_000 <= ts < 100_000_000_000:
            hint = f"it looks like seconds; send {ts * 1000} milliseconds"
        else:
            hint = f"Unix milliseconds at or after {MIN_TS_MS}"
        raise ValidationError("ts", value, hint)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now + MAX_FUTURE_SKEW_MS:
        raise ValidationError(
            "ts",
            value,
            f"no later than 24 hours past the server clock ({now} ms)",
        )
    return ts


def validate_event(raw: Mapping[str, Any], *, now_ms: int | None = None) -> Event:
    """Validate a raw mapping and return an `Event`.

    `now_ms` fixes the clock for the future-timestamp check; pass
    `now_ms=-1` to skip that check (historical data).
    """
    if not isinstance(raw, Mapping):
        raise ValidationError("event", raw, "a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValidationError(
            unknown[0], raw[unknown[0]], f"one of the fields {', '.join(FIELDS)}"
        )
    event_type = raw.get("event_type")
    if event_type not in EVENT_TYPES:
        raise ValidationError("event_type", event_type, f"one of {list(EVENT_TYPES)}")
    session_id = _check_id("session_id", raw.get("session_id"), required=True)
    user_id = _check_id("user_id", raw.get("user_id"), required=False)
    event_id = _check_id("event_id", raw.get("event_id"), required=False)
    item_id = raw.get("item_id")
    query = raw.get("query")
    if event_type == "search":
        if item_id is not None:
            raise ValidationError("item_id", item_id, "no item_id on a search event")
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query", query, "non-empty text on a search event")
        _check_utf8("query", query)
        if len(query) > MAX_QUERY_LENGTH:
            raise ValidationError(
                "query", query[:40] + "...", f"at most {MAX_QUERY_LENGTH} characters"
            )
    else:
        item_id = _check_id("item_id", item_id, required=True)
        if query is not None:
            raise ValidationError(
                "query", query, f"no query on a {event_type} event (search only)"
            )
    if "ts" not in raw:
        raise ValidationError("ts", None, "Unix time in milliseconds (an integer)")
    # A negative now_ms turns the future check off with a clock far ahead.
    clock = now_ms
    if clock is not None and clock < 0:
        clock = 2**62
    ts = _check_ts(raw["ts"], clock)
    return Event(
        session_id=str(session_id),
        event_type=event_type,
        ts=ts,
        item_id=None if item_id is None else str(item_id),
        user_id=user_id,
        query=query.strip() if isinstance(query, str) else None,
        event_id=event_id,
    )
