"""Adapter for OTTO session JSONL (`{"session": .., "events": [..]}` per line).

Event types map as `clicks` -> `click`, `carts` -> `cart_add` and `orders`
-> `purchase`; `aid` is the item id and `ts` is already Unix milliseconds.
OTTO has no user ids (a session is all of one user's activity in the
period), so `user_id` is null. Reads every `*.jsonl.gz` file in the source
folder, in name order. Malformed lines raise `DataFormatError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from recsys.datasets.io import EventColumns, write_prepared
from recsys.datasets.source import SourceFile
from recsys.datasets.timing import check_ms
from recsys.errors import NotFoundError

EVENT_TYPES = {"clicks": "click", "carts": "cart_add", "orders": "purchase"}


def prepare_otto(source: Path, out: Path) -> dict[str, Any]:
    """Convert the OTTO JSONL files in `source` into the layout at `out`."""
    paths = sorted(source.glob("*.jsonl.gz"))
    if not paths:
        raise NotFoundError(f"no *.jsonl.gz file in {source}; expected OTTO JSONL")
    files = [SourceFile(path) for path in paths]
    events = EventColumns()
    for source_file in files:
        _read_jsonl(source_file, events)
    return write_prepared(
        out,
        dataset="otto",
        sources=files,
        events=events.to_table(),
        synthetic_ts=False,
    )


def _read_jsonl(source: SourceFile, events: EventColumns) -> None:
    for line, text in source.lines():
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise source.error(line, f"invalid JSON: {exc.msg}") from None
        _append_session(source, line, record, events)
        source.keep()


def _append_session(
    source: SourceFile, line: int, record: Any, events: EventColumns
) -> None:
    session = record.get("session") if isinstance(record, dict) else None
    if not _is_int(session) or not isinstance(record.get("events"), list):
        raise source.error(
            line, 'expected {"session": <int>, "events": [...]} on each line'
        )
    for position, event in enumerate(record["events"]):
        where = f"events[{position}] of session {session}"
        if not isinstance(event, dict):
            raise source.error(line, f"{where} is not an object")
        aid, ts, kind = event.get("aid"), event.get("ts"), event.get("type")
        if not _is_int(aid) or not _is_int(ts):
            raise source.error(
                line, f"{where}: aid and ts must be integers, got {aid!r} and {ts!r}"
            )
        if kind not in EVENT_TYPES:
            raise source.error(
                line, f"{where}: type is {kind!r}; expected one of {list(EVENT_TYPES)}"
            )
        check_ms(source, line, f"{where}: ts", str(ts), cast(int, ts))
        events.append(str(session), EVENT_TYPES[kind], cast(int, ts), item_id=str(aid))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
