"""Ranking metrics over many cases at once, vectorised with numpy.

Every function takes `ranked`, an int64 array of shape (n_cases, width) with
each row's item indexes best first, and a truth per case. Rows shorter than
`k` are padded with a negative value (any index below 0 is padding and never
a hit). Truth is either a 1-D int array with one relevant item per case or a
sequence of 1-D int arrays (several relevant items per case, as in OTTO).
Truth items must be non-negative; give items unknown to the model indexes
outside the catalog (for example `n_items + j`) so that they count as misses.

Semantics shared by all metrics:

- Duplicates in a ranked row count once, at their first position; a later
  repeat is treated as padding and does not consume a hit.
- Duplicates in a truth set count once.
- A case with an empty truth set has no defined value: its per-case result is
  NaN and `summarize` reports it under `skipped` (never as a zero).
- A row with fewer than `k` items scores as if the missing positions were
  misses. With `k` larger than the catalog the same holds; the recall
  denominator stays `min(k, |truth|)` and does not shrink to the catalog size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsys.errors import ValidationError

Truth = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class HitMatrix:
    """Hits of each case's top-k positions against its truth.

    `hits` is bool (n_cases, k); `n_truth` is the number of distinct truth
    items per case (int64, n_cases).
    """

    hits: np.ndarray
    n_truth: np.ndarray

    @property
    def k(self) -> int:
        return self.hits.shape[1]

    @property
    def valid(self) -> np.ndarray:
        """Cases with at least one truth item."""
        return self.n_truth > 0


def _mask_repeats(rows: np.ndarray, pad: int) -> np.ndarray:
    """Replace every repeat of a value within a row by `pad`, keeping the first."""
    if rows.shape[1] < 2:
        return rows.copy()
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(rows, order, axis=1)
    repeat_sorted = np.zeros(rows.shape, dtype=bool)
    repeat_sorted[:, 1:] = sorted_rows[:, 1:] == sorted_rows[:, :-1]
    repeat = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    out = rows.copy()
    out[repeat] = pad
    return out


def _pad_truth(truth: Truth, n_cases: int) -> np.ndarray:
    """Return truth as int64 (n_cases, width), padded with -1, repeats masked."""
    if isinstance(truth, np.ndarray) and truth.ndim == 1:
        padded = truth.astype(np.int64).reshape(-1, 1)
    else:
        lengths = [len(t) for t in truth]
        width = max(lengths, default=0)
        padded = np.full((len(lengths), max(width, 1)), -1, dtype=np.int64)
        for row, items in enumerate(truth):
            padded[row, : len(items)] = items
        if any(len(t) and np.min(t) < 0 for t in truth):
            raise ValidationError(
                "truth", "a negative item index", "indexes >= 0 for truth items"
            )
    if len(padded) != n_cases:
        raise ValidationError(
            "truth", f"{len(padded)} cases", f"one truth per ranked row ({n_cases})"
        )
    if isinstance(truth, np.ndarray) and truth.ndim == 1 and np.any(padded < 0):
        raise ValidationError(
            "truth", int(padded.min()), "indexes >= 0 for truth items"
        )
    return _mask_repeats(padded, -1)


def hit_matrix(ranked: np.ndarray, truth: Truth, k: int) -> HitMatrix:
    """Mark, for the first `k` positions of each row, whether the item is relevant.

    Parameters
    ----------
    ranked : int array (n_cases, width), best first, negative = padding.
    truth : int array (n_cases,) or a sequence of n_cases int arrays.
    k : cutoff, at least 1.
    """
    if k < 1:
        raise ValidationError("k", k, "an integer >= 1")
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValidationError("ranked", ranked.shape, "a 2-D array (n_cases, width)")
    n_cases = ranked.shape[0]
    top = np.full((n_cases, k), -1, dtype=np.int64)
    width = min(k, ranked.shape[1])
    top[:, :width] = ranked[:, :width]
    top[top < 0] = -1
    top = _mask_repeats(top, -1)

    padded_truth = _pad_truth(truth, n_cases)
    n_truth = (padded_truth >= 0).sum(axis=1).astype(np.int64)
    hits = np.zeros((n_cases, k), dtype=bool)
    for column in padded_truth.T:
        hits |= (top == column[:, None]) & (column[:, None] >= 0)
    return HitMatrix(hits=hits, n_truth=n_truth)


def _nan_where_empty(values: np.ndarray, matrix: HitMatrix) -> np.ndarray:
    values = values.astype(np.float64)
    values[~matrix.valid] = np.nan
    return values


def hit_rate(matrix: HitMatrix) -> np.ndarray:
    """1.0 where any truth item is in the top k, else 0.0; NaN for empty truth."""
    return _nan_where_empty(np.asarray(matrix.hits.any(axis=1)), matrix)


def recall(matrix: HitMatrix) -> np.ndarray:
    """Share of truth items in the top k, out of min(k, |truth|), per case."""
    denominator = np.maximum(np.minimum(matrix.n_truth, matrix.k), 1)
    return _nan_where_empty(matrix.hits.sum(axis=1) / denominator, matrix)


def reciprocal_rank(matrix: HitMatrix) -> np.ndarray:
    """1 / rank of the first hit in the top k, 0.0 without a hit, per case."""
    any_hit = matrix.hits.any(axis=1)
    first = np.argmax(matrix.hits, axis=1)
    values = np.where(any_hit, 1.0 / (first + 1), 0.0)
    return _nan_where_empty(values, matrix)


def ndcg(matrix: HitMatrix) -> np.ndarray:
    """Binary-relevance NDCG@k per case.

    DCG sums 1 / log2(rank + 1) over hits; the ideal DCG places
    min(k, |truth|) hits at the top.
    """
    discounts = 1.0 / np.log2(np.arange(2, matrix.k + 2))
    dcg = matrix.hits.astype(np.float64) @ discounts
    ideal_cumulative = np.concatenate(([0.0], np.cumsum(discounts)))
    ideal = ideal_cumulative[np.minimum(matrix.n_truth, matrix.k)]
    values = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
    return _nan_where_empty(values, matrix)


def pooled_recall(matrix: HitMatrix) -> float:
    """Recall pooled over cases: total hits / total min(k, |truth|).

    This is the OTTO competition's per-type recall; cases with empty truth add
    nothing to either sum. Returns NaN when no case has truth.
    """
    denominator = np.minimum(matrix.n_truth, matrix.k).sum()
    if denominator == 0:
        return float("nan")
    return float(matrix.hits.sum() / denominator)


def catalog_coverage(ranked: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalog's `n_items` that appears in some top-k row."""
    if n_items < 1:
        raise ValidationError("n_items", n_items, "an integer >= 1")
    top = np.asarray(ranked, dtype=np.int64)[:, :k]
    shown = np.unique(top[(top >= 0) & (top < n_items)])
    return len(shown) / n_items


def mean_popularity(ranked: np.ndarray, k: int, popularity: np.ndarray) -> float:
    """Average `popularity[item]` over all top-k slots that contain an item.

    Repeats within a row count once and padding is ignored. Returns NaN when
    no row contains an item.
    """
    top = _mask_repeats(np.asarray(ranked, dtype=np.int64)[:, :k], -1)
    items = top[top >= 0]
    if len(items) == 0:
        return float("nan")
    return float(np.asarray(popularity, dtype=np.float64)[items].mean())


METRICS = {
    "HR": hit_rate,
    "Recall": recall,
    "MRR": reciprocal_rank,
    "NDCG": ndcg,
}


def summarize(
    ranked: np.ndarray, truth: Truth, k: int, names: Sequence[str] = tuple(METRICS)
) -> dict[str, float | int]:
    """Average the named per-case metrics over cases with non-empty truth.

    Returns `{"HR@k": ..., ..., "cases": evaluated, "skipped": empty truth}`;
    a metric is NaN when no case has truth.
    """
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValidationError("names", unknown, f"names from {sorted(METRICS)}")
    matrix = hit_matrix(ranked, truth, k)
    n_valid = int(matrix.valid.sum())
    result: dict[str, float | int] = {}
    for name in names:
        values = METRICS[name](matrix)
        result[f"{name}@{k}"] = float(np.nanmean(values)) if n_valid else float("nan")
    result["cases"] = n_valid
    result["skipped"] = int(len(matrix.valid) - n_valid)
    return result
