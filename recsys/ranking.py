"""The ranker: scores candidates from their features.

`train_ranker` fits a LightGBM LambdaRank model on labelled candidate lists
and compares it, by NDCG@20 on held-out lists, with ranking by each single
source's own order. The saved ranker records which of the two won
(`use_model` in its metadata), so a model that does not beat the best source
is never served. Without a trained model, `Ranker.fusion` ranks by
reciprocal rank fusion of the sources.

A saved ranker is a directory with `ranker.txt` (LightGBM's text model
format, absent when `use_model` is false) and `ranker.json` (metadata).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from recsys.errors import BuildError, ValidationError
from recsys.features import MISSING_RANK, CandidateSet

log = logging.getLogger(__name__)

MODEL_FILE: Final = "ranker.txt"
METADATA_FILE: Final = "ranker.json"
NDCG_CUTOFF: Final = 20
# The constant of reciprocal rank fusion; 60 is the value of Cormack et al.
# (SIGIR 2009), which the method's users keep.
FUSION_K: Final = 60.0
# Sources that ignore the session get this weight in fusion, so they order
# the fallback items without outvoting the session's evidence.
FALLBACK_SOURCES: Final = ("popular", "trending")
FALLBACK_WEIGHT: Final = 0.001

DEFAULT_PARAMS: Final[dict[str, Any]] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [NDCG_CUTOFF],
    "lambdarank_truncation_level": 40,
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


@dataclass(frozen=True)
class RankerMetadata:
    """A ranker's scoring settings and the measures of its training.

    `kind` is "lambdarank" or "fusion". With `use_model` false the ranker
    orders by `fallback_source` alone, because the model did not beat it.
    Without a fallback source it fuses the sources' ranks, each weighted by
    `fusion_weights`.
    """

    kind: str
    source_names: list[str]
    feature_names: list[str]
    use_model: bool = False
    fallback_source: str | None = None
    ndcg_model: float | None = None
    ndcg_sources: dict[str, float] = field(default_factory=dict)
    n_train_lists: int = 0
    n_valid_lists: int = 0
    best_iteration: int = 0
    seed: int = 0
    train_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    fusion_weights: dict[str, float] = field(default_factory=dict)
    candidate_recall: float | None = None


@dataclass
class LabelledLists:
    """Candidate lists with their features and 0/1 labels, stacked.

    `features` (n_rows, n_features) float32, `labels` (n_rows,) int32,
    `group_sizes` (n_lists,) int64. `ranks` (n_rows, n_sources) contains
    each source's rank of the row's item, for the single-source comparison.
    `n_missed` counts lists whose target was not among the candidates;
    they are kept, because they count as misses in NDCG.
    """

    features: np.ndarray
    labels: np.ndarray
    group_sizes: np.ndarray
    ranks: np.ndarray
    n_missed: int = 0

    @classmethod
    def stack(
        cls, lists: Sequence[tuple[np.ndarray, np.ndarray, CandidateSet]]
    ) -> LabelledLists:
        """Stack (features, labels, candidates) triples of single requests."""
        n_missed = sum(1 for _, labels, _ in lists if not labels.any())
        return cls(
            features=np.concatenate([f for f, _, _ in lists]),
            labels=np.concatenate([labels for _, labels, _ in lists]),
            group_sizes=np.array([len(labels) for _, labels, _ in lists]),
            ranks=np.concatenate([c.ranks for _, _, c in lists]),
            n_missed=n_missed,
        )


class Ranker:
    """Scores a request's candidates; higher is better."""

    def __init__(self, metadata: RankerMetadata, booster: Any = None) -> None:
        if metadata.use_model and booster is None:
            raise BuildError("the ranker metadata asks for a model but none is given")
        self.metadata = metadata
        self.booster = booster
        self._fallback = (
            None
            if metadata.fallback_source is None
            else metadata.source_names.index(metadata.fallback_source)
        )

    @classmethod
    def fusion(cls, source_names: Sequence[str]) -> Ranker:
        weights = {
            name: FALLBACK_WEIGHT if name in FALLBACK_SOURCES else 1.0
            for name in source_names
        }
        return cls(
            RankerMetadata("fusion", list(source_names), [], fusion_weights=weights)
        )

    def score(self, features: np.ndarray, candidates: CandidateSet) -> np.ndarray:
        """Return (m,) float32 scores for the candidates of one request."""
        if list(candidates.source_names) != self.metadata.source_names:
            raise BuildError(
                f"ranker trained on sources {self.metadata.source_names}, "
                f"got {list(candidates.source_names)}; retrain the ranker"
            )
        if self.metadata.use_model:
            scores = self.booster.predict(features, num_threads=1)
            return np.asarray(scores, dtype=np.float32)
        if self._fallback is not None:
            return -candidates.ranks[:, self._fallback]
        weights = [
            self.metadata.fusion_weights.get(name, 1.0)
            for name in candidates.source_names
        ]
        return _fusion_scores(candidates.ranks, np.array(weights))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.metadata.use_model:
            self.booster.save_model(str(directory / MODEL_FILE))
        text = json.dumps(asdict(self.metadata), indent=2, sort_keys=True)
        (directory / METADATA_FILE).write_text(text + "\n")

    @classmethod
    def load(cls, directory: Path) -> Ranker:
        path = directory / METADATA_FILE
        try:
            metadata = RankerMetadata(**json.loads(path.read_text()))
        except (OSError, TypeError, ValueError) as exc:
            raise BuildError(f"cannot read ranker metadata: {exc}", str(path)) from exc
        if not metadata.use_model:
            return cls(metadata)

        import lightgbm

        model_path = directory / MODEL_FILE
        try:
            booster = lightgbm.Booster(model_file=str(model_path))
        except (OSError, lightgbm.basic.LightGBMError) as exc:
            raise BuildError(
                f"cannot read ranker model: {exc}", str(model_path)
            ) from exc
        return cls(metadata, booster)


def _fusion_scores(ranks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    found = ranks < MISSING_RANK
    reciprocal = np.where(found, weights / (FUSION_K + ranks), 0.0)
    return reciprocal.sum(axis=1).astype(np.float32)


def _source_scores(ranks: np.ndarray) -> np.ndarray:
    """Order by one source's ranks; items it did not return score -inf."""
    return np.where(ranks < MISSING_RANK, -ranks, -np.inf)


def ndcg_at(
    scores: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, k: int
) -> float:
    """Mean NDCG@k over lists with one relevant item each.

    A list scores 0 when it has no relevant item or the relevant item's
    score is not finite (a source that did not return it). Ties are broken
    in favour of the earlier row, as a stable sort does.
    """
    total = 0.0
    start = 0
    for size in group_sizes:
        list_scores = scores[start : start + size]
        list_labels = labels[start : start + size]
        start += size
        if not list_labels.any():
            continue
        target = int(np.argmax(list_labels))
        if not np.isfinite(list_scores[target]):
            continue
        rank = int((list_scores > list_scores[target]).sum())
        rank += int((list_scores[:target] == list_scores[target]).sum())
        if rank < k:
            total += 1.0 / np.log2(rank + 2.0)
    return float(total / max(len(group_sizes), 1))


def train_ranker(
    train: LabelledLists,
    valid: LabelledLists,
    *,
    source_names: Sequence[str],
    feature_names: Sequence[str],
    seed: int = 0,
    num_boost_round: int = 400,
    early_stopping_rounds: int = 40,
    params: dict[str, Any] | None = None,
) -> Ranker:
    """Fit a LambdaRank model and keep it only if it beats every single source.

    Both sets hold whole candidate lists; `valid` drives early stopping and
    the comparison, so it must come from sessions not in `train`.
    """
    import lightgbm

    if not train.labels.any():
        raise ValidationError(
            "train", "no positive labels", "lists whose target is a candidate"
        )
    params = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
    started = time.perf_counter()
    train_set = lightgbm.Dataset(
        train.features,
        label=train.labels,
        group=train.group_sizes,
        feature_name=list(feature_names),
        free_raw_data=False,
    )
    valid_set = train_set.create_valid(
        valid.features, label=valid.labels, group=valid.group_sizes
    )
    booster = lightgbm.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        callbacks=[lightgbm.early_stopping(early_stopping_rounds, verbose=False)],
    )
    seconds = time.perf_counter() - started

    model_scores = np.asarray(
        booster.predict(
            valid.features, num_iteration=booster.best_iteration, num_threads=1
        )
    )
    ndcg_model = ndcg_at(model_scores, valid.labels, valid.group_sizes, NDCG_CUTOFF)
    ndcg_sources = {
        name: ndcg_at(
            _source_scores(valid.ranks[:, i]),
            valid.labels,
            valid.group_sizes,
            NDCG_CUTOFF,
        )
        for i, name in enumerate(source_names)
    }
    best_source = max(ndcg_sources, key=ndcg_sources.__getitem__)
    use_model = ndcg_model > ndcg_sources[best_source]
    log.info(
        "ranker: NDCG@%d %.4f vs best source %s %.4f; serving %s "
        "(%d train lists, %d valid lists, %d iterations, %.1f s)",
        NDCG_CUTOFF,
        ndcg_model,
        best_source,
        ndcg_sources[best_source],
        "the model" if use_model else best_source,
        len(train.group_sizes),
        len(valid.group_sizes),
        booster.best_iteration,
        seconds,
    )
    metadata = RankerMetadata(
        kind="lambdarank",
        source_names=list(source_names),
        feature_names=list(feature_names),
        use_model=use_model,
        fallback_source=None if use_model else best_source,
        ndcg_model=ndcg_model,
        ndcg_sources=ndcg_sources,
        n_train_lists=len(train.group_sizes),
        n_valid_lists=len(valid.group_sizes),
        best_iteration=booster.best_iteration,
        seed=seed,
        train_seconds=seconds,
        params=params,
    )
    if use_model:
        # Keep only the trees up to the best iteration, so the saved text
        # model predicts exactly what was measured.
        booster = lightgbm.Booster(
            model_str=booster.model_to_string(num_iteration=booster.best_iteration)
        )
    return Ranker(metadata, booster if use_model else None)
