"""Fitting the whole pipeline, and the pipeline as a `SessionRecommender`.

`fit_pipeline` builds the candidate sources from a training log, trains the
ranker on a held-out window and returns a `Pipeline`:

1. split the log by time: the sessions that start last (`valid_fraction`)
   form the held-out window, the rest fit the sources;
2. cut the held-out sessions into prefixes (prefix -> next item), at most
   `max_lists` of them, and let the pipeline of step 1 produce candidates
   and features for each, labelled by the next item;
3. train the LambdaRank ranker on 80 % of the held-out sessions and compare
   it with every single source on the other 20 % (`train_ranker`);
4. refit the sources on the whole log and pair them with the ranker.

`PipelineRecommender` runs exactly `Pipeline.rank`, so the evaluation
harness measures the code the service runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.builds import Build
from recsys.candidates import (
    CandidateSource,
    ModelSource,
    PopularSource,
    RevisitSource,
    SourceRequest,
    VectorSource,
)
from recsys.errors import BuildError, ValidationError
from recsys.features import ItemStats, SessionView
from recsys.index import ItemIndex
from recsys.interactions import ItemVocab, SessionData
from recsys.models.als import ALSConfig, ALSRecommender
from recsys.models.covisitation import CovisitationRecommender
from recsys.models.popular import check_k
from recsys.models.sknn import SessionKNNRecommender
from recsys.pipeline import Pipeline, UserEncoder
from recsys.ranking import LabelledLists, Ranker, train_ranker
from recsys.rules import RuleConfig

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """The sources of a pipeline, their candidate counts and the ranker's training.

    `covisitation`, `sknn` and `als` hold the models' parameters (`als` as
    `ALSConfig` fields); None leaves the source out. With ALS the pipeline
    also computes the user vector: stored factors for a known user, a
    fold-in of the session otherwise. `variants` adds more co-visitation or
    kNN sources with other parameters, by name: each value has `model`
    ("covisitation" or "sknn"), optional `anchor` ("session" or "last") and
    `params`. `use_timestamps` true lets the ranker use event times (the
    session's age). It is off by default, because the benchmark logs carry
    synthetic times and the next-item evaluator passes none.
    """

    covisitation: dict[str, Any] | None = field(default_factory=dict)
    sknn: dict[str, Any] | None = field(default_factory=dict)
    als: dict[str, Any] | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    covisitation_last: bool = True
    revisit: bool = True
    popular: bool = True
    trending: bool = True
    n_candidates: dict[str, int] = field(
        default_factory=lambda: {
            "covisitation": 100,
            "sknn": 100,
            "als": 50,
            "covisitation_last": 50,
            "revisit": 50,
            "popular": 20,
            "trending": 20,
        }
    )
    rules: RuleConfig = field(default_factory=RuleConfig)
    train_ranker: bool = True
    valid_fraction: float = 0.1
    max_lists: int = 30_000
    ranker_params: dict[str, Any] = field(default_factory=dict)
    ranker_rounds: int = 400
    seed: int = 0
    use_timestamps: bool = False


@dataclass
class Components:
    """The fitted parts of a pipeline that depend on the training log."""

    sources: list[CandidateSource]
    user_encoder: UserEncoder | None = None
    session_encoder: TowerSessionEncoder | None = None
    item_embeddings: np.ndarray | None = None
    covisitation: CovisitationRecommender | None = None
    als: ALSRecommender | None = None


class TowerSessionEncoder:
    """Session embeddings from a fitted two-tower model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, session: SessionView) -> np.ndarray:
        return self.model.encode_sessions(
            [session.items], event_types=[session.event_types]
        )[0]


class ALSUserEncoder:
    """User vectors from ALS: stored factors or a fold-in of the session."""

    def __init__(self, model: ALSRecommender) -> None:
        self.model = model

    def user_vector(self, user_id: str | None, session: SessionView) -> np.ndarray:
        return self.model.user_vector(user_id, session.items, session.event_types)


def _user_vector(request: SourceRequest) -> np.ndarray | None:
    vector = request.user_vector
    if vector is None or not np.any(vector):
        return None
    return vector


def build_sources(
    data: SessionData,
    stats: ItemStats,
    config: PipelineConfig,
    *,
    covisitation: CovisitationRecommender | None = None,
    als: ALSRecommender | None = None,
    two_tower: Any = None,
) -> Components:
    """Fit the configured candidate sources on a training log.

    Models passed in (already fitted on `data`) are used as they are. A
    fitted `TwoTowerRecommender` in `two_tower` adds the "two_tower" source
    (nearest items to the session embedding) and the embedding feature.
    """
    sources: list[CandidateSource] = []
    if config.covisitation is not None:
        if covisitation is None:
            covisitation = CovisitationRecommender(**config.covisitation).fit(data)
        sources.append(ModelSource("covisitation", covisitation))
        if config.covisitation_last:
            sources.append(ModelSource("covisitation_last", covisitation, "last"))
    if config.sknn is not None:
        sknn = SessionKNNRecommender(**config.sknn).fit(data)
        sources.append(ModelSource("sknn", sknn))
    # Sorted, because the saved configuration is JSON with sorted keys.
    for name in sorted(config.variants):
        sources.append(_variant_source(name, config.variants[name], data))
    session_encoder = item_embeddings = None
    if two_tower is not None:
        _check_same_items(two_tower.vocab, data.vocab)
        item_embeddings = two_tower.item_vectors()
        index = ItemIndex.build(item_embeddings)
        sources.append(VectorSource("two_tower", index, _session_embedding))
        session_encoder = TowerSessionEncoder(two_tower)
    user_encoder = None
    if config.als is not None:
        if als is None:
            als = ALSRecommender(ALSConfig(**config.als)).fit(data)
        index = ItemIndex.build(np.asarray(als.item_factors))
        sources.append(VectorSource("als", index, _user_vector))
        user_encoder = ALSUserEncoder(als)
    if config.revisit:
        sources.append(RevisitSource())
    if config.popular:
        sources.append(PopularSource(stats, "popular"))
    if config.trending:
        sources.append(PopularSource(stats, "trending"))
    return Components(
        sources, user_encoder, session_encoder, item_embeddings, covisitation, als
    )


def _session_embedding(request: SourceRequest) -> np.ndarray | None:
    return request.session_embedding


def _check_same_items(model_vocab: ItemVocab, vocab: ItemVocab) -> None:
    if not np.array_equal(model_vocab.item_ids, vocab.item_ids):
        raise ValidationError(
            "two_tower",
            f"a model over {len(model_vocab)} items",
            f"a model fitted on the pipeline's {len(vocab)} items, in the same order",
        )


_VARIANT_MODELS = {
    "covisitation": CovisitationRecommender,
    "sknn": SessionKNNRecommender,
}


def _variant_source(
    name: str, variant: dict[str, Any], data: SessionData
) -> CandidateSource:
    model_name = variant.get("model")
    if model_name not in _VARIANT_MODELS:
        raise ValidationError(
            f"variants.{name}.model", model_name, f"one of {sorted(_VARIANT_MODELS)}"
        )
    anchor = variant.get("anchor", "session")
    if anchor not in ("session", "last"):
        raise ValidationError(f"variants.{name}.anchor", anchor, "'session' or 'last'")
    model = _VARIANT_MODELS[model_name](**variant.get("params", {})).fit(data)
    return ModelSource(name, model, anchor)


def fit_pipeline(
    data: SessionData,
    config: PipelineConfig | None = None,
    *,
    item_categories: dict[str, str] | None = None,
    two_tower: Any = None,
    version: str = "unversioned",
) -> Pipeline:
    """Fit sources and ranker on a training log; see the module docstring.

    A fitted `two_tower` model serves both the ranker's training lists and
    the returned pipeline.
    """
    # NOTE: a two-tower model fitted on all of `data` has seen the held-out
    # window, so the ranker may trust its scores more than it should.
    config = config or PipelineConfig()
    ranker = None
    if config.train_ranker:
        ranker = _fit_ranker(data, config, item_categories, two_tower)
    stats = ItemStats.from_sessions(data, item_categories)
    components = build_sources(data, stats, config, two_tower=two_tower)
    return assemble(data.vocab, stats, components, config, ranker, version)


def assemble(
    vocab: ItemVocab,
    stats: ItemStats,
    components: Components,
    config: PipelineConfig,
    ranker: Ranker | None = None,
    version: str = "unversioned",
) -> Pipeline:
    """Put fitted components, a ranker and the rules together."""
    return Pipeline(
        vocab,
        stats,
        components.sources,
        ranker=ranker,
        rules=config.rules,
        n_candidates=config.n_candidates,
        session_encoder=components.session_encoder,
        user_encoder=components.user_encoder,
        item_embeddings=components.item_embeddings,
        use_timestamps=config.use_timestamps,
        version=version,
    )


def _fit_ranker(
    data: SessionData,
    config: PipelineConfig,
    item_categories: dict[str, str] | None,
    two_tower: Any,
) -> Ranker:
    started = time.perf_counter()
    fit_sessions, held_out = split_by_time(data, config.valid_fraction)
    fit_part = subset_sessions(data, fit_sessions)
    stats = ItemStats.from_sessions(fit_part, item_categories)
    components = build_sources(fit_part, stats, config, two_tower=two_tower)
    pipeline = assemble(data.vocab, stats, components, config)

    cases = prefix_cases(data, held_out, config.max_lists, config.seed)
    rng = np.random.default_rng(config.seed)
    shuffled = rng.permutation(np.unique(cases[:, 0]))
    ranker_valid = set(shuffled[: max(1, len(shuffled) // 5)].tolist())
    train_lists, valid_lists = [], []
    n_found = 0
    for session, position in cases:
        labelled = labelled_list(pipeline, data, int(session), int(position))
        n_found += int(labelled[1].any())
        if session in ranker_valid:
            valid_lists.append(labelled)
        elif labelled[1].any():
            # A list without its target among the candidates adds no gradient.
            train_lists.append(labelled)
    candidate_recall = n_found / max(len(cases), 1)
    log.info(
        "ranker lists: %d train, %d valid from %d held-out sessions in %.1f s; "
        "candidate recall %.4f",
        len(train_lists),
        len(valid_lists),
        len(held_out),
        time.perf_counter() - started,
        candidate_recall,
    )

    ranker = train_ranker(
        LabelledLists.stack(train_lists),
        LabelledLists.stack(valid_lists),
        source_names=pipeline.source_names,
        feature_names=pipeline.feature_names,
        seed=config.seed,
        num_boost_round=config.ranker_rounds,
        params=config.ranker_params,
    )
    metadata = replace(ranker.metadata, candidate_recall=candidate_recall)
    return Ranker(metadata, ranker.booster)


def split_by_time(data: SessionData, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split session indexes: the last `fraction` by start time is held out."""
    lengths = np.diff(data.indptr)
    first_event = np.minimum(data.indptr[:-1], max(len(data.ts) - 1, 0))
    start_ts = (
        np.where(lengths > 0, data.ts[first_event], 0) if len(data.ts) else lengths
    )
    order = np.lexsort((np.arange(data.n_sessions), start_ts))
    n_held_out = round(data.n_sessions * fraction)
    cut = data.n_sessions - n_held_out
    return np.sort(order[:cut]), np.sort(order[cut:])


def subset_sessions(data: SessionData, sessions: np.ndarray) -> SessionData:
    """Return the given sessions (indexes) as a `SessionData` on the same vocab."""
    starts, ends = data.indptr[sessions], data.indptr[sessions + 1]
    lengths = ends - starts
    rows = (
        np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        if len(sessions)
        else np.zeros(0, dtype=np.int64)
    )
    return SessionData(
        vocab=data.vocab,
        session_ids=data.session_ids[sessions],
        user_ids=data.user_ids[sessions],
        indptr=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        items=data.items[rows],
        ts=data.ts[rows],
        event_types=data.event_types[rows],
    )


def prefix_cases(
    data: SessionData, sessions: np.ndarray, max_cases: int, seed: int
) -> np.ndarray:
    """Return (session, position) rows: predict the item at `position`.

    Every position after the first whose item is known is a case; at most
    `max_cases` are drawn at random (seeded), then sorted.
    """
    rows = []
    for session in sessions:
        items = data.session_items(int(session))
        positions = np.flatnonzero(items[1:] >= 0) + 1
        rows.append(np.column_stack([np.full(len(positions), session), positions]))
    cases = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    if len(cases) > max_cases:
        rng = np.random.default_rng(seed)
        cases = cases[np.sort(rng.choice(len(cases), max_cases, replace=False))]
    return cases.astype(np.int64)


def labelled_list(
    pipeline: Pipeline, data: SessionData, session: int, position: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Candidates and features of one prefix, labelled 1 at the next item."""
    start = data.indptr[session]
    end = start + position
    view = pipeline.session_view(
        data.items[start:end], data.event_types[start:end], data.ts[start:end]
    )
    request = pipeline.source_request(view)
    candidates = pipeline.candidates(request)
    features = pipeline.features(candidates, request)
    labels = (candidates.items == data.items[end]).astype(np.int32)
    return features, labels, candidates


class PipelineRecommender:
    """The fitted pipeline behind the `SessionRecommender` interface.

    Keyword parameters are fields of `PipelineConfig`, so the evaluation
    registry can create it by name with a parameter dict.
    """

    name = "pipeline"

    def __init__(
        self,
        *,
        item_categories: dict[str, str] | None = None,
        pipeline: Pipeline | None = None,
        **params: Any,
    ) -> None:
        if isinstance(params.get("rules"), dict):
            params["rules"] = RuleConfig(**params["rules"])
        self.config = PipelineConfig(**params)
        self.item_categories = item_categories
        self.pipeline = pipeline

    @property
    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    def fit(self, data: SessionData) -> PipelineRecommender:
        self.pipeline = fit_pipeline(
            data, self.config, item_categories=self.item_categories
        )
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
        if self.pipeline is None:
            raise BuildError("PipelineRecommender.recommend called before fit")
        view = self.pipeline.session_view(items, event_types, ts)
        ranked = self.pipeline.rank(view, k)
        return ranked.items, ranked.scores


# -- saving and loading ------------------------------------------------------

# The pipeline's directory inside a published build.
PIPELINE_DIR = "pipeline"
PIPELINE_FILE = "pipeline.json"
ITEM_IDS_FILE = "item_ids.npy"
SESSIONS_FILE = "sessions.npz"
COVISITATION_FILE = "covisitation.npz"
ALS_DIR = "als"
TWO_TOWER_DIR = "two_tower"
RANKER_DIR = "ranker"


def save_pipeline(
    directory: Path, pipeline: Pipeline, config: PipelineConfig, data: SessionData
) -> list[Path]:
    """Write a fitted pipeline to `directory` and return the files written.

    The session kNN index is not written: `load_pipeline` refits it from the
    saved training sessions, which is fast and deterministic.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.vocab.save(directory / ITEM_IDS_FILE)
    pipeline.stats.save(directory)
    np.savez(
        directory / SESSIONS_FILE,
        indptr=data.indptr,
        items=data.items,
        ts=data.ts,
        event_types=data.event_types,
    )
    for source in pipeline.sources:
        model = source.model if isinstance(source, ModelSource) else None
        if source.name == "covisitation" and isinstance(model, CovisitationRecommender):
            model.save(directory / COVISITATION_FILE)
    if isinstance(pipeline.user_encoder, ALSUserEncoder):
        pipeline.user_encoder.model.save(directory / ALS_DIR)
    if isinstance(pipeline.session_encoder, TowerSessionEncoder):
        pipeline.session_encoder.model.save(directory / TWO_TOWER_DIR)
    pipeline.ranker.save(directory / RANKER_DIR)
    description = {
        "version": pipeline.version,
        "config": asdict(config),
        "source_names": list(pipeline.source_names),
    }
    text = json.dumps(description, indent=2, sort_keys=True)
    (directory / PIPELINE_FILE).write_text(text + "\n")
    return sorted(path for path in directory.rglob("*") if path.is_file())


def load_pipeline(directory: Path, *, version: str | None = None) -> Pipeline:
    """Read a pipeline written by `save_pipeline`; raises `BuildError`."""
    path = directory / PIPELINE_FILE
    try:
        description = json.loads(path.read_text())
        raw_config = dict(description["config"])
        raw_config["rules"] = RuleConfig(**raw_config["rules"])
        config = PipelineConfig(**raw_config)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise BuildError(f"cannot read pipeline description: {exc}", str(path)) from exc

    vocab = ItemVocab.load(directory / ITEM_IDS_FILE)
    stats = ItemStats.load(directory)
    data = _load_sessions(directory / SESSIONS_FILE, vocab)
    covisitation = None
    if config.covisitation is not None:
        covisitation = CovisitationRecommender.load(
            directory / COVISITATION_FILE, **config.covisitation
        )
    als = None
    if config.als is not None:
        als = ALSRecommender.load(directory / ALS_DIR)
    two_tower = None
    if (directory / TWO_TOWER_DIR).is_dir():
        from recsys.models.two_tower import TwoTowerRecommender

        two_tower = TwoTowerRecommender.load(directory / TWO_TOWER_DIR)
    components = build_sources(
        data, stats, config, covisitation=covisitation, als=als, two_tower=two_tower
    )
    names = [source.name for source in components.sources]
    if names != description["source_names"]:
        raise BuildError(
            f"pipeline sources {description['source_names']} cannot be rebuilt "
            f"from its configuration (got {names}); rebuild the pipeline",
            str(path),
        )
    ranker = Ranker.load(directory / RANKER_DIR)
    version = version or str(description["version"])
    return assemble(vocab, stats, components, config, ranker, version)


def load_build_pipeline(build: Build) -> Pipeline:
    """Load the pipeline of a verified build (`recsys.builds.open_build`).

    The pipeline lives in `PIPELINE_DIR`, or in `ranker/` where the rebuild
    job's ranker hook wrote it.
    """
    directory = build.path / PIPELINE_DIR
    if not (directory / PIPELINE_FILE).exists():
        directory = build.path / "ranker"
    if not (directory / PIPELINE_FILE).exists():
        raise BuildError(
            f"build {build.version} has no pipeline ({PIPELINE_DIR}/{PIPELINE_FILE}); "
            "rebuild it with the ranker enabled",
            str(build.path / PIPELINE_DIR / PIPELINE_FILE),
        )
    return load_pipeline(directory, version=build.version)


def _load_sessions(path: Path, vocab: ItemVocab) -> SessionData:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            indptr = arrays["indptr"]
            items = arrays["items"]
            ts = arrays["ts"]
            event_types = arrays["event_types"]
    except (OSError, KeyError, ValueError) as exc:
        raise BuildError(f"cannot read training sessions: {exc}", str(path)) from exc
    n_sessions = len(indptr) - 1
    return SessionData(
        vocab=vocab,
        session_ids=np.arange(n_sessions).astype(str).astype(object),
        user_ids=np.full(n_sessions, None, dtype=object),
        indptr=indptr,
        items=items,
        ts=ts,
        event_types=event_types,
    )
