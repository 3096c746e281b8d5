"""Drain the durable event log into day-partitioned Parquet files.

Layout: `OUT/date=YYYY-MM-DD/part-<first entry id>_<last entry id>.parquet`,
columns as in `EVENTS_SCHEMA`, one partition per UTC day of `ts`, rows in
log order. A batch that spans several days writes one file per day, all
named after the batch's id range.

Exactly once, despite crashes: a batch is acknowledged (and deleted from the
log) only after all its files are written to a temporary name, fsynced,
renamed into place and the directory fsynced. A consumer that crashes before
the acknowledgement gets the very same batch back on its next read, so the
rerun writes the same file names and replaces the files rather than adding
copies. Temporary files start with a dot, which Parquet dataset readers
skip. At start, an export removes the temporary files that no write has
touched for `min_idle_ms`, the same idle time after which it claims the
batch of another consumer.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.sessions.base import EventLog, LogEntry

log = logging.getLogger(__name__)

# Test hook: "STEP:N" kills this process with SIGKILL the Nth time it reaches
# STEP (read, temp_written, renamed, acked), to prove crash safety.
FAILPOINT_ENV = "RECSYS_EXPORT_FAILPOINT"
_failpoint_hits: dict[str, int] = defaultdict(int)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """Counts and duration of one export run."""

    batches: int
    events: int
    files: int
    seconds: float


def export_events(
    event_log: EventLog,
    out_dir: Path,
    *,
    consumer: str = "exporter",
    batch_size: int = 10_000,
    min_idle_ms: int = 60_000,
) -> ExportSummary:
    """Drain `event_log` into `out_dir` until no entry is left; return counts."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_temp_files(out_dir, min_idle_ms / 1000)
    batches = events = files = 0
    while True:
        batch = event_log.read_batch(consumer, batch_size, min_idle_ms=min_idle_ms)
        if not batch:
            break
        _failpoint("read")
        paths = write_batch(batch, out_dir)
        event_log.ack([entry.entry_id for entry in batch])
        _failpoint("acked")
        batches += 1
        events += len(batch)
        files += len(paths)
        log.debug("exported %d events to %s", len(batch), [str(p) for p in paths])

    summary = ExportSummary(batches, events, files, time.perf_counter() - start)
    log.info(
        "exported %d events in %d batches to %d files under %s in %.2f s",
        summary.events,
        summary.batches,
        summary.files,
        out_dir,
        summary.seconds,
    )
    return summary


def write_batch(batch: Sequence[LogEntry], out_dir: Path) -> list[Path]:
    """Write one batch durably, one file per UTC day; return the file paths."""
    ordered = sorted(batch, key=lambda entry: _id_key(entry.entry_id))
    name = f"part-{ordered[0].entry_id}_{ordered[-1].entry_id}.parquet"
    by_day: dict[str, list[LogEntry]] = defaultdict(list)
    for entry in ordered:
        by_day[_utc_day(entry.event.ts)].append(entry)

    paths = []
    for day, entries in sorted(by_day.items()):
        day_dir = out_dir / f"date={day}"
        if not day_dir.exists():
            day_dir.mkdir()
            _fsync_dir(out_dir)
        paths.append(_write_durably(_table(entries), day_dir / name))
    return paths


def _table(entries: Sequence[LogEntry]) -> pa.Table:
    columns: dict[str, list[Any]] = {field.name: [] for field in EVENTS_SCHEMA}
    for entry in entries:
        for column, values in columns.items():
            values.append(getattr(entry.event, column))
    return pa.table(columns, schema=EVENTS_SCHEMA)


def _write_durably(table: pa.Table, path: Path) -> Path:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as file:
        pq.write_table(table, file)
        file.flush()
        os.fsync(file.fileno())
    _failpoint("temp_written")
    os.replace(temp, path)
    _fsync_dir(path.parent)
    _failpoint("renamed")
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temp_files(out_dir: Path, min_age_seconds: float) -> None:
    now = time.time()
    for temp in out_dir.glob("date=*/.part-*.parquet.tmp"):
        if now - temp.stat().st_mtime >= min_age_seconds:
            log.info("removing %s left by an interrupted export", temp)
            temp.unlink(missing_ok=True)


def _utc_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _failpoint(step: str) -> None:
    target = os.environ.get(FAILPOINT_ENV)
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != step:
        return
    _failpoint_hits[step] += 1
    if _failpoint_hits[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
