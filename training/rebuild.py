"""The nightly rebuild: train, index, evaluate, gate and publish one build.

`run_rebuild` runs these phases in order, logging one INFO line per phase
with its counts and seconds:

1. `load_data`: the events of a prepared dataset directory, or of the
   day-partitioned Parquet event log (`date=YYYY-MM-DD/*.parquet`) that
   `recsys events export` writes.
2. `split_holdout`: the published test cases when the dataset has them,
   else the most recent `holdout_fraction` of sessions (by last event) as
   next-item cases, removed from training.
3. `train_models`: every enabled model of `config["models"]`, each through
   its trainer ("module:function"), saved into the staged build.
4. `train_ranker`: fits the served pipeline (candidate sources, features
   and the LambdaRank ranker) through its trainer hook.
5. `build_indexes`: one FAISS index per model with item vectors, with
   recall@100 against exact search measured on held-out queries.
6. `evaluate`: HR@k, MRR@k and NDCG@k of each model on the held-out cases,
   ranked through the model's `recommend`, as serving does.
7. `quality_gate`: refuse to publish when the gate metric falls more than
   `max_relative_drop` below the current build's value, unless forced.
8. `publish`: manifest with checksums, fsync, rename, switch `current`,
   delete builds beyond `keep`.

Every phase writes only into a staging directory. A failure, a refusal or
a kill leaves `current` as it was; the next run removes what a killed run
left behind. Exit codes are the `EXIT_*` constants below.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import builds, metrics
from recsys.datasets.schema import EVENTS_SCHEMA, MANIFEST_FILE
from recsys.errors import (
    BuildError,
    ConfigError,
    DataFormatError,
    LockHeldError,
    NotFoundError,
    RecsysError,
)
from recsys.interactions import ItemVocab, SessionData
from recsys.models.base import SessionRecommender

log = logging.getLogger(__name__)

EXIT_PUBLISHED = 0
EXIT_INVALID_INPUT = 1
EXIT_GATE_REFUSED = 3
EXIT_LOCK_HELD = 4
EXIT_PHASE_FAILED = 5

LAST_RUN_FILE = "last_rebuild.json"
MODELS_DIR = "models"
INDEXES_DIR = "indexes"

DEFAULT_CONFIG: dict[str, Any] = {
    # Threads for torch, BLAS and FAISS during the rebuild.
    "threads": 2,
    "data": {
        # Share of sessions, ending last, held out when the data has no
        # published test cases.
        "holdout_fraction": 0.05,
        # Train on the last N days of the event log only; 0 keeps all.
        "window_days": 0,
    },
    "models": {
        "als": {
            "enabled": True,
            "trainer": "recsys_training.rebuild:train_als",
            "params": {},
        },
        "two_tower": {
            "enabled": True,
            "trainer": "recsys_training.rebuild:train_two_tower",
            "params": {},
        },
    },
    # The served pipeline (sources, features, ranker) is fitted here; a build
    # without it has models and indexes but nothing the API can serve.
    "ranker": {
        "enabled": True,
        "trainer": "recsys_training.train_ranker:train",
        "params": {},
    },
    "index": {
        "kind": "auto",
        "exact_max_items": 50_000,
        "target_recall": 0.98,
        "hnsw_m": 32,
        "ef_construction": 200,
        "recall_queries": 1000,
    },
    "evaluation": {"k": 20, "max_cases": 5000, "seed": 0},
    "gate": {"metric": "two_tower.MRR@20", "max_relative_drop": 0.05},
    "builds": {"keep": 5},
}


class PhaseError(RecsysError):
    """A rebuild phase raised; `phase` names it and `__cause__` is the error."""

    def __init__(self, phase: str, cause: BaseException) -> None:
        self.phase = phase
        super().__init__(f"phase {phase} failed: {type(cause).__name__}: {cause}")


@dataclass
class TrainingInputs:
    """A trainer's input: the training log and the content aligned with it.

    `queries` is aligned with `data.items` (None when the data has no search
    text); `item_categories` and `item_titles` with `data.vocab`.
    """

    data: SessionData
    queries: list[str | None] | None = None
    item_categories: list[str | None] | None = None
    item_titles: list[str | None] | None = None
    threads: int = 1


@dataclass
class TrainedModel:
    """A trainer's output: the fitted model and what the index needs.

    `item_vectors` (float32, n_items x dim, rows aligned with the training
    vocabulary) get a FAISS index; None means the model has no index.
    `encode_sessions` maps sessions (arrays of item indexes) to query
    vectors for the index's recall check; without it the check uses
    synthetic queries.
    """

    recommender: SessionRecommender
    item_vectors: np.ndarray | None = None
    encode_sessions: Callable[[list[np.ndarray]], np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RebuildResult:
    """The outcome of one run: exit code, status word, version and report."""

    exit_code: int
    status: str
    version: str | None
    report: dict[str, Any]


@dataclass
class _Holdout:
    train_events: pa.Table
    cases: pa.Table
    source: str


# -- configuration ----------------------------------------------------------


def load_config(path: Path | None) -> dict[str, Any]:
    """Return the default config overlaid with a TOML or JSON file, validated."""
    overrides: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        try:
            overrides = (
                tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            )
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise ConfigError(
                f"invalid config file {path}: {exc}; write TOML (.toml) or JSON"
            ) from exc
    return resolve_config(overrides)


def resolve_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Return the default config overlaid with `overrides`, validated."""
    config = _merge(DEFAULT_CONFIG, overrides, "")
    _validate(config)
    return config


def _merge(
    base: dict[str, Any], overrides: dict[str, Any], where: str
) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        name = f"{where}{key}"
        # Model entries and trainer params are open: their keys are checked by
        # the trainer (params) or below (model entries).
        open_section = where in ("models.",) or key == "params"
        if key not in base and not open_section:
            raise ConfigError(
                f"unknown config key {name!r}; valid keys here: {sorted(base)}"
            )
        if isinstance(base.get(key), dict) and key != "params":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a table, got {value!r}")
            merged[key] = _merge(base[key], value, name + ".")
        elif where == "models." and key not in base:
            merged[key] = _merge(
                {"enabled": True, "trainer": "", "params": {}}, value, name + "."
            )
        else:
            _check_type(name, base.get(key), value)
            merged[key] = copy.deepcopy(value)
    return merged


def _check_type(name: str, default: Any, value: Any) -> None:
    """Raise ConfigError when `value` has another type than the default.

    An integer is accepted where the default is a float.
    """
    if default is None:
        return
    if isinstance(default, bool):
        valid, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        valid = isinstance(value, int) and not isinstance(value, bool)
        wanted = "an integer"
    elif isinstance(default, float):
        valid = isinstance(value, int | float) and not isinstance(value, bool)
        wanted = "a number"
    elif isinstance(default, str):
        valid, wanted = isinstance(value, str), "a string"
    elif isinstance(default, dict):
        valid, wanted = isinstance(value, dict), "a table"
    else:
        return
    if not valid:
        raise ConfigError(f"config key {name!r} must be {wanted}, got {value!r}")


def _validate(config: dict[str, Any]) -> None:
    if not isinstance(config["threads"], int) or config["threads"] < 1:
        raise ConfigError(
            f"threads must be a positive integer, got {config['threads']!r}"
        )
    if config["builds"]["keep"] < 2:
        raise ConfigError(
            f"builds.keep must be at least 2, got {config['builds']['keep']!r}"
        )
    _validate_data(config["data"])
    _validate_index(config["index"])
    for key in ("k", "max_cases"):
        if config["evaluation"][key] < 1:
            raise ConfigError(
                f"evaluation.{key} must be at least 1, got "
                f"{config['evaluation'][key]!r}"
            )
    enabled = _validate_models(config)
    _validate_gate(config["gate"], enabled)


def _validate_data(data: dict[str, Any]) -> None:
    fraction = data["holdout_fraction"]
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.holdout_fraction must be in (0, 1), got {fraction!r}")
    if data["window_days"] < 0:
        raise ConfigError(
            f"data.window_days must be 0 (all) or positive, got {data['window_days']!r}"
        )


def _validate_index(index: dict[str, Any]) -> None:
    from recsys.index import INDEX_KINDS

    if index["kind"] not in INDEX_KINDS:
        raise ConfigError(
            f"index.kind must be one of {list(INDEX_KINDS)}, got {index['kind']!r}"
        )
    if not 0.0 < index["target_recall"] <= 1.0:
        raise ConfigError(
            f"index.target_recall must be in (0, 1], got {index['target_recall']!r}"
        )
    for key in ("exact_max_items", "hnsw_m", "ef_construction", "recall_queries"):
        if index[key] < 1:
            raise ConfigError(f"index.{key} must be at least 1, got {index[key]!r}")


def _validate_models(config: dict[str, Any]) -> list[str]:
    """Check the model and ranker entries; return the enabled model names."""
    enabled = [name for name, entry in config["models"].items() if entry["enabled"]]
    if not enabled:
        raise ConfigError("no model is enabled under [models]; enable at least one")
    for name in enabled:
        entry = config["models"][name]
        if not isinstance(entry["params"], dict):
            raise ConfigError(
                f"models.{name}.params must be a table, got {entry['params']!r}"
            )
        if ":" not in entry["trainer"]:
            raise ConfigError(
                f"models.{name}.trainer must be 'module:function', got "
                f"{entry['trainer']!r}"
            )

    if config["ranker"]["enabled"] and ":" not in config["ranker"]["trainer"]:
        raise ConfigError("ranker.enabled needs ranker.trainer = 'module:function'")
    return enabled


def _validate_gate(gate: dict[str, Any], enabled: list[str]) -> None:
    model, _, name = gate["metric"].partition(".")
    if model not in enabled or not name:
        raise ConfigError(
            f"gate.metric must be MODEL.METRIC with an enabled model "
            f"({', '.join(enabled)}), got {gate['metric']!r}"
        )
    if gate["max_relative_drop"] < 0:
        raise ConfigError(
            f"gate.max_relative_drop must be >= 0, got {gate['max_relative_drop']!r}"
        )


def _trainer_specs(config: dict[str, Any]) -> list[str]:
    specs = [e["trainer"] for e in config["models"].values() if e["enabled"]]
    if config["ranker"]["enabled"]:
        specs.append(config["ranker"]["trainer"])
    return specs


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import trainer {spec!r}: {exc}") from exc


# -- phases -----------------------------------------------------------------


def load_data(
    path: Path, config: dict[str, Any]
) -> tuple[pa.Table, pa.Table | None, pa.Table | None, str]:
    """Return (events, items, published cases, kind) from a data directory.

    `kind` is "prepared" for a prepared dataset (it has manifest.json) and
    "event_log" for a directory of Parquet files in `EVENTS_SCHEMA`.
    """
    if (path / MANIFEST_FILE).is_file():
        from recsys.datasets.io import load_prepared

        prepared = load_prepared(path)
        events, items, cases, kind = (
            prepared.events,
            prepared.items,
            prepared.cases,
            "prepared",
        )
    else:
        events, items, cases, kind = _read_event_log(path), None, None, "event_log"
    window_days = config["data"]["window_days"]
    if window_days and events.num_rows:
        latest = pc.max(events.column("ts")).as_py()
        start = latest - window_days * 86_400_000
        events = events.filter(pc.greater_equal(events.column("ts"), start))
    if events.num_rows == 0:
        raise NotFoundError(f"no events in {path}")
    return events, items, cases, kind


def _read_event_log(path: Path) -> pa.Table:
    # Names starting with a dot are files an exporter is still writing.
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise NotFoundError(
            f"no Parquet files under {path}; pass a prepared dataset directory or "
            "the directory `recsys events export` writes"
        )
    tables = []
    for file in files:
        try:
            table = pq.read_table(file, columns=EVENTS_SCHEMA.names)
            tables.append(table.cast(EVENTS_SCHEMA))
        except (pa.ArrowException, OSError) as exc:
            raise DataFormatError(
                str(file),
                0,
                f"not an event log file ({exc}); expected the columns "
                f"{EVENTS_SCHEMA.names} that `recsys events export` writes",
            ) from exc
    return pa.concat_tables(tables)


def split_holdout(
    events: pa.Table, cases: pa.Table | None, config: dict[str, Any]
) -> _Holdout:
    """Return the training events and the held-out next-item cases."""
    if cases is not None and cases.num_rows:
        return _Holdout(events, cases, "published test cases")
    from recsys.evaluation import validation_split

    fraction = config["data"]["holdout_fraction"]
    train_events, held_out = validation_split(events, fraction)
    return _Holdout(train_events, held_out, f"last {fraction:.0%} of sessions")


def training_inputs(events: pa.Table, items: pa.Table | None) -> TrainingInputs:
    """Group events by session; the vocabulary adds catalog items no event has."""
    events = events.sort_by([("session_id", "ascending"), ("ts", "ascending")])
    item_ids = list(
        dict.fromkeys(i for i in events.column("item_id").to_pylist() if i is not None)
    )
    categories: list[str | None] | None = None
    titles: list[str | None] | None = None
    if items is not None:
        known = set(item_ids)
        item_ids += [i for i in items.column("item_id").to_pylist() if i not in known]
    vocab = ItemVocab(item_ids)
    if items is not None:
        rows = vocab.encode(items.column("item_id").to_pylist())
        categories = [None] * len(vocab)
        titles = [None] * len(vocab)
        for row, category, title in zip(
            rows,
            items.column("category").to_pylist(),
            items.column("title").to_pylist(),
            strict=True,
        ):
            categories[row], titles[row] = category, title
        categories = categories if any(categories) else None
        titles = titles if any(titles) else None
    queries = events.column("query").to_pylist()
    return TrainingInputs(
        data=SessionData.from_events(events, vocab),
        queries=queries if any(queries) else None,
        item_categories=categories,
        item_titles=titles,
    )


def train_models(
    inputs: TrainingInputs, config: dict[str, Any], out_dir: Path
) -> dict[str, TrainedModel]:
    """Train every enabled model into `out_dir/<name>`; return them by name."""
    trained = {}
    for name, entry in config["models"].items():
        if not entry["enabled"]:
            continue
        trainer = _resolve(entry["trainer"])
        model_dir = out_dir / name
        model_dir.mkdir(parents=True)
        began = time.perf_counter()
        trained[name] = trainer(inputs, dict(entry["params"]), model_dir)
        log.info("trained %s in %.1f s", name, time.perf_counter() - began)
    return trained


def train_ranker(
    inputs: TrainingInputs,
    models: dict[str, TrainedModel],
    config: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Run the ranker trainer when `ranker.enabled`; return what it reports.

    The trainer is called as `trainer(inputs, models, params, out_dir)` and
    returns a JSON-ready dict that goes into the report.
    """
    # TODO(pipeline evaluation): score the fitted pipeline on the held-out
    # cases and gate on it; the gate reads a single model's metric today.
    if not config["ranker"]["enabled"]:
        return {"enabled": False}
    out_dir.mkdir(parents=True)
    trainer = _resolve(config["ranker"]["trainer"])
    return {
        "enabled": True,
        **trainer(inputs, models, dict(config["ranker"]["params"]), out_dir),
    }


def build_indexes(
    models: dict[str, TrainedModel],
    vocab: ItemVocab,
    cases: pa.Table,
    config: dict[str, Any],
    out_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Build and save one FAISS index per model with item vectors.

    Returns the manifest entry of each index: file, kind, parameters,
    measured recall@100 and the fingerprint of the vectors.
    """
    from recsys.index import ItemIndex

    settings = config["index"]
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, model in models.items():
        if model.item_vectors is None:
            continue
        queries = _held_out_queries(model, vocab, cases, settings["recall_queries"])
        index = ItemIndex.build(
            model.item_vectors,
            kind=settings["kind"],
            queries=queries,
            target_recall=settings["target_recall"],
            exact_max_items=settings["exact_max_items"],
            hnsw_m=settings["hnsw_m"],
            ef_construction=settings["ef_construction"],
            n_recall_queries=settings["recall_queries"],
        )
        path = out_dir / f"{name}.faiss"
        index.save(path)
        entries[name] = {
            "file": f"{INDEXES_DIR}/{path.name}",
            "model": name,
            **index.info.to_dict(),
        }
        log.info(
            "indexed %s: %d items, %s, recall@100 %.4f",
            name,
            index.info.n_items,
            index.info.kind,
            index.info.recall_at_100,
        )
    return entries


def _held_out_queries(
    model: TrainedModel, vocab: ItemVocab, cases: pa.Table, limit: int
) -> np.ndarray | None:
    if model.encode_sessions is None or cases.num_rows == 0:
        return None
    rng = np.random.default_rng(0)
    rows = rng.choice(cases.num_rows, size=min(limit, cases.num_rows), replace=False)
    prefixes = cases.column("prefix").take(pa.array(np.sort(rows))).to_pylist()
    sessions = [vocab.encode(prefix) for prefix in prefixes]
    sessions = [s[s >= 0] for s in sessions]
    sessions = [s for s in sessions if len(s)]
    if not sessions:
        return None
    return model.encode_sessions(sessions)


def evaluate(
    models: dict[str, TrainedModel],
    vocab: ItemVocab,
    cases: pa.Table,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Return `{"<model>.<metric>": value}` over a seeded sample of the cases.

    Each case ranks the whole catalog through the model's `recommend`; a
    label outside the model's vocabulary is a miss.
    """
    from recsys.evaluation import next_item_cases, run_cases

    settings = config["evaluation"]
    k = settings["k"]
    if cases.num_rows > settings["max_cases"]:
        rng = np.random.default_rng(settings["seed"])
        rows = np.sort(
            rng.choice(cases.num_rows, size=settings["max_cases"], replace=False)
        )
        cases = cases.take(pa.array(rows))
    encoded, skipped = next_item_cases(cases, vocab)
    truth = encoded.truth_indexes(vocab)["next"]
    if skipped:
        log.info("skipped held-out cases: %s", dict(skipped))
    values: dict[str, Any] = {"eval_cases": len(encoded)}
    for name, model in models.items():
        ranked, _ = run_cases(model.recommender, encoded, k)
        matrix = metrics.hit_matrix(ranked, truth, k)
        values[f"{name}.HR@{k}"] = float(np.nanmean(metrics.hit_rate(matrix)))
        values[f"{name}.MRR@{k}"] = float(np.nanmean(metrics.reciprocal_rank(matrix)))
        values[f"{name}.NDCG@{k}"] = float(np.nanmean(metrics.ndcg(matrix)))
        log.info(
            "evaluated %s on %d cases: HR@%d %.4f, MRR@%d %.4f",
            name,
            len(encoded),
            k,
            values[f"{name}.HR@{k}"],
            k,
            values[f"{name}.MRR@{k}"],
        )
    return values


def quality_gate(
    new_metrics: dict[str, Any], current: dict[str, Any] | None, config: dict[str, Any]
) -> dict[str, Any]:
    """Compare the gate metric with the current build's; return the decision.

    The decision has `passed`, the metric, both values, the floor and the
    reason. No current build, or one without the metric, passes.
    """
    metric = config["gate"]["metric"]
    max_drop = config["gate"]["max_relative_drop"]
    new_value = new_metrics.get(metric)
    if new_value is None:
        raise ConfigError(
            f"gate.metric {metric!r} was not measured; measured: {sorted(new_metrics)}"
        )
    decision = {"metric": metric, "new": new_value, "max_relative_drop": max_drop}
    if current is None:
        return {**decision, "passed": True, "reason": "no current build"}
    old_value = current.get("metrics", {}).get(metric)
    if old_value is None:
        return {
            **decision,
            "passed": True,
            "reason": f"current build {current.get('version')} has no {metric}",
        }
    floor = old_value * (1.0 - max_drop)
    passed = new_value >= floor
    relation = "at or above" if passed else "below"
    return {
        **decision,
        "current": old_value,
        "current_version": current.get("version"),
        "floor": floor,
        "passed": passed,
        "reason": f"{metric} {new_value:.4f} is {relation} the floor {floor:.4f}",
    }


# -- the job ----------------------------------------------------------------


class _Phases:
    """Runs phases, logs one line each and records them for the report."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @contextmanager
    def run(self, name: str) -> Iterator[dict[str, Any]]:
        counts: dict[str, Any] = {}
        began = time.perf_counter()
        try:
            yield counts
        except RecsysError as exc:
            self._record(name, began, counts, error=str(exc))
            raise PhaseError(name, exc) from exc
        except Exception as exc:
            self._record(name, began, counts, error=f"{type(exc).__name__}: {exc}")
            raise PhaseError(name, exc) from exc
        self._record(name, began, counts)

    def _record(
        self, name: str, began: float, counts: dict[str, Any], error: str | None = None
    ) -> None:
        seconds = round(time.perf_counter() - began, 3)
        record = {"phase": name, "seconds": seconds, **counts}
        text = " ".join(f"{key}={value}" for key, value in counts.items())
        if error is None:
            log.info("phase %s done in %.1f s: %s", name, seconds, text)
        else:
            record["error"] = error
            log.error("phase %s failed after %.1f s: %s", name, seconds, error)
        self.records.append(record)


def run_rebuild(
    data_dir: Path,
    indexes_dir: Path,
    config: dict[str, Any],
    *,
    force: bool = False,
    command: list[str] | None = None,
) -> RebuildResult:
    """Run every phase and publish a new build; see the module docstring."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NotFoundError(f"data directory not found: {data_dir}")
    # A misspelt trainer fails here, before the lock and before any training.
    for spec in _trainer_specs(config):
        _resolve(spec)
    _limit_threads(config["threads"])
    store = builds.BuildStore(indexes_dir, keep=config["builds"]["keep"])
    report: dict[str, Any] = {
        "started_at": builds.utc_now(),
        "command": command or sys.argv,
        "data_dir": str(data_dir.resolve()),
        "force": force,
    }
    try:
        with store.lock():
            store.clean()
            result = _run_locked(store, data_dir, config, force, report)
    except LockHeldError as exc:
        log.error("%s", exc)
        return RebuildResult(
            EXIT_LOCK_HELD, "lock_held", None, {**report, "error": str(exc)}
        )
    _write_last_run(store.root, result)
    return result


def _run_locked(
    store: builds.BuildStore,
    data_dir: Path,
    config: dict[str, Any],
    force: bool,
    report: dict[str, Any],
) -> RebuildResult:
    staged = store.stage()
    phases = _Phases()
    report |= {"version": staged.version, "config": config, "phases": phases.records}
    try:
        result = _run_phases(store, staged, data_dir, config, force, report, phases)
    except PhaseError as exc:
        store.discard(staged)
        report["error"] = str(exc)
        code = EXIT_INVALID_INPUT if _invalid_input(exc) else EXIT_PHASE_FAILED
        return RebuildResult(code, f"failed:{exc.phase}", None, report)
    except BaseException:
        store.discard(staged)
        raise
    if result.status != "published":
        store.discard(staged)
    return result


def _invalid_input(error: PhaseError) -> bool:
    """Return whether the phase failed on the config or the data directory.

    The operator fixes those (exit code 1); other failures are the job's own.
    """
    cause = error.__cause__
    if isinstance(cause, ConfigError):
        return True
    return error.phase == "load_data" and isinstance(
        cause, NotFoundError | DataFormatError
    )


def _run_phases(
    store: builds.BuildStore,
    staged: builds.StagedBuild,
    data_dir: Path,
    config: dict[str, Any],
    force: bool,
    report: dict[str, Any],
    phases: _Phases,
) -> RebuildResult:
    with phases.run("load_data") as counts:
        events, items, cases, kind = load_data(data_dir, config)
        ts = events.column("ts")
        data_range = {
            "kind": kind,
            "path": str(data_dir.resolve()),
            "events": events.num_rows,
            "ts_min": pc.min(ts).as_py(),
            "ts_max": pc.max(ts).as_py(),
        }
        data_range["from"] = _iso(data_range["ts_min"])
        data_range["to"] = _iso(data_range["ts_max"])
        counts |= {"kind": kind, "events": events.num_rows}
    report["data"] = data_range

    with phases.run("split_holdout") as counts:
        holdout = split_holdout(events, cases, config)
        inputs = training_inputs(holdout.train_events, items)
        inputs.threads = config["threads"]
        counts |= {
            "train_events": holdout.train_events.num_rows,
            "sessions": inputs.data.n_sessions,
            "items": len(inputs.data.vocab),
            "holdout_cases": holdout.cases.num_rows,
        }
    report["data"]["holdout"] = holdout.source

    models_dir = staged.path / MODELS_DIR
    with phases.run("train_models") as counts:
        trained = train_models(inputs, config, models_dir)
        counts["models"] = ",".join(trained)

    with phases.run("train_ranker") as counts:
        report["ranker"] = train_ranker(inputs, trained, config, staged.path / "ranker")
        counts["enabled"] = report["ranker"]["enabled"]

    with phases.run("build_indexes") as counts:
        index_entries = build_indexes(
            trained, inputs.data.vocab, holdout.cases, config, staged.path / INDEXES_DIR
        )
        counts |= {
            name: f"{e['kind']}/recall@100={e['recall_at_100']}"
            for name, e in index_entries.items()
        }

    with phases.run("evaluate") as counts:
        new_metrics = evaluate(trained, inputs.data.vocab, holdout.cases, config)
        for name, entry in index_entries.items():
            new_metrics[f"{name}.index_recall@100"] = entry["recall_at_100"]
        counts["metrics"] = len(new_metrics)
    report["metrics"] = new_metrics

    with phases.run("quality_gate") as counts:
        current = _current_manifest(store)
        gate = quality_gate(new_metrics, current, config)
        gate["forced"] = force and not gate["passed"]
        counts |= {"passed": gate["passed"], "forced": gate["forced"]}
    report["gate"] = gate
    if not gate["passed"] and not force:
        log.warning(
            "quality gate rejected build %s: %s; rerun with --force to publish it",
            staged.version,
            gate["reason"],
        )
        report["status"] = "refused"
        return RebuildResult(EXIT_GATE_REFUSED, "refused", None, report)

    with phases.run("publish") as counts:
        report["status"] = "published"
        report["finished_at"] = builds.utc_now()
        _write_json(staged.path / builds.REPORT_FILE, report)
        manifest = {
            "created_at": builds.utc_now(),
            "git": builds.git_commit(),
            "command": report["command"],
            "data": report["data"],
            "config": config,
            "metrics": new_metrics,
            "gate": gate,
            "models": {
                name: {"directory": f"{MODELS_DIR}/{name}", **model.info}
                for name, model in trained.items()
            },
            "indexes": index_entries,
            "libraries": builds.library_versions(),
        }
        build = store.publish(staged, manifest)
        counts["version"] = build.version
        counts["files"] = len(build.manifest["files"])
        counts["removed"] = len(store.prune())
    return RebuildResult(EXIT_PUBLISHED, "published", build.version, report)


def _current_manifest(store: builds.BuildStore) -> dict[str, Any] | None:
    version = store.current_version()
    if version is None:
        return None
    try:
        return builds.read_manifest(store.builds_dir / version)
    except BuildError as exc:
        # A broken current build is no baseline; replacing it is the fix.
        log.warning(
            "current build %s is unreadable, so the gate has no baseline: %s",
            version,
            exc,
        )
        return None


def _write_last_run(root: Path, result: RebuildResult) -> None:
    summary = {"exit_code": result.exit_code, "status": result.status, **result.report}
    temp = root / f".{LAST_RUN_FILE}.tmp"
    _write_json(temp, summary)
    os.replace(temp, root / LAST_RUN_FILE)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")


def _iso(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ms / 1000))


def _limit_threads(threads: int) -> None:
    from recsys.index import set_search_threads

    set_search_threads(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


# -- trainers ---------------------------------------------------------------


def train_two_tower(
    inputs: TrainingInputs, params: dict[str, Any], out_dir: Path
) -> TrainedModel:
    """Train the two-tower model with `params` as `TwoTowerConfig` fields."""
    from recsys.models.two_tower import TwoTowerRecommender
    from recsys.models.two_tower_config import TwoTowerConfig

    try:
        config = TwoTowerConfig(**params)
    except TypeError as exc:
        raise ConfigError(f"invalid models.two_tower.params: {exc}") from exc
    model = TwoTowerRecommender(
        config, item_categories=inputs.item_categories, item_titles=inputs.item_titles
    )
    model.fit(inputs.data, queries=inputs.queries)
    model.save(out_dir)
    return TrainedModel(
        recommender=model,
        item_vectors=model.item_vectors(),
        encode_sessions=model.encode_sessions,
        info={"params": params},
    )


def train_als(
    inputs: TrainingInputs, params: dict[str, Any], out_dir: Path
) -> TrainedModel:
    """Train implicit ALS with `params` as `ALSConfig` fields."""
    from threadpoolctl import threadpool_limits

    from recsys.models.als import ALSConfig, ALSRecommender

    try:
        config = ALSConfig(**{"num_threads": inputs.threads, **params})
    except TypeError as exc:
        raise ConfigError(f"invalid models.als.params: {exc}") from exc
    model = ALSRecommender(config)
    # implicit's ALS runs its own threads; BLAS threads on top oversubscribe.
    with threadpool_limits(1, "blas"):
        model.fit(inputs.data)
    model.save(out_dir)

    def encode_sessions(sessions: list[np.ndarray]) -> np.ndarray:
        return np.stack([model.fold_in(session) for session in sessions])

    return TrainedModel(
        recommender=model,
        item_vectors=model.item_factors,
        encode_sessions=encode_sessions,
        info={"params": params},
    )
