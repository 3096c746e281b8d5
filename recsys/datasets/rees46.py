"""Adapter for the REES46 multi-category store event log (Kaggle, Open CDP).

Reads `rees46_2019_oct_head.csv.gz` from the source folder. Event types map as
`view` -> `click`, `cart` -> `cart_add`, `remove_from_cart` -> `cart_remove`
and `purchase` -> `purchase`. `user_session` is the session id and `user_id`
the permanent user id. `event_time` (`YYYY-MM-DD HH:MM:SS UTC`) becomes Unix
milliseconds.

`items.parquet` has one row per product with `brand`, the last `price` seen
and a `category`: the `category_code` where the row has one, otherwise the
`category_id`. That id is a 19-digit integer that a float would corrupt, so
it stays a string.

Rows without `user_session` are dropped (reason "missing user_session"); any
other malformed line raises `DataFormatError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int
from recsys.datasets.timing import utc_text_to_ms

SOURCE_FILE = "rees46_2019_oct_head.csv.gz"
HEADER = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
]
EVENT_TYPES = {
    "view": "click",
    "cart": "cart_add",
    "remove_from_cart": "cart_remove",
    "purchase": "purchase",
}


def prepare_rees46(source: Path, out: Path) -> dict[str, Any]:
    """Convert the REES46 CSV in `source` into the prepared layout at `out`."""
    log_file = SourceFile(source / SOURCE_FILE)
    events = EventColumns()
    items: dict[str, tuple[str | None, str | None, float | None]] = {}

    for line, fields in log_file.rows(delimiter=",", header=HEADER, quoted=True):
        time_text, kind, product_id, category_id, code, brand, price, user, session = (
            fields
        )
        if kind not in EVENT_TYPES:
            raise log_file.error(
                line, f"event_type is {kind!r}; expected one of {sorted(EVENT_TYPES)}"
            )
        if not session:
            log_file.drop("missing user_session")
            continue
        parse_int(log_file, line, "product_id", product_id)
        events.append(
            session,
            EVENT_TYPES[kind],
            utc_text_to_ms(log_file, line, "event_time", time_text),
            item_id=product_id,
            user_id=user or None,
        )
        items[product_id] = (
            code or category_id or None,
            brand or None,
            _parse_price(log_file, line, price),
        )
        log_file.keep()

    item_columns = ItemColumns()
    for product_id, (item_category, item_brand, item_price) in items.items():
        item_columns.append(
            product_id, category=item_category, brand=item_brand, price=item_price
        )
    return write_prepared(
        out,
        dataset="rees46",
        sources=[log_file],
        events=events.to_table(),
        items=item_columns.to_table(),
        synthetic_ts=False,
    )


def _parse_price(source: SourceFile, line: int, text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise source.error(line, f"price is {text!r}; expected a number") from None
