"""Fit the recommendation pipeline (sources and ranker) and measure it.

Two entry points:

- `train`, the rebuild's ranker hook (`ranker.trainer =
  "recsys_training.train_ranker:train"`): fits the pipeline on the rebuild's
  training log and writes it into the staged build.
- `python -m recsys_training.train_ranker --dataset DIR`: fits the pipeline
  on a prepared dataset, optionally saves it, and scores the dataset's test
  cases: HR@k and MRR@k of the pipeline and of each single source, and the
  recall of the union of candidates.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.datasets.io import load_prepared
from recsys.errors import RecsysError
from recsys.features import CandidateSet
from recsys.interactions import SessionData
from recsys.models.pipeline import PipelineConfig, fit_pipeline, save_pipeline
from recsys.pipeline import Pipeline

log = logging.getLogger(__name__)


def train(
    inputs: Any, models: dict[str, Any], params: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Fit the pipeline on `inputs.data`, save it to `out_dir`, return a report.

    `inputs` is the rebuild's `TrainingInputs` and `models` its trained
    models. `params` contains `PipelineConfig` fields, plus `use_two_tower`
    (default false) to add the rebuild's two-tower model as a source. When
    `params` leaves `als` unset and the log has user ids, ALS is switched on
    (`als={}`), as `recsys evaluate --protocol freshness` measures it.
    """
    params = dict(params)
    if "als" not in params and _has_users(inputs.data):
        # Known users get their stored ALS factors as the user vector and an
        # ALS candidate source; logs without user ids (the session
        # benchmarks) keep the measured configuration without ALS.
        params["als"] = {}
    two_tower = None
    if params.pop("use_two_tower", False) and "two_tower" in models:
        # NOTE: the rebuild trains the tower on all of `inputs.data`, so the
        # ranker's held-out window is not held out from the tower.
        two_tower = models["two_tower"].recommender
    config = PipelineConfig(**params)
    categories = _categories(inputs.data, inputs.item_categories)
    started = time.perf_counter()
    pipeline = fit_pipeline(
        inputs.data, config, item_categories=categories, two_tower=two_tower
    )
    save_pipeline(out_dir, pipeline, config, inputs.data)
    meta = pipeline.ranker.metadata
    return {
        "sources": list(pipeline.source_names),
        "use_model": meta.use_model,
        "fallback_source": meta.fallback_source,
        "ndcg_model": meta.ndcg_model,
        "ndcg_sources": meta.ndcg_sources,
        "n_train_lists": meta.n_train_lists,
        "n_valid_lists": meta.n_valid_lists,
        "candidate_recall": meta.candidate_recall,
        "seconds": time.perf_counter() - started,
    }


def _has_users(data: SessionData) -> bool:
    return any(user_id is not None for user_id in data.user_ids)


def _categories(
    data: SessionData, item_categories: Sequence[str | None] | None
) -> dict[str, str] | None:
    if item_categories is None:
        return None
    return {
        str(item_id): category
        for item_id, category in zip(data.vocab.item_ids, item_categories, strict=True)
        if category is not None
    }


def score_cases(
    pipeline: Pipeline, prefixes: Sequence[np.ndarray], labels: np.ndarray, k: int
) -> dict[str, Any]:
    """Return HR@k and MRR@k of the pipeline and of each source, and recall.

    `prefixes` hold item indexes (-1 for unknown items) and `labels` the
    next item's index (-1 when unseen in training, always a miss). Each
    source is scored on its own top-k list; `candidate_recall` is the share
    of cases whose label is among the merged candidates.
    """
    names = ("pipeline", *pipeline.source_names)
    hits = dict.fromkeys(names, 0.0)
    reciprocal = dict.fromkeys(names, 0.0)
    in_candidates = 0
    n_candidates = 0
    started = time.perf_counter()
    for prefix, label in zip(prefixes, labels, strict=True):
        session = pipeline.session_view(prefix)
        request = pipeline.source_request(session)
        results = [
            source.candidates(request, pipeline.n_candidates.get(source.name, 100))
            for source in pipeline.sources
        ]
        candidates = CandidateSet.merge(pipeline.source_names, results)
        ranked = pipeline.rank_candidates(request, candidates, k)
        lists = [ranked.items, *(items[:k] for items, _ in results)]
        for name, items in zip(names, lists, strict=True):
            position = np.flatnonzero(items == label)
            if label >= 0 and len(position):
                hits[name] += 1
                reciprocal[name] += 1.0 / (int(position[0]) + 1)
        in_candidates += int(label >= 0 and label in candidates.items)
        n_candidates += len(candidates)
    n = max(len(labels), 1)
    return {
        "cases": len(labels),
        f"HR@{k}": {name: hits[name] / n for name in names},
        f"MRR@{k}": {name: reciprocal[name] / n for name in names},
        "candidate_recall": in_candidates / n,
        "mean_candidates": n_candidates / n,
        "ms_per_case": 1000 * (time.perf_counter() - started) / n,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys_training.train_ranker",
        description="Fit the pipeline on a prepared dataset and score its test cases.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dir")
    parser.add_argument("--out", type=Path, help="directory to save the pipeline in")
    parser.add_argument("--report", type=Path, help="JSON file for the measures")
    parser.add_argument("--params", default="{}", help="PipelineConfig fields, JSON")
    parser.add_argument(
        "--two-tower", type=Path, help="saved two-tower model to add as a source"
    )
    parser.add_argument("--max-cases", type=int, help="score a sample of test cases")
    parser.add_argument("--k", type=int, default=20, help="cutoff of the metrics")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        report = _run(args)
    except RecsysError as exc:
        print(f"train_ranker: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    dataset = load_prepared(args.dataset)
    data = SessionData.from_events(dataset.events)
    params = json.loads(args.params)
    params.setdefault("use_timestamps", not dataset.manifest.get("synthetic_ts"))
    config = PipelineConfig(**params)
    two_tower = None
    if args.two_tower:
        import torch

        from recsys.models.two_tower import TwoTowerRecommender

        torch.set_num_threads(1)
        two_tower = TwoTowerRecommender.load(args.two_tower)
    started = time.perf_counter()
    pipeline = fit_pipeline(data, config, two_tower=two_tower)
    report: dict[str, Any] = {
        "dataset": str(args.dataset),
        "params": params,
        "fit_seconds": time.perf_counter() - started,
        "ranker": {
            "use_model": pipeline.ranker.metadata.use_model,
            "ndcg_model": pipeline.ranker.metadata.ndcg_model,
            "ndcg_sources": pipeline.ranker.metadata.ndcg_sources,
            "best_iteration": pipeline.ranker.metadata.best_iteration,
            "candidate_recall": pipeline.ranker.metadata.candidate_recall,
        },
    }
    if args.out:
        save_pipeline(args.out, pipeline, config, data)
    if dataset.cases is not None:
        cases = dataset.cases
        if args.max_cases and args.max_cases < len(cases):
            rng = np.random.default_rng(args.seed)
            rows = np.sort(rng.choice(len(cases), args.max_cases, replace=False))
            cases = cases.take(rows)
        prefixes = [data.vocab.encode(p) for p in cases.column("prefix").to_pylist()]
        labels = data.vocab.encode(cases.column("label").to_pylist())
        report["test"] = score_cases(pipeline, prefixes, labels, args.k)
    return report


if __name__ == "__main__":
    sys.exit(main())
