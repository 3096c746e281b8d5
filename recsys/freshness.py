"""The value of freshness: the pipeline with and without the live session.

`evaluate_freshness` fits the pipeline once through the time protocol
(`evaluation.evaluate_time_split`, which trains only on events before the
cut and cuts each later session at a seeded random point) and ranks every case
whose session carries a user id in three ways with the same fitted pipeline:

- `full`: `Pipeline.rank` on the session prefix with the user id, as the
  service ranks a live request. With ALS in the configuration, the user
  vector folds in the user's training events together with the prefix.
- `without_session`: `Pipeline.rank` on an empty session with the user id,
  as a batch system serves from data up to the last training run. Only the
  ALS source (the user's stored factors) and the popularity sources return
  candidates. A user unknown to training gets popularity only.
- `session_only`: the time protocol's own ranking, the prefix without the
  user id.

`lift` compares `full` with `without_session` on Recall@k per truth type
and on the 0.1/0.3/0.6 score, absolute and relative.

NOTE: `fit_pipeline` trains the ranker on held-out prefixes without user
ids, so the ranker never sees ALS candidates from a user's history.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import BuildError, ConfigError
from recsys.evaluation import (
    Cases,
    EvaluationResult,
    _json_safe,
    _time_metrics,
    evaluate_time_split,
)
from recsys.interactions import SessionData
from recsys.models.pipeline import PipelineRecommender

log = logging.getLogger(__name__)

VARIANTS = ("full", "without_session", "session_only")
# The default pipeline leaves ALS out. Without ALS, a request without session
# events gets popularity only, so the comparison would measure popularity.
DEFAULT_PARAMS: dict[str, Any] = {"als": {}}


class RecordingPipeline:
    """A `PipelineRecommender` that keeps its training log and the prefixes.

    The time protocol calls `fit` once and `recommend` once per case, in
    case order, so `prefixes[i]` is the prefix of case `i`.
    """

    name = "pipeline"

    def __init__(self, recommender: PipelineRecommender) -> None:
        self.recommender = recommender
        self.train: SessionData | None = None
        self.prefixes: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
        self.prefixes = []

    @property
    def params(self) -> dict[str, Any]:
        return self.recommender.params

    def fit(self, data: SessionData) -> RecordingPipeline:
        self.train = data
        self.prefixes = []
        self.recommender.fit(data)
        return self

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.prefixes.append(
            (
                np.array(items, copy=True),
                None if event_types is None else np.array(event_types, copy=True),
                None if ts is None else np.array(ts, copy=True),
            )
        )
        return self.recommender.recommend(items, k, event_types=event_types, ts=ts)


def session_users(events: pa.Table, session_ids: list[str]) -> dict[str, str]:
    """Map each of `session_ids` to its first non-null user id, where it has one."""
    selected = events.filter(
        pc.and_(
            pc.is_in(events.column("session_id"), value_set=pa.array(session_ids)),
            pc.is_valid(events.column("user_id")),
        )
    )
    users: dict[str, str] = {}
    for session_id, user_id in zip(
        selected.column("session_id").to_pylist(),
        selected.column("user_id").to_pylist(),
        strict=True,
    ):
        users.setdefault(session_id, user_id)
    return users


def evaluate_freshness(
    events: pa.Table,
    params: dict[str, Any] | None = None,
    *,
    k: int = 20,
    cut_ts: int | None = None,
    test_fraction: float = 0.25,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the pipeline with and without the current session's events.

    `params` are `PipelineConfig` fields (`DEFAULT_PARAMS` when None). The
    other arguments are those of `evaluate_time_split`. Returns a JSON-ready
    dict with the metrics of each variant over all cases with a user id and
    over those whose user is known to training, the lift, and case counts.
    """
    params = dict(DEFAULT_PARAMS if params is None else params)
    recorder = RecordingPipeline(PipelineRecommender(**params))
    base = evaluate_time_split(
        recorder, events, k=k, cut_ts=cut_ts, test_fraction=test_fraction,
        limit=limit, seed=seed,
    )  # fmt: skip
    train, pipeline = recorder.train, recorder.recommender.pipeline
    if train is None or pipeline is None:
        raise BuildError("the time protocol returned without fitting the pipeline")
    session_ids = base.session_ids or []
    users = session_users(events, session_ids)
    rows = [i for i, session_id in enumerate(session_ids) if session_id in users]
    user_ids = [users[session_ids[i]] for i in rows]
    training_users = {str(u) for u in train.user_ids if u is not None}
    known = np.array([u in training_users for u in user_ids], dtype=bool)

    began = time.perf_counter()
    ranked = {
        "session_only": _encode_ranked(base, rows, train, k),
        "full": np.full((len(rows), k), -1, dtype=np.int64),
        "without_session": np.full((len(rows), k), -1, dtype=np.int64),
    }
    empty = pipeline.session_view(np.zeros(0, np.int64), np.zeros(0, np.int8))
    for j, (i, user_id) in enumerate(zip(rows, user_ids, strict=True)):
        items, event_types, ts = recorder.prefixes[i]
        view = pipeline.session_view(items, event_types, ts)
        full = pipeline.rank(view, k, user_id=user_id).items[:k]
        batch = pipeline.rank(empty, k, user_id=user_id).items[:k]
        ranked["full"][j, : len(full)] = full
        ranked["without_session"][j, : len(batch)] = batch
    rank_s = time.perf_counter() - began

    truth = _truth_of(base, rows, train)
    selections = {"users": np.arange(len(rows)), "known_users": np.flatnonzero(known)}
    metrics: dict[str, Any] = {}
    lift: dict[str, Any] = {}
    for name, selected in selections.items():
        subset = {kind: [t[i] for i in selected] for kind, t in truth.items()}
        metrics[name] = {
            variant: _time_metrics(ranked[variant][selected], subset, k)
            for variant in VARIANTS
        }
        lift[name] = _lift(metrics[name]["full"], metrics[name]["without_session"], k)

    counts = {
        "evaluated": len(session_ids),
        "full_differs_from_session_only": _differing_rows(
            ranked["full"], ranked["session_only"]
        ),
        "with_user": len(rows),
        "user_known_to_training": int(known.sum()),
        "user_unknown_to_training": int((~known).sum()),
        "training_users": len(training_users),
        "training_last_ts": int(train.ts.max()) if len(train.ts) else None,
    }
    log.info(
        "freshness: %d cases with a user, %d known to training, ranked in %.1f s",
        counts["with_user"],
        counts["user_known_to_training"],
        rank_s,
    )
    report = base.to_dict()
    return _json_safe(
        {
            "protocol": "freshness",
            "k": k,
            "variants": {
                "full": "Pipeline.rank(prefix, user_id)",
                "without_session": "Pipeline.rank(empty session, user_id): ALS user "
                "factors and popularity only; popularity only for unknown users",
                "session_only": "Pipeline.rank(prefix) without user id, as the time "
                "protocol ranks",
            },
            "params": recorder.params,
            "metrics": metrics,
            "lift": lift,
            "cases": counts,
            "time_protocol": {
                "metrics_all_cases": report["metrics"],
                "cases": report["cases"],
                "settings": report["settings"],
                "timings": report["timings"] | {"rank_variants_s": rank_s},
            },
        }
    )


def _differing_rows(first: np.ndarray, second: np.ndarray) -> int:
    return int((first != second).any(axis=1).sum()) if len(first) else 0


def _encode_ranked(
    result: EvaluationResult, rows: list[int], train: SessionData, k: int
) -> np.ndarray:
    """Turn the time protocol's ranked item ids of `rows` back into indexes."""
    ranked = np.full((len(rows), k), -1, dtype=np.int64)
    for j, i in enumerate(rows):
        indexes = train.vocab.encode((result.ranked_ids or [])[i])[:k]
        ranked[j, : len(indexes)] = indexes
    return ranked


def _truth_of(
    result: EvaluationResult, rows: list[int], train: SessionData
) -> dict[str, list[np.ndarray]]:
    """Encode the truth of `rows` as `Cases.truth_indexes` does for the protocol."""
    truth = {kind: [t[i] for i in rows] for kind, t in (result.truth or {}).items()}
    cases = Cases(
        case_ids=np.arange(len(rows), dtype=np.int64),
        prefix_indptr=np.zeros(len(rows) + 1, dtype=np.int64),
        prefix_items=np.zeros(0, dtype=np.int64),
        truth=truth,
    )
    return cases.truth_indexes(train.vocab)


def _lift(full: dict[str, Any], without: dict[str, Any], k: int) -> dict[str, Any]:
    """Return full minus without, absolute and relative, per Recall@k and score."""
    names = [f"Recall@{k}_{kind}" for kind in ("clicks", "carts", "orders")]
    lift: dict[str, Any] = {}
    for name in [*names, f"score@{k}"]:
        a, b = full[name], without[name]
        absolute = None if np.isnan(a) or np.isnan(b) else a - b
        relative = None if absolute is None or b == 0 else absolute / b
        lift[name] = {"absolute": absolute, "relative": relative}
    return lift


def freshness_command(args: Any, dataset: Any) -> str:
    """Run `recsys evaluate --protocol freshness` and return the text to print.

    `args` are the parsed `recsys evaluate` options and `dataset` the loaded
    prepared dataset. The results JSON goes to `args.out` when it is set.
    """
    import json

    from recsys.commands.evaluate import (
        _concat_tables,
        command_line,
        dataset_summary,
        git_commit,
        machine,
        parse_params,
    )

    if args.model != "pipeline":
        raise ConfigError(
            f"--protocol freshness ranks with the pipeline, got --model {args.model}; "
            "use --model pipeline"
        )
    if args.validation_fraction is not None or args.dump_predictions is not None:
        raise ConfigError(
            "--validation-fraction and --dump-predictions do not apply to "
            "--protocol freshness"
        )
    events = dataset.events
    if dataset.test_events is not None:
        events = _concat_tables(events, dataset.test_events)
    began = time.perf_counter()
    report = evaluate_freshness(
        events, {**DEFAULT_PARAMS, **parse_params(args.param)}, k=args.k,
        cut_ts=args.cut_ts, test_fraction=args.test_fraction, limit=args.limit,
        seed=args.seed,
    )  # fmt: skip
    report["time_protocol"]["timings"]["total_s"] = time.perf_counter() - began
    report = {
        "dataset": dataset_summary(dataset),
        **report,
        "command": command_line(args),
        "git": git_commit(),
        "machine": machine(),
    }
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return format_freshness(report)


def format_freshness(report: dict[str, Any]) -> str:
    """Render the Recall@k and score of each variant and the lift as lines."""
    k = report["k"]
    names = [f"Recall@{k}_{kind}" for kind in ("clicks", "carts", "orders")]
    names.append(f"score@{k}")
    counts = report["cases"]
    lines = [
        f"freshness on {report['dataset']['name']}: {counts['with_user']} cases "
        f"with a user, {counts['user_known_to_training']} known to training"
    ]
    for selection, values in report["metrics"].items():
        lines.append(f"  {selection}:")
        lines.append("    " + " ".join(f"{name:>18}" for name in ["", *names]))
        for variant in VARIANTS:
            row = [_shown(values[variant][name]) for name in names]
            lines.append("    " + " ".join(f"{v:>18}" for v in [variant, *row]))
        lift = report["lift"][selection]
        for part in ("absolute", "relative"):
            row = [_shown(lift[name][part]) for name in names]
            lines.append("    " + " ".join(f"{v:>18}" for v in [f"lift {part}", *row]))
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
