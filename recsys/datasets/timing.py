"""Timestamp parsing and gap-based sessionisation shared by the adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from recsys.datasets.source import SourceFile
from recsys.events import MIN_TS_MS

T = TypeVar("T")

# A user's events more than this far apart start a new session.
SESSION_GAP_MS = 30 * 60 * 1000
# Event times must fall in [FIRST_MS, END_MS). `validate_event` rejects earlier
# ones as likely seconds, and much later ones are corrupt or overflow int64.
FIRST_MS = MIN_TS_MS
END_MS = 4_102_444_800_000  # 2100-01-01 UTC


def check_ms(source: SourceFile, line: int, field: str, text: str, ms: int) -> int:
    """Return `ms`, or raise `DataFormatError` when it is outside the range."""
    if not FIRST_MS <= ms < END_MS:
        raise source.error(
            line,
            f"{field} is {text!r}; expected a time from "
            f"{_utc(FIRST_MS)} to {_utc(END_MS)} UTC",
        )
    return ms


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def seconds_to_ms(source: SourceFile, line: int, field: str, text: str) -> int:
    """Convert Unix seconds (possibly with a fraction) to whole milliseconds."""
    try:
        ms = round(float(text) * 1000)
    except (ValueError, OverflowError):
        raise source.error(
            line, f"{field} is {text!r}; expected Unix seconds"
        ) from None
    return check_ms(source, line, field, text, ms)


def utc_text_to_ms(source: SourceFile, line: int, field: str, text: str) -> int:
    """Parse `YYYY-MM-DD HH:MM:SS[.fff]` with an optional ` UTC` suffix as UTC."""
    try:
        moment = datetime.fromisoformat(text.removesuffix(" UTC"))
    except ValueError:
        raise source.error(
            line, f"{field} is {text!r}; expected YYYY-MM-DD HH:MM:SS"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return check_ms(source, line, field, text, round(moment.timestamp() * 1000))


def day_to_ms(source: SourceFile, line: int, field: str, text: str) -> int:
    """Parse `YYYY-MM-DD` as midnight UTC in Unix milliseconds."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise source.error(line, f"{field} is {text!r}; expected YYYY-MM-DD") from None
    return check_ms(source, line, field, text, round(day.timestamp() * 1000))


def split_by_gap(
    events: Sequence[T], ts: Callable[[T], int], gap_ms: int = SESSION_GAP_MS
) -> list[list[T]]:
    """Split one user's events into sessions at gaps longer than `gap_ms`.

    The events are first sorted by `ts` (stably, so ties keep their order).
    """
    ordered = sorted(events, key=ts)
    sessions: list[list[T]] = []
    previous: int | None = None
    for event in ordered:
        moment = ts(event)
        if previous is None or moment - previous > gap_ms:
            sessions.append([])
        sessions[-1].append(event)
        previous = moment
    return sessions
