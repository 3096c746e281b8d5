"""Baseline recommenders: one contract suite, known results, slow references."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.errors import BuildError, ValidationError
from recsys.evaluation import create_model
from recsys.interactions import SessionData
from recsys.models.covisitation import CovisitationRecommender
from recsys.models.popular import PopularRecommender
from recsys.models.sknn import SessionKNNRecommender, position_weights

MODEL_NAMES = ["popular", "covisitation", "sknn"]


def events_table(sessions: list[list[str]], start_ts: int = 1_700_000_000_000):
    """Build an events table of clicks, one session per list, 1 s apart."""
    rows = defaultdict(list)
    ts = start_ts
    for number, items in enumerate(sessions):
        for item in items:
            rows["session_id"].append(f"s{number:05d}")
            rows["user_id"].append(None)
            rows["item_id"].append(item)
            rows["event_type"].append("click")
            rows["query"].append(None)
            rows["ts"].append(ts)
            rows["event_id"].append(None)
            ts += 1000
        ts += 60_000
    return pa.table(dict(rows), schema=EVENTS_SCHEMA)


def random_sessions(seed: int, n_sessions: int = 60, n_items: int = 25):
    rng = np.random.default_rng(seed)
    return [
        [f"i{x}" for x in rng.integers(0, n_items, size=int(rng.integers(1, 8)))]
        for _ in range(n_sessions)
    ]


@pytest.fixture(scope="module")
def train_data():
    return SessionData.from_events(events_table(random_sessions(0)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_output_shape(name, train_data):
    model = create_model(name).fit(train_data)
    rng = np.random.default_rng(1)
    n_items = len(train_data.vocab)
    for _ in range(30):
        prefix = rng.integers(-1, n_items, size=int(rng.integers(0, 6)))
        k = int(rng.integers(1, 40))
        items, scores = model.recommend(prefix, k)

        assert items.dtype == np.int64
        assert scores.dtype == np.float32
        assert len(items) == len(scores) == min(k, n_items)
        assert len(set(items.tolist())) == len(items)
        assert items.min() >= 0
        assert items.max() < n_items
        assert np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_unknown_only_prefix(name, train_data):
    model = create_model(name).fit(train_data)
    items, _ = model.recommend(np.array([-1, -1]), 5)
    popular, _ = PopularRecommender().fit(train_data).recommend(np.array([]), 5)
    assert items.tolist() == popular.tolist()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_before_fit_raises(name):
    with pytest.raises(BuildError, match="before fit"):
        create_model(name).recommend(np.array([0]), 5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_invalid_k(name, train_data):
    model = create_model(name).fit(train_data)
    with pytest.raises(ValidationError, match="k"):
        model.recommend(np.array([0]), 0)


def test_popular_ranks_by_event_count():
    data = SessionData.from_events(events_table([["a", "b"], ["b", "c"], ["b", "c"]]))
    items, scores = PopularRecommender().fit(data).recommend(np.array([0]), 3)
    assert data.vocab.decode(items) == ["b", "c", "a"]
    assert scores.tolist() == [3.0, 2.0, 1.0]


def test_covisitation_follows_forced_successor():
    # "a" is always followed by "b"; "c" and "d" are more popular elsewhere.
    sessions = [["a", "b"]] * 3 + [["c", "d", "c", "d"]] * 5
    data = SessionData.from_events(events_table(sessions))
    model = CovisitationRecommender().fit(data)
    items, _ = model.recommend(data.vocab.encode(["a"]), 1)
    assert data.vocab.decode(items) == ["b"]


def test_covisitation_weights_recent_items_more():
    sessions = [["a", "x"]] * 2 + [["b", "y"]] * 2
    data = SessionData.from_events(events_table(sessions))
    model = CovisitationRecommender(recency_decay=0.5).fit(data)
    first_a, _ = model.recommend(data.vocab.encode(["a", "b"]), 1)
    first_b, _ = model.recommend(data.vocab.encode(["b", "a"]), 1)
    assert data.vocab.decode(first_a) == ["y"]
    assert data.vocab.decode(first_b) == ["x"]


def reference_covisitation(sessions, model, vocab):
    """Count pair weights session by session with plain loops."""
    counts = defaultdict(float)
    for items in sessions:
        for p, first in enumerate(items):
            for q in range(p + 1, min(len(items), p + model.window + 1)):
                second = items[q]
                weight = 1.0 / (q - p) ** model.distance_power
                if first == second:
                    counts[first, first] += weight * model.repeat_weight
                    continue
                counts[first, second] += weight * model.forward_weight
                counts[second, first] += weight * model.backward_weight
    popularity = defaultdict(int)
    for items in sessions:
        for item in items:
            popularity[item] += 1
    return {
        (vocab.index(a), vocab.index(b)): w / popularity[b] ** model.popularity_power
        for (a, b), w in counts.items()
        if w
    }


@pytest.mark.parametrize("seed", range(5))
def test_covisitation_matrix_matches_reference(seed):
    sessions = random_sessions(seed, n_sessions=30, n_items=12)
    data = SessionData.from_events(events_table(sessions))
    model = CovisitationRecommender(window=3, backward_weight=0.25).fit(data)
    expected = reference_covisitation(sessions, model, data.vocab)

    coo = model.matrix.tocoo()
    entries = zip(coo.row, coo.col, coo.data, strict=True)
    got = {(int(r), int(c)): float(v) for r, c, v in entries}
    assert got.keys() == expected.keys()
    for pair, weight in expected.items():
        assert got[pair] == pytest.approx(weight, rel=1e-5), pair


def reference_sknn_scores(sessions, prefix, model):
    """Score items the V-SKNN way with dicts and sets; `sessions` oldest first."""
    weights = position_weights(len(prefix), model.decay)
    current = {}
    for item, weight in zip(prefix, weights, strict=True):
        current[item] = weight
    newest_first = list(reversed(sessions))
    sharing = [set(s) for s in newest_first if set(s) & current.keys()]
    sample = sharing[: model.sample_size]
    similarities = []
    for neighbour in sample:
        similarity = sum(current[i] for i in neighbour & current.keys())
        if model.similarity == "cosine":
            similarity /= math.sqrt(len(current) * len(neighbour))
        similarities.append((similarity, neighbour))
    similarities.sort(key=lambda pair: -pair[0])
    scores = defaultdict(float)
    for similarity, neighbour in similarities[: model.n_neighbors]:
        for item in neighbour:
            scores[item] += similarity
    return scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decay", ["linear", "harmonic", "none"])
def test_sknn_scores_match_reference(seed, decay):
    sessions = random_sessions(seed, n_sessions=80, n_items=20)
    data = SessionData.from_events(events_table(sessions))
    # All sampled sessions are neighbours, so ties at the cutoff cannot matter.
    model = SessionKNNRecommender(n_neighbors=15, sample_size=15, decay=decay)
    model.fit(data)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        prefix = [f"i{x}" for x in rng.integers(0, 20, size=int(rng.integers(1, 6)))]
        expected = reference_sknn_scores(sessions, prefix, model)
        k = len(data.vocab)
        items, scores = model.recommend(data.vocab.encode(prefix), k)
        got = dict(zip(data.vocab.decode(items), scores.tolist(), strict=True))
        for item, score in expected.items():
            assert got[item] == pytest.approx(score, rel=1e-5), item
        scored = {item for item, score in got.items() if score > 0}
        assert scored == {item for item, score in expected.items() if score > 0}


def test_sknn_prefers_block_of_session():
    # Two disjoint blocks of items: a session in one block gets that block.
    sessions = [["a", "b", "c"], ["b", "c", "a"]] * 4 + [["x", "y", "z"]] * 20
    data = SessionData.from_events(events_table(sessions))
    model = SessionKNNRecommender().fit(data)
    items, _ = model.recommend(data.vocab.encode(["a"]), 3)
    assert set(data.vocab.decode(items)) == {"a", "b", "c"}


def test_sknn_samples_most_recent_sessions():
    # Old sessions pair "a" with "old", recent ones with "new".
    sessions = [["a", "old"]] * 5 + [["a", "new"]] * 5
    data = SessionData.from_events(events_table(sessions))
    model = SessionKNNRecommender(sample_size=5, n_neighbors=5).fit(data)
    items, scores = model.recommend(data.vocab.encode(["a"]), 3)
    ranked = data.vocab.decode(items)
    assert ranked[:2] == ["a", "new"]
    assert scores[2] == 0.0


def test_sknn_rejects_invalid_settings():
    with pytest.raises(ValidationError, match="decay"):
        SessionKNNRecommender(decay="exponential")
    with pytest.raises(ValidationError, match="similarity"):
        SessionKNNRecommender(similarity="jaccard")
    with pytest.raises(ValidationError, match="n_neighbors"):
        SessionKNNRecommender(n_neighbors=0)


def test_covisitation_save_load_roundtrip(tmp_path, train_data):
    model = CovisitationRecommender(window=4).fit(train_data)
    path = tmp_path / "covisitation.npz"
    model.save(path)
    loaded = CovisitationRecommender.load(path, window=4)
    prefix = np.array([0, 3, 2])
    assert (
        loaded.recommend(prefix, 10)[0].tolist()
        == model.recommend(prefix, 10)[0].tolist()
    )
    with pytest.raises(BuildError, match="fitted with"):
        CovisitationRecommender.load(path, window=5)


def test_popular_save_load_roundtrip(tmp_path, train_data):
    model = PopularRecommender().fit(train_data)
    path = tmp_path / "popular.npz"
    model.save(path)
    loaded = PopularRecommender.load(path)
    assert (
        loaded.recommend(np.array([]), 7)[0].tolist()
        == model.recommend(np.array([]), 7)[0].tolist()
    )
    with pytest.raises(BuildError, match="popularity"):
        PopularRecommender.load(tmp_path / "missing.npz")
