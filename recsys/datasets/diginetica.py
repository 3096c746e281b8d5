"""Adapter for the raw DIGINETICA files (`diginetica/raw/`).

- `train-purchases.csv.gz` becomes `purchase` events (all 18,025 rows).
- `sample_train-item-views.csv.gz` (a 12,391-row sample of the views)
  becomes `click` events. View and purchase session ids come from one id
  space, so a session that has both keeps them together.
- `product-categories.csv.gz` becomes `items.parquet` (item -> category).

Timestamps: `timeframe` is milliseconds since the session started and
`eventdate` the day of the event. An event's `ts` is midnight UTC of the
session's earliest `eventdate` plus its `timeframe`, so events keep their
order inside a session and sessions fall on their day. The time of day is
therefore not real, and the manifest records `"synthetic_ts": true`.

`userId` `NA` (an anonymous visitor) becomes a null `user_id`. The order
number of a purchase has no column in the event layout and is dropped.
Malformed lines raise `DataFormatError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int
from recsys.datasets.timing import day_to_ms

PURCHASES_FILE = "train-purchases.csv.gz"
VIEWS_FILE = "sample_train-item-views.csv.gz"
CATEGORIES_FILE = "product-categories.csv.gz"

PURCHASES_HEADER = [
    "sessionId",
    "userId",
    "timeframe",
    "eventdate",
    "ordernumber",
    "itemId",
]
VIEWS_HEADER = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
# The header of the original views file, before the SR-GNN authors renamed it.
VIEWS_HEADER_ORIGINAL = ["sessionId", "userId", "itemId", "timeframe", "eventdate"]
CATEGORIES_HEADER = ["itemId", "categoryId"]


@dataclass(frozen=True)
class _Row:
    session_id: str
    user_id: str | None
    item_id: str
    event_type: str
    timeframe_ms: int
    day_ms: int


def prepare_diginetica_purchases(source: Path, out: Path) -> dict[str, Any]:
    """Convert `diginetica/raw/` into the prepared layout at `out`."""
    purchases = SourceFile(source / PURCHASES_FILE)
    views = SourceFile(source / VIEWS_FILE)
    categories = SourceFile(source / CATEGORIES_FILE)

    rows = _read_purchases(purchases) + _read_views(views)
    session_day: dict[str, int] = {}
    for row in rows:
        day = session_day.get(row.session_id)
        if day is None or row.day_ms < day:
            session_day[row.session_id] = row.day_ms

    events = EventColumns()
    for row in rows:
        events.append(
            row.session_id,
            row.event_type,
            session_day[row.session_id] + row.timeframe_ms,
            item_id=row.item_id,
            user_id=row.user_id,
        )
    return write_prepared(
        out,
        dataset="diginetica-purchases",
        sources=[purchases, views, categories],
        events=events.to_table(),
        items=_read_categories(categories).to_table(),
        synthetic_ts=True,
        notes=[
            "ts = midnight UTC of the session's earliest eventdate + timeframe; "
            "the time of day is not real",
            "clicks come from a 12,391-row sample of the views, not all views",
        ],
    )


def _user(text: str) -> str | None:
    return None if text == "NA" else text


def _read_purchases(source: SourceFile) -> list[_Row]:
    rows = []
    for line, fields in source.rows(delimiter=";", header=PURCHASES_HEADER):
        session_id, user_id, timeframe, eventdate, _order, item_id = fields
        parse_int(source, line, "sessionId", session_id)
        parse_int(source, line, "itemId", item_id)
        rows.append(
            _Row(
                session_id,
                _user(user_id),
                item_id,
                "purchase",
                parse_int(source, line, "timeframe", timeframe),
                day_to_ms(source, line, "eventdate", eventdate),
            )
        )
        source.keep()
    return rows


def _read_views(source: SourceFile) -> list[_Row]:
    rows = []
    for line, fields in source.rows(
        delimiter=";", header=VIEWS_HEADER, other_headers=[VIEWS_HEADER_ORIGINAL]
    ):
        session_id, user_id, item_id, timeframe, eventdate = fields
        parse_int(source, line, "session_id", session_id)
        parse_int(source, line, "item_id", item_id)
        rows.append(
            _Row(
                session_id,
                _user(user_id),
                item_id,
                "click",
                parse_int(source, line, "timeframe", timeframe),
                day_to_ms(source, line, "eventdate", eventdate),
            )
        )
        source.keep()
    return rows


def _read_categories(source: SourceFile) -> ItemColumns:
    items = ItemColumns()
    for line, (item_id, category_id) in source.rows(
        delimiter=";", header=CATEGORIES_HEADER
    ):
        parse_int(source, line, "itemId", item_id)
        parse_int(source, line, "categoryId", category_id)
        items.append(item_id, category=category_id)
        source.keep()
    return items
