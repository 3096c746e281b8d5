"""The one on-disk layout that every dataset adapter writes.

A prepared dataset is a directory:

- `events.parquet`: the training event log, sorted by (`session_id`, `ts`),
  columns as in `EVENTS_SCHEMA`. For a benchmark with a published split it
  holds the training sessions only.
- `test_events.parquet` (optional): the held-out sessions of a published
  split, same schema.
- `test_cases.parquet` (optional): the published evaluation cases, one row
  per (prefix -> next item), columns as in `CASES_SCHEMA`.
- `items.parquet` (optional): item attributes, columns as in `ITEMS_SCHEMA`.
- `manifest.json`: dataset name, source files, rows read / kept / dropped
  per reason, counts written, and whether timestamps are synthetic.

Ids are strings everywhere, so item ids like SKUs and integer ids of the
benchmarks share one type; models map them to dense indexes themselves.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

EVENTS_FILE: Final = "events.parquet"
TEST_EVENTS_FILE: Final = "test_events.parquet"
CASES_FILE: Final = "test_cases.parquet"
ITEMS_FILE: Final = "items.parquet"
MANIFEST_FILE: Final = "manifest.json"

EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        # Null only for search events.
        pa.field("item_id", pa.string()),
        # One of recsys.events.EVENT_TYPES.
        pa.field("event_type", pa.string(), nullable=False),
        # Search text; null for other event types.
        pa.field("query", pa.string()),
        # Unix milliseconds, UTC.
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("event_id", pa.string()),
    ]
)

CASES_SCHEMA: Final = pa.schema(
    [
        # Position of the case in the published list, from 0.
        pa.field("case_id", pa.int64(), nullable=False),
        # The test session the case was cut from.
        pa.field("session_id", pa.string(), nullable=False),
        # Items of the prefix, oldest first.
        pa.field("prefix", pa.list_(pa.string()), nullable=False),
        # The next item to predict.
        pa.field("label", pa.string(), nullable=False),
    ]
)

ITEMS_SCHEMA: Final = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
    ]
)
