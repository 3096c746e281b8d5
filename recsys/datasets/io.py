"""Writing and loading a prepared dataset (the layout of `schema`).

Adapters collect rows in an `EventColumns` (and `CaseColumns`, `ItemColumns`)
and hand them to `write_prepared`, which sorts the events by
(`session_id`, `ts`), writes the Parquet files and the manifest, and returns
the manifest. `load_prepared` reads a prepared directory back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.datasets.schema import (
    CASES_FILE,
    CASES_SCHEMA,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    ITEMS_FILE,
    ITEMS_SCHEMA,
    MANIFEST_FILE,
    TEST_EVENTS_FILE,
)
from recsys.datasets.source import SourceFile
from recsys.errors import DataFormatError, NotFoundError

log = logging.getLogger(__name__)

PREPARE_HINT = "create it with `recsys data prepare --dataset NAME --out DIR`"


@dataclass
class EventColumns:
    """Event rows collected column by column (`EVENTS_SCHEMA`)."""

    session_id: list[str] = field(default_factory=list)
    user_id: list[str | None] = field(default_factory=list)
    item_id: list[str | None] = field(default_factory=list)
    event_type: list[str] = field(default_factory=list)
    query: list[str | None] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    event_id: list[str | None] = field(default_factory=list)

    def append(
        self,
        session_id: str,
        event_type: str,
        ts: int,
        *,
        item_id: str | None = None,
        user_id: str | None = None,
        query: str | None = None,
        event_id: str | None = None,
    ) -> None:
        self.session_id.append(session_id)
        self.user_id.append(user_id)
        self.item_id.append(item_id)
        self.event_type.append(event_type)
        self.query.append(query)
        self.ts.append(ts)
        self.event_id.append(event_id)

    def __len__(self) -> int:
        return len(self.session_id)

    def to_table(self) -> pa.Table:
        """Return the rows as a table sorted by (`session_id`, `ts`).

        The sort is stable, so events with equal timestamps keep the order in
        which they were appended (the order of the source file).
        """
        table = pa.table(
            {name: getattr(self, name) for name in EVENTS_SCHEMA.names},
            schema=EVENTS_SCHEMA,
        )
        return sort_events(table)


def sort_events(table: pa.Table) -> pa.Table:
    """Sort an events table by (`session_id`, `ts`), keeping ties in order."""
    order = pc.sort_indices(
        table, sort_keys=[("session_id", "ascending"), ("ts", "ascending")]
    )
    return table.take(order)


@dataclass
class CaseColumns:
    """Evaluation cases collected column by column (`CASES_SCHEMA`)."""

    case_id: list[int] = field(default_factory=list)
    session_id: list[str] = field(default_factory=list)
    prefix: list[list[str]] = field(default_factory=list)
    label: list[str] = field(default_factory=list)

    def append(
        self, case_id: int, session_id: str, prefix: list[str], label: str
    ) -> None:
        self.case_id.append(case_id)
        self.session_id.append(session_id)
        self.prefix.append(prefix)
        self.label.append(label)

    def __len__(self) -> int:
        return len(self.case_id)

    def to_table(self) -> pa.Table:
        return pa.table(
            {name: getattr(self, name) for name in CASES_SCHEMA.names},
            schema=CASES_SCHEMA,
        )


@dataclass
class ItemColumns:
    """Item attributes collected column by column (`ITEMS_SCHEMA`)."""

    item_id: list[str] = field(default_factory=list)
    category: list[str | None] = field(default_factory=list)
    title: list[str | None] = field(default_factory=list)
    brand: list[str | None] = field(default_factory=list)
    price: list[float | None] = field(default_factory=list)

    def append(
        self,
        item_id: str,
        *,
        category: str | None = None,
        title: str | None = None,
        brand: str | None = None,
        price: float | None = None,
    ) -> None:
        self.item_id.append(item_id)
        self.category.append(category)
        self.title.append(title)
        self.brand.append(brand)
        self.price.append(price)

    def __len__(self) -> int:
        return len(self.item_id)

    def to_table(self) -> pa.Table:
        table = pa.table(
            {name: getattr(self, name) for name in ITEMS_SCHEMA.names},
            schema=ITEMS_SCHEMA,
        )
        return table.sort_by("item_id")


def describe_events(table: pa.Table) -> dict[str, Any]:
    """Count sessions, events, items, users and events per type of a table."""
    types = pc.value_counts(table.column("event_type")).to_pylist()
    return {
        "sessions": pc.count_distinct(table.column("session_id")).as_py(),
        "events": table.num_rows,
        "items": pc.count_distinct(table.column("item_id")).as_py(),
        "users": pc.count_distinct(table.column("user_id")).as_py(),
        "event_types": {
            t["values"]: t["counts"] for t in sorted(types, key=lambda t: t["values"])
        },
    }


def write_prepared(
    out: Path | str,
    *,
    dataset: str,
    sources: Sequence[SourceFile],
    events: pa.Table,
    test_events: pa.Table | None = None,
    cases: pa.Table | None = None,
    items: pa.Table | None = None,
    synthetic_ts: bool,
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """Write the Parquet files and `manifest.json` of a prepared dataset.

    Files of an earlier preparation that this one does not write (say a
    stale `test_events.parquet`) are removed, so the directory always
    matches its manifest. The manifest is written last.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        EVENTS_FILE: events,
        TEST_EVENTS_FILE: test_events,
        CASES_FILE: cases,
        ITEMS_FILE: items,
    }
    counts: dict[str, Any] = {}
    for name, table in tables.items():
        path = out / name
        if table is None:
            path.unlink(missing_ok=True)
            continue
        _write_parquet(table, path)
        key = name.removesuffix(".parquet")
        if name in (EVENTS_FILE, TEST_EVENTS_FILE):
            counts[key] = describe_events(table)
        else:
            counts[key] = table.num_rows

    manifest = {
        "dataset": dataset,
        "sources": [source.summary() for source in sources],
        "source_dir": str(sources[0].path.parent) if sources else None,
        "counts": counts,
        "synthetic_ts": synthetic_ts,
        "notes": list(notes),
    }
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST_FILE)
    for source in sources:
        source.log_summary()
    log.info("wrote %s to %s", dataset, out)
    return manifest


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset loaded from disk.

    `test_events`, `cases` and `items` are None when the dataset has no such
    file (only the benchmarks ship a published test split).
    """

    path: Path
    manifest: dict[str, Any]
    events: pa.Table
    test_events: pa.Table | None
    cases: pa.Table | None
    items: pa.Table | None

    @property
    def name(self) -> str:
        return str(self.manifest.get("dataset", self.path.name))


def load_prepared(path: Path | str) -> PreparedDataset:
    """Load a directory written by `recsys data prepare` or `recsys data synth`.

    Raises `NotFoundError` when the directory, `manifest.json` or
    `events.parquet` is missing, and `DataFormatError` when a file does not
    have the expected columns.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"prepared dataset not found: {path}; {PREPARE_HINT}")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise NotFoundError(
            f"{MANIFEST_FILE} not found in {path}, so it is not a prepared "
            f"dataset; {PREPARE_HINT}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(str(manifest_path), exc.lineno, exc.msg) from exc
    if not (path / EVENTS_FILE).is_file():
        raise NotFoundError(f"{EVENTS_FILE} not found in {path}; {PREPARE_HINT}")
    return PreparedDataset(
        path=path,
        manifest=manifest,
        events=_read_parquet(path / EVENTS_FILE, EVENTS_SCHEMA),
        test_events=_read_optional(path / TEST_EVENTS_FILE, EVENTS_SCHEMA),
        cases=_read_optional(path / CASES_FILE, CASES_SCHEMA),
        items=_read_optional(path / ITEMS_FILE, ITEMS_SCHEMA),
    )


def _read_optional(path: Path, schema: pa.Schema) -> pa.Table | None:
    return _read_parquet(path, schema) if path.is_file() else None


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataFormatError(
            str(path), 0, f"missing columns {missing}; {PREPARE_HINT} again"
        )
    return table.select(schema.names).cast(schema)
