"""Features of (session, candidate item) pairs for the ranker.

`ItemStats` contains per-item statistics of the training log (popularity,
trending counts, categories). `CandidateSet` contains what the candidate
sources returned for one request. `build_features` turns both into one
float32 row per candidate, in the column order of `feature_names`.

A missing value (a source that did not return the candidate, a session
without timestamps) is NaN, which LightGBM treats as missing. Ranks of
sources that did not return the candidate are `MISSING_RANK`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from recsys.errors import BuildError
from recsys.interactions import EVENT_TYPE_CODES, SessionData

MISSING_RANK: Final = 1000.0
# Share of the training log, newest events first, that counts as "recent"
# for the trending statistic.
TRENDING_FRACTION: Final = 0.1

_PURCHASE = EVENT_TYPE_CODES["purchase"]
_CART_ADD = EVENT_TYPE_CODES["cart_add"]

# Features that do not depend on which sources a build has.
BASE_FEATURES: Final = (
    "n_sources",
    "log_popularity",
    "log_trending",
    "trending_share",
    "session_count",
    "session_last_position",
    "session_carted",
    "is_last_item",
    "same_category_as_last",
    "session_length",
    "session_unique_items",
    "session_age_seconds",
    "log_popularity_of_last",
)


@dataclass(frozen=True)
class ItemStats:
    """Per-item statistics of a training log, indexed by dense item index.

    `popularity` and `trending` are float32 event counts over the whole log
    and over its most recent `TRENDING_FRACTION`. `categories` contains
    int32 codes into `category_names`, -1 where the category is unknown.
    """

    popularity: np.ndarray
    trending: np.ndarray
    categories: np.ndarray
    category_names: tuple[str, ...]

    @property
    def n_items(self) -> int:
        return len(self.popularity)

    @classmethod
    def from_sessions(
        cls, data: SessionData, item_categories: dict[str, str] | None = None
    ) -> ItemStats:
        n_items = len(data.vocab)
        known = data.items >= 0
        items = data.items[known]
        popularity = np.bincount(items, minlength=n_items).astype(np.float32)

        # The most recent events by timestamp; ties broken by log order.
        ts = data.ts[known]
        n_recent = max(1, int(np.ceil(len(items) * TRENDING_FRACTION)))
        recent = np.argsort(ts, kind="stable")[-n_recent:]
        trending = np.bincount(items[recent], minlength=n_items).astype(np.float32)

        names: tuple[str, ...] = ()
        categories = np.full(n_items, -1, dtype=np.int32)
        if item_categories:
            names = tuple(sorted(set(item_categories.values())))
            code = {name: i for i, name in enumerate(names)}
            for item_id, category in item_categories.items():
                index = data.vocab.index(item_id)
                if index >= 0:
                    categories[index] = code[category]
        return cls(popularity, trending, categories, names)

    def category_code(self, category: str) -> int:
        """Return the code of `category`, or -1 when no item has it."""
        try:
            return self.category_names.index(category)
        except ValueError:
            return -1

    def save(self, directory: Path) -> None:
        np.savez(
            directory / "item_stats.npz",
            popularity=self.popularity,
            trending=self.trending,
            categories=self.categories,
        )
        names = json.dumps(list(self.category_names))
        (directory / "categories.json").write_text(names)

    @classmethod
    def load(cls, directory: Path) -> ItemStats:
        path = directory / "item_stats.npz"
        try:
            with np.load(path, allow_pickle=False) as arrays:
                popularity = arrays["popularity"]
                trending = arrays["trending"]
                categories = arrays["categories"]
            names = json.loads((directory / "categories.json").read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise BuildError(f"cannot read item statistics: {exc}", str(path)) from exc
        return cls(popularity, trending, categories, tuple(names))


@dataclass(frozen=True)
class SessionView:
    """The part of a live session the pipeline can use.

    `items` contains the known item indexes, oldest first, with unknown
    items and searches removed. `event_types` (int8 codes) and `ts` (int64 ms,
    or None when the source has no timestamps) are aligned with it.
    """

    items: np.ndarray
    event_types: np.ndarray
    ts: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        items: np.ndarray,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> SessionView:
        """Drop entries of -1 and default missing event types to clicks."""
        items = np.asarray(items, dtype=np.int64)
        keep = items >= 0
        if event_types is None:
            types = np.zeros(int(keep.sum()), dtype=np.int8)
        else:
            types = np.asarray(event_types, dtype=np.int8)[keep]
        times = None if ts is None else np.asarray(ts, dtype=np.int64)[keep]
        return cls(items[keep], types, times)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def last_item(self) -> int:
        return int(self.items[-1]) if len(self.items) else -1

    def purchased(self) -> np.ndarray:
        return np.unique(self.items[self.event_types == _PURCHASE])


@dataclass(frozen=True)
class CandidateSet:
    """Candidates of one request and each source's score and rank for them.

    `items` (m,) int64 contains unique item indexes, sorted. `scores`
    (m, n_sources) float32 contains each source's score, NaN where the
    source did not return the item. `ranks` (m, n_sources) float32 contains
    its 0-based rank, or `MISSING_RANK`.
    """

    items: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    source_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def merge(
        cls,
        source_names: Sequence[str],
        results: Sequence[tuple[np.ndarray, np.ndarray]],
    ) -> CandidateSet:
        """Union the (item_indexes, scores) lists of several sources."""
        n_sources = len(source_names)
        all_items = [np.asarray(items, dtype=np.int64) for items, _ in results]
        joined = np.concatenate(all_items) if all_items else np.zeros(0, np.int64)
        items = np.unique(joined[joined >= 0])
        scores = np.full((len(items), n_sources), np.nan, dtype=np.float32)
        ranks = np.full((len(items), n_sources), MISSING_RANK, dtype=np.float32)
        for column, (source_items, source_scores) in enumerate(results):
            source_items = np.asarray(source_items, dtype=np.int64)
            valid = source_items >= 0
            rows = np.searchsorted(items, source_items[valid])
            scores[rows, column] = np.asarray(source_scores, np.float32)[valid]
            ranks[rows, column] = np.flatnonzero(valid)
        return cls(items, scores, ranks, tuple(source_names))

    def source_mask(self) -> np.ndarray:
        """Return a (m, n_sources) bool array: which source returned which item."""
        return ~np.isnan(self.scores)


def feature_names(source_names: Sequence[str]) -> list[str]:
    names = []
    for source in source_names:
        names += [f"{source}_score", f"{source}_rank", f"{source}_relative_score"]
    return names + list(BASE_FEATURES)


def build_features(
    candidates: CandidateSet, session: SessionView, stats: ItemStats
) -> np.ndarray:
    """Return the (m, n_features) float32 matrix in `feature_names` order."""
    items = candidates.items
    m = len(items)
    columns = []
    for column in range(len(candidates.source_names)):
        scores = candidates.scores[:, column]
        columns += [scores, candidates.ranks[:, column], _relative(scores)]

    popularity = stats.popularity[items]
    trending = stats.trending[items]
    count, last_position, carted = _session_touches(items, session)
    last_item = session.last_item
    if last_item >= 0 and stats.categories[last_item] >= 0:
        same_category = (stats.categories[items] == stats.categories[last_item]) * 1.0
    else:
        same_category = np.full(m, np.nan)
    last_popularity = np.nan
    if last_item >= 0:
        last_popularity = np.log1p(stats.popularity[last_item])
    if session.ts is not None and len(session.ts):
        age_seconds = (session.ts[-1] - session.ts[0]) / 1000.0
    else:
        age_seconds = np.nan

    columns += [
        candidates.source_mask().sum(axis=1),
        np.log1p(popularity),
        np.log1p(trending),
        (trending + 1.0) / (popularity + 10.0),
        count,
        last_position,
        carted,
        (items == last_item) * 1.0,
        same_category,
        np.full(m, len(session)),
        np.full(m, len(np.unique(session.items))),
        np.full(m, age_seconds),
        np.full(m, last_popularity),
    ]
    return np.column_stack(columns).astype(np.float32, copy=False)


def _relative(scores: np.ndarray) -> np.ndarray:
    """Divide a source's scores by its best score in this request (NaN stays)."""
    found = ~np.isnan(scores)
    if not found.any():
        return scores
    top = np.abs(scores[found]).max()
    return scores / top if top > 0 else scores


def _session_touches(
    items: np.ndarray, session: SessionView
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, distance from the end (0 = last event) and cart or purchase flag."""
    m = len(items)
    count = np.zeros(m, dtype=np.float32)
    last_position = np.full(m, MISSING_RANK, dtype=np.float32)
    carted = np.zeros(m, dtype=np.float32)
    if not len(session) or not m:
        return count, last_position, carted

    # `items` is sorted and unique (see `CandidateSet.merge`).
    rows = np.minimum(np.searchsorted(items, session.items), m - 1)
    hit = items[rows] == session.items
    rows = rows[hit]
    distance = (len(session) - 1 - np.flatnonzero(hit)).astype(np.float32)
    types = session.event_types[hit]
    strong = ((types == _CART_ADD) | (types == _PURCHASE)).astype(np.float32)
    np.add.at(count, rows, 1.0)
    np.minimum.at(last_position, rows, distance)
    np.maximum.at(carted, rows, strong)
    return count, last_position, carted
