"""Adapters for the published next-item benchmarks (SR-GNN format).

DIGINETICA (`srgnn_benchmark/`), YOOCHOOSE 1/64 (`srgnn_1_64/`) and
RetailRocket (`cgenet_processed/`) ship as gzipped TSV files: training
sessions, full test sessions and the published (prefix -> next item) test
pairs. The adapters write the training sessions to `events.parquet`, the
test sessions to `test_events.parquet` and the pairs, in their published
order, to `test_cases.parquet` (`case_id` = `pair_index`).

Every event is a `click`. Session ids are the session index of the source
file for training sessions and `test-<index>` for test sessions (RetailRocket:
`test-<session_id>`), so the two splits never share an id.

Synthetic timestamps: the benchmark files carry no timestamps, except one
start time per RetailRocket test session. The adapters place sessions one
minute apart in file order, training sessions first. Events of a session are
one second apart, or closer when a session has more than 60 events. Ordering
by `ts` therefore gives back the file order of sessions and the position of
each event in its session. Only the order is real, not the gaps or clock
times, and the manifest records `"synthetic_ts": true`.

Malformed lines raise `DataFormatError`: a published benchmark is only
meaningful when complete, so nothing is silently dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.datasets.io import CaseColumns, EventColumns, write_prepared
from recsys.datasets.source import SourceFile, parse_int, parse_item_list
from recsys.datasets.timing import seconds_to_ms

log = logging.getLogger(__name__)

SESSION_STEP_MS = 60_000
EVENT_STEP_MS = 1_000

TRAIN_FILE = "train_sessions.tsv.gz"
TEST_FILE = "test_sessions.tsv.gz"
PAIRS_FILE = "test_pairs.tsv.gz"


@dataclass(frozen=True)
class Benchmark:
    """File layout and synthetic clock start of one benchmark."""

    name: str
    # Start of the synthetic clock: the first day of the source data.
    start: datetime
    # RetailRocket test files carry the 30-minute session id and a start time.
    timed_test: bool = False


DIGINETICA = Benchmark("diginetica", datetime(2016, 1, 1, tzinfo=UTC))
YOOCHOOSE = Benchmark("yoochoose", datetime(2014, 4, 1, tzinfo=UTC))
RETAILROCKET = Benchmark(
    "retailrocket", datetime(2015, 5, 3, tzinfo=UTC), timed_test=True
)


def synthetic_ts(start_ms: int, session_position: int, length: int) -> list[int]:
    """Return timestamps for a session of `length` events at a file position."""
    step = min(EVENT_STEP_MS, SESSION_STEP_MS // max(length, 1))
    first = start_ms + session_position * SESSION_STEP_MS
    return [first + i * step for i in range(length)]


def prepare_diginetica(source: Path, out: Path) -> dict[str, Any]:
    return prepare_benchmark(DIGINETICA, source, out)


def prepare_yoochoose(source: Path, out: Path) -> dict[str, Any]:
    return prepare_benchmark(YOOCHOOSE, source, out)


def prepare_retailrocket(source: Path, out: Path) -> dict[str, Any]:
    return prepare_benchmark(RETAILROCKET, source, out)


def prepare_benchmark(benchmark: Benchmark, source: Path, out: Path) -> dict[str, Any]:
    """Convert one benchmark folder into the prepared layout at `out`."""
    source = Path(source)
    train_file = SourceFile(source / TRAIN_FILE)
    test_file = SourceFile(source / TEST_FILE)
    pairs_file = SourceFile(source / PAIRS_FILE)
    start_ms = int(benchmark.start.timestamp() * 1000)

    events = EventColumns()
    n_train = _read_train(train_file, events, start_ms)

    test_events = EventColumns()
    if benchmark.timed_test:
        test_sessions = _read_timed_test(test_file, test_events)
    else:
        test_sessions = _read_test(
            test_file, test_events, start_ms + n_train * SESSION_STEP_MS
        )
    cases = _read_pairs(pairs_file, test_sessions, timed=benchmark.timed_test)

    notes = [
        "every event is a click; sessions are 1 minute apart in file order and "
        "events 1 second apart (closer in sessions of more than 60 events)",
    ]
    if benchmark.timed_test:
        notes.append(
            "test sessions start at the source timestamp (seconds -> ms); "
            "training sessions end before the first test session"
        )
    return write_prepared(
        out,
        dataset=benchmark.name,
        sources=[train_file, test_file, pairs_file],
        events=events.to_table(),
        test_events=test_events.to_table(),
        cases=cases.to_table(),
        synthetic_ts=True,
        notes=notes,
    )


def _read_train(source: SourceFile, events: EventColumns, start_ms: int) -> int:
    """Append training sessions; return how many there were."""
    sessions: list[tuple[str, list[str]]] = []
    for line, (index, items_text) in source.rows(header=["session_index", "items"]):
        parse_int(source, line, "session_index", index)
        sessions.append((index, parse_item_list(source, line, "items", items_text)))
        source.keep()
    # RetailRocket needs the count before placing the sessions, so the
    # timestamps are assigned after reading.
    for position, (session_id, items) in enumerate(sessions):
        for item, ts in zip(
            items, synthetic_ts(start_ms, position, len(items)), strict=True
        ):
            events.append(session_id, "click", ts, item_id=item)
    return len(sessions)


def _read_test(
    source: SourceFile, events: EventColumns, start_ms: int
) -> dict[str, list[str]]:
    sessions: dict[str, list[str]] = {}
    header = ["test_session_index", "items"]
    for position, (line, (index, items_text)) in enumerate(source.rows(header=header)):
        parse_int(source, line, "test_session_index", index)
        session_id = f"test-{index}"
        if session_id in sessions:
            raise source.error(line, f"test_session_index {index} appears twice")
        items = parse_item_list(source, line, "items", items_text)
        sessions[session_id] = items
        for item, ts in zip(
            items, synthetic_ts(start_ms, position, len(items)), strict=True
        ):
            events.append(session_id, "click", ts, item_id=item)
        source.keep()
    return sessions


def _read_timed_test(source: SourceFile, events: EventColumns) -> dict[str, list[str]]:
    sessions: dict[str, list[str]] = {}
    header = ["session_id", "timestamp", "items"]
    for line, (raw_id, timestamp, items_text) in source.rows(header=header):
        parse_int(source, line, "session_id", raw_id)
        session_id = f"test-{raw_id}"
        if session_id in sessions:
            raise source.error(line, f"session_id {raw_id} appears twice")
        parse_int(source, line, "timestamp", timestamp)
        start_ms = seconds_to_ms(source, line, "timestamp", timestamp)
        items = parse_item_list(source, line, "items", items_text)
        sessions[session_id] = items
        for item, ts in zip(items, synthetic_ts(start_ms, 0, len(items)), strict=True):
            events.append(session_id, "click", ts, item_id=item)
        source.keep()
    return sessions


def _read_pairs(
    source: SourceFile, sessions: dict[str, list[str]], *, timed: bool
) -> CaseColumns:
    """Read the published pairs; each must be a prefix of its test session."""
    cases = CaseColumns()
    if timed:
        header = ["pair_index", "session_id", "timestamp", "prefix", "label"]
    else:
        header = ["pair_index", "test_session_index", "prefix", "label"]
    for line, fields in source.rows(header=header):
        pair_index = parse_int(source, line, "pair_index", fields[0])
        if pair_index != len(cases):
            raise source.error(
                line, f"pair_index is {pair_index}; expected {len(cases)} (in order)"
            )
        session_id = f"test-{fields[1]}"
        prefix = parse_item_list(source, line, "prefix", fields[-2])
        label = parse_item_list(source, line, "label", fields[-1])
        if len(label) != 1:
            raise source.error(line, f"label is {fields[-1]!r}; expected one item id")
        session = sessions.get(session_id)
        if session is None:
            raise source.error(
                line, f"test session {fields[1]} is not in the test sessions file"
            )
        n = len(prefix)
        if session[:n] != prefix or n >= len(session) or session[n] != label[0]:
            raise source.error(
                line, f"pair is not a prefix and next item of test session {fields[1]}"
            )
        cases.append(pair_index, session_id, prefix, label[0])
        source.keep()
    return cases
