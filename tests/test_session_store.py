"""The session store contract, run against the in-process and the Redis store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from recsys.events import Event
from recsys.sessions import InProcessStore, SessionLimits, SessionStore
from recsys.sessions.redis_store import RedisStore

T0 = 1_764_806_400_000  # 2025-12-04T00:00:00Z in ms

StoreFactory = Callable[..., SessionStore]


def click(
    session_id: str,
    ts: int,
    item_id: str,
    *,
    user_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    return Event(
        session_id=session_id,
        event_type="click",
        ts=ts,
        item_id=item_id,
        user_id=user_id,
        event_id=event_id,
    )


def items(events: list[Event]) -> list[str | None]:
    return [event.item_id for event in events]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Build stores of the parametrised kind; all are closed after the test."""
    stores: list[SessionStore] = []

    def make(**limits: int) -> SessionStore:
        store: SessionStore
        if request.param == "memory":
            store = InProcessStore(SessionLimits(**limits))
        else:
            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            store = RedisStore(url, SessionLimits(**limits), prefix=prefix)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_get_returns_events_oldest_first(make_store: StoreFactory) -> None:
    store = make_store()
    store.append(click("s1", T0, "a"))
    store.append(click("s1", T0 + 1000, "b"))
    store.append(click("s1", T0 + 2000, "c"))

    assert store.get("s1") == [
        click("s1", T0, "a"),
        click("s1", T0 + 1000, "b"),
        click("s1", T0 + 2000, "c"),
    ]


def test_get_keeps_every_field(make_store: StoreFactory) -> None:
    store = make_store()
    search = Event("s1", "search", T0, user_id="u1", query="red shoes", event_id="e1")
    purchase = Event("s1", "purchase", T0 + 1, item_id="i9", user_id="u1")
    store.append_many([search, purchase])

    assert store.get("s1") == [search, purchase]


def test_unknown_session_and_user_are_empty(make_store: StoreFactory) -> None:
    store = make_store()

    assert store.get("never-seen") == []
    assert store.user_sessions("never-seen") == []


def test_late_event_takes_its_place_by_ts(make_store: StoreFactory) -> None:
    store = make_store()
    store.append_many([click("s1", T0, "a"), click("s1", T0 + 3000, "d")])
    store.append(click("s1", T0 + 2000, "c"))
    store.append(click("s1", T0 + 1000, "b"))

    assert items(store.get("s1")) == ["a", "b", "c", "d"]


def test_equal_ts_keeps_arrival_order(make_store: StoreFactory) -> None:
    store = make_store()
    store.append_many([click("s1", T0, "x"), click("s1", T0, "y")])
    store.append(click("s1", T0, "z"))

    assert items(store.get("s1")) == ["x", "y", "z"]


def test_keeps_newest_max_events(make_store: StoreFactory) -> None:
    store = make_store(max_events=3)
    store.append_many([click("s1", T0 + i * 1000, f"i{i}") for i in range(5)])

    assert items(store.get("s1")) == ["i2", "i3", "i4"]

    # A late event older than every kept one is dropped at once.
    store.append(click("s1", T0 - 1000, "old"))
    assert items(store.get("s1")) == ["i2", "i3", "i4"]

    # One newer than some kept event replaces the oldest.
    store.append(click("s1", T0 + 2500, "late"))
    assert items(store.get("s1")) == ["late", "i3", "i4"]


def test_sessions_are_separate(make_store: StoreFactory) -> None:
    store = make_store(max_events=2)
    store.append_many(
        [click("s1", T0, "a"), click("s2", T0, "b"), click("s1", T0 + 1, "c")]
    )

    assert items(store.get("s1")) == ["a", "c"]
    assert items(store.get("s2")) == ["b"]


def test_duplicate_event_id_is_ignored(make_store: StoreFactory) -> None:
    store = make_store()
    first = store.append_many(
        [click("s1", T0, "a", event_id="e1"), click("s1", T0 + 1, "b", event_id="e2")]
    )
    again = store.append_many(
        [click("s1", T0 + 5, "a2", event_id="e1"), click("s1", T0 + 6, "c")]
    )

    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (1, 1)
    assert items(store.get("s1")) == ["a", "b", "c"]
    assert store.append(click("s1", T0 + 9, "b2", event_id="e2")) is False


def test_duplicate_within_one_batch_is_ignored(make_store: StoreFactory) -> None:
    store = make_store()
    result = store.append_many(
        [click("s1", T0, "a", event_id="e1"), click("s1", T0 + 1, "b", event_id="e1")]
    )

    assert (result.accepted, result.duplicates) == (1, 1)
    assert items(store.get("s1")) == ["a"]


def test_dedup_is_per_session(make_store: StoreFactory) -> None:
    store = make_store()

    assert store.append(click("s1", T0, "a", event_id="e1")) is True
    assert store.append(click("s2", T0, "a", event_id="e1")) is True


def test_events_without_id_are_never_duplicates(make_store: StoreFactory) -> None:
    store = make_store()
    result = store.append_many([click("s1", T0, "a"), click("s1", T0, "a")])

    assert (result.accepted, result.duplicates) == (2, 0)
    assert items(store.get("s1")) == ["a", "a"]


def test_dedup_window_forgets_oldest_ids(make_store: StoreFactory) -> None:
    store = make_store(dedup_window=3)
    store.append_many(
        [click("s1", T0 + i, f"i{i}", event_id=f"e{i}") for i in range(4)]
    )

    # e0 fell out of the window of 3 ids; e1 is still inside it.
    assert store.append(click("s1", T0 + 10, "again", event_id="e0")) is True
    assert store.append(click("s1", T0 + 11, "again", event_id="e3")) is False


def test_user_sessions_most_recent_first(make_store: StoreFactory) -> None:
    store = make_store()
    store.append(click("s1", T0, "a", user_id="u1"))
    store.append(click("s2", T0, "b", user_id="u1"))
    store.append(click("s3", T0, "c", user_id="u2"))
    store.append(click("s1", T0 + 1, "d", user_id="u1"))

    assert store.user_sessions("u1") == ["s1", "s2"]
    assert store.user_sessions("u2") == ["s3"]


def test_user_sessions_limited(make_store: StoreFactory) -> None:
    store = make_store(user_max_sessions=2)
    for session_id in ("s1", "s2", "s3"):
        store.append(click(session_id, T0, "a", user_id="u1"))

    assert store.user_sessions("u1") == ["s3", "s2"]


def test_duplicate_does_not_link_user(make_store: StoreFactory) -> None:
    store = make_store()
    store.append(click("s1", T0, "a", event_id="e1"))
    store.append(click("s1", T0, "a", user_id="u1", event_id="e1"))

    assert store.user_sessions("u1") == []


def test_log_gets_each_accepted_event_once(make_store: StoreFactory) -> None:
    store = make_store(max_events=2)
    events = [click("s1", T0 + i, f"i{i}", event_id=f"e{i}") for i in range(4)]
    store.append_many(events)
    store.append_many(events[:2])

    batch = store.log.read_batch("c1", 100)

    # The log keeps events the session trimmed, and no duplicates.
    assert [entry.event for entry in batch] == events
    assert len(store.log) == 4


def test_log_returns_unacked_batch_again(make_store: StoreFactory) -> None:
    store = make_store()
    store.append_many([click("s1", T0 + i, f"i{i}") for i in range(5)])

    first = store.log.read_batch("c1", 3)
    again = store.log.read_batch("c1", 100)
    store.log.ack([entry.entry_id for entry in first])
    rest = store.log.read_batch("c1", 100)
    store.log.ack([entry.entry_id for entry in rest])

    assert items([entry.event for entry in first]) == ["i0", "i1", "i2"]
    assert again == first
    assert items([entry.event for entry in rest]) == ["i3", "i4"]
    assert len(store.log) == 0
    assert store.log.read_batch("c1", 100) == []


def test_log_ids_increase(make_store: StoreFactory) -> None:
    store = make_store()
    for i in range(20):
        store.append(click("s1", T0 + i, f"i{i}"))

    ids = [entry.entry_id for entry in store.log.read_batch("c1", 100)]
    keys = [tuple(int(part) for part in entry_id.split("-")) for entry_id in ids]

    assert keys == sorted(keys)
    assert len(set(ids)) == 20


def test_log_claims_stale_batch(make_store: StoreFactory) -> None:
    store = make_store()
    store.append_many([click("s1", T0 + i, f"i{i}") for i in range(3)])
    lost = store.log.read_batch("crashed", 2)

    # Another consumer first gets the stale batch, whole, then the new entry.
    claimed = store.log.read_batch("c2", 100, min_idle_ms=0)
    store.log.ack([entry.entry_id for entry in claimed])
    rest = store.log.read_batch("c2", 100, min_idle_ms=0)

    assert claimed == lost
    assert items([entry.event for entry in rest]) == ["i2"]


def test_log_keeps_fresh_batch_of_other_consumer(make_store: StoreFactory) -> None:
    store = make_store()
    store.append_many([click("s1", T0 + i, f"i{i}") for i in range(3)])
    store.log.read_batch("busy", 2)

    batch = store.log.read_batch("c2", 100, min_idle_ms=60_000)

    assert items([entry.event for entry in batch]) == ["i2"]


def test_concurrent_writers_lose_nothing(make_store: StoreFactory) -> None:
    store = make_store(max_events=10_000)
    threads_count, per_thread = 8, 100

    def write(thread: int) -> None:
        for i in range(per_thread):
            event = click("s1", T0 + i, f"t{thread}-{i}", event_id=f"t{thread}-{i}")
            store.append(event)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    kept = store.get("s1")
    assert len(kept) == threads_count * per_thread
    assert len({event.item_id for event in kept}) == threads_count * per_thread
    assert [event.ts for event in kept] == sorted(event.ts for event in kept)
    assert len(store.log) == threads_count * per_thread


def test_concurrent_duplicates_store_once(make_store: StoreFactory) -> None:
    store = make_store()
    accepted = []
    barrier = threading.Barrier(8)

    def write() -> None:
        barrier.wait()
        accepted.append(store.append(click("s1", T0, "a", event_id="same")))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(accepted) == [False] * 7 + [True]
    assert items(store.get("s1")) == ["a"]


# Expiry of the in-process store, with a fake clock. The Redis store's expiry
# is Redis's own; test_redis_store.py checks the TTL values it sets.


def test_memory_session_expires_when_idle(fake_clock) -> None:
    store = InProcessStore(SessionLimits(ttl_seconds=60), clock=fake_clock)
    store.append(click("s1", T0, "a", user_id="u1"))

    fake_clock.advance(59.9)
    assert items(store.get("s1")) == ["a"]
    assert store.user_sessions("u1") == ["s1"]

    fake_clock.advance(0.1)
    assert store.get("s1") == []
    assert store.user_sessions("u1") == []


def test_memory_write_refreshes_expiry(fake_clock) -> None:
    store = InProcessStore(SessionLimits(ttl_seconds=60), clock=fake_clock)
    store.append(click("s1", T0, "a", event_id="e1"))
    fake_clock.advance(50)
    store.append(click("s1", T0 + 1, "b"))
    fake_clock.advance(50)

    assert items(store.get("s1")) == ["a", "b"]

    fake_clock.advance(10)
    assert store.get("s1") == []
    # The dedup window expired with the session.
    assert store.append(click("s1", T0, "a", event_id="e1")) is True


def test_memory_expired_user_link_filtered(fake_clock) -> None:
    store = InProcessStore(SessionLimits(ttl_seconds=60), clock=fake_clock)
    store.append(click("s1", T0, "a", user_id="u1"))
    fake_clock.advance(40)
    store.append(click("s2", T0, "b", user_id="u1"))
    fake_clock.advance(30)

    assert store.user_sessions("u1") == ["s2"]


def test_memory_expired_sessions_are_dropped(fake_clock) -> None:
    store = InProcessStore(SessionLimits(ttl_seconds=60), clock=fake_clock)
    for i in range(100):
        store.append(click(f"s{i}", T0, "a", user_id=f"u{i}"))
    fake_clock.advance(61)
    store.append(click("fresh", T0, "a"))

    # Internal state, checked so a long-running process does not grow.
    assert list(store._sessions) == ["fresh"]
    assert list(store._users) == []


def test_redis_store_is_the_redis_backend(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    try:
        assert store.backend == "redis"
        assert InProcessStore().backend == "memory"
    finally:
        store.close()


def test_memory_log_drops_oldest_when_full(caplog: pytest.LogCaptureFixture) -> None:
    store = InProcessStore()
    store.log.max_entries = 3
    store.append_many([click("s1", T0 + i, f"i{i}") for i in range(5)])

    batch = store.log.read_batch("c1", 100)

    assert items([entry.event for entry in batch]) == ["i2", "i3", "i4"]
    assert store.log.dropped == 2
    assert len(caplog.records) == 1
    assert caplog.records[0].levelname == "WARNING"
