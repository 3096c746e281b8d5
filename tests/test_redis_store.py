"""Redis store specifics: key expiry, hash slots, timeouts and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from recsys.errors import StoreUnavailableError
from recsys.events import Event
from recsys.sessions import SessionLimits
from recsys.sessions.redis_store import RedisStore
from tests.conftest import RedisServer, free_port

T0 = 1_764_806_400_000


def click(session_id: str, ts: int, item_id: str, **fields: str) -> Event:
    return Event(session_id, "click", ts, item_id=item_id, **fields)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_store() -> Iterator[Callable[..., RedisStore]]:
    """Build Redis stores; all are closed after the test."""
    stores: list[RedisStore] = []

    def make(*args: Any, **kwargs: Any) -> RedisStore:
        stores.append(RedisStore(*args, **kwargs))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def test_append_sets_ttl_on_every_key(
    redis_url: str,
    redis_prefix: str,
    client: redis.Redis,
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(redis_url, SessionLimits(ttl_seconds=600), prefix=redis_prefix)
    store.append(click("s1", T0, "a", user_id="u1", event_id="e1"))

    keys = [*store.session_keys("s1"), store.user_key("u1")]
    for key in keys:
        ttl_ms = client.pttl(key)
        assert 599_000 < ttl_ms <= 600_000, key
    # The log is training data; only the exporter removes entries.
    assert client.pttl(f"{redis_prefix}log") == -1


def test_write_refreshes_ttl(
    redis_url: str,
    redis_prefix: str,
    client: redis.Redis,
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(redis_url, SessionLimits(ttl_seconds=600), prefix=redis_prefix)
    store.append(click("s1", T0, "a", user_id="u1", event_id="e1"))
    keys = [*store.session_keys("s1"), store.user_key("u1")]
    # Stand in for time passing: shorten every expiry, then write again.
    for key in keys:
        client.pexpire(key, 5_000)

    store.append(click("s1", T0 + 1, "b", user_id="u1", event_id="e2"))

    for key in keys:
        assert client.pttl(key) > 599_000, key


def test_expired_user_link_filtered(
    redis_url: str,
    redis_prefix: str,
    client: redis.Redis,
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(redis_url, SessionLimits(ttl_seconds=600), prefix=redis_prefix)
    store.append(click("s1", T0, "a", user_id="u1"))
    store.append(click("s2", T0, "b", user_id="u1"))
    # Age s1's link past the TTL, as if it had not been written for 601 s.
    score = client.zscore(store.user_key("u1"), "s1")
    assert score is not None
    client.zadd(store.user_key("u1"), {"s1": score - 601 * 1_000_000})

    assert store.user_sessions("u1") == ["s2"]


def test_session_keys_share_a_hash_slot(
    redis_url: str, redis_prefix: str, make_store: Callable[..., RedisStore]
) -> None:
    store = make_store(redis_url, prefix=redis_prefix)
    slots = {key_slot(key.encode()) for key in store.session_keys("abc-123")}

    assert len(slots) == 1


def test_unicode_ids_round_trip(
    redis_url: str, redis_prefix: str, make_store: Callable[..., RedisStore]
) -> None:
    store = make_store(redis_url, prefix=redis_prefix)
    event = Event("séance {1}", "search", T0, user_id="ユーザー", query="café ☕")
    store.append(event)

    assert store.get("séance {1}") == [event]
    assert store.user_sessions("ユーザー") == ["séance {1}"]


def test_nothing_listening_raises_quickly(
    make_store: Callable[..., RedisStore],
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = make_store(url, connect_timeout_seconds=0.5, read_timeout_seconds=0.5)
    calls: list[Callable[[], object]] = [
        lambda: store.append(click("s1", T0, "a")),
        lambda: store.get("s1"),
        lambda: store.user_sessions("u1"),
        store.ping,
        lambda: store.log.read_batch("c1", 10),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="is unavailable"):
            call()
        assert time.monotonic() - start < 1.0


def test_killed_server_raises_quickly(
    redis_server_factory: Callable[..., RedisServer],
    make_store: Callable[..., RedisStore],
) -> None:
    server = redis_server_factory()
    store = make_store(server.url, connect_timeout_seconds=0.5)
    store.append(click("s1", T0, "a"))
    server.kill()

    start = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.append(click("s1", T0 + 1, "b"))
    assert time.monotonic() - start < 1.0


def test_frozen_server_times_out(
    redis_server_factory: Callable[..., RedisServer],
    make_store: Callable[..., RedisStore],
) -> None:
    server = redis_server_factory()
    store = make_store(server.url, read_timeout_seconds=0.3)
    store.ping()
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="Timeout"):
            store.append(click("s1", T0, "a"))
        elapsed = time.monotonic() - start
    finally:
        server.resume()

    assert 0.25 < elapsed < 1.5


def test_store_recovers_after_restart(
    redis_server_factory: Callable[..., RedisServer],
    make_store: Callable[..., RedisStore],
) -> None:
    server = redis_server_factory()
    store = make_store(server.url)
    store.append(click("s1", T0, "a"))
    server.kill()
    with pytest.raises(StoreUnavailableError):
        store.get("s1")

    server.start()

    # A fresh server has no script loaded, and no data without persistence.
    assert store.append(click("s1", T0 + 1, "b")) is True
    assert [event.item_id for event in store.get("s1")] == ["b"]


def test_script_reloads_after_flush(
    redis_server_factory: Callable[..., RedisServer],
    make_store: Callable[..., RedisStore],
) -> None:
    server = redis_server_factory()
    store = make_store(server.url)
    store.append(click("s1", T0, "a"))
    admin = redis.Redis.from_url(server.url)
    admin.script_flush()
    admin.close()

    store.append(click("s1", T0 + 1, "b"))

    assert [event.item_id for event in store.get("s1")] == ["a", "b"]


def test_appendonly_survives_kill(
    redis_server_factory: Callable[..., RedisServer],
    make_store: Callable[..., RedisStore],
) -> None:
    server = redis_server_factory(appendonly=True)
    store = make_store(server.url)
    events = [click("s1", T0 + i, f"i{i}", event_id=f"e{i}") for i in range(5)]
    store.append_many(events)
    server.kill()

    server.start()

    assert store.get("s1") == events
    assert [entry.event for entry in store.log.read_batch("c1", 100)] == events
    # The dedup ids survived too.
    assert store.append(events[0]) is False


def test_concurrent_clients_lose_nothing(
    redis_url: str, redis_prefix: str, make_store: Callable[..., RedisStore]
) -> None:
    # One store per thread: separate connection pools, as separate API workers.
    limits = SessionLimits(max_events=10_000)
    stores = [make_store(redis_url, limits, prefix=redis_prefix) for _ in range(4)]

    def write(thread: int) -> None:
        for i in range(0, 200, 4):
            batch = [
                click("s1", T0 + i + j, f"t{thread}-{i + j}", event_id=f"{thread}-{i}")
                for j in range(4)
            ]
            stores[thread].append_many(batch)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Each batch shares one event_id, so one event of four is kept.
    kept = stores[0].get("s1")
    assert len(kept) == 4 * 50
    assert {event.item_id for event in kept} == {
        f"t{t}-{i}" for t in range(4) for i in range(0, 200, 4)
    }
    assert len(stores[0].log) == 4 * 50


def test_log_recreates_deleted_stream(
    redis_url: str,
    redis_prefix: str,
    client: redis.Redis,
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(redis_url, prefix=redis_prefix)
    store.append(click("s1", T0, "a"))
    assert len(store.log.read_batch("c1", 10)) == 1
    client.delete(f"{redis_prefix}log")

    store.append(click("s1", T0 + 1, "b"))
    batch = store.log.read_batch("c1", 10)

    assert [entry.event.item_id for entry in batch] == ["b"]
