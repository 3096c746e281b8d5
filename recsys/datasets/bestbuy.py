"""Adapter for the Best Buy mobile search -> click log (Kaggle ACM SF hackathon).

Each training row (`user,sku,category,query,click_time,query_time`) becomes
a `search` event with the query text at `query_time` followed by a `click`
on `sku` at `click_time`. Rows that repeat a (user, query, query_time) are
several clicks after one search, so the search is written once.

The test file withholds the clicked SKU, so each test row becomes a `search`
event only, in `test_events.parquet`.

`user` (a hashed id) is the `user_id`. Each user's events are split into
sessions at gaps over 30 minutes, with ids `<user>-<n>`. Times are the
shop's local time strings without a zone. They are read as UTC, so absolute
times may be off by the shop's UTC offset, but gaps and order are right.

`items.parquet` maps each clicked SKU to its Best Buy category code. Rows
with an empty query are dropped (reason "empty query"); other malformed
lines raise `DataFormatError`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.datasets.source import SourceFile
from recsys.datasets.timing import split_by_gap, utc_text_to_ms

TRAIN_FILE = "bestbuy_train.csv.gz"
TEST_FILE = "bestbuy_test.csv.gz"
TRAIN_HEADER = ["user", "sku", "category", "query", "click_time", "query_time"]
TEST_HEADER = ["user", "category", "query", "click_time", "query_time"]


class _Event(NamedTuple):
    ts: int
    event_type: str
    item_id: str | None
    query: str | None


def prepare_bestbuy(source: Path, out: Path) -> dict[str, Any]:
    """Convert `bestbuy_search/` into the prepared layout at `out`."""
    train = SourceFile(source / TRAIN_FILE)
    test = SourceFile(source / TEST_FILE)
    items = ItemColumns()
    train_events = _read(train, TRAIN_HEADER, items)
    test_events = _read(test, TEST_HEADER, None)
    return write_prepared(
        out,
        dataset="bestbuy",
        sources=[train, test],
        events=train_events.to_table(),
        test_events=test_events.to_table(),
        items=items.to_table(),
        synthetic_ts=False,
        notes=[
            "local time strings without a zone are read as UTC",
            "test rows have no sku, so they become search events only",
            "sessions: each user's events split at gaps over 30 minutes",
        ],
    )


def _read(
    source: SourceFile, header: list[str], items: ItemColumns | None
) -> EventColumns:
    """Read one file; with `items`, rows carry a clicked sku to record."""
    by_user: dict[str, list[_Event]] = defaultdict(list)
    searches: set[tuple[str, str, int]] = set()
    categories: dict[str, str] = {}

    for line, fields in source.rows(delimiter=",", header=header, quoted=True):
        row = dict(zip(header, fields, strict=True))
        user, query = row["user"], row["query"].strip()
        if not user:
            raise source.error(line, "user is empty; expected a hashed user id")
        if not query:
            source.drop("empty query")
            continue
        query_ms = utc_text_to_ms(source, line, "query_time", row["query_time"])
        if (user, query, query_ms) not in searches:
            searches.add((user, query, query_ms))
            by_user[user].append(_Event(query_ms, "search", None, query))
        if items is not None:
            sku = row["sku"]
            if not sku.isdigit():
                raise source.error(line, f"sku is {sku!r}; expected an integer SKU")
            click_ms = utc_text_to_ms(source, line, "click_time", row["click_time"])
            by_user[user].append(_Event(click_ms, "click", sku, None))
            categories.setdefault(sku, row["category"])
        source.keep()

    if items is not None:
        for sku, category in categories.items():
            items.append(sku, category=category or None)
    events = EventColumns()
    for user, user_events in by_user.items():
        for n, session in enumerate(split_by_gap(user_events, ts=lambda e: e.ts)):
            for event in session:
                events.append(
                    f"{user}-{n}",
                    event.event_type,
                    event.ts,
                    item_id=event.item_id,
                    user_id=user,
                    query=event.query,
                )
    return events
