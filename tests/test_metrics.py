"""Ranking metrics against a slow per-case reference and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys import metrics
from recsys.errors import ValidationError


def reference_case(ranked, truth, k):
    """Score one case the obvious way; returns None for an empty truth.

    `ranked` is a list of item ids (anything hashable, None or negative ints
    as padding); repeats count at their first position only.
    """
    truth = set(truth)
    if not truth:
        return None
    seen, top = set(), []
    for item in list(ranked)[:k]:
        is_padding = item is None or (isinstance(item, int) and item < 0)
        if is_padding or item in seen:
            top.append(None)
            continue
        seen.add(item)
        top.append(item)
    hit_ranks = [rank for rank, item in enumerate(top, 1) if item in truth]
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(k, len(truth)) + 1))
    return {
        "HR": 1.0 if hit_ranks else 0.0,
        "Recall": len(hit_ranks) / min(k, len(truth)),
        "MRR": 1.0 / hit_ranks[0] if hit_ranks else 0.0,
        "NDCG": sum(1 / math.log2(rank + 1) for rank in hit_ranks) / ideal,
        "hits": len(hit_ranks),
        "denominator": min(k, len(truth)),
    }


def reference_summary(rows, truths, k):
    """Average `reference_case` over cases with truth, and pool the recall."""
    scored = [reference_case(r, t, k) for r, t in zip(rows, truths, strict=True)]
    valid = [s for s in scored if s is not None]
    summary = {
        f"{name}@{k}": float(np.mean([s[name] for s in valid]))
        for name in metrics.METRICS
    }
    summary["pooled"] = sum(s["hits"] for s in valid) / sum(
        s["denominator"] for s in valid
    )
    summary["cases"] = len(valid)
    summary["skipped"] = len(scored) - len(valid)
    return summary


def random_cases(rng, n_cases, n_items, max_truth):
    width = int(rng.integers(1, 30))
    ranked = rng.integers(-1, n_items, size=(n_cases, width))
    truths = [
        rng.integers(0, n_items, size=int(rng.integers(0, max_truth + 1)))
        for _ in range(n_cases)
    ]
    return ranked, truths


@pytest.mark.parametrize("seed", range(40))
def test_metrics_match_reference_random(seed):
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(3, 60))
    ranked, truths = random_cases(rng, 50, n_items, max_truth=6)
    k = int(rng.integers(1, 35))

    result = metrics.summarize(ranked, truths, k)
    expected = reference_summary(ranked.tolist(), [t.tolist() for t in truths], k)
    assert result["cases"] == expected["cases"]
    assert result["skipped"] == expected["skipped"]
    for name in metrics.METRICS:
        assert result[f"{name}@{k}"] == pytest.approx(expected[f"{name}@{k}"]), name
    pooled = metrics.pooled_recall(metrics.hit_matrix(ranked, truths, k))
    assert pooled == pytest.approx(expected["pooled"])


@pytest.mark.parametrize("seed", range(20))
def test_single_truth_array_matches_lists(seed):
    rng = np.random.default_rng(100 + seed)
    ranked = rng.integers(-1, 15, size=(40, 25))
    labels = rng.integers(0, 15, size=40)

    as_array = metrics.summarize(ranked, labels, 20)
    as_lists = metrics.summarize(ranked, [np.array([x]) for x in labels], 20)
    assert as_array == as_lists
    assert as_array["HR@20"] == pytest.approx(as_array["Recall@20"])


def test_repeat_counts_at_first_position():
    # Item 5 repeats at rank 3, which must not push 7 out or count twice.
    ranked = np.array([[5, 3, 5, 7]])
    at_3 = metrics.hit_matrix(ranked, np.array([7]), 3)
    at_4 = metrics.hit_matrix(ranked, np.array([7]), 4)
    repeated_truth = metrics.hit_matrix(ranked, np.array([5]), 4)

    assert metrics.hit_rate(at_3)[0] == 0.0
    assert metrics.reciprocal_rank(at_4)[0] == pytest.approx(1 / 4)
    assert repeated_truth.hits.sum() == 1


def test_hand_computed_ndcg_and_recall():
    ranked = np.array([[9, 3, 8, 7, 1]])
    truth = [np.array([3, 7, 4])]
    matrix = metrics.hit_matrix(ranked, truth, 4)

    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg(matrix)[0] == pytest.approx(dcg / ideal)
    assert metrics.recall(matrix)[0] == pytest.approx(2 / 3)
    assert metrics.reciprocal_rank(matrix)[0] == pytest.approx(1 / 2)


def test_recall_denominator_caps_at_k():
    # Five truth items, k = 2, both slots hit: recall is 2 / min(2, 5) = 1.
    matrix = metrics.hit_matrix(np.array([[1, 2]]), [np.arange(1, 6)], 2)
    assert metrics.recall(matrix)[0] == 1.0
    assert metrics.ndcg(matrix)[0] == pytest.approx(1.0)


def test_duplicate_truth_counts_once():
    matrix = metrics.hit_matrix(np.array([[4, 0]]), [np.array([4, 4])], 2)
    assert matrix.n_truth[0] == 1
    assert metrics.recall(matrix)[0] == 1.0


def test_empty_truth_is_nan_and_skipped():
    ranked = np.array([[1, 2], [1, 2]])
    truth = [np.array([], dtype=np.int64), np.array([2])]
    matrix = metrics.hit_matrix(ranked, truth, 2)
    summary = metrics.summarize(ranked, truth, 2)

    assert np.isnan(metrics.hit_rate(matrix)[0])
    assert summary["cases"] == 1
    assert summary["skipped"] == 1
    assert summary["MRR@2"] == pytest.approx(0.5)


def test_all_truth_empty_gives_nan():
    summary = metrics.summarize(np.array([[1]]), [np.array([], dtype=np.int64)], 5)
    assert math.isnan(summary["HR@5"])
    assert summary["skipped"] == 1


def test_short_rows_and_k_beyond_catalog():
    # A catalog of 3 items, k = 10: the row contains all three and is padded.
    ranked = np.array([[2, 0, 1]])
    truth = [np.array([1, 5])]
    matrix = metrics.hit_matrix(ranked, truth, 10)

    assert matrix.hits.shape == (1, 10)
    assert metrics.recall(matrix)[0] == pytest.approx(1 / 2)
    assert metrics.reciprocal_rank(matrix)[0] == pytest.approx(1 / 3)


def test_padding_never_hits():
    matrix = metrics.hit_matrix(np.array([[-1, -1, 0]]), np.array([0]), 3)
    assert matrix.hits.tolist() == [[False, False, True]]


def test_negative_truth_rejected():
    with pytest.raises(ValidationError, match="truth"):
        metrics.hit_matrix(np.array([[1]]), np.array([-1]), 1)
    with pytest.raises(ValidationError, match="truth"):
        metrics.hit_matrix(np.array([[1]]), [np.array([2, -3])], 1)


def test_invalid_k_and_shapes_rejected():
    with pytest.raises(ValidationError, match="k"):
        metrics.hit_matrix(np.array([[1]]), np.array([1]), 0)
    with pytest.raises(ValidationError, match="ranked"):
        metrics.hit_matrix(np.array([1, 2]), np.array([1, 2]), 1)
    with pytest.raises(ValidationError, match="truth"):
        metrics.hit_matrix(np.array([[1], [2]]), np.array([1]), 1)
    with pytest.raises(ValidationError, match="names"):
        metrics.summarize(np.array([[1]]), np.array([1]), 1, names=["AUC"])


def test_catalog_coverage_hand_computed():
    ranked = np.array([[0, 1, 2], [1, 3, -1]])
    assert metrics.catalog_coverage(ranked, 2, 10) == pytest.approx(3 / 10)
    assert metrics.catalog_coverage(ranked, 3, 10) == pytest.approx(4 / 10)


def test_mean_popularity_hand_computed():
    popularity = np.array([1.0, 0.5, 0.0, 0.25])
    ranked = np.array([[0, 0, 1], [3, -1, 2]])
    # Slots: 0, (repeat of 0 ignored), 1, 3, (padding), 2.
    expected = (1.0 + 0.5 + 0.25 + 0.0) / 4
    assert metrics.mean_popularity(ranked, 3, popularity) == pytest.approx(expected)
    assert math.isnan(metrics.mean_popularity(np.array([[-1]]), 1, popularity))
