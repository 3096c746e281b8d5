"""The interface every session recommender implements.

A recommender is fitted on a `SessionData` training log and then scores a
session given as dense item indexes, oldest first. Baselines, the trained
models and the full pipeline all plug into the same evaluation harness
through this interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from recsys.interactions import SessionData


class SessionRecommender(Protocol):
    """Anything that ranks the catalog for a session."""

    name: str

    def fit(self, data: SessionData) -> SessionRecommender:
        """Learn from a training log and return self."""
        ...

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank items for one session.

        Parameters
        ----------
        items : int64 array, the session's item indexes, oldest first;
            entries of -1 (unknown items, searches) are ignored.
        k : how many results to return at most.
        event_types, ts : optional arrays aligned with `items`.

        Returns
        -------
        (item_indexes, scores): int64 and float32 arrays of the same length
        (at most k), best first, without duplicates and without -1.
        """
        ...


def top_k_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the indexes and scores of the k highest finite scores, best first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    top = top[np.isfinite(scores[top])]
    return top.astype(np.int64), scores[top].astype(np.float32)
