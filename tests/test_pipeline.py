"""The pipeline end to end on synthetic sessions whose next item is forced.

The catalog has four blocks of ten items. In a training session the next
item is mostly the current one plus one, wrapping inside the block, so after
item "b2-3" usually comes "b2-4". Otherwise the session goes back to an item
it visited before or jumps inside the block. Block 0 is the most popular. The
detours make every single source imperfect, so the ranker has to combine
them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.errors import ValidationError
from recsys.events import Event
from recsys.features import SessionView
from recsys.interactions import EVENT_TYPE_CODES, SessionData
from recsys.models.pipeline import (
    PipelineConfig,
    PipelineRecommender,
    fit_pipeline,
    load_pipeline,
    save_pipeline,
)

T0 = 1_700_000_000_000
RANKER_PARAMS = {"min_data_in_leaf": 5, "num_leaves": 7}


def item(block: int, offset: int) -> str:
    return f"b{block}-{offset % 10}"


def synthetic_events(
    n_sessions: int = 600, seed: int = 0, *, users: bool = False
) -> pa.Table:
    """Sessions as described above; with `users`, each user stays in one block."""
    rng = np.random.default_rng(seed)
    rows = {name: [] for name in EVENTS_SCHEMA.names}
    ts = T0
    for s in range(n_sessions):
        block = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
        offsets = [int(rng.integers(10))]
        for _ in range(int(rng.integers(1, 7))):
            draw = rng.random()
            if draw < 0.7:
                offsets.append(offsets[-1] + 1)
            elif draw < 0.9 and len(offsets) > 1:
                offsets.append(offsets[int(rng.integers(len(offsets) - 1))])
            else:
                offsets.append(int(rng.integers(10)))
        for offset in offsets:
            ts += 1000
            rows["session_id"].append(f"s{s:04d}")
            rows["user_id"].append(f"u{block}-{s % 3}" if users else None)
            rows["item_id"].append(item(block, offset))
            rows["event_type"].append("click")
            rows["query"].append(None)
            rows["ts"].append(ts)
            rows["event_id"].append(None)
    return pa.table(rows, schema=EVENTS_SCHEMA)


def config(**changes) -> PipelineConfig:
    values = {
        "max_lists": 2000,
        "ranker_rounds": 40,
        "ranker_params": RANKER_PARAMS,
        "n_candidates": {"popular": 10, "trending": 10},
        **changes,
    }
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def data() -> SessionData:
    return SessionData.from_events(synthetic_events())


@pytest.fixture(scope="module")
def pipeline(data):
    return fit_pipeline(data, config())


def clicks(*item_ids: str, session_id: str = "live") -> list[Event]:
    return [
        Event(session_id, "click", T0 + 10_000_000 + i * 1000, item_id=item_id)
        for i, item_id in enumerate(item_ids)
    ]


def test_forced_next_item_ranked_first(pipeline):
    result = pipeline.recommend(clicks(item(2, 3), item(2, 4)), 5)
    assert result.items[0].item_id == item(2, 5)
    assert len(result.items) == 5


def test_ranker_beats_single_sources(pipeline):
    meta = pipeline.ranker.metadata
    assert meta.kind == "lambdarank"
    assert meta.use_model
    # Measured: 0.82 against 0.74 for co-visitation of the last item.
    assert meta.ndcg_model > max(meta.ndcg_sources.values())
    assert 0.9 <= meta.candidate_recall <= 1.0


def test_minimal_sources_work(data):
    minimal = fit_pipeline(
        data,
        config(covisitation_last=False, revisit=False, trending=False),
    )
    assert minimal.source_names == ("covisitation", "sknn", "popular")
    result = minimal.recommend(clicks(item(1, 7)), 3)
    assert result.items[0].item_id == item(1, 8)


def test_untrained_pipeline_uses_fusion(data):
    fused = fit_pipeline(data, config(train_ranker=False, revisit=False))
    assert fused.ranker.metadata.kind == "fusion"
    top = [r.item_id for r in fused.recommend(clicks(item(0, 1)), 2).items]
    # Co-visitation and kNN both rank the session's own item first here,
    # because training sessions return to it.
    assert top == [item(0, 1), item(0, 2)]


def test_sources_reported_per_item(pipeline):
    result = pipeline.recommend(clicks(item(0, 0)), 20)
    assert result.items[0].sources
    assert "covisitation" in result.items[0].sources
    for recommended in result.items:
        assert recommended.sources, recommended


def test_sources_match_candidate_scores(pipeline):
    # k = 40 is the whole catalog, so the rules backfill what no source found.
    session = pipeline.session_view(np.array([pipeline.vocab.index(item(0, 0))]))
    request = pipeline.source_request(session)
    candidates = pipeline.candidates(request)
    ranked = pipeline.rank_candidates(request, candidates, 40)
    assert len(ranked.items) == 40
    assert ("backfill",) in ranked.sources
    assert max(len(sources) for sources in ranked.sources) > 1
    rows = {int(row): i for i, row in enumerate(candidates.items)}
    for index, sources in zip(ranked.items, ranked.sources, strict=True):
        row = rows.get(int(index))
        if row is None:
            assert sources == ("backfill",)
            continue
        expected = tuple(
            name
            for name, score in zip(
                candidates.source_names, candidates.scores[row], strict=True
            )
            if not np.isnan(score)
        )
        assert sources == expected


def test_empty_session_gets_popular_items(pipeline):
    result = pipeline.recommend([], 5)
    assert len(result.items) == 5
    for recommended in result.items:
        assert {"popular", "trending"} & set(recommended.sources)


def test_context_item_neighbours_on_empty_session(pipeline):
    result = pipeline.recommend([], 3, context_item_id=item(0, 5))
    ids = [recommended.item_id for recommended in result.items]
    assert ids[0] == item(0, 6)
    assert item(0, 5) not in ids


def test_unknown_items_skipped_and_counted(pipeline):
    events = [*clicks("no-such-item"), *clicks(item(1, 1))]
    events.append(Event("live", "search", T0 + 10**7 + 5000, query="red hat"))
    result = pipeline.recommend(
        events, 2, exclude_item_ids=["gone"], context_item_id="missing"
    )
    assert result.ignored == {
        "unknown_items": 1,
        "search_events": 1,
        "unknown_exclude": 1,
        "unknown_context_item": 1,
    }
    assert result.items[0].item_id == item(1, 2)


def test_purchased_item_not_recommended(pipeline):
    events = clicks(item(2, 0), item(2, 1))
    events.append(Event("live", "purchase", T0 + 10**8, item_id=item(2, 2)))
    ids = [r.item_id for r in pipeline.recommend(events, 40).items]
    assert item(2, 2) not in ids
    assert len(ids) == 39
    assert len(set(ids)) == 39


def test_exclude_and_category_honoured(data):
    categories = {item(b, i): f"block{b}" for b in range(4) for i in range(10)}
    categorised = fit_pipeline(
        data, config(train_ranker=False), item_categories=categories
    )
    result = categorised.recommend(
        clicks(item(0, 1)), 10, exclude_item_ids=[item(1, 0)], category="block1"
    )
    ids = [recommended.item_id for recommended in result.items]
    assert len(ids) == 9
    assert set(ids) == {item(1, i) for i in range(1, 10)}


@pytest.mark.parametrize("k", [0, 201, True, 2.5])
def test_invalid_k_rejected(pipeline, k):
    with pytest.raises(ValidationError) as info:
        pipeline.recommend([], k)
    assert info.value.field == "k"


def test_recommender_adapter_runs_the_pipeline(pipeline, data):
    adapter = PipelineRecommender(pipeline=pipeline)
    items = data.vocab.encode([item(1, 4), "unknown", item(1, 5)])
    indexes, scores = adapter.recommend(items, 10)
    ranked = pipeline.rank(pipeline.session_view(items), 10)
    np.testing.assert_array_equal(indexes, ranked.items)
    np.testing.assert_array_equal(scores, ranked.scores)
    assert data.vocab.decode(indexes[:1]) == [item(1, 6)]


def test_recommender_adapter_fits(data):
    adapter = PipelineRecommender(**vars(config(ranker_rounds=20))).fit(data)
    indexes, _ = adapter.recommend(data.vocab.encode([item(0, 9)]), 1)
    assert data.vocab.decode(indexes) == [item(0, 0)]
    assert adapter.params["ranker_rounds"] == 20


def test_save_load_gives_same_lists(pipeline, data, tmp_path):
    save_pipeline(tmp_path, pipeline, config(), data)
    loaded = load_pipeline(tmp_path, version="v-test")
    assert loaded.version == "v-test"
    for session in (
        [item(0, 1), item(0, 2)],
        [item(3, 9)],
        [],
    ):
        view = SessionView.from_arrays(data.vocab.encode(session))
        expected = pipeline.rank(view, 15)
        got = loaded.rank(view, 15)
        np.testing.assert_array_equal(got.items, expected.items)
        np.testing.assert_array_equal(got.scores, expected.scores)


def test_cart_adds_become_features(pipeline, data):
    cart = EVENT_TYPE_CODES["cart_add"]
    view = SessionView.from_arrays(
        data.vocab.encode([item(0, 1), item(0, 2)]), np.array([cart, 0])
    )
    request = pipeline.source_request(view)
    candidates = pipeline.candidates(request)
    features = pipeline.features(candidates, request)
    carted = features[:, pipeline.feature_names.index("session_carted")]
    row = np.searchsorted(candidates.items, data.vocab.index(item(0, 1)))
    assert carted[row] == 1.0
    assert carted.sum() == 1.0


def test_score_cases_reports_sources_and_recall(pipeline, data):
    from recsys_training.train_ranker import score_cases

    cases = synthetic_events(n_sessions=60, seed=7)
    held_out = SessionData.from_events(cases, data.vocab)
    prefixes, labels = [], []
    for s in range(held_out.n_sessions):
        items = held_out.session_items(s)
        for position in range(1, len(items)):
            prefixes.append(items[:position])
            labels.append(items[position])
    report = score_cases(pipeline, prefixes, np.array(labels), 20)

    assert report["cases"] == len(labels)
    assert set(report["HR@20"]) == {"pipeline", *pipeline.source_names}
    assert report["HR@20"]["pipeline"] <= report["candidate_recall"]
    # Measured on this data: 0.80 against 0.67 for the best single source.
    best_source = max(report["MRR@20"][name] for name in pipeline.source_names)
    assert report["MRR@20"]["pipeline"] > best_source


def test_rebuild_hook_writes_loadable_pipeline(data, tmp_path):
    from recsys_training.train_ranker import train

    class Inputs:
        item_categories = None

    Inputs.data = data
    params = {**vars(config(train_ranker=False))}
    report = train(Inputs(), {}, params, tmp_path)
    assert report["sources"] == list(load_pipeline(tmp_path).source_names)
    assert report["use_model"] is False


def test_als_user_vector_for_known_user(tmp_path):
    data = SessionData.from_events(synthetic_events(users=True))
    als_config = config(als={"factors": 8, "iterations": 5}, train_ranker=False)
    with_als = fit_pipeline(data, als_config)
    assert "als" in with_als.source_names

    result = with_als.recommend([], 10, user_id="u2-1")
    als_items = [r.item_id for r in result.items if "als" in r.sources]
    assert als_items
    assert all(item_id.startswith("b2-") for item_id in als_items)
    # An unknown user without a session gets no user vector, so no ALS items.
    anonymous = with_als.recommend([], 10, user_id="nobody")
    assert not any("als" in r.sources for r in anonymous.items)

    save_pipeline(tmp_path, with_als, als_config, data)
    loaded = load_pipeline(tmp_path)
    again = loaded.recommend([], 10, user_id="u2-1")
    assert [r.item_id for r in again.items] == [r.item_id for r in result.items]


def test_variant_sources_added(data, tmp_path):
    variants = {
        "sknn_dot": {"model": "sknn", "params": {"similarity": "dot"}},
        "covisitation_forward": {
            "model": "covisitation",
            "anchor": "last",
            "params": {"backward_weight": 0.0},
        },
    }
    with_variants = fit_pipeline(data, config(variants=variants))
    assert with_variants.source_names[3:5] == ("covisitation_forward", "sknn_dot")
    result = with_variants.recommend(clicks(item(0, 3)), 3)
    assert result.items[0].item_id == item(0, 4)
    assert "covisitation_forward" in result.items[0].sources

    save_pipeline(tmp_path, with_variants, config(variants=variants), data)
    loaded = load_pipeline(tmp_path)
    assert loaded.source_names == with_variants.source_names


def test_unknown_variant_model_rejected(data):
    variants = {"mystery": {"model": "gnn"}}
    with pytest.raises(ValidationError) as info:
        fit_pipeline(data, config(variants=variants, train_ranker=False))
    assert info.value.field == "variants.mystery.model"


@pytest.mark.slow
def test_two_tower_source_and_feature(data, tmp_path):
    import torch

    from recsys.models.two_tower import TwoTowerRecommender
    from recsys.models.two_tower_config import TwoTowerConfig

    torch.set_num_threads(1)
    tower_config = TwoTowerConfig(
        dim=8, n_buckets=64, epochs=2, batch_size=256, max_valid_cases=200
    )
    tower = TwoTowerRecommender(tower_config).fit(data)
    towered = fit_pipeline(data, config(), two_tower=tower)
    assert "two_tower" in towered.source_names
    assert towered.feature_names[-1] == "session_embedding_dot"

    view = towered.session_view(data.vocab.encode([item(1, 1), item(1, 2)]))
    request = towered.source_request(view)
    assert request.session_embedding is not None
    candidates = towered.candidates(request)
    dot = towered.features(candidates, request)[:, -1]
    expected = tower.item_vectors()[candidates.items] @ request.session_embedding
    np.testing.assert_allclose(dot, expected, rtol=1e-6)

    save_pipeline(tmp_path, towered, config(), data)
    loaded = load_pipeline(tmp_path)
    np.testing.assert_array_equal(
        loaded.rank(view, 10).items, towered.rank(view, 10).items
    )


def test_ranker_feature_mismatch_rejected(pipeline):
    from recsys.errors import BuildError
    from recsys.pipeline import Pipeline

    with pytest.raises(BuildError, match="retrain the ranker"):
        Pipeline(
            pipeline.vocab,
            pipeline.stats,
            pipeline.sources,
            ranker=pipeline.ranker,
            item_embeddings=np.zeros((len(pipeline.vocab), 2), np.float32),
        )
