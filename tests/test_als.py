"""ALS with fold-in: block-structured sessions with a known ranking, unseen
users, degenerate factors and a save/load round trip without pickle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.errors import BuildError, ConfigError
from recsys.interactions import SessionData
from recsys.models.als import ALSConfig, ALSRecommender

# Two blocks of items that never share a session.
BLOCKS = (["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"])


def _events(rows: list[tuple[str, str | None, str, str]]) -> pa.Table:
    """Build an events table from (session_id, user_id, item_id, event_type)."""
    columns: dict[str, list] = {name: [] for name in EVENTS_SCHEMA.names}
    for ts, (session_id, user_id, item_id, event_type) in enumerate(rows):
        columns["session_id"].append(session_id)
        columns["user_id"].append(user_id)
        columns["item_id"].append(item_id)
        columns["event_type"].append(event_type)
        columns["query"].append(None)
        columns["ts"].append(1_700_000_000_000 + ts * 1000)
        columns["event_id"].append(None)
    return pa.table(columns, schema=EVENTS_SCHEMA)


def _block_data(with_users: bool = False) -> SessionData:
    """Sessions that each click all items of one block."""
    rows = []
    rng = np.random.default_rng(0)
    for s in range(40):
        block = BLOCKS[s % 2]
        user = f"u{s}" if with_users else None
        for item in rng.permutation(block):
            rows.append((f"s{s:03d}", user, str(item), "click"))
    return SessionData.from_events(_events(rows))


def _config(**overrides) -> ALSConfig:
    values = {"factors": 4, "regularization": 0.1, "iterations": 20}
    values.update(overrides)
    return ALSConfig(**values)


def test_block_session_ranks_missing_item_first():
    data = _block_data()
    model = ALSRecommender(_config(), exclude_seen=True).fit(data)

    for block in BLOCKS:
        session = data.vocab.encode(block[:3])
        items, scores = model.recommend(session, 3)
        assert data.vocab.decode(items[:1]) == [block[3]]
        assert scores[0] > scores[1]


def test_recommend_keeps_seen_items_by_default():
    data = _block_data()
    model = ALSRecommender(_config()).fit(data)

    session = data.vocab.encode(BLOCKS[0][:3])
    items, _ = model.recommend(session, 4)

    assert sorted(data.vocab.decode(items)) == sorted(BLOCKS[0])


def test_unseen_user_folds_in_session_items():
    data = _block_data(with_users=True)
    model = ALSRecommender(_config()).fit(data)
    session = data.vocab.encode(BLOCKS[1][:2])

    vector = model.user_vector("never-seen", session)
    items, _ = model.recommend(session, 4, user_id="never-seen")

    assert np.isfinite(vector).all()
    assert np.abs(vector).sum() > 0
    assert set(data.vocab.decode(items)) == set(BLOCKS[1])


def test_known_user_without_session_gets_stored_factors():
    data = _block_data(with_users=True)
    model = ALSRecommender(_config()).fit(data)

    vector = model.user_vector("u3")

    row = model._row_of["user:u3"]
    np.testing.assert_array_equal(vector, model.user_factors[row])


def test_fold_in_of_training_row_matches_stored_factors():
    data = _block_data()
    model = ALSRecommender(_config(iterations=50)).fit(data)
    row = model._row_of["session:s005"]

    folded = model.fold_in(data.session_items(5))

    stored = model.user_factors[row]
    cosine = folded @ stored / np.linalg.norm(folded) / np.linalg.norm(stored)
    # Measured 0.99999994 on this fixture; the stored row lags the last item
    # update, so the vectors match in direction, not exactly.
    assert cosine > 0.99


def test_empty_session_scores_without_error():
    data = _block_data()
    model = ALSRecommender(_config()).fit(data)

    items, scores = model.recommend(np.zeros(0, dtype=np.int64), 5)

    assert len(items) == 5
    assert np.isfinite(scores).all()


def test_event_weights_raise_confidence_of_purchases():
    rows = [("s0", None, "x", "click"), ("s0", None, "y", "purchase")]
    data = SessionData.from_events(_events(rows))
    model = ALSRecommender(_config())
    model.fit(data)

    cells = model.user_items.toarray()[0]

    assert cells[data.vocab.index("x")] == pytest.approx(1.0)
    assert cells[data.vocab.index("y")] == pytest.approx(8.0)


def test_searches_are_ignored():
    rows = [("s0", None, "x", "click"), ("s0", None, None, "search")]
    data = SessionData.from_events(_events(rows))

    model = ALSRecommender(_config()).fit(data)

    assert model.user_items.nnz == 1


def test_degenerate_factors_raise():
    # Two items, one session, 32 factors and no regularization: the solves
    # are singular and ALS returns NaN factors.
    rows = [("s0", None, "x", "click"), ("s0", None, "y", "click")]
    data = SessionData.from_events(_events(rows))
    model = ALSRecommender(_config(factors=32, regularization=0.0))

    with pytest.raises(BuildError, match="NaN or infinite"):
        model.fit(data)


def test_unknown_event_weight_is_rejected():
    with pytest.raises(ConfigError, match="event type 'view'"):
        ALSRecommender(ALSConfig(event_weights={"view": 1.0}))


def test_save_load_round_trip(tmp_path):
    data = _block_data(with_users=True)
    model = ALSRecommender(_config()).fit(data)
    session = data.vocab.encode(BLOCKS[0][:2])

    model.save(tmp_path)
    loaded = ALSRecommender.load(tmp_path)

    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert list(loaded.vocab.item_ids) == list(data.vocab.item_ids)
    expected = model.recommend(session, 5, user_id="u2")
    actual = loaded.recommend(session, 5, user_id="u2")
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-6)
    with np.load(tmp_path / "als.npz", allow_pickle=False) as arrays:
        assert arrays["row_keys"].dtype.kind == "U"
