"""The rebuild's pipeline trainer: ALS for logs with users, none without."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from recsys_training.rebuild import training_inputs
from recsys_training.train_ranker import train

from recsys.datasets.synthetic import ShopConfig, generate_shop
from recsys.models.pipeline import load_pipeline


@pytest.fixture(scope="module")
def shop():
    config = ShopConfig(n_users=60, n_items=120, n_sessions=600, seed=3, days=7)
    return generate_shop(config)


def test_users_switch_on_als(shop, tmp_path: Path) -> None:
    events, items = shop
    report = train(training_inputs(events, items), {}, {}, tmp_path)
    assert "als" in report["sources"]
    pipeline = load_pipeline(tmp_path)
    assert "als" in pipeline.source_names


def test_no_users_leave_als_off(shop, tmp_path: Path) -> None:
    events, items = shop
    anonymous = events.set_column(
        events.schema.get_field_index("user_id"),
        "user_id",
        pa.nulls(events.num_rows, pa.string()),
    )
    report = train(training_inputs(anonymous, items), {}, {}, tmp_path)
    assert "als" not in report["sources"]


def test_explicit_als_setting_wins(shop, tmp_path: Path) -> None:
    events, items = shop
    report = train(training_inputs(events, items), {}, {"als": None}, tmp_path)
    assert "als" not in report["sources"]
