"""The builds a latency benchmark serves: published, from a dataset, synthetic.

- `load_catalog` reads the current build of an indexes directory and returns
  its version, item ids and artifact sizes.
- `dataset_build` fits the serving pipeline (`fit_pipeline`, as the rebuild
  does) on a prepared dataset and publishes it under a cache directory.
- `synthetic_build` does the same on a generated shop of, by default,
  1,000,000 items: Zipf-popular categories, sessions that stay mostly in one
  category, half of them with a known user. Its item vectors and IVF index
  (`recsys.benchmarks.synthetic`) are published in the build too, under
  `vectors/`, and measured in process.

Builds are cached by their inputs and reused by later runs while the
current code can load them and rank with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.benchmarks.latency import Catalog
from recsys.benchmarks.synthetic import (
    CLUSTERS_FILE,
    INDEX_FILE,
    VECTORS_FILE,
    CatalogParams,
    synthetic_catalog,
)
from recsys.builds import BuildStore, utc_now
from recsys.errors import BuildError
from recsys.interactions import EVENT_TYPE_CODES, ItemVocab, SessionData

log = logging.getLogger(__name__)

INPUTS_FILE = "benchmark_inputs.json"


def load_catalog(indexes_dir: Path, label: str) -> Catalog:
    """Return the catalog of the current build under `indexes_dir`."""
    from recsys.models.pipeline import ITEM_IDS_FILE, PIPELINE_DIR

    build = BuildStore(indexes_dir).open_current()
    vocab = ItemVocab.load(build.path / PIPELINE_DIR / ITEM_IDS_FILE)
    files = build.manifest["files"]
    index_bytes = sum(
        entry["bytes"]
        for name, entry in files.items()
        if name.endswith(".faiss") or name.startswith("vectors/")
    )
    pipeline_bytes = sum(
        entry["bytes"]
        for name, entry in files.items()
        if name.startswith(f"{PIPELINE_DIR}/")
    )
    return Catalog(
        label=label,
        indexes_dir=indexes_dir,
        version=build.version,
        item_ids=[str(item_id) for item_id in vocab.item_ids],
        index_bytes=index_bytes,
        pipeline_bytes=pipeline_bytes,
    )


def _cached(indexes_dir: Path, inputs: dict[str, Any]) -> bool:
    """Return True when `indexes_dir` contains a build of `inputs` this code serves.

    The check loads the build's pipeline and ranks one session with it, so a
    build that an edit of the pipeline code made unloadable (a changed
    feature count, for one) is fitted again.
    """
    from recsys.events import Event
    from recsys.models.pipeline import load_build_pipeline

    marker = indexes_dir / INPUTS_FILE
    if not marker.exists() or json.loads(marker.read_text()) != inputs:
        return False
    try:
        pipeline = load_build_pipeline(BuildStore(indexes_dir).open_current())
        item_id = str(pipeline.vocab.item_ids[0])
        event = Event("check", "click", 1_700_000_000_000, item_id=item_id)
        pipeline.recommend([event], 10)
    except Exception as exc:
        # Any failure means the build must be fitted again with this code.
        log.info("cannot serve the cached build under %s: %s", indexes_dir, exc)
        return False
    return True


def _publish(
    indexes_dir: Path,
    data: SessionData,
    item_categories: dict[str, str] | None,
    inputs: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
    ranker_from: Path | None = None,
) -> None:
    """Fit the pipeline on `data` and publish it as the current build.

    With `ranker_from` (an indexes directory), the build ranks with the
    ranker of that directory's current build instead of fitting its own.
    """
    from recsys.models.pipeline import (
        PIPELINE_DIR,
        RANKER_DIR,
        PipelineConfig,
        fit_pipeline,
        save_pipeline,
    )

    if indexes_dir.exists():
        shutil.rmtree(indexes_dir)
    store = BuildStore(indexes_dir)
    config = PipelineConfig(train_ranker=ranker_from is None)
    started = time.perf_counter()
    pipeline = fit_pipeline(data, config, item_categories=item_categories)
    log.info("fitted the pipeline in %.1f s", time.perf_counter() - started)
    with store.lock():
        staged = store.stage()
        save_pipeline(staged.path / PIPELINE_DIR, pipeline, config, data)
        if ranker_from is not None:
            _copy_ranker(ranker_from, staged.path / PIPELINE_DIR / RANKER_DIR, pipeline)
        for name, source in (extra_files or {}).items():
            target = staged.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        build = store.publish(
            staged,
            {"created_at": utc_now(), "source": "benchmark", "inputs": inputs},
        )
    (indexes_dir / INPUTS_FILE).write_text(json.dumps(inputs, indent=2) + "\n")
    log.info("published benchmark build %s under %s", build.version, indexes_dir)


def _copy_ranker(indexes_dir: Path, target: Path, pipeline: Any) -> None:
    """Replace the ranker at `target` with the current build's under `indexes_dir`.

    The borrowed ranker must score the same features from the same sources.
    """
    from recsys.models.pipeline import PIPELINE_DIR, RANKER_DIR

    build = BuildStore(indexes_dir).open_current()
    source = build.path / PIPELINE_DIR / RANKER_DIR
    description = json.loads((source / "ranker.json").read_text())
    if description.get("feature_names") != list(pipeline.feature_names):
        raise BuildError(
            f"cannot borrow the ranker of build {build.version}: it scores the "
            f"features {description.get('feature_names')}, the synthetic "
            f"pipeline has {list(pipeline.feature_names)}; fit it on its own",
            str(source),
        )
    shutil.rmtree(target)
    shutil.copytree(source, target)
    log.info("borrowed the ranker of build %s under %s", build.version, indexes_dir)


def dataset_build(dataset_dir: Path, cache_dir: Path) -> Path:
    """Publish a pipeline fitted on a prepared dataset; return its indexes dir."""
    from recsys.models.prepared import load_prepared

    manifest = (dataset_dir / "manifest.json").read_bytes()
    inputs = {
        "dataset": str(dataset_dir),
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }
    indexes_dir = cache_dir / f"indexes-{dataset_dir.name}"
    if _cached(indexes_dir, inputs):
        log.info("reusing the benchmark build under %s", indexes_dir)
        return indexes_dir
    prepared = load_prepared(dataset_dir)
    categories = None
    if prepared.item_categories is not None:
        categories = {
            str(item_id): category
            for item_id, category in zip(
                prepared.data.vocab.item_ids, prepared.item_categories, strict=True
            )
            if category is not None
        }
    _publish(indexes_dir, prepared.data, categories, inputs)
    return indexes_dir


def synthetic_sessions(
    params: CatalogParams,
    categories: np.ndarray,
    n_sessions: int = 200_000,
    known_user_share: float = 0.5,
    n_users: int = 20_000,
) -> SessionData:
    """Generate browsing sessions over the synthetic catalog.

    A session picks a category by its size, then 2 to 10 items of it with a
    Zipf skew inside the category, and leaves it for a random item with
    probability 0.2 per step. Timestamps are one second apart.
    """
    rng = np.random.default_rng(params.seed + 3)
    n_items = len(categories)
    order = np.argsort(categories, kind="stable")
    starts = np.searchsorted(categories[order], np.arange(params.n_clusters + 1))

    lengths = rng.integers(2, 11, n_sessions)
    indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    session_category = categories[rng.integers(0, n_items, n_sessions)]
    per_event_category = np.repeat(session_category, lengths)
    low = starts[per_event_category]
    size = starts[per_event_category + 1] - low
    # Zipf-like rank inside the category: floor(size ** u) - 1 for uniform u.
    rank = np.floor(size ** rng.random(len(low))).astype(np.int64) - 1
    items = order[low + np.minimum(rank, size - 1)]
    jumps = rng.random(len(items)) < 0.2
    items[jumps] = rng.integers(0, n_items, int(jumps.sum()))

    ts = 1_700_000_000_000 + np.arange(len(items), dtype=np.int64) * 1000
    users = np.full(n_sessions, None, dtype=object)
    known = rng.random(n_sessions) < known_user_share
    users[known] = [f"user-{u}" for u in rng.integers(0, n_users, int(known.sum()))]
    return SessionData(
        vocab=ItemVocab([f"item-{i:07d}" for i in range(n_items)]),
        session_ids=np.array([f"s-{s}" for s in range(n_sessions)], dtype=object),
        user_ids=users,
        indptr=indptr,
        items=items.astype(np.int64),
        ts=ts,
        event_types=np.full(len(items), EVENT_TYPE_CODES["click"], dtype=np.int8),
    )


def synthetic_build(
    cache_dir: Path,
    n_items: int,
    n_sessions: int = 200_000,
    ranker_from: Path | None = None,
) -> tuple[Catalog, dict[str, Any]]:
    """Publish the synthetic catalog's build; return it and index figures.

    A ranker fitted on the synthetic sessions stops after a few trees,
    because their next items follow a simple rule, which makes ranking far
    cheaper than with a real build. `ranker_from` (an indexes directory of a
    dataset build) lends its ranker instead, so the ranking cost is that of
    a real build. The features do not depend on the catalog size.
    """
    from recsys.benchmarks.index_search import measure_search, measure_sharing

    params = CatalogParams.for_size(n_items)
    vectors_dir = synthetic_catalog(cache_dir, params)
    indexes_dir = cache_dir / f"indexes-synthetic-{n_items}"
    inputs: dict[str, Any] = {"synthetic": params.key(), "sessions": n_sessions}
    if ranker_from is not None:
        lender = BuildStore(ranker_from).current_version()
        inputs["ranker_from"] = {"indexes_dir": str(ranker_from), "build": lender}
    if not _cached(indexes_dir, inputs):
        categories = np.load(vectors_dir / CLUSTERS_FILE, allow_pickle=False)
        data = synthetic_sessions(params, categories, n_sessions)
        names = {
            f"item-{i:07d}": f"category-{c}" for i, c in enumerate(categories.tolist())
        }
        extra = {
            f"vectors/{name}": vectors_dir / name
            for name in (VECTORS_FILE, INDEX_FILE, "items.json")
        }
        _publish(indexes_dir, data, names, inputs, extra, ranker_from)

    search = measure_search(vectors_dir / INDEX_FILE, vectors_dir / VECTORS_FILE)
    sharing = measure_sharing(vectors_dir / INDEX_FILE)
    catalog = load_catalog(indexes_dir, label=f"synthetic-{n_items}")
    return catalog, {"index_search": search, "index_sharing": sharing}
