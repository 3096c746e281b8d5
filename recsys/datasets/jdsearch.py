"""Adapter for the JDsearch sample (JD.com personalised product search).

The behaviour file has one row per user. Its `history_*` columns are
`_`-joined lists: the query of each event (term ids joined by `\\x18`, `-1`
for none), the product id, the type (`CLICK`, `CART`, `ORD`, `FLW`) and the
gap since the previous event. Types map as `CLICK` -> `click`, `CART` ->
`cart_add` and `ORD` -> `purchase`; `FLW` (follow) has no event type and is
dropped, counted per event under "follow has no event type". An event that
carries a query different from the previous event's query is preceded by a
`search` event with that query (term ids joined by spaces).

The row's test query becomes `test_events.parquet`: a `search` event, then one
event per candidate labelled 1 (click), 2 (cart_add) or 3 (purchase).

Timestamps are synthetic: the file gives only gaps, whose unit it does not
state. The adapter reads them as seconds and starts every user at
2022-01-01 00:00 UTC, so order and gaps (if seconds) are kept but dates are
not. Users are named `u<row>` (from 0) and split into sessions at gaps over
30 minutes. `items.parquet` comes from the product file: `title` is the
anonymised name (term ids), `brand` the brand id and `category` the deepest
category id. Malformed lines raise `DataFormatError`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int
from recsys.datasets.timing import check_ms, split_by_gap

BEHAVIOR_FILE = "jdsearch_user_behavior_sample.tsv.gz"
PRODUCTS_FILE = "jdsearch_product_meta_sample.tsv.gz"
BEHAVIOR_HEADER = [
    "query",
    "candidate_wid_list",
    "candidate_label_list",
    "history_qry_list",
    "history_wid_list",
    "history_type_list",
    "history_time_list",
]
PRODUCTS_HEADER = [
    "wid",
    "name",
    "brand_id",
    "brand_name",
    *[f"{kind}_{level}" for level in range(1, 5) for kind in ("cate_id", "cate_name")],
    "shop_id",
]
EVENT_TYPES = {"CLICK": "click", "CART": "cart_add", "ORD": "purchase"}
DROPPED_TYPES = {"FLW": "follow has no event type"}
LABEL_TYPES = {1: "click", 2: "cart_add", 3: "purchase"}
START_MS = int(datetime(2022, 1, 1, tzinfo=UTC).timestamp() * 1000)
NO_QUERY = "-1"
TERM_SEPARATOR = "\x18"


class _Event(NamedTuple):
    ts: int
    event_type: str
    item_id: str
    query: str | None


def prepare_jdsearch(source: Path, out: Path) -> dict[str, Any]:
    """Convert the JDsearch sample in `source` into the layout at `out`."""
    behavior = SourceFile(source / BEHAVIOR_FILE)
    products = SourceFile(source / PRODUCTS_FILE)
    events = EventColumns()
    test_events = EventColumns()
    for line, fields in behavior.rows(header=BEHAVIOR_HEADER):
        user_id = f"u{behavior.read - 1}"
        row = dict(zip(BEHAVIOR_HEADER, fields, strict=True))
        history, test_ms = _read_history(behavior, line, row)
        for n, session in enumerate(split_by_gap(history, ts=lambda e: e.ts)):
            _append_session(events, f"{user_id}-{n}", user_id, session)
        _append_test(behavior, line, test_events, user_id, fields, test_ms)
        behavior.keep()
    return write_prepared(
        out,
        dataset="jdsearch",
        sources=[behavior, products],
        events=events.to_table(),
        test_events=test_events.to_table(),
        items=_read_products(products).to_table(),
        synthetic_ts=True,
        notes=[
            "gaps read as seconds from 2022-01-01 UTC per user; dates are not real",
            "behaviour rows are users; dropped counts are history events",
        ],
    )


def _query_text(raw: str) -> str | None:
    return None if raw == NO_QUERY else " ".join(raw.split(TERM_SEPARATOR))


def _read_history(
    source: SourceFile, line: int, row: dict[str, str]
) -> tuple[list[_Event], int]:
    """Return the row's history events and the time of its test query."""
    queries = row["history_qry_list"].split("_")
    items = row["history_wid_list"].split("_")
    kinds = row["history_type_list"].split("_")
    gaps = row["history_time_list"].split("_")
    if not len(queries) == len(items) == len(kinds) == len(gaps) - 1:
        raise source.error(
            line,
            f"history lists have {len(queries)}, {len(items)}, {len(kinds)} and "
            f"{len(gaps)} entries; expected n, n, n and n + 1",
        )
    ts = START_MS
    history = []
    for query, item_id, kind, gap in zip(queries, items, kinds, gaps, strict=False):
        ts += parse_int(source, line, "history_time_list", gap) * 1000
        check_ms(source, line, "the time after history_time_list", gap, ts)
        parse_int(source, line, "history_wid_list", item_id)
        if kind in DROPPED_TYPES:
            source.drop(DROPPED_TYPES[kind])
            continue
        if kind not in EVENT_TYPES:
            valid = sorted([*EVENT_TYPES, *DROPPED_TYPES])
            raise source.error(
                line, f"history_type_list holds {kind!r}; expected one of {valid}"
            )
        history.append(_Event(ts, EVENT_TYPES[kind], item_id, _query_text(query)))
    test_ms = ts + parse_int(source, line, "history_time_list", gaps[-1]) * 1000
    check_ms(source, line, "the time after history_time_list", gaps[-1], test_ms)
    return history, test_ms


def _append_session(
    events: EventColumns, session_id: str, user_id: str, session: list[_Event]
) -> None:
    previous_query = None
    for event in session:
        if event.query is not None and event.query != previous_query:
            events.append(
                session_id, "search", event.ts, user_id=user_id, query=event.query
            )
        previous_query = event.query
        events.append(
            session_id,
            event.event_type,
            event.ts,
            item_id=event.item_id,
            user_id=user_id,
        )


def _append_test(
    source: SourceFile,
    line: int,
    events: EventColumns,
    user_id: str,
    fields: list[str],
    ts: int,
) -> None:
    query, candidates, labels = fields[0], fields[1].split("_"), fields[2].split("_")
    if len(candidates) != len(labels):
        raise source.error(
            line,
            f"{len(candidates)} candidates but {len(labels)} labels; expected as many",
        )
    session_id = f"{user_id}-test"
    events.append(session_id, "search", ts, user_id=user_id, query=_query_text(query))
    for item_id, label in zip(candidates, labels, strict=True):
        try:
            code = int(float(label))
        except ValueError:
            raise source.error(line, f"label {label!r} is not a number") from None
        if code in LABEL_TYPES:
            ts += 1000
            events.append(
                session_id, LABEL_TYPES[code], ts, item_id=item_id, user_id=user_id
            )


def _read_products(source: SourceFile) -> ItemColumns:
    items = ItemColumns()
    for line, fields in source.rows(header=PRODUCTS_HEADER):
        row = dict(zip(PRODUCTS_HEADER, fields, strict=True))
        parse_int(source, line, "wid", row["wid"])
        levels = [row[f"cate_id_{level}"] for level in range(1, 5)]
        category = next((c for c in reversed(levels) if c), None)
        items.append(
            row["wid"],
            category=category,
            title=row["name"] or None,
            brand=row["brand_id"] or None,
        )
        source.keep()
    return items
