"""Business rules: filters, no duplicates, backfill to k, never -1."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.features import ItemStats, SessionView
from recsys.interactions import EVENT_TYPE_CODES
from recsys.rules import RuleConfig, Rules

CLICK = EVENT_TYPE_CODES["click"]
PURCHASE = EVENT_TYPE_CODES["purchase"]


@pytest.fixture
def stats() -> ItemStats:
    # Ten items; popularity falls with the index; items 0-4 are "shoes",
    # 5-8 are "hats", item 9 has no category.
    popularity = np.arange(10, 0, -1).astype(np.float32)
    categories = np.array([0] * 5 + [1] * 4 + [-1], dtype=np.int32)
    return ItemStats(popularity, popularity.copy(), categories, ("shoes", "hats"))


def session(items, types=None) -> SessionView:
    items = np.array(items, dtype=np.int64)
    if types is None:
        types = [CLICK] * len(items)
    return SessionView(items, np.array(types, dtype=np.int8))


def test_purchased_item_dropped(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([3, 4, 5]),
        np.array([3.0, 2.0, 1.0]),
        k=3,
        session=session([4, 3], [CLICK, PURCHASE]),
    )
    assert 3 not in result.items
    assert result.items[:2].tolist() == [4, 5]


def test_purchased_item_kept_when_configured(stats):
    rules = Rules(stats, RuleConfig(exclude_purchased=False))
    result = rules.apply(
        np.array([3, 4]),
        np.array([3.0, 2.0]),
        k=2,
        session=session([3], [PURCHASE]),
    )
    assert result.items.tolist() == [3, 4]


def test_revisits_dropped_when_not_allowed(stats):
    rules = Rules(stats, RuleConfig(allow_revisits=False))
    result = rules.apply(
        np.array([1, 2, 3]), np.array([3.0, 2.0, 1.0]), k=2, session=session([1, 2])
    )
    assert result.items.tolist() == [3, 0]


def test_duplicates_and_invalid_indexes_dropped(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([5, -1, 5, 6, 10, 6]),
        np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        k=2,
        session=session([]),
    )
    assert result.items.tolist() == [5, 6]
    assert result.scores.tolist() == [6.0, 3.0]
    assert not result.backfilled.any()


def test_exclude_list_honoured(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([0, 1, 2]),
        np.array([3.0, 2.0, 1.0]),
        k=5,
        session=session([]),
        exclude=np.array([1, 4]),
    )
    assert 1 not in result.items
    assert 4 not in result.items
    assert len(result.items) == 5


def test_category_filter_honoured(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([0, 5, 9, 6]),
        np.array([4.0, 3.0, 2.0, 1.0]),
        k=10,
        session=session([]),
        category=stats.category_code("hats"),
    )
    # Only the four hats exist, so the list stops at four.
    assert result.items.tolist() == [5, 6, 7, 8]
    assert result.backfilled.tolist() == [False, False, True, True]


def test_unknown_category_returns_nothing(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([0, 1]), np.array([2.0, 1.0]), k=3, session=session([]), category=-1
    )
    assert len(result.items) == 0


def test_backfill_reaches_k_from_popular(stats):
    rules = Rules(stats)
    result = rules.apply(
        np.array([7, -1]), np.array([1.5, 1.0]), k=4, session=session([0], [PURCHASE])
    )
    # Item 0 was bought, so the most popular allowed items are 1 and 2.
    assert result.items.tolist() == [7, 1, 2, 3]
    assert result.backfilled.tolist() == [False, True, True, True]
    assert (np.diff(result.scores) < 0).all()


def test_backfill_stops_at_catalog_size(stats):
    rules = Rules(stats)
    result = rules.apply(np.zeros(0), np.zeros(0), k=50, session=session([]))
    assert sorted(result.items.tolist()) == list(range(10))
    assert result.items.dtype == np.int64
