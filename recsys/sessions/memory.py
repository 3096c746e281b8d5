"""The in-process session store: the embedded default when REDIS_URL is unset.

All state lives in this process and is lost when it exits, the durable log
included. `MemoryEventLog` keeps entries in memory until a consumer in the
same process acknowledges them, so `recsys events export` (a separate
process) needs the Redis store. Because nothing else drains it, the log
keeps at most `max_entries` unread entries and drops the oldest beyond that,
with a WARNING. One lock guards every operation, so the store is safe to
share between threads.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from recsys.events import Event
from recsys.sessions.base import (
    AppendResult,
    EventLog,
    LogEntry,
    SessionLimits,
    SessionStore,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class _Session:
    # (ts, arrival sequence, event), sorted; the sequence breaks ts ties.
    events: list[tuple[int, int, Event]] = field(default_factory=list)
    seen_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_write: float = 0.0


class MemoryEventLog(EventLog):
    """In-memory log with the consumer semantics of a Redis consumer group."""

    def __init__(self, clock: Clock = time.time, max_entries: int = 100_000) -> None:
        self._clock = clock
        self.max_entries = max_entries
        self.dropped = 0
        self._lock = threading.Lock()
        self._new: deque[LogEntry] = deque()
        # entry_id -> (entry, consumer, time it was delivered)
        self._pending: dict[str, tuple[LogEntry, str, float]] = {}
        self._last_ms = 0
        self._seq = 0

    def add(self, event: Event) -> None:
        with self._lock:
            now_ms = int(self._clock() * 1000)
            if now_ms > self._last_ms:
                self._last_ms, self._seq = now_ms, 0
            else:
                self._seq += 1
            entry_id = f"{self._last_ms}-{self._seq}"
            self._new.append(LogEntry(entry_id, event))
            if len(self._new) > self.max_entries:
                self._new.popleft()
                self._drop_one()

    def _drop_one(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % self.max_entries == 0:
            log.warning(
                "in-process event log is full at %d entries, so it dropped the "
                "oldest (%d so far); set REDIS_URL to keep every event for "
                "training",
                self.max_entries,
                self.dropped,
            )

    def read_batch(
        self, consumer: str, count: int, *, min_idle_ms: int = 60_000
    ) -> list[LogEntry]:
        with self._lock:
            now = self._clock()
            own = [e for e, owner, _ in self._pending.values() if owner == consumer]
            if own:
                return own
            stale_owner = next(
                (
                    owner
                    for _, owner, delivered in self._pending.values()
                    if (now - delivered) * 1000 >= min_idle_ms
                ),
                None,
            )
            if stale_owner is not None:
                batch = [
                    e for e, owner, _ in self._pending.values() if owner == stale_owner
                ]
            else:
                batch = [self._new.popleft() for _ in range(min(count, len(self._new)))]
            for entry in batch:
                self._pending[entry.entry_id] = (entry, consumer, now)
            return batch

    def ack(self, entry_ids: Sequence[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                self._pending.pop(entry_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._new) + len(self._pending)


class InProcessStore(SessionStore):
    """Thread-safe store in this process's memory.

    `clock` returns seconds and decides idle expiry; tests pass a fake clock.
    Expired sessions are dropped lazily: on read, and from the front of a
    list ordered by last write on every append.
    """

    backend = "memory"

    def __init__(
        self, limits: SessionLimits | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self.limits = limits or SessionLimits()
        self._clock = clock
        self._lock = threading.Lock()
        # Ordered by last write, oldest first, so expiry pops from the front.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # user_id -> {session_id: last write}, both levels oldest write first
        self._users: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._sequence = 0
        self._log = MemoryEventLog()

    @property
    def log(self) -> MemoryEventLog:
        return self._log

    def append_many(self, events: Sequence[Event]) -> AppendResult:
        accepted: list[Event] = []
        with self._lock:
            now = self._clock()
            self._expire(now)
            for event in events:
                if self._append_one(event, now):
                    accepted.append(event)
                    self._log.add(event)
        return AppendResult(len(accepted), len(events) - len(accepted))

    def get(self, session_id: str) -> list[Event]:
        with self._lock:
            session = self._live_session(session_id, self._clock())
            if session is None:
                return []
            return [event for _, _, event in session.events]

    def user_sessions(self, user_id: str) -> list[str]:
        with self._lock:
            now = self._clock()
            recent = self._users.get(user_id, OrderedDict())
            return [
                session_id
                for session_id, written in reversed(recent.items())
                if not self._expired(written, now)
            ]

    def ping(self) -> None:
        return None

    def _append_one(self, event: Event, now: float) -> bool:
        session = self._sessions.get(event.session_id)
        if session is None:
            session = self._sessions[event.session_id] = _Session()
        session.last_write = now
        self._sessions.move_to_end(event.session_id)

        if event.event_id is not None:
            if event.event_id in session.seen_ids:
                return False
            session.seen_ids[event.event_id] = None
            if len(session.seen_ids) > self.limits.dedup_window:
                session.seen_ids.popitem(last=False)

        self._sequence += 1
        bisect.insort(session.events, (event.ts, self._sequence, event))
        del session.events[: -self.limits.max_events]

        if event.user_id is not None:
            recent = self._users.setdefault(event.user_id, OrderedDict())
            self._users.move_to_end(event.user_id)
            recent[event.session_id] = now
            recent.move_to_end(event.session_id)
            while len(recent) > self.limits.user_max_sessions:
                recent.popitem(last=False)
        return True

    def _live_session(self, session_id: str, now: float) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None or self._expired(session.last_write, now):
            return None
        return session

    def _expired(self, written: float, now: float) -> bool:
        return now - written >= self.limits.ttl_seconds

    def _expire(self, now: float) -> None:
        while self._sessions:
            session_id, session = next(iter(self._sessions.items()))
            if not self._expired(session.last_write, now):
                break
            del self._sessions[session_id]
        # A user goes once their newest session expired; links to their
        # older expired sessions are filtered on read.
        while self._users:
            user_id, recent = next(iter(self._users.items()))
            if not self._expired(next(reversed(recent.values())), now):
                break
            del self._users[user_id]
