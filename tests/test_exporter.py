"""The event log exporter: Parquet layout, and exactly once despite SIGKILL."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.events import Event
from recsys.sessions import InProcessStore, SessionStore
from recsys.sessions.exporter import FAILPOINT_ENV, export_events
from recsys.sessions.redis_store import RedisStore

DAY_MS = 86_400_000
T0 = 1_764_806_400_000  # 2025-12-04T00:00:00Z


def three_days_of_events(count: int) -> list[Event]:
    """Events spread over 2025-12-04..06 UTC, cycling days so batches span days."""
    return [
        Event(
            session_id=f"s{i % 7}",
            event_type="click",
            ts=T0 + (i % 3) * DAY_MS + i,
            item_id=f"i{i}",
            user_id=None if i % 2 else f"u{i % 5}",
            event_id=f"e{i}",
        )
        for i in range(count)
    ]


def utc_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def read_exported(out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(out_dir.glob("date=*/*.parquet")):
        table = pq.read_table(path)
        assert table.schema.equals(EVENTS_SCHEMA), path
        rows += table.to_pylist()
    return rows


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[SessionStore]:
    store: SessionStore
    if request.param == "memory":
        store = InProcessStore()
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"))
    yield store
    store.close()


def test_export_partitions_by_utc_day(store: SessionStore, tmp_path: Path) -> None:
    events = three_days_of_events(10)
    store.append_many(events)

    summary = export_events(store.log, tmp_path, batch_size=4)

    days = sorted(p.name for p in tmp_path.iterdir())
    assert days == ["date=2025-12-04", "date=2025-12-05", "date=2025-12-06"]
    # Batches of 4, 4 and 2 events cover 3, 3 and 2 days.
    assert (summary.batches, summary.events, summary.files) == (3, 10, 8)
    for path in tmp_path.glob("date=*/*.parquet"):
        day = path.parent.name.removeprefix("date=")
        for row in pq.read_table(path).to_pylist():
            assert utc_day(row["ts"]) == day
    assert len(store.log) == 0


def test_export_writes_every_field(store: SessionStore, tmp_path: Path) -> None:
    search = Event("s1", "search", T0, user_id="u1", query="tea", event_id="e1")
    click = Event("s1", "click", T0 + 1, item_id="i1")
    store.append_many([search, click])

    export_events(store.log, tmp_path)

    assert read_exported(tmp_path) == [search.to_dict(), click.to_dict()]


def test_file_named_after_id_range(store: SessionStore, tmp_path: Path) -> None:
    store.append_many(three_days_of_events(2))
    entry_ids = [entry.entry_id for entry in store.log.read_batch("exporter", 10)]

    export_events(store.log, tmp_path)

    name = f"part-{entry_ids[0]}_{entry_ids[-1]}.parquet"
    assert sorted(p.name for p in tmp_path.glob("date=*/*")) == [name, name]


def test_empty_log_writes_nothing(store: SessionStore, tmp_path: Path) -> None:
    summary = export_events(store.log, tmp_path)

    assert (summary.batches, summary.events, summary.files) == (0, 0, 0)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_removed(store: SessionStore, tmp_path: Path) -> None:
    day_dir = tmp_path / "date=2025-12-04"
    day_dir.mkdir()
    stale = day_dir / ".part-1-0_2-0.parquet.tmp"
    stale.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 61, time.time() - 61))
    # Possibly still being written by another exporter: kept.
    fresh = day_dir / ".part-3-0_4-0.parquet.tmp"
    fresh.write_bytes(b"half a file")

    export_events(store.log, tmp_path, min_idle_ms=60_000)

    assert list(day_dir.iterdir()) == [fresh]


def run_exporter(
    redis_url: str,
    prefix: str,
    out_dir: Path,
    *,
    batch_size: int,
    failpoint: str | None = None,
    consumer: str = "exporter",
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "RECSYS_REDIS_PREFIX": prefix}
    env.pop(FAILPOINT_ENV, None)
    if failpoint is not None:
        env[FAILPOINT_ENV] = failpoint
    command = [
        sys.executable, "-m", "recsys", "--log-level", "WARNING",
        "events", "export", "--out", str(out_dir),
        "--batch-size", str(batch_size), "--consumer", consumer,
        "--min-idle-seconds", "0",
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_sigkill_at_every_step_exports_once(
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    request.addfinalizer(store.close)
    events = three_days_of_events(300)
    store.append_many(events)

    # Each run dies by SIGKILL at one step of the export; some change the
    # batch size or the consumer, as an operator restarting it might.
    crashes = [
        ("read:2", 40, "exporter"),
        ("temp_written:2", 40, "exporter"),
        ("renamed:1", 25, "exporter"),  # between two days of one batch
        ("renamed:3", 40, "exporter"),
        ("acked:1", 40, "exporter"),
        ("temp_written:1", 30, "other"),  # takes over exporter's batch
    ]
    for failpoint, batch_size, consumer in crashes:
        result = run_exporter(
            redis_url,
            redis_prefix,
            tmp_path,
            batch_size=batch_size,
            failpoint=failpoint,
            consumer=consumer,
        )
        assert result.returncode == -9, (failpoint, result.stderr)

    assert len(store.log) > 0
    result = run_exporter(redis_url, redis_prefix, tmp_path, batch_size=50)
    assert result.returncode == 0, result.stderr

    rows = read_exported(tmp_path)
    expected_ids = sorted(str(event.event_id) for event in events)
    assert sorted(row["event_id"] for row in rows) == expected_ids
    assert sorted(rows, key=lambda row: row["event_id"]) == sorted(
        (e.to_dict() for e in events), key=lambda row: row["event_id"]
    )
    assert len(store.log) == 0
    assert list(tmp_path.glob("date=*/.*")) == []


@pytest.mark.slow
def test_sigkill_at_random_times_exports_once(
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    request.addfinalizer(store.close)
    events = three_days_of_events(3000)
    store.append_many(events)
    env = {**os.environ, "REDIS_URL": redis_url, "RECSYS_REDIS_PREFIX": redis_prefix}
    command = [
        sys.executable, "-m", "recsys", "--log-level", "WARNING",
        "events", "export", "--out", str(tmp_path), "--batch-size", "20",
    ]  # fmt: skip
    # Each run is killed a random few milliseconds after it wrote a new file,
    # so the kills land at different steps of the export loop.
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.05) for _ in range(6)]

    def files_written() -> int:
        return len(list(tmp_path.glob("date=*/*.parquet")))

    killed = 0
    for delay in delays:
        before = files_written()
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while files_written() == before and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        process.kill()
        process.communicate(timeout=30)
        killed += process.returncode == -9
    # The kills landed mid-export: some batches were written, some were not.
    exported_before_last_run = len(read_exported(tmp_path))
    left_before_last_run = len(store.log)
    result = subprocess.run(command, env=env, capture_output=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert killed == len(delays)
    assert exported_before_last_run > 0
    assert left_before_last_run > 0
    rows = read_exported(tmp_path)
    assert len(rows) == len(events)
    assert sorted(row["event_id"] for row in rows) == sorted(
        str(event.event_id) for event in events
    )
    assert len(store.log) == 0


def test_export_requires_redis_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "events", "export", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "recsys events: error: REDIS_URL is not set; export reads the Redis "
        "event log, and the in-process store keeps its log inside the API process"
    )


def test_export_command_prints_counts(
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    from recsys.cli import main

    store = RedisStore(redis_url, prefix=redis_prefix)
    request.addfinalizer(store.close)
    store.append_many(three_days_of_events(30))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RECSYS_REDIS_PREFIX", redis_prefix)
    monkeypatch.delenv("RECSYS_API_KEY", raising=False)
    monkeypatch.setattr("recsys.settings._summary_logged", False)
    caplog.set_level(logging.INFO)
    out = tmp_path / "log"

    code = main(["events", "export", "--out", str(out), "--batch-size", "20"])

    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"exported 30 events in 2 batches to 6 files under {out} in "
    )
    assert len(read_exported(out)) == 30
    # The API key matters to the API only, so the export does not warn about it.
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_foreign_log_entry_stops_export_naming_it(
    redis_url: str, redis_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from recsys.errors import RecsysError

    store = RedisStore(redis_url, prefix=redis_prefix)
    request.addfinalizer(store.close)
    store.append_many(three_days_of_events(2))
    key = f"{redis_prefix}log"
    entry_id = store.client.xadd(key, {"event": "not json"})

    with pytest.raises(RecsysError) as info:
        export_events(store.log, tmp_path, batch_size=10)

    assert str(info.value) == (
        f"entry {entry_id} of the Redis stream {key} is not an event written by "
        f"recsys: {{'event': 'not json'}}; inspect it with XRANGE {key} {entry_id} "
        f"{entry_id}, then remove it with XACK {key} exporter {entry_id} and XDEL "
        f"{key} {entry_id}"
    )
    # The batch stays unacknowledged, so nothing was lost or written.
    assert len(store.log) == 3
    assert read_exported(tmp_path) == []
