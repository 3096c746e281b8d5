"""Adapter for the timestamped YOOCHOOSE clicks sample (`session_rec_rsc15_100k/`).

`yoochoose-clicks-100k_train_full` becomes `events.parquet` and
`yoochoose-clicks-100k_test` becomes `test_events.parquet`; every row is a
`click`. `Time` is Unix seconds with a fraction and becomes whole
milliseconds (rounded). The `train_tr` / `train_valid` files are a time split
of `train_full` and are not read. There are no users, so `user_id` is null.
Malformed lines raise `DataFormatError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.datasets.io import EventColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int
from recsys.datasets.timing import seconds_to_ms

TRAIN_FILE = "yoochoose-clicks-100k_train_full.tsv.gz"
TEST_FILE = "yoochoose-clicks-100k_test.tsv.gz"
HEADER = ["SessionId", "ItemId", "Time"]


def prepare_yoochoose_clicks(source: Path, out: Path) -> dict[str, Any]:
    """Convert `yoochoose/session_rec_rsc15_100k/` into the layout at `out`."""
    train = SourceFile(source / TRAIN_FILE)
    test = SourceFile(source / TEST_FILE)
    return write_prepared(
        out,
        dataset="yoochoose-clicks",
        sources=[train, test],
        events=_read_clicks(train).to_table(),
        test_events=_read_clicks(test).to_table(),
        synthetic_ts=False,
        notes=["Time (Unix seconds with a fraction) is rounded to milliseconds"],
    )


def _read_clicks(source: SourceFile) -> EventColumns:
    events = EventColumns()
    for line, (session_id, item_id, time_text) in source.rows(header=HEADER):
        parse_int(source, line, "SessionId", session_id)
        parse_int(source, line, "ItemId", item_id)
        ts = seconds_to_ms(source, line, "Time", time_text)
        events.append(session_id, "click", ts, item_id=item_id)
        source.keep()
    return events
