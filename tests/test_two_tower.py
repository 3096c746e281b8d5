"""Two-tower model: forced next items, torch/numpy score equivalence, cold
items, the sampled loss and a save/load round trip with weights_only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.errors import ConfigError
from recsys.interactions import EVENT_TYPE_CODES, ItemVocab, SessionData
from recsys.models.two_tower import (
    TwoTowerRecommender,
    _Features,
    _prefix_cases,
    _split_sessions,
)
from recsys.models.two_tower_config import TwoTowerConfig

# Two chains of items; within a chain the next item is always the successor.
CHAINS = (["a0", "a1", "a2", "a3", "a4"], ["b0", "b1", "b2", "b3", "b4"])


def _events(rows: list[tuple]) -> pa.Table:
    """Build an events table from (session_id, user_id, item_id, type, query)."""
    columns: dict[str, list] = {name: [] for name in EVENTS_SCHEMA.names}
    for ts, (session_id, user_id, item_id, event_type, query) in enumerate(rows):
        columns["session_id"].append(session_id)
        columns["user_id"].append(user_id)
        columns["item_id"].append(item_id)
        columns["event_type"].append(event_type)
        columns["query"].append(query)
        columns["ts"].append(1_700_000_000_000 + ts * 1000)
        columns["event_id"].append(None)
    return pa.table(columns, schema=EVENTS_SCHEMA)


def _chain_data() -> SessionData:
    rows = []
    for s in range(60):
        chain = CHAINS[s % 2]
        for item in chain:
            rows.append((f"s{s:03d}", None, item, "click", None))
    return SessionData.from_events(_events(rows))


def _small_config(**overrides) -> TwoTowerConfig:
    values = {
        "dim": 16,
        "max_len": 5,
        "n_heads": 2,
        "dropout": 0.0,
        "temperature": 0.1,
        "n_buckets": 64,
        "n_tokens": 4,
        "batch_size": 32,
        "lr": 0.01,
        "epochs": 15,
        "valid_fraction": 0.0,
        "loss": "full",
        "log_every": 10_000,
    }
    values.update(overrides)
    return TwoTowerConfig(**values)


@pytest.fixture(scope="module")
def chain_model() -> tuple[TwoTowerRecommender, SessionData]:
    torch.set_num_threads(1)
    data = _chain_data()
    return TwoTowerRecommender(_small_config()).fit(data), data


def test_forced_next_item_ranks_first(chain_model):
    model, data = chain_model

    for chain in CHAINS:
        for end in range(1, len(chain)):
            session = data.vocab.encode(chain[:end])
            items, _ = model.recommend(session, 3)
            assert data.vocab.decode(items[:1]) == [chain[end]], chain[:end]


def test_sampled_loss_learns_forced_next_item():
    torch.set_num_threads(1)
    data = _chain_data()
    model = TwoTowerRecommender(_small_config(loss="sampled", n_sampled=4))
    model.fit(data)

    session = data.vocab.encode(CHAINS[0][:2])
    items, _ = model.recommend(session, 1)

    assert data.vocab.decode(items) == [CHAINS[0][2]]


def test_sampled_loss_masks_duplicate_positives(chain_model):
    model, _ = chain_model
    features = _Features(
        np.array([0, 1, 0, 1]),
        np.zeros(4, dtype=np.int8),
        None,
        None,
        max_len=5,
    )
    batch = features.batch(np.array([0, 2]), np.array([1, 3]))
    targets = torch.tensor([1, 1])
    probability = torch.full((10,), 0.1)

    model.config.n_sampled = 0
    try:
        loss = model._sampled_loss(batch, targets, probability)
    finally:
        model.config.n_sampled = _small_config().n_sampled

    # Both rows share one target, so each row has a single unmasked
    # candidate (its own positive) and a loss of exactly 0.
    assert loss.detach().item() == pytest.approx(0.0, abs=1e-6)


def test_exclude_seen_drops_session_items(chain_model):
    model, data = chain_model
    model.exclude_seen = True
    try:
        session = data.vocab.encode(CHAINS[0][:3])
        items, _ = model.recommend(session, 20)
    finally:
        model.exclude_seen = False

    assert not set(data.vocab.decode(items)) & set(CHAINS[0][:3])


def _rich_data() -> tuple[SessionData, list[str | None]]:
    """Sessions of search, click, cart_add and purchase; some with a user."""
    rows = []
    for s in range(12):
        user = f"u{s % 3}" if s % 2 else None
        rows.append((f"s{s:02d}", user, None, "search", "red shoes"))
        rows.append((f"s{s:02d}", user, "shoe", "click", None))
        rows.append((f"s{s:02d}", user, "sock", "cart_add", None))
        rows.append((f"s{s:02d}", user, "lace", "purchase", None))
    events = _events(rows)
    # "boot" is in the catalog but in no session: a cold item.
    data = SessionData.from_events(events, ItemVocab(["shoe", "sock", "lace", "boot"]))
    queries = events.sort_by([("session_id", "ascending"), ("ts", "ascending")])
    return data, queries.column("query").to_pylist()


def _rich_model() -> tuple[TwoTowerRecommender, SessionData, list[str | None]]:
    """A model with categories, titles, searches, users and one cold item."""
    data, queries = _rich_data()
    model = TwoTowerRecommender(
        _small_config(epochs=2, n_layers=2, dropout=0.1),
        item_categories=["feet", "feet", None, "feet"],
        item_titles=["red shoe", "wool sock", "lace", "leather boot"],
    )
    model.fit(data, queries=queries)
    return model, data, queries


def test_torch_score_equals_numpy_dot_of_exports():
    model, data, queries = _rich_model()
    net = model.net
    features = model._features(data, queries)
    cases = _prefix_cases(data, np.arange(data.n_sessions))
    batch = features.batch(cases.start, cases.end)

    with torch.no_grad():
        torch_scores = (
            net.encode_sessions(
                batch.items, batch.event_types, batch.query_tokens, batch.users
            )
            @ net.item_tower().T
        ).numpy()

    sessions, types, texts, users = [], [], [], []
    for start, end in zip(cases.start, cases.end, strict=True):
        sessions.append(data.items[start:end])
        types.append(data.event_types[start:end])
        texts.append(queries[start:end])
        users.append(data.user_ids[np.searchsorted(data.indptr, start, "right") - 1])
    vectors = model.encode_sessions(
        sessions, event_types=types, queries=texts, user_ids=users
    )
    item_vectors = model.item_vectors()

    assert vectors.dtype == np.float32
    assert item_vectors.dtype == np.float32
    assert batch.query_tokens is not None
    assert batch.users is not None
    np.testing.assert_allclose(vectors @ item_vectors.T, torch_scores, atol=1e-4)


def test_cold_item_vector_comes_from_content():
    model, data, _ = _rich_model()
    tower = model.net.item_tower
    boot = data.vocab.index("boot")

    assert float(tower.id_mask[boot]) == 0.0
    assert float(tower.id_mask[data.vocab.index("shoe")]) == 1.0
    with torch.no_grad():
        content = tower.category_embedding(tower.item_categories[boot : boot + 1])
        content = content + tower.token_embedding(tower.item_tokens[boot : boot + 1])
        expected = torch.nn.functional.normalize(content, dim=-1).numpy()[0]
    np.testing.assert_allclose(model.item_vectors()[boot], expected, atol=1e-6)
    assert np.linalg.norm(model.item_vectors()[boot]) == pytest.approx(1.0)


def test_search_only_session_gets_a_vector():
    model, _, _ = _rich_model()

    vectors = model.encode_sessions(
        [np.array([-1])], event_types=[["search"]], queries=[["red shoes"]]
    )

    assert np.linalg.norm(vectors[0]) == pytest.approx(1 / model.config.temperature)


def test_unknown_user_and_empty_session_do_not_raise():
    model, _, _ = _rich_model()

    items, scores = model.recommend(np.zeros(0, dtype=np.int64), 2, user_id="nobody")

    assert len(items) == 2
    assert np.isfinite(scores).all()


def test_save_load_round_trip(tmp_path):
    model, data, _ = _rich_model()
    session = data.vocab.encode(["shoe", "sock"])
    types = np.array([EVENT_TYPE_CODES["click"], EVENT_TYPE_CODES["cart_add"]])

    model.save(tmp_path)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    loaded = TwoTowerRecommender.load(tmp_path)

    assert "item_tower.item_embedding.weight" in state
    np.testing.assert_array_equal(loaded.item_vectors(), model.item_vectors())
    np.testing.assert_array_equal(
        np.load(tmp_path / "item_vectors.npy", allow_pickle=False),
        model.item_vectors(),
    )
    expected = model.recommend(session, 4, event_types=types, user_id="u1")
    actual = loaded.recommend(session, 4, event_types=types, user_id="u1")
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-6)


def test_validation_split_takes_sessions_that_end_last():
    data = _chain_data()

    train, valid = _split_sessions(data, 0.1)

    assert len(valid) == 6
    last_ts = data.ts[data.indptr[1:] - 1]
    assert last_ts[valid].min() > last_ts[train].max()


def test_invalid_config_is_rejected():
    with pytest.raises(ConfigError, match="n_heads"):
        TwoTowerRecommender(TwoTowerConfig(dim=10, n_heads=3))
    with pytest.raises(ConfigError, match="loss"):
        TwoTowerRecommender(TwoTowerConfig(loss="bpr"))


def test_prefix_cases_match_slow_reference():
    data, _ = _rich_data()
    sessions = np.array([0, 3, 5])

    cases = _prefix_cases(data, sessions)

    expected = [
        (data.indptr[s], j)
        for s in sessions
        for j in range(data.indptr[s] + 1, data.indptr[s + 1])
        if data.items[j] >= 0
    ]
    assert list(zip(cases.start, cases.end, strict=True)) == expected
    # Each session is search, click, cart_add, purchase: three targets.
    assert len(cases) == 9


def test_unknown_item_events_are_dropped():
    model, data, _ = _rich_model()
    shoe = data.vocab.index("shoe")

    with_unknown = model.encode_sessions([np.array([-1, shoe, len(data.vocab)])])
    without = model.encode_sessions([np.array([shoe])])

    np.testing.assert_allclose(with_unknown, without, atol=1e-6)
