"""Evaluation protocols, the model registry and `recsys evaluate` end to end."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from recsys import evaluation
from recsys.cli import main
from recsys.datasets.io import write_prepared
from recsys.datasets.schema import CASES_SCHEMA, EVENTS_SCHEMA
from recsys.errors import ConfigError, ValidationError
from recsys.interactions import EVENT_TYPE_CODES, SessionData
from recsys.models.popular import PopularRecommender
from tests.test_baselines import events_table, random_sessions
from tests.test_metrics import reference_summary

HOUR_MS = 3_600_000
START_MS = 1_700_000_000_000


class RecordingRecommender(PopularRecommender):
    """The popular baseline, keeping what it was fitted on and asked for."""

    name = "recording"

    def fit(self, data):
        self.fitted_on = data
        self.prefixes = []
        return super().fit(data)

    def recommend(self, items, k, *, event_types=None, ts=None):
        self.prefixes.append((items.copy(), event_types, ts))
        return super().recommend(items, k)


def cases_table(rows):
    """Build a `CASES_SCHEMA` table from (session_id, prefix, label) rows."""
    return pa.table(
        {
            "case_id": list(range(len(rows))),
            "session_id": [r[0] for r in rows],
            "prefix": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        },
        schema=CASES_SCHEMA,
    )


def log_table(events):
    """Build an events table from (session_id, item_id, event_type, ts) rows."""
    columns = defaultdict(list)
    for session_id, item_id, event_type, ts in events:
        columns["session_id"].append(session_id)
        columns["user_id"].append(None)
        columns["item_id"].append(item_id)
        columns["event_type"].append(event_type)
        columns["query"].append(None)
        columns["ts"].append(ts)
        columns["event_id"].append(None)
    return pa.table(dict(columns), schema=EVENTS_SCHEMA)


def test_next_item_counts_unseen_labels_as_misses():
    train = events_table([["a", "b"], ["a", "b"], ["c"]])
    cases = cases_table(
        [("t1", ["a"], "a"), ("t2", ["zz", "c"], "new"), ("t3", ["zz"], "b")]
    )
    model = RecordingRecommender()
    result = evaluation.evaluate_next_item(model, train, cases, k=2)

    # Popular ranks a, b (2 events each) ahead of c: case 1 hits at rank 1,
    # case 2's label is unseen, case 3 hits at rank 2.
    assert result.metrics["HR@2"] == pytest.approx(2 / 3)
    assert result.metrics["MRR@2"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result.counts["labels_unseen_in_training"] == 1
    assert result.counts["unknown_prefix_items"] == 2
    assert result.counts["evaluated"] == 3
    assert [p[0].tolist() for p in model.prefixes] == [[0], [-1, 2], [-1]]


def test_next_item_skips_empty_prefix_with_reason():
    train = events_table([["a", "b"]])
    cases = cases_table([("t1", [], "a"), ("t2", ["a"], "b")])
    result = evaluation.evaluate_next_item(PopularRecommender(), train, cases, k=5)
    assert result.skipped == {"empty_prefix": 1}
    assert result.counts["evaluated"] == 1
    assert result.counts["published"] == 2


def test_next_item_limit_is_seeded_subset():
    train = events_table(random_sessions(0))
    rows = [(f"t{i}", ["i1", "i2"][: 1 + i % 2], f"i{i % 25}") for i in range(50)]
    cases = cases_table(rows)

    def evaluated(seed):
        result = evaluation.evaluate_next_item(
            PopularRecommender(), train, cases, k=5, limit=10, seed=seed
        )
        return result.case_ids.tolist()

    assert evaluated(3) == evaluated(3)
    assert evaluated(3) != evaluated(4)
    assert len(evaluated(3)) == 10
    assert set(evaluated(3)) <= set(range(50))


def test_next_item_breakdown_by_prefix_length():
    train = events_table([["a", "b", "c"]] * 3)
    rows = [("t", ["a"], "b"), ("t", ["a", "b"], "c"), ("t", list("abcabc"), "x")]
    result = evaluation.evaluate_next_item(
        PopularRecommender(), train, cases_table(rows), k=20
    )
    by_length = {row["prefix_length"]: row for row in result.by_prefix_length}
    assert list(by_length) == ["1", "2", "6-10"]
    assert by_length["1"]["cases"] == 1
    assert by_length["6-10"]["HR@20"] == 0.0
    assert by_length["2"]["HR@20"] == 1.0


def test_length_bucket_labels():
    buckets, labels = evaluation.length_buckets(np.array([1, 5, 6, 10, 11, 20, 21, 99]))
    assert labels == ["1", "2", "3", "4", "5", "6-10", "11-20", "21+"]
    assert [labels[b] for b in buckets] == [
        "1", "5", "6-10", "6-10", "11-20", "11-20", "21+", "21+",
    ]  # fmt: skip


def shop_log():
    """A small log over 4 hours with clicks, carts and purchases.

    Sessions before the 3-hour cut, one that spans it, and later ones,
    some of which use items that appear only after the cut.
    """
    events = []
    for s in range(12):
        base = START_MS + s * 10 * 60_000
        for j, item in enumerate(["p1", "p2", "p3", f"p{4 + s % 3}"]):
            events.append((f"early{s:02d}", item, "click", base + j * 1000))
        events.append((f"early{s:02d}", "p2", "cart_add", base + 5000))
    cut = START_MS + 3 * HOUR_MS
    events += [
        ("span", "p1", "click", cut - 5000),
        ("span", "late-only", "click", cut + 5000),
    ]
    for s in range(8):
        base = cut + HOUR_MS // 4 + s * 60_000
        events += [
            (f"late{s}", "p1", "click", base),
            (f"late{s}", "p2", "click", base + 1000),
            (f"late{s}", "late-only", "click", base + 2000),
            (f"late{s}", "p3", "cart_add", base + 3000),
            (f"late{s}", "p3", "purchase", base + 4000),
        ]
    events.append(("single", "p1", "click", cut + 2 * HOUR_MS))
    return log_table(events), cut


def test_time_split_trains_only_before_cut():
    events, cut = shop_log()
    model = RecordingRecommender()
    result = evaluation.evaluate_time_split(model, events, k=5, cut_ts=cut)

    fitted: SessionData = model.fitted_on
    assert fitted.ts.max() < cut
    assert "late-only" not in fitted.vocab
    assert "late0" not in set(fitted.session_ids)
    # The spanning session's pre-cut click trains; its later click does not.
    assert "span" in set(fitted.session_ids)
    assert len(fitted.ts) == 12 * 5 + 1
    assert result.skipped["session_spans_cut"] == 1
    assert result.skipped["single_event_session"] == 1
    assert result.counts["evaluated"] == 8


def test_time_split_prefix_and_truth():
    events, cut = shop_log()
    model = RecordingRecommender()
    result = evaluation.evaluate_time_split(model, events, k=5, cut_ts=cut, seed=7)
    vocab = model.fitted_on.vocab
    late = ["p1", "p2", "late-only", "p3", "p3"]
    types = ["click", "click", "click", "cart_add", "purchase"]

    for row, (items, event_types, ts) in zip(
        result.prediction_rows(), model.prefixes, strict=True
    ):
        n = row["prefix_length"]
        assert 1 <= n <= 4
        assert items.tolist() == vocab.encode(late[:n]).tolist()
        assert event_types.tolist() == [EVENT_TYPE_CODES[t] for t in types[:n]]
        assert np.all(ts >= cut)
        later = zip(late[n:], types[n:], strict=True)
        later_clicks = [item for item, kind in later if kind == "click"]
        assert row["truth"]["clicks"] == later_clicks[:1]
        assert row["truth"]["carts"] == (["p3"] if n <= 3 else [])
        assert row["truth"]["orders"] == ["p3"]


def test_time_split_metrics_match_reference():
    events, cut = shop_log()
    result = evaluation.evaluate_time_split(
        PopularRecommender(), events, k=3, cut_ts=cut, seed=2
    )
    rows = list(result.prediction_rows())
    score = 0.0
    for kind, weight in evaluation.TYPE_WEIGHTS.items():
        truths = [r["truth"][kind] for r in rows]
        kept = [(r["item_ids"], t) for r, t in zip(rows, truths, strict=True) if t]
        expected = reference_summary([r for r, _ in kept], [t for _, t in kept], 3)
        assert result.metrics[f"Recall@3_{kind}"] == pytest.approx(expected["pooled"])
        score += weight * expected["pooled"]
    assert result.metrics["score@3"] == pytest.approx(score)


def test_default_cut_leaves_test_fraction():
    events, _ = shop_log()
    ts = events.column("ts").to_numpy()
    cut = evaluation.default_cut_ts(events, 0.25)
    assert (ts >= cut).sum() == len(ts) - int(0.75 * len(ts))


def test_validation_split_holds_out_recent_sessions():
    sessions = [["a", "b", "c"], ["b", "c"], ["c", "a", "b", "a"], ["a"]]
    train, cases = evaluation.validation_split(events_table(sessions), 0.5)
    assert sorted(set(train.column("session_id").to_pylist())) == ["s00000", "s00001"]
    assert cases.column("session_id").to_pylist() == ["s00002"] * 3
    assert cases.column("prefix").to_pylist() == [["c"], ["c", "a"], ["c", "a", "b"]]
    assert cases.column("label").to_pylist() == ["a", "b", "a"]


def test_create_model_rejects_unknown_name():
    with pytest.raises(ConfigError, match=r"choose one of .*popular, sknn"):
        evaluation.create_model("gru4rec")
    with pytest.raises(ConfigError, match="invalid parameters"):
        evaluation.create_model("sknn", {"neighbours": 5})


def test_register_model_adds_factory(monkeypatch):
    monkeypatch.setitem(evaluation.MODELS, "recording", RecordingRecommender)
    assert isinstance(evaluation.create_model("recording"), RecordingRecommender)


@pytest.fixture()
def prepared(tmp_path):
    sessions = random_sessions(5, n_sessions=120, n_items=30)
    train, cases = evaluation.validation_split(events_table(sessions), 0.2)
    out = tmp_path / "tiny"
    write_prepared(
        out, dataset="tiny", sources=[], events=train, cases=cases, synthetic_ts=True
    )
    return out


@pytest.mark.parametrize("model", ["popular", "covisitation", "sknn"])
def test_cli_dump_recomputes_same_metrics(model, prepared, tmp_path, capsys):
    out, dump = tmp_path / "result.json", tmp_path / "predictions.jsonl"
    code = main(
        ["evaluate", "--dataset", str(prepared), "--model", model, "--k", "10",
         "--out", str(out), "--dump-predictions", str(dump)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    expected = reference_summary(
        [r["item_ids"] for r in rows], [r["truth"]["next"] for r in rows], 10
    )
    for name in ("HR@10", "MRR@10", "NDCG@10"):
        assert report["metrics"][name] == pytest.approx(expected[name]), name
    assert report["cases"]["evaluated"] == len(rows) == expected["cases"]
    assert report["model"]["name"] == model
    assert report["command"].startswith("recsys evaluate --dataset")
    assert {"commit", "dirty"} <= report["git"].keys()
    assert report["machine"]["cores"] >= 1
    assert report["dataset"]["name"] == "tiny"
    assert report["timings"]["total_s"] > 0
    assert "HR@10" in capsys.readouterr().out


def test_cli_params_reach_model(prepared, tmp_path):
    out = tmp_path / "result.json"
    code = main(
        ["evaluate", "--dataset", str(prepared), "--model", "sknn", "--param",
         "n_neighbors=7", "--param", "decay=linear", "--limit", "5", "--out", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0
    assert report["model"]["params"]["n_neighbors"] == 7
    assert report["model"]["params"]["decay"] == "linear"
    assert report["cases"]["evaluated"] == 5
    assert "--param n_neighbors=7" in report["command"]


def test_cli_unknown_param_fails_with_message(prepared, capsys):
    code = main(
        ["evaluate", "--dataset", str(prepared), "--model", "popular", "--param",
         "window=3"]
    )  # fmt: skip
    assert code == 1
    assert "invalid parameters for model 'popular'" in capsys.readouterr().err


def test_cli_time_protocol(tmp_path, capsys):
    events, cut = shop_log()
    dataset = tmp_path / "shop"
    write_prepared(
        dataset, dataset="shop", sources=[], events=events, synthetic_ts=False
    )
    out = tmp_path / "time.json"
    code = main(
        ["evaluate", "--dataset", str(dataset), "--model", "covisitation",
         "--protocol", "time", "--cut-ts", str(cut), "--out", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0
    assert report["cases"]["evaluated"] == 8
    assert report["cases"]["skipped"]["session_spans_cut"] == 1
    assert {"Recall@20_clicks", "Recall@20_carts", "Recall@20_orders"} <= set(
        report["metrics"]
    )
    assert report["settings"]["cut_ts"] == cut


class OutOfRangeRecommender(PopularRecommender):
    """Returns an index one past the catalog."""

    name = "out-of-range"

    def recommend(self, items, k, *, event_types=None, ts=None):
        return np.array([len(self.counts)]), np.array([1.0], dtype=np.float32)


def test_recommend_output_past_catalog_rejected():
    train = events_table([["a", "b"]])
    cases = cases_table([("t1", ["a"], "new")])
    with pytest.raises(ValidationError, match="out-of-range recommend output"):
        evaluation.evaluate_next_item(OutOfRangeRecommender(), train, cases, k=5)
