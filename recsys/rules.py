"""Business rules applied to a ranked list before it is returned.

The rules, in order: drop invalid indexes (FAISS pads with -1), items on the
request's exclude list and items outside the requested category. Drop items
bought in this session (unless configured otherwise) and, when re-visits are
not allowed, items already in the session. Then drop duplicates, cut to `k`
and backfill from the most popular allowed items until there are `k` items
or the catalog runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.features import ItemStats, SessionView


@dataclass(frozen=True)
class RuleConfig:
    """Switches of the rules.

    `exclude_purchased`: never recommend an item bought in this session.
    `allow_revisits`: items the session already touched may be recommended.
    """

    exclude_purchased: bool = True
    allow_revisits: bool = True


@dataclass(frozen=True)
class Filtered:
    """A ranked list after the rules; `backfilled` marks items added at the end."""

    items: np.ndarray
    scores: np.ndarray
    backfilled: np.ndarray


class Rules:
    def __init__(self, stats: ItemStats, config: RuleConfig | None = None) -> None:
        self.config = config or RuleConfig()
        self._stats = stats
        self._by_popularity = np.argsort(-stats.popularity, kind="stable")

    def apply(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        *,
        k: int,
        session: SessionView,
        exclude: np.ndarray | None = None,
        category: int | None = None,
    ) -> Filtered:
        """Filter a ranked list (best first) and return at most `k` items.

        `exclude` contains item indexes to leave out; `category` is a category
        code from `ItemStats.category_code` (-1 matches no item).
        """
        banned = self._banned(session, exclude)
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        keep = self._allowed(items, banned, category)
        items, scores = items[keep], scores[keep]
        _, first = np.unique(items, return_index=True)
        first.sort()
        items, scores = items[first][:k], scores[first][:k]

        n_missing = k - len(items)
        if n_missing <= 0:
            return Filtered(items, scores, np.zeros(len(items), dtype=bool))
        extra = self._backfill(n_missing, np.concatenate([banned, items]), category)
        floor = float(scores.min()) if len(scores) else 0.0
        extra_scores = floor - 1.0 - np.arange(len(extra), dtype=np.float32)
        backfilled = np.r_[np.zeros(len(items), bool), np.ones(len(extra), bool)]
        return Filtered(
            np.concatenate([items, extra]),
            np.concatenate([scores, extra_scores]).astype(np.float32),
            backfilled,
        )

    def _banned(self, session: SessionView, exclude: np.ndarray | None) -> np.ndarray:
        banned = [np.zeros(0, dtype=np.int64)]
        if exclude is not None:
            banned.append(np.asarray(exclude, dtype=np.int64))
        if self.config.exclude_purchased:
            banned.append(session.purchased())
        if not self.config.allow_revisits:
            banned.append(session.items)
        return np.unique(np.concatenate(banned))

    def _allowed(
        self, items: np.ndarray, banned: np.ndarray, category: int | None
    ) -> np.ndarray:
        keep = (items >= 0) & (items < self._stats.n_items)
        keep &= ~np.isin(items, banned)
        if category is not None:
            keep[keep] = self._in_category(items[keep], category)
        return keep

    def _in_category(self, items: np.ndarray, category: int) -> np.ndarray:
        if category < 0:
            return np.zeros(len(items), dtype=bool)
        return self._stats.categories[items] == category

    def _backfill(
        self, n: int, excluded: np.ndarray, category: int | None
    ) -> np.ndarray:
        """Return up to `n` allowed items, most popular first, not in `excluded`."""
        candidates = self._by_popularity
        if category is not None:
            candidates = candidates[self._in_category(candidates, category)]
        # `excluded` is unique, so it removes at most len(excluded) of these.
        head = candidates[: n + len(excluded)]
        return head[~np.isin(head, excluded)][:n].astype(np.int64)
