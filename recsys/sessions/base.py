"""The session store interface shared by the Redis and in-process stores.

A store keeps, per session, the newest `max_events` events ordered by `ts`
(ties keep arrival order), expires a session after `ttl_seconds` without a
write, and links each user to their recent sessions. Every accepted event is
also appended to the store's durable `EventLog`, which `recsys events export`
drains into Parquet for training.

Deduplication: an event whose `event_id` was already seen in the same
session is ignored. The window is per session: it covers the last
`dedup_window` event ids of that session for as long as the session lives.
An id sent again after its session expired is accepted again. Events
without an `event_id` are never deduplicated.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recsys.events import Event


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-session and per-user bounds that every store applies."""

    max_events: int = 50
    ttl_seconds: int = 1800
    user_max_sessions: int = 20
    dedup_window: int = 1000


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Counts of one append: events stored and events ignored as duplicates."""

    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One event of the durable log; `entry_id` is a Redis stream id "ms-seq"."""

    entry_id: str
    event: Event


def encode_event(event: Event) -> str:
    """Encode an event as compact JSON, leaving out fields that are None."""
    fields = {
        "session_id": event.session_id,
        "event_type": event.event_type,
        "ts": event.ts,
    }
    for name in ("item_id", "user_id", "query", "event_id"):
        value = getattr(event, name)
        if value is not None:
            fields[name] = value
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def decode_event(payload: str | bytes) -> Event:
    """Decode what `encode_event` wrote; the event was validated before."""
    fields: dict[str, Any] = json.loads(payload)
    return Event(
        session_id=fields["session_id"],
        event_type=fields["event_type"],
        ts=fields["ts"],
        item_id=fields.get("item_id"),
        user_id=fields.get("user_id"),
        query=fields.get("query"),
        event_id=fields.get("event_id"),
    )


class EventLog(ABC):
    """Durable, append-only log of accepted events, read by consumers.

    A consumer reads a batch, writes it somewhere durable, then acknowledges
    it; acknowledged entries are deleted. A consumer has at most one
    unacknowledged batch, and after a crash it gets that same batch back, so
    output named after the batch's id range is overwritten, not duplicated.
    """

    @abstractmethod
    def read_batch(
        self, consumer: str, count: int, *, min_idle_ms: int = 60_000
    ) -> list[LogEntry]:
        """Return the next batch for `consumer`, oldest first.

        The first of these that is not empty, in this order:

        1. every entry that `consumer` read but did not acknowledge;
        2. every unacknowledged entry of one other consumer idle for at least
           `min_idle_ms`, claimed for `consumer`;
        3. up to `count` new entries.

        An empty list means nothing is left.
        """

    @abstractmethod
    def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete the entries, in one atomic step."""

    @abstractmethod
    def __len__(self) -> int:
        """Return the number of entries not yet deleted."""


class SessionStore(ABC):
    """Recent events per session, user -> sessions links and the durable log."""

    backend: str
    limits: SessionLimits

    @property
    @abstractmethod
    def log(self) -> EventLog:
        """Return the durable log that receives every accepted event."""

    def append(self, event: Event) -> bool:
        """Store one event; return False when it was a duplicate."""
        return self.append_many([event]).accepted == 1

    @abstractmethod
    def append_many(self, events: Sequence[Event]) -> AppendResult:
        """Store events in one atomic step, in the order given.

        Raises `StoreUnavailableError` when the store fails or times out. Then
        either nothing or all of the batch was stored, so the caller retries
        and dedup by `event_id` drops what arrived twice.
        """

    @abstractmethod
    def get(self, session_id: str) -> list[Event]:
        """Return the session's kept events, oldest first; [] when unknown."""

    @abstractmethod
    def user_sessions(self, user_id: str) -> list[str]:
        """Return the user's live sessions, the most recently written first."""

    @abstractmethod
    def ping(self) -> None:
        """Raise `StoreUnavailableError` unless the store responds in time."""

    def close(self) -> None:  # noqa: B027 - stores without resources keep this
        """Release connections; the store is unusable afterwards."""
