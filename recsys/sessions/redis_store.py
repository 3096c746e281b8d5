"""The Redis session store, for production.

Keys, all under the configured prefix P; the braces make the keys of one
session share a Redis Cluster hash slot:

- `P s:{session_id}:events`: sorted set of the kept events, scored by `ts`.
  Each member is a 16-digit hex arrival sequence followed by the event's
  JSON, so equal timestamps keep arrival order.
- `P s:{session_id}:seq`: the session's arrival counter.
- `P s:{session_id}:ids`: sorted set of the last `dedup_window` event ids.
- `P u:{user_id}:sessions`: sorted set of session ids scored by the Redis
  server time (microseconds) of their last write, made strictly increasing.
- `P log`: the durable log, a stream with one field `event` (JSON), read by
  the consumer group `exporter`.

One Lua script stores a whole batch: it deduplicates, inserts, trims, adds
to the stream and refreshes every expiry in one atomic round trip, so
concurrent writers to one session lose nothing. Session and user keys expire
after `ttl_seconds` without a write; the stream never expires and is emptied
only by the exporter.

NOTE: the script touches the keys of every session in a batch plus the one
stream key, so it runs on a single Redis server, not across Cluster slots.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsys.errors import RecsysError, StoreUnavailableError
from recsys.events import Event
from recsys.sessions.base import (
    AppendResult,
    EventLog,
    LogEntry,
    SessionLimits,
    SessionStore,
    decode_event,
    encode_event,
)
from recsys.settings import mask_url

log = logging.getLogger(__name__)

EXPORT_GROUP = "exporter"
# Members of the events set start with the arrival sequence in this many hex
# digits, then the JSON payload.
_SEQ_DIGITS = 16

# KEYS: [1] stream, then 3 per session (events, seq, ids), then 1 per user.
# ARGV: max_events, ttl_ms, dedup_window, user_max_sessions, session count S,
# S session ids, then 5 per event: session index, user index (0 = none),
# event_id ('' = none), ts, payload. Returns the number of accepted events.
_APPEND_SCRIPT = """
local max_events = tonumber(ARGV[1])
local ttl_ms = tonumber(ARGV[2])
local dedup_window = tonumber(ARGV[3])
local user_max = tonumber(ARGV[4])
local n_sessions = tonumber(ARGV[5])
local user_base = 1 + 3 * n_sessions
local first_event = 6 + n_sessions
local linked = {}
local accepted = 0

-- Reserve one arrival number per event with one INCRBY per session.
local last_seq = {}
for i = first_event, #ARGV, 5 do
  local s = tonumber(ARGV[i])
  last_seq[s] = (last_seq[s] or 0) + 1
end
for s, n in pairs(last_seq) do
  last_seq[s] = redis.call('INCRBY', KEYS[1 + 3 * (s - 1) + 2], n) - n
end

for i = first_event, #ARGV, 5 do
  local s = tonumber(ARGV[i])
  local u = tonumber(ARGV[i + 1])
  local event_id, ts, payload = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local base = 1 + 3 * (s - 1)
  local seq = last_seq[s] + 1
  last_seq[s] = seq
  local fresh = 1
  if event_id ~= '' then
    fresh = redis.call('ZADD', KEYS[base + 3], 'NX', seq, event_id)
  end
  if fresh == 1 then
    redis.call('ZADD', KEYS[base + 1], ts, string.format('%016x', seq) .. payload)
    redis.call('XADD', KEYS[1], '*', 'event', payload)
    accepted = accepted + 1
    if u > 0 then
      linked[#linked + 1] = {u, s}
    end
  end
end

for s = 1, n_sessions do
  local base = 1 + 3 * (s - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[base + 1], 0, -max_events - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[base + 3], 0, -dedup_window - 1)
  redis.call('PEXPIRE', KEYS[base + 1], ttl_ms)
  redis.call('PEXPIRE', KEYS[base + 2], ttl_ms)
  redis.call('PEXPIRE', KEYS[base + 3], ttl_ms)
end

if #linked > 0 then
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local touched = {}
  for _, link in ipairs(linked) do
    local key = KEYS[user_base + link[1]]
    -- Scores increase per user even within one microsecond, so the order of
    -- writes decides the order of sessions.
    local score = now_us
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if top[2] ~= nil and tonumber(top[2]) >= score then
      score = tonumber(top[2]) + 1
    end
    redis.call('ZADD', key, score, ARGV[5 + link[2]])
    touched[key] = true
  end
  for key, _ in pairs(touched) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_us - ttl_ms * 1000)
    redis.call('ZREMRANGEBYRANK', key, 0, -user_max - 1)
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
return accepted
"""

# KEYS: [1] user sessions; ARGV: ttl_ms. Live sessions, newest write first.
_USER_SESSIONS_SCRIPT = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local oldest = now_us - tonumber(ARGV[1]) * 1000
return redis.call('ZRANGE', KEYS[1], '+inf', '(' .. oldest, 'BYSCORE', 'REV')
"""

# Error replies that Redis sends while it cannot serve commands for now.
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY ")


@contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailableError(
            f"Redis at {mask_url(url)} is unavailable: {exc}"
        ) from exc
    except redis.ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailableError(
                f"Redis at {mask_url(url)} rejected the command: {exc}"
            ) from exc
        raise


def connect(
    url: str, *, connect_timeout_seconds: float, read_timeout_seconds: float
) -> redis.Redis:
    """Return a client whose every call times out, with no retries.

    A retry would double the time a caller waits when Redis is down, and a
    retried append could store events without `event_id` twice.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout_seconds,
        socket_timeout=read_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=True,
        # Replies are parsed in the RESP2 shapes.
        protocol=2,
    )


class RedisEventLog(EventLog):
    """The durable log as a Redis stream read through one consumer group."""

    def __init__(
        self, client: redis.Redis, key: str, url: str, group: str = EXPORT_GROUP
    ) -> None:
        self._client = client
        self._key = key
        self._url = url
        self._group = group
        self._group_ready = False

    def read_batch(
        self, consumer: str, count: int, *, min_idle_ms: int = 60_000
    ) -> list[LogEntry]:
        with _translate_errors(self._url):
            try:
                return self._next_batch(consumer, count, min_idle_ms)
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
            # The stream was deleted, and its group with it: start afresh.
            self._group_ready = False
            return self._next_batch(consumer, count, min_idle_ms)

    def _next_batch(
        self, consumer: str, count: int, min_idle_ms: int
    ) -> list[LogEntry]:
        self._ensure_group()
        own = self._read_group(consumer, "0", count=None)
        if own:
            return own
        claimed = self._claim_stale(consumer, min_idle_ms)
        if claimed:
            return claimed
        return self._read_group(consumer, ">", count=count)

    def ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        with _translate_errors(self._url):
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(self._key, self._group, *entry_ids)
            pipe.xdel(self._key, *entry_ids)
            pipe.execute()

    def __len__(self) -> int:
        with _translate_errors(self._url):
            return int(self._client.xlen(self._key))

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._key, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        self._group_ready = True

    def _read_group(
        self, consumer: str, start: str, *, count: int | None
    ) -> list[LogEntry]:
        reply: Any = self._client.xreadgroup(
            self._group, consumer, {self._key: start}, count=count
        )
        return self._entries(reply[0][1] if reply else [])

    def _claim_stale(self, consumer: str, min_idle_ms: int) -> list[LogEntry]:
        summary: Any = self._client.xpending(self._key, self._group)
        for owner in summary.get("consumers") or []:
            if owner["name"] == consumer:
                continue
            pending: Any = self._client.xpending_range(
                self._key,
                self._group,
                min="-",
                max="+",
                count=int(owner["pending"]),
                consumername=owner["name"],
                idle=min_idle_ms,
            )
            entry_ids = [item["message_id"] for item in pending]
            if entry_ids:
                log.warning(
                    "claiming %d unacknowledged entries of consumer %s",
                    len(entry_ids),
                    owner["name"],
                )
                claimed: Any = self._client.xclaim(
                    self._key, self._group, consumer, min_idle_ms, entry_ids
                )
                return self._entries(claimed)
        return []

    def _entries(self, raw: Any) -> list[LogEntry]:
        entries = []
        for entry_id, fields in raw:
            # A pending entry deleted from the stream comes back without data.
            if fields:
                entries.append(LogEntry(entry_id, self._decode(entry_id, fields)))
        return entries

    def _decode(self, entry_id: str, fields: dict[str, str]) -> Event:
        # Only the append script writes here. Anything else would come back in
        # every batch, so it stops the export with the entry named.
        try:
            return decode_event(fields["event"])
        except (KeyError, TypeError, ValueError):
            raise RecsysError(
                f"entry {entry_id} of the Redis stream {self._key} is not an event "
                f"written by recsys: {str(fields)[:200]}; inspect it with XRANGE "
                f"{self._key} {entry_id} {entry_id}, then remove it with XACK "
                f"{self._key} {self._group} {entry_id} and XDEL {self._key} {entry_id}"
            ) from None


class RedisStore(SessionStore):
    """Session store on one Redis server; see the module docstring for keys."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        limits: SessionLimits | None = None,
        *,
        prefix: str = "recsys:",
        connect_timeout_seconds: float = 0.5,
        read_timeout_seconds: float = 1.0,
    ) -> None:
        self.limits = limits or SessionLimits()
        self.prefix = prefix
        self._url = url
        self._client = connect(
            url,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=read_timeout_seconds,
        )
        self._append_script = self._client.register_script(_APPEND_SCRIPT)
        self._user_sessions_script = self._client.register_script(_USER_SESSIONS_SCRIPT)
        self._log = RedisEventLog(self._client, f"{prefix}log", url)

    @property
    def log(self) -> RedisEventLog:
        return self._log

    @property
    def client(self) -> redis.Redis:
        return self._client

    def session_keys(self, session_id: str) -> tuple[str, str, str]:
        """Return the events, sequence and seen-ids keys of a session."""
        base = f"{self.prefix}s:{{{session_id}}}"
        return f"{base}:events", f"{base}:seq", f"{base}:ids"

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}u:{{{user_id}}}:sessions"

    def append_many(self, events: Sequence[Event]) -> AppendResult:
        if not events:
            return AppendResult(0, 0)
        keys, args = self._append_arguments(events)
        with _translate_errors(self._url):
            accepted = int(self._append_script(keys=keys, args=args))
        return AppendResult(accepted, len(events) - accepted)

    def get(self, session_id: str) -> list[Event]:
        events_key = self.session_keys(session_id)[0]
        with _translate_errors(self._url):
            members: Any = self._client.zrange(events_key, 0, -1)
        return [decode_event(member[_SEQ_DIGITS:]) for member in members]

    def user_sessions(self, user_id: str) -> list[str]:
        ttl_ms = self.limits.ttl_seconds * 1000
        with _translate_errors(self._url):
            reply = self._user_sessions_script(
                keys=[self.user_key(user_id)], args=[ttl_ms]
            )
        return list(reply)

    def ping(self) -> None:
        with _translate_errors(self._url):
            self._client.ping()

    def close(self) -> None:
        self._client.close()

    def _append_arguments(self, events: Sequence[Event]) -> tuple[list[str], list[Any]]:
        sessions: dict[str, int] = {}
        users: dict[str, int] = {}
        rows: list[Any] = []
        for event in events:
            s = sessions.setdefault(event.session_id, len(sessions) + 1)
            u = 0
            if event.user_id is not None:
                u = users.setdefault(event.user_id, len(users) + 1)
            rows += (s, u, event.event_id or "", event.ts, encode_event(event))

        keys = [self._log_key]
        for session_id in sessions:
            keys += self.session_keys(session_id)
        keys += [self.user_key(user_id) for user_id in users]
        limits = self.limits
        args: list[Any] = [
            limits.max_events,
            limits.ttl_seconds * 1000,
            limits.dedup_window,
            limits.user_max_sessions,
            len(sessions),
            *sessions,
            *rows,
        ]
        return keys, args

    @property
    def _log_key(self) -> str:
        return f"{self.prefix}log"
