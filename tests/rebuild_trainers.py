"""Tiny trainers and data for the rebuild tests (not a test module).

`train_tiny` ranks items by training popularity (or its reverse with
`reverse=True`, a model known to be worse) and carries random item vectors
for the index. It can sleep after touching a marker file, so a test can kill
the rebuild while it trains, or raise, so a test can fail the phase.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from recsys_training.rebuild import TrainedModel, TrainingInputs

from recsys.datasets.schema import EVENTS_SCHEMA
from recsys.interactions import ItemVocab


class TinyModel:
    """A recommender that ranks the catalog in one fixed order for every session."""

    name = "tiny"

    def __init__(self, vocab: ItemVocab, order: np.ndarray) -> None:
        self.vocab = vocab
        self.order = order

    def fit(self, data: Any) -> TinyModel:
        return self

    def recommend(self, items, k, *, event_types=None, ts=None):
        top = self.order[:k]
        return top, np.linspace(1.0, 0.5, len(top)).astype(np.float32)


def train_tiny(
    inputs: TrainingInputs, params: dict[str, Any], out_dir: Path
) -> TrainedModel:
    if params.get("marker"):
        Path(params["marker"]).write_text("training\n")
    if params.get("sleep_seconds"):
        time.sleep(params["sleep_seconds"])
    if params.get("fail"):
        raise RuntimeError("tiny trainer failed on purpose")

    data = inputs.data
    counts = np.bincount(data.items[data.items >= 0], minlength=len(data.vocab))
    order = np.argsort(-counts, kind="stable")
    if params.get("reverse"):
        order = order[::-1].copy()
    rng = np.random.default_rng(params.get("seed", 0))
    vectors = rng.normal(size=(len(data.vocab), params.get("dim", 8)))
    vectors = vectors.astype(np.float32)
    np.save(out_dir / "order.npy", order, allow_pickle=False)
    np.save(out_dir / "item_vectors.npy", vectors, allow_pickle=False)

    def encode_sessions(sessions: list[np.ndarray]) -> np.ndarray:
        return np.stack([vectors[s].mean(axis=0) for s in sessions])

    return TrainedModel(
        recommender=TinyModel(data.vocab, order),
        item_vectors=vectors,
        encode_sessions=encode_sessions,
        info={"params": params},
    )


def tiny_events(n_sessions: int = 200, n_items: int = 40, seed: int = 0) -> pa.Table:
    """Sessions of 2-6 clicks on items drawn with Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    rows: dict[str, list] = {name: [] for name in EVENTS_SCHEMA.names}
    ts = 1_700_000_000_000
    for s in range(n_sessions):
        for _ in range(int(rng.integers(2, 7))):
            ts += int(rng.integers(1_000, 60_000))
            rows["session_id"].append(f"s{s}")
            rows["user_id"].append(None)
            rows["item_id"].append(f"i{rng.choice(n_items, p=weights)}")
            rows["event_type"].append("click")
            rows["query"].append(None)
            rows["ts"].append(ts)
            rows["event_id"].append(None)
    return pa.table(rows, schema=EVENTS_SCHEMA)


def write_prepared(directory: Path, events: pa.Table) -> Path:
    """Write the two files a prepared dataset needs at least."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, directory / "events.parquet")
    (directory / "manifest.json").write_text(json.dumps({"dataset": "tiny"}))
    return directory


def tiny_config(**tiny_params: Any) -> dict[str, Any]:
    """A rebuild config that trains only `train_tiny`, on one thread."""
    return {
        "threads": 1,
        "models": {
            "als": {"enabled": False},
            "two_tower": {"enabled": False},
            "tiny": {
                "trainer": "tests.rebuild_trainers:train_tiny",
                "params": tiny_params,
            },
        },
        "evaluation": {"max_cases": 300},
        "index": {"recall_queries": 50},
        "gate": {"metric": "tiny.MRR@20", "max_relative_drop": 0.05},
        "builds": {"keep": 3},
    }


def train_ranker(
    inputs: TrainingInputs,
    models: dict[str, TrainedModel],
    params: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """A ranker hook that records what it was given."""
    (out_dir / "params.json").write_text(json.dumps(params))
    return {"models": sorted(models)}
