"""Candidate sources: the first stage of the pipeline.

A source is any object with a `name` and a method
`candidates(request, n) -> (item_indexes, scores)` that returns at most `n`
item indexes, best first, with one score each. A build may hold any subset
of the sources below; the pipeline merges whatever it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from recsys.features import ItemStats, SessionView
from recsys.models.base import SessionRecommender

_EMPTY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


@dataclass(frozen=True)
class SourceRequest:
    """The inputs a source may use for one request.

    `context_item` is the dense index of the item the client is showing
    (-1 for none). `session_embedding` and `user_vector` are filled by the
    pipeline when the build has a session tower or user factors.
    """

    session: SessionView
    user_id: str | None = None
    context_item: int = -1
    session_embedding: np.ndarray | None = None
    user_vector: np.ndarray | None = None


class CandidateSource(Protocol):
    name: str

    def candidates(
        self, request: SourceRequest, n: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


class VectorIndex(Protocol):
    """Nearest-neighbour search over item vectors, as `recsys.index` offers."""

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (item_indexes, scores), each (n_queries, k); -1 pads."""
        ...


class ModelSource:
    """Candidates from a fitted `SessionRecommender` such as co-visitation.

    `anchor` picks the items the model gets: the whole session, only its last
    item, or only the request's context item. Items scored 0 or less are
    dropped, because the baselines fill their lists up with popular items
    at score 0 and those are not evidence from the session.
    """

    def __init__(
        self,
        name: str,
        model: SessionRecommender,
        anchor: Literal["session", "last", "context"] = "session",
    ) -> None:
        self.name = name
        self.model = model
        self.anchor = anchor

    def candidates(
        self, request: SourceRequest, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        session = request.session
        if self.anchor == "context":
            if request.context_item < 0:
                return _EMPTY
            items = np.array([request.context_item], dtype=np.int64)
            result = self.model.recommend(items, n)
        elif not len(session):
            return _EMPTY
        elif self.anchor == "last":
            result = self.model.recommend(session.items[-1:], n)
        else:
            result = self.model.recommend(
                session.items, n, event_types=session.event_types, ts=session.ts
            )
        items, scores = result
        scored = scores > 0
        return items[scored], scores[scored]


class RevisitSource:
    """The session's own items, scored by recency-weighted occurrences.

    Each occurrence adds `decay ** distance`, where distance counts events
    back from the last one (0 for the last event).
    """

    def __init__(self, name: str = "revisit", decay: float = 0.7) -> None:
        self.name = name
        self.decay = decay

    def candidates(
        self, request: SourceRequest, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        items = request.session.items
        if not len(items):
            return _EMPTY
        weights = self.decay ** np.arange(len(items) - 1, -1, -1, dtype=np.float64)
        unique, inverse = np.unique(items, return_inverse=True)
        scores = np.bincount(inverse, weights=weights)
        order = np.argsort(-scores, kind="stable")[:n]
        return unique[order], scores[order].astype(np.float32)


class PopularSource:
    """The most frequent items of the training log, overall or recently."""

    def __init__(
        self, stats: ItemStats, kind: Literal["popular", "trending"] = "popular"
    ) -> None:
        self.name: str = kind
        counts = stats.popularity if kind == "popular" else stats.trending
        self._order = np.argsort(-counts, kind="stable")
        self._counts = counts

    def candidates(
        self, request: SourceRequest, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        top = self._order[:n]
        top = top[self._counts[top] > 0]
        return top.astype(np.int64), np.log1p(self._counts[top]).astype(np.float32)


class VectorSource:
    """Nearest items to a query vector: the session embedding or user vector."""

    def __init__(
        self,
        name: str,
        index: VectorIndex,
        query: Callable[[SourceRequest], np.ndarray | None],
    ) -> None:
        self.name = name
        self.index = index
        self.query = query

    def candidates(
        self, request: SourceRequest, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        vector = self.query(request)
        if vector is None:
            return _EMPTY
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        items, scores = self.index.search(query, n)
        items, scores = np.asarray(items[0], np.int64), np.asarray(scores[0])
        found = items >= 0
        return items[found], scores[found].astype(np.float32)
