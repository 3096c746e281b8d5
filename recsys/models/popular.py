"""Most-popular baseline, and the top-k selection the other baselines share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import BuildError, ValidationError
from recsys.interactions import SessionData


def item_counts(data: SessionData) -> np.ndarray:
    """Count the events of each vocabulary item (int64, n_items)."""
    items = data.items[data.items >= 0]
    return np.bincount(items, minlength=len(data.vocab)).astype(np.int64)


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValidationError("k", k, "an integer >= 1")


def select_top(
    candidates: np.ndarray,
    scores: np.ndarray,
    k: int,
    tie_break: np.ndarray,
    fallback: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the k best `candidates` by score, then fill up from `fallback`.

    Equal scores are ordered by `tie_break[item]`, higher first. Fill-up items
    (from `fallback`, in its order, skipping candidates) get score 0, so a
    caller can tell them apart from scored items only when all candidate
    scores are positive, which holds for every baseline here.
    """
    if len(candidates) > k:
        # Keep every candidate tied with the k-th score, so the tie break
        # below decides among them rather than argpartition's order.
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= threshold
        candidates, scores = candidates[keep], scores[keep]
    order = np.lexsort((-tie_break[candidates], -scores))[:k]
    top_items = candidates[order].astype(np.int64)
    top_scores = scores[order].astype(np.float32)
    missing = k - len(top_items)
    if missing > 0:
        extra = fallback[: missing + len(top_items)]
        extra = extra[~np.isin(extra, top_items)][:missing]
        top_items = np.concatenate((top_items, extra.astype(np.int64)))
        top_scores = np.concatenate((top_scores, np.zeros(len(extra), np.float32)))
    return top_items, top_scores


class PopularRecommender:
    """Recommend the items with the most training events, whatever the session."""

    name = "popular"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.ranking: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, data: SessionData) -> PopularRecommender:
        self.counts = item_counts(data)
        # Stable sort: equal counts keep vocabulary order.
        self.ranking = np.argsort(-self.counts, kind="stable").astype(np.int64)
        return self

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        check_k(k)
        if self.ranking is None or self.counts is None:
            raise BuildError("PopularRecommender.recommend called before fit")
        top = self.ranking[:k]
        return top, self.counts[top].astype(np.float32)

    def save(self, path: Path) -> None:
        if self.counts is None:
            raise BuildError("PopularRecommender.save called before fit", str(path))
        np.savez(path, counts=self.counts)

    @classmethod
    def load(cls, path: Path) -> PopularRecommender:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                counts = arrays["counts"]
        except (OSError, KeyError, ValueError) as exc:
            raise BuildError(
                f"cannot read popularity counts: {exc}", str(path)
            ) from exc
        model = cls()
        model.counts = counts
        model.ranking = np.argsort(-counts, kind="stable").astype(np.int64)
        return model
