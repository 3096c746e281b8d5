"""Adapter for Taobao UserBehavior (Alibaba Tianchi), headerless CSV.

Columns are `user_id,item_id,category_id,behavior_type,timestamp`. Behaviour
types map as `pv` -> `click`, `cart` -> `cart_add` and `buy` -> `purchase`.
`fav` (adding to favourites) has no event type in this engine, so those rows
are dropped with the reason "fav has no event type". Their items still go
into `items.parquet`.

The source has no sessions: each user's events are sorted by time and split
into sessions at gaps over 30 minutes, with ids `<user_id>-<n>` (n from 0).
`timestamp` (Unix seconds) becomes milliseconds. A few rows lie outside the
official 2017-11-25 to 2017-12-03 range, as in the full data; they are kept.
Malformed lines raise `DataFormatError`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int
from recsys.datasets.timing import seconds_to_ms, split_by_gap

SOURCE_FILE = "taobao_userbehavior_head.csv.gz"
EVENT_TYPES = {"pv": "click", "cart": "cart_add", "buy": "purchase"}
DROPPED_TYPES = {"fav": "fav has no event type"}


def prepare_taobao(source: Path, out: Path) -> dict[str, Any]:
    """Convert the Taobao CSV in `source` into the prepared layout at `out`."""
    behavior = SourceFile(source / SOURCE_FILE)
    by_user: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    categories: dict[str, str] = {}

    for line, fields in behavior.rows(delimiter=",", n_fields=5):
        user_id, item_id, category_id, kind, timestamp = fields
        for name, value in (("user_id", user_id), ("item_id", item_id)):
            parse_int(behavior, line, name, value)
        parse_int(behavior, line, "category_id", category_id)
        parse_int(behavior, line, "timestamp", timestamp)
        ts = seconds_to_ms(behavior, line, "timestamp", timestamp)
        categories.setdefault(item_id, category_id)
        if kind in DROPPED_TYPES:
            behavior.drop(DROPPED_TYPES[kind])
            continue
        if kind not in EVENT_TYPES:
            valid = sorted([*EVENT_TYPES, *DROPPED_TYPES])
            raise behavior.error(
                line, f"behavior_type is {kind!r}; expected one of {valid}"
            )
        by_user[user_id].append((ts, item_id, EVENT_TYPES[kind]))
        behavior.keep()

    events = EventColumns()
    for user_id, user_events in by_user.items():
        sessions = split_by_gap(user_events, ts=lambda event: event[0])
        for n, session in enumerate(sessions):
            for ts, item_id, event_type in session:
                events.append(
                    f"{user_id}-{n}", event_type, ts, item_id=item_id, user_id=user_id
                )

    items = ItemColumns()
    for item_id, category_id in categories.items():
        items.append(item_id, category=category_id)
    return write_prepared(
        out,
        dataset="taobao",
        sources=[behavior],
        events=events.to_table(),
        items=items.to_table(),
        synthetic_ts=False,
        notes=["sessions: each user's events split at gaps over 30 minutes"],
    )
