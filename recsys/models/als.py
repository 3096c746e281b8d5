"""Implicit-feedback ALS (the `implicit` library) with fold-in at request time.

Rows of the interaction matrix are users where events carry a user id and
sessions otherwise (or always sessions with `rows="sessions"`). Each event
adds the confidence of its type (`event_weights`, scaled by `alpha`) to its
(row, item) cell; searches carry no item and are ignored.

A stored row vector serves a known user. A live session, or a user the model
has not seen, gets its vector by fold-in: one exact least-squares solve
against the fixed item factors, the same update ALS makes for a user row:

    x = (YtY + regularization * I + sum_i (c_i - 1) y_i y_i^T)^-1 sum_i c_i y_i

where c_i is the confidence of item i. With a known user and session items,
the user's training interactions and the session's are solved together.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import BuildError, ConfigError
from recsys.events import EVENT_TYPES
from recsys.interactions import ItemVocab, SessionData, check_same_vocab
from recsys.models.base import top_k_scores

log = logging.getLogger(__name__)

FACTORS_FILE = "als.npz"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
ITEM_IDS_FILE = "item_ids.npy"

# Row keys of the interaction matrix carry a prefix, so a user id and a
# session id with the same text name different rows.
_USER_PREFIX = "user:"
_SESSION_PREFIX = "session:"


def _default_event_weights() -> dict[str, float]:
    return {"click": 1.0, "cart_add": 4.0, "purchase": 8.0, "cart_remove": 0.0}


@dataclass
class ALSConfig:
    """Hyperparameters of ALS; names follow `implicit.als.AlternatingLeastSquares`."""

    factors: int = 128
    regularization: float = 0.1
    iterations: int = 15
    alpha: float = 40.0
    event_weights: dict[str, float] = field(default_factory=_default_event_weights)
    rows: str = "auto"
    random_state: int = 42
    num_threads: int = 1

    def validate(self) -> None:
        if self.rows not in ("auto", "users", "sessions"):
            raise ConfigError(
                f"invalid rows {self.rows!r}; expected 'auto', 'users' or 'sessions'"
            )
        unknown = sorted(set(self.event_weights) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(
                f"invalid event type {unknown[0]!r} in event_weights; "
                f"expected one of {list(EVENT_TYPES)}"
            )
        if any(w < 0 for w in self.event_weights.values()):
            raise ConfigError(f"event weights must be >= 0, got {self.event_weights}")
        if self.factors < 1 or self.iterations < 1:
            raise ConfigError(
                f"factors and iterations must be at least 1, got "
                f"{self.factors} and {self.iterations}"
            )
        if self.regularization < 0 or self.alpha <= 0:
            raise ConfigError(
                f"regularization must be >= 0 and alpha > 0, got "
                f"{self.regularization} and {self.alpha}"
            )

    def type_weights(self) -> np.ndarray:
        """Return the confidence per event-type code, float32 (n_types,)."""
        return np.array(
            [self.event_weights.get(t, 0.0) for t in EVENT_TYPES], dtype=np.float32
        )


class ALSRecommender:
    """ALS item factors with a fold-in session vector as a SessionRecommender."""

    name = "als"

    def __init__(self, config: ALSConfig | None = None, *, exclude_seen: bool = False):
        self.config = config or ALSConfig()
        self.config.validate()
        self.exclude_seen = exclude_seen
        self.vocab: ItemVocab | None = None
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.user_items: sp.csr_matrix | None = None
        self.row_keys: np.ndarray = np.zeros(0, dtype=str)
        self._row_of: dict[str, int] = {}
        self._gram: np.ndarray | None = None
        self.metrics: dict[str, Any] = {}
        self.params: dict[str, Any] = asdict(self.config)
        self._pretrained = False

    # Training

    def _row_keys(self, data: SessionData) -> np.ndarray:
        use_users = self.config.rows == "users" or (
            self.config.rows == "auto" and any(u is not None for u in data.user_ids)
        )
        keys = []
        for session_id, user_id in zip(data.session_ids, data.user_ids, strict=True):
            if use_users and user_id is not None:
                keys.append(_USER_PREFIX + str(user_id))
            else:
                keys.append(_SESSION_PREFIX + str(session_id))
        return np.asarray(keys, dtype=str)

    def fit(self, data: SessionData) -> ALSRecommender:
        """Build the confidence matrix from `data`, run ALS and return self.

        Raises BuildError when ALS returns NaN or infinite factors (for example
        with regularization 0 on a tiny catalog).
        """
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.recommender_base import ModelFitError
        from threadpoolctl import threadpool_limits

        if self._pretrained:
            check_same_vocab(self.vocab, data.vocab)
            return self
        c = self.config
        self.vocab = data.vocab
        session_keys = self._row_keys(data)
        self.row_keys, session_rows = np.unique(session_keys, return_inverse=True)
        self._row_of = {str(k): i for i, k in enumerate(self.row_keys)}

        event_rows = np.repeat(session_rows, np.diff(data.indptr))
        weights = c.type_weights()[data.event_types]
        keep = (data.items >= 0) & (weights > 0)
        self.user_items = sp.csr_matrix(
            (weights[keep], (event_rows[keep], data.items[keep])),
            shape=(len(self.row_keys), len(data.vocab)),
            dtype=np.float32,
        )
        self.user_items.sum_duplicates()
        log.info(
            "ALS: %d rows x %d items, %d non-zeros, factors=%d",
            *self.user_items.shape,
            self.user_items.nnz,
            c.factors,
        )

        model = AlternatingLeastSquares(
            factors=c.factors,
            regularization=c.regularization,
            alpha=c.alpha,
            iterations=c.iterations,
            random_state=c.random_state,
            num_threads=c.num_threads,
        )
        started = time.monotonic()
        # implicit runs its own threads; BLAS threads on top of them thrash.
        # implicit raises ModelFitError on NaN factors; _check_finite also
        # catches infinite ones.
        with threadpool_limits(1, "blas"):
            try:
                model.fit(self.user_items, show_progress=False)
            except ModelFitError as exc:
                raise BuildError(
                    f"ALS produced NaN or infinite factors ({exc}) with factors="
                    f"{c.factors}, regularization={c.regularization}; raise "
                    "regularization above 0 or lower factors"
                ) from exc
        self.metrics["train_seconds"] = time.monotonic() - started
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._check_finite()
        self._gram = None
        return self

    def _check_finite(self) -> None:
        for name in ("user_factors", "item_factors"):
            values = getattr(self, name)
            bad = int((~np.isfinite(values)).any(axis=1).sum())
            if bad:
                raise BuildError(
                    f"ALS produced NaN or infinite {name} in {bad} of {len(values)} "
                    f"rows (factors={self.config.factors}, regularization="
                    f"{self.config.regularization}); raise regularization above 0 "
                    "or lower factors"
                )

    # Scoring

    def _require_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.item_factors is None or self.user_factors is None:
            raise ConfigError("the ALS model is not trained; call fit or load first")
        return self.user_factors, self.item_factors

    def _require_interactions(self) -> tuple[sp.csr_matrix, ItemVocab]:
        """Return the training interaction matrix and the item vocabulary."""
        if self.user_items is None or self.vocab is None:
            raise ConfigError("the ALS model is not trained; call fit or load first")
        return self.user_items, self.vocab

    def _gram_matrix(self) -> np.ndarray:
        """Return YtY + regularization * I in float64, computed once."""
        if self._gram is None:
            _, y = self._require_fitted()
            y64 = y.astype(np.float64)
            self._gram = y64.T @ y64 + self.config.regularization * np.eye(y.shape[1])
        return self._gram

    def fold_in(
        self, items: np.ndarray, confidences: np.ndarray | None = None
    ) -> np.ndarray:
        """Solve the row vector of an unseen user or session, float32 (factors,).

        `items` are item indexes (-1 and repeats allowed); `confidences` their
        per-event confidence before `alpha` (default 1 per event, a click).
        An empty session gets the zero vector.
        """
        _, y = self._require_fitted()
        items = np.asarray(items, dtype=np.int64)
        if confidences is None:
            confidences = np.ones(len(items), dtype=np.float64)
        keep = (items >= 0) & (items < len(y)) & (confidences > 0)
        if not keep.any():
            return np.zeros(y.shape[1], dtype=np.float32)
        unique, inverse = np.unique(items[keep], return_inverse=True)
        c = np.bincount(inverse, weights=confidences[keep]) * self.config.alpha
        factors = y[unique].astype(np.float64)

        a = self._gram_matrix() + (factors.T * (c - 1.0)) @ factors
        b = factors.T @ c
        try:
            x = np.linalg.solve(a, b)
        except np.linalg.LinAlgError as exc:
            raise BuildError(
                f"fold-in failed for {len(unique)} items: {exc}; the item factors "
                "are degenerate, so retrain with regularization above 0"
            ) from exc
        return x.astype(np.float32)

    def user_vector(
        self,
        user_id: str | None = None,
        items: np.ndarray | None = None,
        event_types: np.ndarray | None = None,
    ) -> np.ndarray:
        """Return the row vector for a user and/or the items of a live session.

        A known user without session items gets the stored factors. Otherwise
        the vector is folded in from the session's events, together with the
        user's training interactions when the user is known. An unknown user
        never raises: it is treated as anonymous.
        """
        user_factors, _ = self._require_fitted()
        row = (
            -1 if user_id is None else self._row_of.get(_USER_PREFIX + str(user_id), -1)
        )
        has_items = items is not None and len(items) > 0
        if row >= 0 and not has_items:
            return user_factors[row]

        session_items = np.zeros(0, dtype=np.int64)
        session_conf = np.zeros(0, dtype=np.float64)
        if has_items:
            session_items = np.asarray(items, dtype=np.int64)
            session_conf = self._confidences(session_items, event_types)
        if row >= 0:
            user_items, _ = self._require_interactions()
            start, end = user_items.indptr[row], user_items.indptr[row + 1]
            session_items = np.concatenate(
                [user_items.indices[start:end], session_items]
            )
            session_conf = np.concatenate([user_items.data[start:end], session_conf])
        return self.fold_in(session_items, session_conf)

    def _confidences(
        self, items: np.ndarray, event_types: np.ndarray | None
    ) -> np.ndarray:
        if event_types is None:
            return np.full(len(items), self.config.event_weights.get("click", 1.0))
        codes = np.asarray(event_types)
        if codes.dtype.kind not in "iu":
            try:
                codes = np.array([EVENT_TYPES.index(t) for t in codes], dtype=np.int64)
            except ValueError:
                raise ConfigError(
                    f"invalid event types {list(event_types)!r}; expected names "
                    f"from {list(EVENT_TYPES)} or their codes"
                ) from None
        return self.config.type_weights()[codes].astype(np.float64)

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
        user_id: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank all items for a session (see SessionRecommender), best first.

        Items already in the session stay eligible unless `exclude_seen`.
        """
        _, y = self._require_fitted()
        items = np.asarray(items, dtype=np.int64)
        scores = y @ self.user_vector(user_id, items, event_types)
        if self.exclude_seen:
            seen = items[(items >= 0) & (items < len(scores))]
            scores[seen] = -np.inf
        return top_k_scores(scores, k)

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        """Score all items for click-only sessions, float32 (n_sessions, n_items)."""
        _, y = self._require_fitted()
        vectors = np.stack([self.fold_in(s) for s in sessions])
        return vectors @ y.T

    # Persistence

    def save(self, directory: Path | str) -> None:
        """Write factors and interactions (npz), config and metrics (JSON)."""
        user_factors, item_factors = self._require_fitted()
        user_items, vocab = self._require_interactions()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / FACTORS_FILE,
            user_factors=user_factors,
            item_factors=item_factors,
            row_keys=self.row_keys,
            user_items_data=user_items.data,
            user_items_indices=user_items.indices,
            user_items_indptr=user_items.indptr,
        )
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2))
        vocab.save(directory / ITEM_IDS_FILE)

    @classmethod
    def load(
        cls, directory: Path | str, *, exclude_seen: bool = False
    ) -> ALSRecommender:
        """Load a model written by `save`, without pickle."""
        directory = Path(directory)
        try:
            config = ALSConfig(**json.loads((directory / CONFIG_FILE).read_text()))
            with np.load(directory / FACTORS_FILE, allow_pickle=False) as arrays:
                stored = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, TypeError) as exc:
            raise BuildError(
                f"cannot load the ALS model: {exc}", str(directory)
            ) from exc
        model = cls(config, exclude_seen=exclude_seen)
        model.vocab = ItemVocab.load(directory / ITEM_IDS_FILE)
        model.user_factors = stored["user_factors"]
        model.item_factors = stored["item_factors"]
        model.row_keys = stored["row_keys"]
        model._row_of = {str(k): i for i, k in enumerate(model.row_keys)}
        model.user_items = sp.csr_matrix(
            (
                stored["user_items_data"],
                stored["user_items_indices"],
                stored["user_items_indptr"],
            ),
            shape=(len(model.row_keys), len(model.vocab)),
        )
        metrics_path = directory / METRICS_FILE
        if metrics_path.exists():
            model.metrics = json.loads(metrics_path.read_text())
        model._check_finite()
        model._pretrained = True
        model.params["model_dir"] = str(directory)
        return model


def create_als(
    model_dir: str | None = None, exclude_seen: bool = False, **config: Any
) -> ALSRecommender:
    """Create an unfitted ALS model from config values, or load a saved one.

    With `model_dir`, `fit` only checks that the data has the same item
    vocabulary, so `recsys evaluate` can score a model from `recsys train als`.
    """
    if model_dir is not None:
        if config:
            raise ConfigError(
                f"model_dir loads a trained model; drop the other parameters "
                f"{sorted(config)}"
            )
        return ALSRecommender.load(model_dir, exclude_seen=exclude_seen)
    return ALSRecommender(ALSConfig(**config), exclude_seen=exclude_seen)
