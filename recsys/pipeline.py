"""The one code path from a session to a ranked list.

`Pipeline.rank` takes a session as dense item indexes and returns the top k
items with their scores and the sources that proposed them:

1. encode the session (session tower) and the user (stored factors or
   fold-in) when the build has encoders for them;
2. ask every candidate source for its top items and merge them
   (`CandidateSet`);
3. compute one feature row per candidate (`build_features`);
4. score the rows with the ranker (`Ranker`);
5. apply the business rules (`Rules`): filters, no duplicates, backfill.

`Pipeline.recommend` wraps `rank` for string ids and events, as the HTTP
service calls it; `PipelineRecommender` wraps `rank` as a `SessionRecommender`
for the offline evaluator. Both therefore rank with exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recsys.candidates import CandidateSource, SourceRequest
from recsys.errors import BuildError, ValidationError
from recsys.events import Event
from recsys.features import (
    CandidateSet,
    ItemStats,
    SessionView,
    build_features,
    feature_names,
)
from recsys.interactions import EVENT_TYPE_CODES, ItemVocab
from recsys.ranking import Ranker
from recsys.rules import RuleConfig, Rules
from recsys.timing import stage

log = logging.getLogger(__name__)

MAX_K = 200
# Candidates asked of each source unless `n_candidates` names it.
DEFAULT_N_CANDIDATES = 100


class SessionEncoder(Protocol):
    """Turns a session into a vector (the session tower)."""

    def encode(self, session: SessionView) -> np.ndarray | None: ...


class UserEncoder(Protocol):
    """Returns a user's vector: stored factors, or a fold-in of the session."""

    def user_vector(
        self, user_id: str | None, session: SessionView
    ) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Ranked:
    """The result of `Pipeline.rank`, best first.

    `sources[i]` names the sources that proposed `items[i]`; an item added
    by the popularity backfill of the rules has the source "backfill".
    """

    items: np.ndarray
    scores: np.ndarray
    sources: list[tuple[str, ...]]
    n_candidates: int


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Recommendation:
    """The result of `Pipeline.recommend`.

    `ignored` counts what the request contained but the build could not use:
    `unknown_items` (session events whose item is not in the catalog),
    `search_events`, `unknown_exclude` and `unknown_context_item`.
    """

    items: list[RecommendedItem]
    build_version: str
    ignored: dict[str, int] = field(default_factory=dict)
    n_candidates: int = 0


class Pipeline:
    """Candidate sources, a ranker and rules over one catalog.

    Parameters
    ----------
    vocab : the catalog (string id <-> dense index).
    stats : item statistics of the training log (popularity, categories).
    sources : candidate sources, in the column order the ranker expects.
    ranker : scores candidates; reciprocal rank fusion when None.
    rules : switches of the business rules.
    n_candidates : how many candidates to ask of each source, by name.
    session_encoder, user_encoder : fill `SourceRequest.session_embedding`
        and `SourceRequest.user_vector` when given.
    item_embeddings : float32 (n_items, dim) vectors of the session tower's
        item side. With a session encoder they add the feature
        `session_embedding_dot`, NaN when the session has no embedding.
    use_timestamps : false drops event times from every session, for
        builds trained on a log whose timestamps are synthetic.
    version : the build version reported with each recommendation.
    """

    def __init__(
        self,
        vocab: ItemVocab,
        stats: ItemStats,
        sources: Sequence[CandidateSource],
        *,
        ranker: Ranker | None = None,
        rules: RuleConfig | None = None,
        n_candidates: Mapping[str, int] | None = None,
        session_encoder: SessionEncoder | None = None,
        user_encoder: UserEncoder | None = None,
        item_embeddings: np.ndarray | None = None,
        use_timestamps: bool = True,
        version: str = "unversioned",
    ) -> None:
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ValidationError("sources", names, "sources with distinct names")
        if stats.n_items != len(vocab):
            raise ValidationError(
                "stats", stats.n_items, f"statistics of the {len(vocab)} catalog items"
            )
        self.vocab = vocab
        self.stats = stats
        self.sources = list(sources)
        self.source_names = tuple(names)
        self._source_bits = 1 << np.arange(len(names), dtype=np.int64)
        self._source_tuples: dict[int, tuple[str, ...]] = {}
        self.feature_names = feature_names(names)
        if item_embeddings is not None:
            self.feature_names.append("session_embedding_dot")
        self.ranker = ranker or Ranker.fusion(names)
        if self.ranker.metadata.source_names != names:
            raise BuildError(
                f"the ranker was trained on sources {self.ranker.metadata.source_names}"
                f" but the pipeline has {names}; retrain the ranker"
            )
        self.rules = Rules(stats, rules)
        self.n_candidates = dict(n_candidates or {})
        self.session_encoder = session_encoder
        self.user_encoder = user_encoder
        self.item_embeddings = item_embeddings
        trained_on = self.ranker.metadata.feature_names
        if self.ranker.metadata.use_model and trained_on != self.feature_names:
            raise BuildError(
                f"the ranker was trained on the features {trained_on} but the "
                f"pipeline computes {self.feature_names}; retrain the ranker"
            )
        self.use_timestamps = use_timestamps
        self.version = version

    # -- dense indexes: the path the evaluator and the service share --------

    def session_view(
        self,
        items: np.ndarray,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> SessionView:
        """Build the session the sources see; entries of -1 are dropped."""
        return SessionView.from_arrays(
            items, event_types, ts if self.use_timestamps else None
        )

    def source_request(
        self,
        session: SessionView,
        *,
        user_id: str | None = None,
        context_item: int = -1,
    ) -> SourceRequest:
        session_embedding = None
        if self.session_encoder is not None and len(session):
            session_embedding = self.session_encoder.encode(session)
        user_vector = None
        if self.user_encoder is not None:
            user_vector = self.user_encoder.user_vector(user_id, session)
        return SourceRequest(
            session=session,
            user_id=user_id,
            context_item=context_item,
            session_embedding=session_embedding,
            user_vector=user_vector,
        )

    def candidates(self, request: SourceRequest) -> CandidateSet:
        """Query every source and merge the results."""
        results = []
        for source in self.sources:
            n = self.n_candidates.get(source.name, DEFAULT_N_CANDIDATES)
            with stage(f"candidates.{source.name}"):
                results.append(source.candidates(request, n))
        return CandidateSet.merge(self.source_names, results)

    def features(self, candidates: CandidateSet, request: SourceRequest) -> np.ndarray:
        """Return the (m, n_features) matrix in `self.feature_names` order."""
        features = build_features(candidates, request.session, self.stats)
        if self.item_embeddings is None:
            return features
        dot = np.full(len(candidates), np.nan, dtype=np.float32)
        if request.session_embedding is not None:
            dot = self.item_embeddings[candidates.items] @ request.session_embedding
        return np.column_stack([features, dot]).astype(np.float32, copy=False)

    def rank(
        self,
        session: SessionView,
        k: int,
        *,
        user_id: str | None = None,
        context_item: int = -1,
        exclude: np.ndarray | None = None,
        category: int | None = None,
    ) -> Ranked:
        """Return the top `k` items for a session given as dense indexes.

        A `context_item` (the item the client is showing) counts as the
        session's latest click and is itself never recommended.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValidationError("k", k, "an integer >= 1")
        if context_item >= 0:
            session = _with_context(session, context_item)
            exclude = np.append(
                np.zeros(0, np.int64) if exclude is None else exclude, context_item
            )
        with stage("encode"):
            request = self.source_request(
                session, user_id=user_id, context_item=context_item
            )
        with stage("candidates"):
            candidates = self.candidates(request)
        return self.rank_candidates(
            request, candidates, k, exclude=exclude, category=category
        )

    def rank_candidates(
        self,
        request: SourceRequest,
        candidates: CandidateSet,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        category: int | None = None,
    ) -> Ranked:
        """Score merged candidates, apply the rules and return the top `k`."""
        scores = np.zeros(0, dtype=np.float32)
        if len(candidates):
            with stage("features"):
                features = self.features(candidates, request)
            with stage("ranker"):
                scores = self.ranker.score(features, candidates)
        order = np.argsort(-scores, kind="stable")
        with stage("rules"):
            filtered = self.rules.apply(
                candidates.items[order],
                scores[order],
                k=k,
                session=request.session,
                exclude=exclude,
                category=category,
            )
        return Ranked(
            items=filtered.items,
            scores=filtered.scores,
            sources=self._sources_of(filtered.items, filtered.backfilled, candidates),
            n_candidates=len(candidates),
        )

    def _sources_of(
        self, items: np.ndarray, backfilled: np.ndarray, candidates: CandidateSet
    ) -> list[tuple[str, ...]]:
        # Each item gets one bit per source that proposed it, or -1 when the
        # rules added it as backfill. Patterns map to tuples of names, which
        # are built once per pipeline.
        bits = np.full(len(items), -1, dtype=np.int64)
        found = ~backfilled
        rows = np.searchsorted(candidates.items, items[found])
        bits[found] = candidates.source_mask()[rows] @ self._source_bits
        return [self._sources_named(pattern) for pattern in bits.tolist()]

    def _sources_named(self, pattern: int) -> tuple[str, ...]:
        names = self._source_tuples.get(pattern)
        if names is None:
            if pattern < 0:
                names = ("backfill",)
            else:
                names = tuple(
                    name
                    for bit, name in enumerate(self.source_names)
                    if (pattern >> bit) & 1
                )
            self._source_tuples[pattern] = names
        return names

    # -- string ids: the service's entry point ------------------------------

    def recommend(
        self,
        events: Sequence[Event],
        k: int,
        *,
        user_id: str | None = None,
        context_item_id: str | None = None,
        exclude_item_ids: Sequence[str] = (),
        category: str | None = None,
    ) -> Recommendation:
        """Rank for a live session given as events, oldest first.

        Events whose item is not in the catalog and search events are
        skipped and counted in `Recommendation.ignored`, as are unknown ids
        in `exclude_item_ids` and an unknown `context_item_id`.
        """
        ignored = {"unknown_items": 0, "search_events": 0}
        items, types, ts = [], [], []
        for event in events:
            if event.item_id is None:
                ignored["search_events"] += 1
                continue
            index = self.vocab.index(event.item_id)
            if index < 0:
                ignored["unknown_items"] += 1
                continue
            items.append(index)
            types.append(EVENT_TYPE_CODES[event.event_type])
            ts.append(event.ts)
        check_k(k)
        session = self.session_view(
            np.array(items, dtype=np.int64),
            np.array(types, dtype=np.int8),
            np.array(ts, dtype=np.int64),
        )

        exclude = self.vocab.encode(exclude_item_ids)
        ignored["unknown_exclude"] = int((exclude < 0).sum())
        context_item = -1
        if context_item_id is not None:
            context_item = self.vocab.index(context_item_id)
            ignored["unknown_context_item"] = int(context_item < 0)
        category_code = None if category is None else self.stats.category_code(category)

        ranked = self.rank(
            session,
            k,
            user_id=user_id,
            context_item=context_item,
            exclude=exclude[exclude >= 0],
            category=category_code,
        )
        ids = self.vocab.decode(ranked.items)
        items_out = [
            RecommendedItem(item_id, float(score), sources)
            for item_id, score, sources in zip(
                ids, ranked.scores, ranked.sources, strict=True
            )
        ]
        return Recommendation(items_out, self.version, ignored, ranked.n_candidates)


def _with_context(session: SessionView, context_item: int) -> SessionView:
    """Append the context item as a click, unless it is already the last item."""
    if session.last_item == context_item:
        return session
    ts = None
    if session.ts is not None:
        ts = np.append(session.ts, session.ts[-1] if len(session.ts) else 0)
    return SessionView(
        np.append(session.items, context_item),
        np.append(session.event_types, np.int8(EVENT_TYPE_CODES["click"])),
        ts,
    )


def check_k(k: int) -> None:
    if (
        isinstance(k, bool)
        or not isinstance(k, int | np.integer)
        or not (1 <= k <= MAX_K)
    ):
        raise ValidationError("k", k, f"an integer from 1 to {MAX_K}")
