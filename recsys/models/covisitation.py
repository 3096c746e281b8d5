"""Session co-visitation: items that training sessions visit close together.

Fitting counts, for every ordered pair of items that occur within `window`
positions of each other in a training session, a weight
`1 / distance ** distance_power`, times `forward_weight` when the second item
comes later and `backward_weight` when it comes earlier. An item that recurs
within the window pairs with itself once, weighted by `repeat_weight`, so
that revisits (a fifth of DIGINETICA's test labels are already in the
prefix) get a score. Column j is then divided by
`count(j) ** popularity_power`, which damps items that co-occur with
everything only because they are popular. The result is a sparse
item x item matrix (CSR, float32).

Scoring a session sums the matrix rows of its items, each row weighted by
`recency_decay ** age`, where age is 0 for the last item of the session, 1 for
the one before it, and so on. Items without any score are filled up from the
most popular items.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import BuildError, ValidationError
from recsys.interactions import SessionData
from recsys.models.popular import check_k, item_counts, select_top

log = logging.getLogger(__name__)


class CovisitationRecommender:
    """Item-to-item co-visitation counts, decayed by distance and recency.

    The defaults were chosen by HR@20 on a validation split (the most recent
    10 % of training sessions) of DIGINETICA, never on its test cases.
    """

    name = "covisitation"

    def __init__(
        self,
        window: int = 10,
        distance_power: float = 1.0,
        forward_weight: float = 1.0,
        backward_weight: float = 0.5,
        recency_decay: float = 0.6,
        repeat_weight: float = 6.0,
        popularity_power: float = 0.2,
    ) -> None:
        if window < 1:
            raise ValidationError("window", window, "an integer >= 1")
        if not 0.0 < recency_decay <= 1.0:
            raise ValidationError("recency_decay", recency_decay, "a value in (0, 1]")
        self.window = int(window)
        self.distance_power = float(distance_power)
        self.forward_weight = float(forward_weight)
        self.backward_weight = float(backward_weight)
        self.recency_decay = float(recency_decay)
        self.repeat_weight = float(repeat_weight)
        self.popularity_power = float(popularity_power)
        self.matrix: sp.csr_matrix | None = None
        self.counts: np.ndarray | None = None
        self.ranking: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "distance_power": self.distance_power,
            "forward_weight": self.forward_weight,
            "backward_weight": self.backward_weight,
            "recency_decay": self.recency_decay,
            "repeat_weight": self.repeat_weight,
            "popularity_power": self.popularity_power,
        }

    def fit(self, data: SessionData) -> CovisitationRecommender:
        start = time.perf_counter()
        n_items = len(data.vocab)
        session_of_event = np.repeat(
            np.arange(data.n_sessions), np.diff(data.indptr).astype(np.int64)
        )
        matrix = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        for distance in range(1, self.window + 1):
            matrix = matrix + self._pairs_at(
                data.items, session_of_event, distance, n_items
            )

        counts = item_counts(data)
        if self.popularity_power:
            scale = np.maximum(counts, 1).astype(np.float32) ** -self.popularity_power
            matrix = (matrix @ sp.diags(scale)).tocsr()
        matrix.eliminate_zeros()
        matrix.sort_indices()
        self._set_state(matrix, counts)
        log.info(
            "co-visitation fitted: %d items, %d pairs in %.1f s",
            n_items,
            matrix.nnz,
            time.perf_counter() - start,
        )
        return self

    def _pairs_at(
        self,
        items: np.ndarray,
        session_of_event: np.ndarray,
        distance: int,
        n_items: int,
    ) -> sp.csr_matrix:
        """Weigh the item pairs `distance` events apart within one session."""
        first, second = items[:-distance], items[distance:]
        keep = (
            (session_of_event[:-distance] == session_of_event[distance:])
            & (first >= 0)
            & (second >= 0)
        )
        first, second = first[keep], second[keep]
        rows = np.concatenate((first, second))
        cols = np.concatenate((second, first))
        direction = np.concatenate(
            (
                np.full(len(first), self.forward_weight, np.float32),
                np.full(len(first), self.backward_weight, np.float32),
            )
        )

        # A revisit pairs an item with itself once, not in both directions.
        repeat = rows == cols
        is_forward = np.arange(len(rows)) < len(first)
        direction[repeat] = np.where(is_forward[repeat], self.repeat_weight, 0.0)

        values = direction / distance**self.distance_power
        return sp.csr_matrix(
            (values, (rows, cols)), shape=(n_items, n_items), dtype=np.float32
        )

    def _set_state(self, matrix: sp.csr_matrix, counts: np.ndarray) -> None:
        self.matrix = matrix
        self.counts = counts
        self.ranking = np.argsort(-counts, kind="stable").astype(np.int64)

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        check_k(k)
        if self.matrix is None or self.counts is None or self.ranking is None:
            raise BuildError("CovisitationRecommender.recommend called before fit")
        items = np.asarray(items, dtype=np.int64)
        ages = np.arange(len(items) - 1, -1, -1)
        known = (items >= 0) & (items < self.matrix.shape[0])
        items, ages = items[known], ages[known]

        indptr, indices, data = (
            self.matrix.indptr,
            self.matrix.indices,
            self.matrix.data,
        )
        starts, ends = indptr[items], indptr[items + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return select_top(
                np.zeros(0, np.int64), np.zeros(0), k, self.counts, self.ranking
            )
        positions = np.concatenate(
            [np.arange(s, e) for s, e in zip(starts, ends, strict=True)]
        )
        row_weights = np.repeat(self.recency_decay**ages, lengths)
        candidates, inverse = np.unique(indices[positions], return_inverse=True)
        scores = np.bincount(
            inverse, weights=data[positions] * row_weights, minlength=len(candidates)
        )
        return select_top(candidates, scores, k, self.counts, self.ranking)

    def save(self, path: Path) -> None:
        if self.matrix is None or self.counts is None:
            raise BuildError(
                "CovisitationRecommender.save called before fit", str(path)
            )
        np.savez(
            path,
            indptr=self.matrix.indptr,
            indices=self.matrix.indices,
            data=self.matrix.data,
            counts=self.counts,
            params=np.array([str(self.params)]),
        )

    @classmethod
    def load(cls, path: Path, **params: Any) -> CovisitationRecommender:
        """Load a fitted matrix; `params` must match the ones it was fitted with."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                counts = arrays["counts"]
                n_items = len(counts)
                matrix = sp.csr_matrix(
                    (arrays["data"], arrays["indices"], arrays["indptr"]),
                    shape=(n_items, n_items),
                )
                saved_params = str(arrays["params"][0])
        except (OSError, KeyError, ValueError) as exc:
            raise BuildError(
                f"cannot read co-visitation matrix: {exc}", str(path)
            ) from exc
        model = cls(**params)
        if saved_params != str(model.params):
            raise BuildError(
                f"co-visitation matrix was fitted with {saved_params}, "
                f"not {model.params}; pass the fitted parameters",
                str(path),
            )
        model._set_state(matrix, counts)
        return model
