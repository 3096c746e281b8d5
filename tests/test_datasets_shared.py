"""Adapters on the real shared datasets: the counts must match the measured ones.

The expected numbers are the counts measured independently for each dataset
(the README of every dataset folder under RECSYS_DATA_DIR). The tests are
skipped when RECSYS_DATA_DIR is unset.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsys.datasets.io import PreparedDataset, load_prepared
from recsys.datasets.registry import prepare
from recsys.events import validate_event

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not os.environ.get("RECSYS_DATA_DIR"),
        reason="RECSYS_DATA_DIR is unset; point it at the shared data folder "
        "to check adapter counts on the real files",
    ),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepare a dataset once per module and load it."""
    cache: dict[str, PreparedDataset] = {}

    def load(name: str) -> PreparedDataset:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            prepare(name, None, out)
            cache[name] = load_prepared(out)
        return cache[name]

    return load


def distinct(table: pa.Table | None, column: str) -> int:
    assert table is not None
    return pc.count_distinct(table.column(column)).as_py()


def type_counts(table: pa.Table) -> dict[str, int]:
    return dict(Counter(table.column("event_type").to_pylist()))


def is_sorted(table: pa.Table) -> bool:
    keys = list(
        zip(table["session_id"].to_pylist(), table["ts"].to_pylist(), strict=True)
    )
    return keys == sorted(keys)


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.slow
def test_diginetica_counts(prepared):
    data = prepared("diginetica")
    assert data.events.num_rows == 906_140
    assert distinct(data.events, "session_id") == 186_670
    assert distinct(data.events, "item_id") == 43_097
    assert data.test_events.num_rows == 76_821
    assert distinct(data.test_events, "session_id") == 15_963
    assert distinct(data.test_events, "item_id") == 21_131
    assert data.cases.num_rows == 60_858
    assert data.cases["case_id"].to_pylist() == list(range(60_858))
    assert data.manifest["synthetic_ts"] is True
    assert is_sorted(data.events)


@pytest.mark.slow
def test_diginetica_test_items_in_train(prepared):
    data = prepared("diginetica")
    train_items = set(data.events["item_id"].to_pylist())
    assert set(data.test_events["item_id"].to_pylist()) <= train_items


@pytest.mark.slow
def test_yoochoose_counts(prepared):
    data = prepared("yoochoose")
    assert data.events.num_rows == 486_026
    assert distinct(data.events, "session_id") == 116_167
    assert distinct(data.events, "item_id") == 17_376
    assert data.test_events.num_rows == 71_222
    assert distinct(data.test_events, "session_id") == 15_324
    assert distinct(data.test_events, "item_id") == 6_751
    assert data.cases.num_rows == 55_898
    train_items = set(data.events["item_id"].to_pylist())
    unseen = set(data.test_events["item_id"].to_pylist()) - train_items
    assert len(unseen) == 369


@pytest.mark.slow
def test_retailrocket_counts(prepared):
    data = prepared("retailrocket")
    assert data.events.num_rows == 685_984
    assert distinct(data.events, "session_id") == 126_168
    assert distinct(data.events, "item_id") == 36_968
    assert data.test_events.num_rows == 24_602
    assert distinct(data.test_events, "session_id") == 4_735
    assert distinct(data.test_events, "item_id") == 8_777
    assert data.cases.num_rows == 15_132
    first = pc.min(data.test_events["ts"]).as_py()
    assert utc_ms(2015, 9, 11, 3, 2) <= first < utc_ms(2015, 9, 11, 3, 3)
    assert pc.max(data.events["ts"]).as_py() < first


def test_diginetica_purchases_counts(prepared):
    data = prepared("diginetica-purchases")
    events = data.events
    purchases = events.filter(pc.equal(events["event_type"], "purchase"))
    views = events.filter(pc.equal(events["event_type"], "click"))
    assert purchases.num_rows == 18_025
    assert distinct(purchases, "session_id") == 12_630
    assert distinct(purchases, "item_id") == 11_244
    assert purchases["user_id"].null_count == 18_025 - 6_703
    assert distinct(purchases, "user_id") == 4_425  # nulls not counted
    assert views.num_rows == 12_391
    assert distinct(views, "session_id") == 2_986
    assert distinct(views, "item_id") == 7_139
    assert views["user_id"].null_count == 12_391 - 4_710
    assert data.items.num_rows == 184_047
    assert distinct(data.items, "category") == 1_217
    assert set(events["item_id"].to_pylist()) <= set(data.items["item_id"].to_pylist())


def test_yoochoose_clicks_counts(prepared):
    data = prepared("yoochoose-clicks")
    assert data.events.num_rows == 70_278
    assert distinct(data.events, "session_id") == 17_794
    assert distinct(data.events, "item_id") == 2_933
    assert data.test_events.num_rows == 13_568
    assert distinct(data.test_events, "session_id") == 3_416
    assert distinct(data.test_events, "item_id") == 1_771
    assert (
        pc.min(data.events["ts"]).as_py() // 60_000
        == utc_ms(2014, 4, 1, 1, 2) // 60_000
    )
    assert pc.max(data.test_events["ts"]).as_py() // 60_000 == (
        utc_ms(2014, 4, 8, 0, 50) // 60_000
    )
    assert data.manifest["synthetic_ts"] is False


def test_rees46_counts(prepared):
    data = prepared("rees46")
    events = data.events
    assert events.num_rows == 17_434
    assert type_counts(events) == {"click": 17_055, "cart_add": 165, "purchase": 214}
    assert distinct(events, "user_id") == 4_504
    assert distinct(events, "session_id") == 5_066
    assert distinct(events, "item_id") == 6_493
    assert data.items.num_rows == 6_493

    pairs = set(
        zip(
            events["user_id"].to_pylist(), events["session_id"].to_pylist(), strict=True
        )
    )
    per_user = Counter(user for user, _ in pairs)
    assert sum(1 for n in per_user.values() if n > 1) == 426

    lengths = Counter(events["session_id"].to_pylist())
    assert sum(1 for n in lengths.values() if n >= 2) == 2_999
    assert max(lengths.values()) == 51
    rows = zip(
        events["session_id"].to_pylist(), events["event_type"].to_pylist(), strict=True
    )
    with_type = Counter(event_type for _, event_type in set(rows))
    assert with_type["cart_add"] == 118
    assert with_type["purchase"] == 200


def test_rees46_category_ids_are_exact(prepared):
    data = prepared("rees46")
    categories = [c for c in data.items["category"].to_pylist() if c.isdigit()]
    assert categories
    assert all(len(c) == 19 for c in categories)


def test_taobao_counts(prepared):
    data = prepared("taobao")
    assert type_counts(data.events) == {"click": 3_926, "cart_add": 190, "purchase": 77}
    assert data.manifest["sources"][0]["read"] == 4_321
    assert data.manifest["sources"][0]["dropped"] == {"fav has no event type": 128}
    assert distinct(data.events, "user_id") == 43
    assert data.items.num_rows == 3_276


def test_bestbuy_counts(prepared):
    data = prepared("bestbuy")
    clicks = data.events.filter(pc.equal(data.events["event_type"], "click"))
    assert clicks.num_rows == 999
    assert distinct(data.events, "user_id") == 709
    assert distinct(clicks, "item_id") == 846
    searches = data.events.filter(pc.equal(data.events["event_type"], "search"))
    assert len({q.lower() for q in searches["query"].to_pylist()}) == 703
    test = data.test_events
    assert distinct(test, "user_id") == 703
    assert len({q.lower() for q in test["query"].to_pylist()}) == 740
    assert data.manifest["sources"][1]["read"] == 999


def test_otto_counts(prepared):
    data = prepared("otto")
    assert data.events.num_rows == 862
    assert distinct(data.events, "session_id") == 20
    assert distinct(data.events, "item_id") == 510
    assert type_counts(data.events) == {"click": 800, "cart_add": 52, "purchase": 10}
    assert pc.min(data.events["ts"]).as_py() == 1659304800025


def test_jdsearch_counts(prepared):
    data = prepared("jdsearch")
    item_events = data.events.filter(
        pc.invert(pc.equal(data.events["event_type"], "search"))
    )
    assert type_counts(item_events) == {"click": 62, "cart_add": 152, "purchase": 16}
    assert distinct(data.events, "user_id") == 3
    assert data.items.num_rows == 409


@pytest.mark.parametrize(
    "name",
    [
        "diginetica-purchases",
        "yoochoose-clicks",
        "rees46",
        "taobao",
        "bestbuy",
        "otto",
        "jdsearch",
    ],
)
def test_events_validate(prepared, name):
    data = prepared(name)
    assert is_sorted(data.events)
    for table in (data.events, data.test_events):
        if table is not None:
            for row in table.to_pylist():
                validate_event(row)


def test_default_source_under_data_dir(tmp_path):
    manifest = prepare("otto", None, tmp_path / "out")
    expected = Path(os.environ["RECSYS_DATA_DIR"]) / "otto"
    assert Path(manifest["source_dir"]) == expected
