"""The freshness comparison: the pipeline with and without the live session."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from recsys.cli import main
from recsys.datasets.io import write_prepared
from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.freshness import VARIANTS, evaluate_freshness

START_MS = 1_700_000_000_000
N_PAIRS = 40
# Small ALS and fusion instead of the trained ranker keep the test fast.
PARAMS = {"als": {"factors": 8, "iterations": 3}, "train_ranker": False}


def paired_log(seed: int = 3) -> tuple[pa.Table, int]:
    """A log where every session clicks a_i, then clicks and buys b_i, for a pair i.

    Before the cut, 30 users have two sessions each that cover all pairs.
    After it, 20 of those users, 5 new users and 3 sessions without a user
    have one session each. Only the session's first click determines the next one.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str | None, str, str, int]] = []
    ts = START_MS

    def add_session(session_id: str, user_id: str | None, pair: int) -> None:
        nonlocal ts
        rows.append((session_id, user_id, f"a{pair}", "click", ts))
        rows.append((session_id, user_id, f"b{pair}", "click", ts + 1000))
        rows.append((session_id, user_id, f"b{pair}", "cart_add", ts + 2000))
        rows.append((session_id, user_id, f"b{pair}", "purchase", ts + 3000))
        ts += 60_000

    for j in range(60):
        add_session(f"early{j}", f"u{j % 30}", j % N_PAIRS)
    cut = ts
    later_users = [f"u{j}" for j in range(20)] + [f"new{j}" for j in range(5)]
    later_users += [None] * 3
    for j, user_id in enumerate(later_users):
        add_session(f"late{j}", user_id, int(rng.integers(N_PAIRS)))
    columns = {
        "session_id": [r[0] for r in rows],
        "user_id": [r[1] for r in rows],
        "item_id": [r[2] for r in rows],
        "event_type": [r[3] for r in rows],
        "query": [None] * len(rows),
        "ts": [r[4] for r in rows],
        "event_id": [None] * len(rows),
    }
    return pa.table(columns, schema=EVENTS_SCHEMA), cut


@pytest.fixture(scope="module")
def report():
    events, cut = paired_log()
    return evaluate_freshness(events, PARAMS, k=5, cut_ts=cut), cut


def test_freshness_returns_variants_and_lift(report):
    result, _ = report
    for selection in ("users", "known_users"):
        assert set(result["metrics"][selection]) == set(VARIANTS)
        assert set(result["lift"][selection]) == {
            "Recall@5_clicks", "Recall@5_carts", "Recall@5_orders", "score@5"
        }  # fmt: skip
    assert result["params"]["als"]["factors"] == 8


def test_freshness_counts_users(report):
    result, _ = report
    cases = result["cases"]
    assert cases["evaluated"] == 28
    assert cases["with_user"] == 25
    assert cases["user_known_to_training"] == 20
    assert cases["user_unknown_to_training"] == 5
    assert cases["training_users"] == 30
    users = result["metrics"]["users"]["full"]
    assert users["cases_clicks"] + users["cases_carts"] > 0


def test_freshness_trains_only_before_cut(report):
    result, cut = report
    assert result["cases"]["training_last_ts"] < cut
    assert result["time_protocol"]["settings"]["cut_ts"] == cut


def test_freshness_session_forced_next_item_lifts(report):
    result, _ = report
    for selection in ("users", "known_users"):
        full = result["metrics"][selection]["full"]
        without = result["metrics"][selection]["without_session"]
        assert full["score@5"] > without["score@5"], selection
        assert result["lift"][selection]["score@5"]["absolute"] > 0, selection
        assert full["score@5"] > 0.5, selection


def test_freshness_lift_is_full_minus_without(report):
    result, _ = report
    metrics, lift = result["metrics"]["users"], result["lift"]["users"]
    for name, values in lift.items():
        full, without = metrics["full"][name], metrics["without_session"][name]
        if full is None or without is None:
            assert values["absolute"] is None, name
            continue
        assert values["absolute"] == pytest.approx(full - without), name
        if without > 0:
            assert values["relative"] == pytest.approx((full - without) / without)


def test_cli_freshness_writes_json(tmp_path, capsys):
    events, cut = paired_log()
    dataset = tmp_path / "paired"
    write_prepared(
        dataset, dataset="paired", sources=[], events=events, synthetic_ts=False
    )
    out = tmp_path / "freshness.json"
    code = main(
        ["evaluate", "--dataset", str(dataset), "--model", "pipeline",
         "--protocol", "freshness", "--cut-ts", str(cut), "--k", "5",
         "--param", "train_ranker=false",
         "--param", 'als={"factors": 8, "iterations": 3}',
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["cases"]["with_user"] == 25
    assert result["params"]["als"]["factors"] == 8
    assert "--protocol freshness" in result["command"]
    assert "--seed 0" in result["command"]
    assert "without_session" in capsys.readouterr().out


def test_cli_freshness_rejects_other_models(tmp_path, capsys):
    events, _ = paired_log()
    dataset = tmp_path / "paired"
    write_prepared(
        dataset, dataset="paired", sources=[], events=events, synthetic_ts=False
    )
    code = main(
        ["evaluate", "--dataset", str(dataset), "--model", "popular",
         "--protocol", "freshness"]
    )  # fmt: skip
    assert code == 1
    assert "use --model pipeline" in capsys.readouterr().err
