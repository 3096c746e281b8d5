"""Offline evaluation protocols over any `SessionRecommender`.

Two protocols share one harness (`run_cases`), which calls the recommender's
`recommend`, the method serving calls, once per case for a full ranking:

- `evaluate_next_item`: the published benchmark protocol. Each case is a
  prefix of a test session and the next item as label. The recommender ranks
  the whole catalog (no sampled negatives); labels unseen in training are
  misses. Reports HR@k, MRR@k and NDCG@k.
- `evaluate_time_split`: the OTTO-style protocol for event logs. Training
  sees only events before a cut time; each session that starts at or after
  the cut is cut at a seeded random point, and the truth is the next click,
  all later cart adds and all later purchases. Reports pooled Recall@k per
  type and the weighted score 0.1 * clicks + 0.3 * carts + 0.6 * orders.

Cases that cannot be evaluated are counted with a reason in
`EvaluationResult.skipped`, never dropped silently. Recommenders are created
by name through `create_model`; other modules add theirs to `MODELS`.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import metrics
from recsys.datasets.schema import CASES_SCHEMA
from recsys.errors import ConfigError, ValidationError
from recsys.interactions import EVENT_TYPE_CODES, ItemVocab, SessionData
from recsys.models.base import SessionRecommender

log = logging.getLogger(__name__)

# Recommenders by name, as "module:callable" so that a heavy model's imports
# run only when it is chosen. The callable takes the model's parameters as
# keyword arguments and returns an unfitted SessionRecommender.
MODELS: dict[str, str | Callable[..., SessionRecommender]] = {
    "popular": "recsys.models.popular:PopularRecommender",
    "covisitation": "recsys.models.covisitation:CovisitationRecommender",
    "sknn": "recsys.models.sknn:SessionKNNRecommender",
    "pipeline": "recsys.models.pipeline:PipelineRecommender",
    "als": "recsys.models.als:create_als",
    "two_tower": "recsys.models.two_tower:create_two_tower",
}

PROTOCOLS = ("next-item", "time")
# Weights of the OTTO competition score per truth type.
TYPE_WEIGHTS = {"clicks": 0.1, "carts": 0.3, "orders": 0.6}
# Upper bounds (inclusive) of the prefix-length buckets; the last is open.
LENGTH_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


def register_model(name: str, factory: str | Callable[..., SessionRecommender]):
    """Make a recommender available to `create_model` and `recsys evaluate`."""
    MODELS[name] = factory


def create_model(name: str, params: dict[str, Any] | None = None) -> SessionRecommender:
    """Create the unfitted recommender registered under `name`."""
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}"
        )
    factory = MODELS[name]
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    try:
        return factory(**(params or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid parameters for model {name!r}: {exc}") from exc


def model_params(model: SessionRecommender) -> dict[str, Any]:
    """Return the recommender's `params` attribute, or {} when it has none."""
    params = getattr(model, "params", None)
    return dict(params) if isinstance(params, dict) else {}


@dataclass
class Cases:
    """Evaluation cases in CSR form, ready to hand to a recommender.

    Prefix `i` is `prefix_items[prefix_indptr[i]:prefix_indptr[i + 1]]`, item
    indexes of the training vocabulary with -1 for unknown items and searches.
    `prefix_event_types` and `prefix_ts` align with it or are None.
    `truth` maps a truth type ("next", or "clicks", "carts", "orders") to one
    list of item ids (strings) per case.
    """

    case_ids: np.ndarray
    prefix_indptr: np.ndarray
    prefix_items: np.ndarray
    truth: dict[str, list[list[str]]]
    session_ids: list[str] | None = None
    prefix_event_types: np.ndarray | None = None
    prefix_ts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def prefix_lengths(self) -> np.ndarray:
        return np.diff(self.prefix_indptr)

    def truth_indexes(self, vocab: ItemVocab) -> dict[str, list[np.ndarray]]:
        """Map truth ids to indexes of `vocab`.

        Ids outside `vocab` get distinct indexes past the catalog, so they
        count as misses and still count towards the size of the truth set.
        """
        unseen: dict[str, int] = {}
        result: dict[str, list[np.ndarray]] = {}
        for kind, rows in self.truth.items():
            encoded = []
            for row in rows:
                indexes = vocab.encode(row)
                for j in np.flatnonzero(indexes < 0):
                    indexes[j] = len(vocab) + unseen.setdefault(row[j], len(unseen))
                encoded.append(indexes)
            result[kind] = encoded
        return result


@dataclass
class EvaluationResult:
    """Everything one evaluation run measured; `to_dict` gives the JSON form."""

    protocol: str
    k: int
    metrics: dict[str, float]
    by_prefix_length: list[dict[str, Any]]
    counts: dict[str, int]
    skipped: dict[str, int]
    timings: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)
    # Filled for prediction dumps: one row of item ids per case.
    case_ids: np.ndarray | None = None
    session_ids: list[str] | None = None
    ranked_ids: list[list[str]] | None = None
    truth: dict[str, list[list[str]]] | None = None
    prefix_lengths: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "protocol": self.protocol,
                "k": self.k,
                "metrics": self.metrics,
                "cases": {**self.counts, "skipped": self.skipped},
                "by_prefix_length": self.by_prefix_length,
                "timings": self.timings,
                "settings": self.settings,
            }
        )

    def prediction_rows(self):
        """Yield one dict per case: case_id, prefix_length, item_ids, truth."""
        if (
            self.case_ids is None
            or self.ranked_ids is None
            or self.truth is None
            or self.prefix_lengths is None
        ):
            raise ValidationError(
                "result", "no predictions", "a result from a run with predictions"
            )
        for i, case_id in enumerate(self.case_ids):
            yield {
                "case_id": int(case_id),
                "session_id": self.session_ids[i] if self.session_ids else None,
                "prefix_length": int(self.prefix_lengths[i]),
                "item_ids": self.ranked_ids[i],
                "truth": {kind: rows[i] for kind, rows in self.truth.items()},
            }


def _json_safe(value: Any) -> Any:
    """Replace NaN by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def run_cases(
    model: SessionRecommender, cases: Cases, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ask `model` for the top `k` of every case.

    Returns (ranked, latencies): int64 (n_cases, k) item indexes padded with
    -1, and float64 seconds per case.
    """
    ranked = np.full((len(cases), k), -1, dtype=np.int64)
    latencies = np.zeros(len(cases))
    indptr = cases.prefix_indptr
    for i in range(len(cases)):
        start, end = indptr[i], indptr[i + 1]
        extra = {}
        if cases.prefix_event_types is not None:
            extra["event_types"] = cases.prefix_event_types[start:end]
        if cases.prefix_ts is not None:
            extra["ts"] = cases.prefix_ts[start:end]
        began = time.perf_counter()
        items, _ = model.recommend(cases.prefix_items[start:end], k, **extra)
        latencies[i] = time.perf_counter() - began
        items = np.asarray(items, dtype=np.int64)[:k]
        ranked[i, : len(items)] = items
    return ranked, latencies


def _bucket_labels() -> list[str]:
    labels, low = [], 1
    for high in LENGTH_BUCKETS:
        labels.append(str(high) if high == low else f"{low}-{high}")
        low = high + 1
    labels.append(f"{low}+")
    return labels


def length_buckets(lengths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Assign each prefix length a bucket; returns (bucket per case, labels)."""
    return np.searchsorted(LENGTH_BUCKETS, lengths, side="left"), _bucket_labels()


def _latency_summary(latencies: np.ndarray) -> dict[str, float]:
    if len(latencies) == 0:
        return {}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1000
    return {"latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99}


def _sample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Return sorted positions of a seeded sample of `limit` out of `n`."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValidationError("limit", limit, "an integer >= 1, or None for all")
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _fit(model: SessionRecommender, train: SessionData, timings: dict) -> None:
    began = time.perf_counter()
    model.fit(train)
    timings["fit_s"] = time.perf_counter() - began
    log.info(
        "fitted %s on %d sessions in %.1f s",
        model.name,
        train.n_sessions,
        timings["fit_s"],
    )


def _recommend(
    model: SessionRecommender, cases: Cases, k: int, n_items: int, timings: dict
) -> np.ndarray:
    began = time.perf_counter()
    ranked, latencies = run_cases(model, cases, k)
    # An index past the catalog could match the stand-in index of an unseen
    # truth item, so it is an error rather than a miss.
    if ranked.size and ranked.max() >= n_items:
        raise ValidationError(
            f"{model.name} recommend output",
            int(ranked.max()),
            f"item indexes below the training catalog size {n_items}",
        )
    timings["recommend_s"] = time.perf_counter() - began
    timings.update(_latency_summary(latencies))
    log.info(
        "ranked %d cases with %s in %.1f s",
        len(cases),
        model.name,
        timings["recommend_s"],
    )
    return ranked


def _popularity(train: SessionData) -> np.ndarray:
    """Divide each item's training event count by the top item's count."""
    counts = np.bincount(train.items[train.items >= 0], minlength=len(train.vocab))
    return counts / max(int(counts.max(initial=0)), 1)


def _next_item_metrics(
    ranked: np.ndarray, truth: list[np.ndarray], k: int
) -> dict[str, Any]:
    matrix = metrics.hit_matrix(ranked, truth, k)
    values = {
        f"HR@{k}": metrics.hit_rate(matrix),
        f"MRR@{k}": metrics.reciprocal_rank(matrix),
        f"NDCG@{k}": metrics.ndcg(matrix),
    }
    return {
        name: float(np.nanmean(v)) if matrix.valid.any() else float("nan")
        for name, v in values.items()
    }


def _time_metrics(
    ranked: np.ndarray, truth: dict[str, list[np.ndarray]], k: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    score = 0.0
    for kind, weight in TYPE_WEIGHTS.items():
        matrix = metrics.hit_matrix(ranked, truth[kind], k)
        recall = metrics.pooled_recall(matrix)
        result[f"Recall@{k}_{kind}"] = recall
        result[f"cases_{kind}"] = int(matrix.valid.sum())
        score += weight * recall
    result[f"score@{k}"] = score
    return result


def _by_length(
    lengths: np.ndarray,
    compute: Callable[[np.ndarray], dict[str, Any]],
) -> list[dict[str, Any]]:
    buckets, labels = length_buckets(lengths)
    rows = []
    for bucket, label in enumerate(labels):
        selected = np.flatnonzero(buckets == bucket)
        if len(selected):
            rows.append(
                {"prefix_length": label, "cases": len(selected)} | compute(selected)
            )
    return rows


def _finish(
    protocol: str,
    model: SessionRecommender,
    train: SessionData,
    cases: Cases,
    ranked: np.ndarray,
    metric_values: dict[str, Any],
    by_length: list[dict[str, Any]],
    counts: dict[str, int],
    skipped: Counter,
    timings: dict[str, float],
    settings: dict[str, Any],
    k: int,
) -> EvaluationResult:
    began = time.perf_counter()
    n_items = max(len(train.vocab), 1)
    metric_values[f"coverage@{k}"] = metrics.catalog_coverage(ranked, k, n_items)
    metric_values[f"popularity@{k}"] = metrics.mean_popularity(
        ranked, k, _popularity(train)
    )
    timings["coverage_s"] = time.perf_counter() - began
    ranked_ids = [train.vocab.decode(row[row >= 0]) for row in ranked]
    return EvaluationResult(
        protocol=protocol,
        k=k,
        metrics=metric_values,
        by_prefix_length=by_length,
        counts=counts,
        skipped=dict(skipped),
        timings=timings,
        settings=settings,
        case_ids=cases.case_ids,
        session_ids=cases.session_ids,
        ranked_ids=ranked_ids,
        truth=cases.truth,
        prefix_lengths=cases.prefix_lengths,
    )


def next_item_cases(cases_table: pa.Table, vocab: ItemVocab) -> tuple[Cases, Counter]:
    """Encode a `CASES_SCHEMA` table; returns the cases and skip reasons."""
    prefixes = cases_table.column("prefix")
    lengths = pc.list_value_length(prefixes).to_numpy(zero_copy_only=False)
    skipped: Counter = Counter()
    keep = lengths > 0
    skipped["empty_prefix"] = int((~keep).sum())
    if not keep.all():
        cases_table = cases_table.filter(pa.array(keep))
        prefixes, lengths = cases_table.column("prefix"), lengths[keep]
    flat = pc.list_flatten(prefixes).to_pylist()
    indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    labels = cases_table.column("label").to_pylist()
    cases = Cases(
        case_ids=cases_table.column("case_id").to_numpy().astype(np.int64),
        prefix_indptr=indptr,
        prefix_items=vocab.encode(flat),
        truth={"next": [[label] for label in labels]},
        session_ids=cases_table.column("session_id").to_pylist(),
    )
    return cases, +skipped


def evaluate_next_item(
    model: SessionRecommender,
    train_events: pa.Table,
    cases_table: pa.Table,
    k: int = 20,
    limit: int | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Fit on `train_events` and rank the whole catalog for each test case.

    `limit` evaluates a seeded random sample of that many cases instead of
    all of them; the sample depends only on `seed` and the number of cases.
    """
    timings: dict[str, float] = {}
    began = time.perf_counter()
    train = SessionData.from_events(train_events)
    timings["prepare_train_s"] = time.perf_counter() - began
    _fit(model, train, timings)

    total = len(cases_table)
    cases_table = cases_table.take(pa.array(_sample(total, limit, seed)))
    cases, skipped = next_item_cases(cases_table, train.vocab)
    truth = cases.truth_indexes(train.vocab)["next"]
    counts = {
        "published": total,
        "sampled": len(cases_table),
        "evaluated": len(cases),
        "unknown_prefix_items": int((cases.prefix_items < 0).sum()),
        "prefix_items": len(cases.prefix_items),
        "labels_unseen_in_training": int(
            sum(int(t[0] >= len(train.vocab)) for t in truth)
        ),
    }
    ranked = _recommend(model, cases, k, len(train.vocab), timings)

    began = time.perf_counter()
    metric_values = _next_item_metrics(ranked, truth, k)
    by_length = _by_length(
        cases.prefix_lengths,
        lambda rows: _next_item_metrics(ranked[rows], [truth[i] for i in rows], k),
    )
    timings["metrics_s"] = time.perf_counter() - began
    settings = {"limit": limit, "seed": seed}
    return _finish(
        "next-item", model, train, cases, ranked, metric_values, by_length,
        counts, skipped, timings, settings, k,
    )  # fmt: skip


def validation_split(
    train_events: pa.Table, fraction: float
) -> tuple[pa.Table, pa.Table]:
    """Carve the most recent `fraction` of training sessions into test cases.

    Sessions are ordered by their last timestamp, ties by session id. Each
    held-out session of n items gives the cases (items[:i] -> items[i]) for
    i = 1..n-1, as the published benchmarks do; labels may be unseen in the
    remaining training data and then count as misses. Returns
    (training events, cases table in `CASES_SCHEMA`).
    """
    if not 0.0 < fraction < 1.0:
        raise ValidationError("fraction", fraction, "a value strictly between 0 and 1")
    data = SessionData.from_events(train_events)
    last_ts = data.ts[np.maximum(data.indptr[1:] - 1, 0)]
    order = np.lexsort((data.session_ids.astype(str), last_ts))
    n_held = max(1, round(fraction * data.n_sessions))
    held = order[len(order) - n_held :]
    held_ids = pa.array(data.session_ids[held].astype(str))
    is_held = pc.is_in(train_events.column("session_id"), value_set=held_ids)
    remaining = train_events.filter(pc.invert(is_held))

    case_ids: list[int] = []
    session_ids: list[str] = []
    prefixes: list[list[str]] = []
    labels: list[str] = []
    for s in np.sort(held):
        indexes = data.session_items(s)
        session_items = data.vocab.decode(indexes[indexes >= 0])
        for i in range(1, len(session_items)):
            case_ids.append(len(case_ids))
            session_ids.append(str(data.session_ids[s]))
            prefixes.append(session_items[:i])
            labels.append(session_items[i])
    cases = pa.table(
        {
            "case_id": case_ids,
            "session_id": session_ids,
            "prefix": prefixes,
            "label": labels,
        },
        schema=CASES_SCHEMA,
    )
    return remaining, cases


def default_cut_ts(events: pa.Table, test_fraction: float) -> int:
    """Return the time after which the last `test_fraction` of the events fall.

    The cut follows event counts, not the time span, because traffic is
    uneven: the REES46 slice has 75 % of its events in its last 25 minutes.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValidationError(
            "test_fraction", test_fraction, "a value strictly between 0 and 1"
        )
    ts = np.sort(events.column("ts").to_numpy())
    if len(ts) == 0:
        raise ValidationError("events", "an empty table", "at least one event")
    return int(ts[min(int((1.0 - test_fraction) * len(ts)), len(ts) - 1)])


def time_split_cases(test: SessionData, seed: int) -> tuple[Cases, Counter]:
    """Cut every test session at a seeded random point and collect its truth.

    The prefix gets between 1 and n-1 of a session's n events, uniformly.
    Truth: the first click after the cut, and the distinct items of all
    later cart adds and purchases.
    """
    rng = np.random.default_rng(seed)
    click, cart, purchase = (
        EVENT_TYPE_CODES[name] for name in ("click", "cart_add", "purchase")
    )
    skipped: Counter = Counter()
    case_ids: list[int] = []
    session_ids: list[str] = []
    indptr = [0]
    items: list[np.ndarray] = []
    types: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    truth: dict[str, list[list[str]]] = {kind: [] for kind in TYPE_WEIGHTS}
    for s in range(test.n_sessions):
        start, end = test.indptr[s], test.indptr[s + 1]
        if end - start < 2:
            skipped["single_event_session"] += 1
            continue
        cut = start + int(rng.integers(1, end - start))
        later_items = test.items[cut:end]
        later_types = test.event_types[cut:end]
        clicks, carts, orders = (
            _items_of_type(later_items, later_types, code, test.vocab)
            for code in (click, cart, purchase)
        )
        clicks = clicks[:1]
        if not (clicks or carts or orders):
            skipped["no_truth_after_cut"] += 1
            continue
        case_ids.append(len(case_ids))
        session_ids.append(str(test.session_ids[s]))
        items.append(test.items[start:cut])
        types.append(test.event_types[start:cut])
        stamps.append(test.ts[start:cut])
        indptr.append(indptr[-1] + cut - start)
        for kind, row in zip(TYPE_WEIGHTS, (clicks, carts, orders), strict=True):
            truth[kind].append(row)
    cases = Cases(
        case_ids=np.asarray(case_ids, dtype=np.int64),
        prefix_indptr=np.asarray(indptr, dtype=np.int64),
        prefix_items=_concat(items, np.int64),
        truth=truth,
        session_ids=session_ids,
        prefix_event_types=_concat(types, np.int8),
        prefix_ts=_concat(stamps, np.int64),
    )
    return cases, skipped


def _items_of_type(
    items: np.ndarray, event_types: np.ndarray, code: int, vocab: ItemVocab
) -> list[str]:
    """Return the distinct item ids of the events of one type, in order."""
    chosen = items[(event_types == code) & (items >= 0)]
    return list(dict.fromkeys(vocab.decode(chosen)))


def _concat(parts: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def evaluate_time_split(
    model: SessionRecommender,
    events: pa.Table,
    k: int = 20,
    cut_ts: int | None = None,
    test_fraction: float = 0.25,
    limit: int | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Fit on events before `cut_ts` and score the sessions that start after it.

    Without `cut_ts`, the cut leaves the last `test_fraction` of the events
    (by time) for testing. Sessions that start before the cut and end after
    it are neither trained on past the cut nor tested; they are counted under
    `skipped["session_spans_cut"]`. `limit` tests a seeded sample of sessions.
    """
    timings: dict[str, float] = {}
    settings: dict[str, Any] = {"limit": limit, "seed": seed, "cut_ts": cut_ts}
    if cut_ts is None:
        cut_ts = default_cut_ts(events, test_fraction)
        settings |= {"cut_ts": cut_ts, "test_fraction": test_fraction}
    began = time.perf_counter()
    ts = events.column("ts")
    train_events = events.filter(pc.less(ts, cut_ts))
    train = SessionData.from_events(train_events)

    # Sessions are tested only when their first event is at or after the cut.
    first_ts = pa.TableGroupBy(events, "session_id").aggregate([("ts", "min")])
    starts_after = first_ts.filter(pc.greater_equal(first_ts.column("ts_min"), cut_ts))
    test_ids = starts_after.column("session_id")
    spans_cut = pc.unique(
        events.filter(pc.greater_equal(ts, cut_ts)).column("session_id")
    )
    skipped: Counter = Counter()
    skipped["session_spans_cut"] = len(spans_cut) - len(test_ids)
    test_ids = pc.sort_indices(test_ids)  # positions, for a stable sample order
    test_ids = starts_after.column("session_id").take(test_ids)
    sampled_ids = test_ids.take(pa.array(_sample(len(test_ids), limit, seed)))
    test_events = events.filter(pc.is_in(events.column("session_id"), sampled_ids))
    # Items new after the cut extend the vocabulary past the training items,
    # so truth keeps their ids while prefixes pass them on as unknown (-1).
    new_ids = pc.unique(test_events.column("item_id").drop_null()).to_pylist()
    test_vocab = ItemVocab(
        list(train.vocab.item_ids) + [i for i in new_ids if i not in train.vocab]
    )
    test = SessionData.from_events(test_events, vocab=test_vocab)
    timings["prepare_train_s"] = time.perf_counter() - began
    _fit(model, train, timings)

    cases, case_skips = time_split_cases(test, seed)
    skipped.update(case_skips)
    cases.prefix_items[cases.prefix_items >= len(train.vocab)] = -1
    truth = cases.truth_indexes(train.vocab)
    counts = {
        "test_sessions": len(test_ids),
        "sampled": len(sampled_ids),
        "evaluated": len(cases),
        "unknown_prefix_items": int((cases.prefix_items < 0).sum()),
        "prefix_items": len(cases.prefix_items),
    }
    ranked = _recommend(model, cases, k, len(train.vocab), timings)

    began = time.perf_counter()
    metric_values = _time_metrics(ranked, truth, k)
    by_length = _by_length(
        cases.prefix_lengths,
        lambda rows: _time_metrics(
            ranked[rows], {kind: [t[i] for i in rows] for kind, t in truth.items()}, k
        ),
    )
    timings["metrics_s"] = time.perf_counter() - began
    return _finish(
        "time", model, train, cases, ranked, metric_values, by_length,
        counts, skipped, timings, settings, k,
    )  # fmt: skip
