"""A synthetic large catalog for latency benchmarks: item vectors and an index.

The prepared datasets have up to 184k items; the benchmark also runs at
1,000,000 to see how serving scales. The vectors are a mixture of Gaussian
clusters on the unit sphere, so an IVF index finds the cluster structure
that trained embeddings have. On uniform random vectors the same index
reached recall@100 0.29 at nprobe=64, against 0.98 on these.

The index is IVF-Flat with the coarse quantizer trained on a sample. On the
2-core benchmark machine (docs/benchmarks.md, faiss-cpu 1.15.1), IVF4096
over 1M x 64 with 164k training vectors took 11 s while the machine was
idle and 70-130 s while other jobs kept both cores busy. HNSW (M=32,
efConstruction=40) took 7.6 s for the first 100k items, so 1M would take
minutes. `nprobe` grows until recall@100 against exact search reaches the
target on held-out queries, as `ItemIndex.build` does. Results are cached
by parameters, so later runs reuse them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recsys.index import RECALL_K, IndexInfo, ItemIndex, vectors_fingerprint

log = logging.getLogger(__name__)

VECTORS_FILE = "item_vectors.npy"
CLUSTERS_FILE = "item_clusters.npy"
INDEX_FILE = "items.faiss"
PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class CatalogParams:
    """Parameters of a synthetic catalog, which also form its cache key."""

    n_items: int = 1_000_000
    dim: int = 64
    n_clusters: int = 2000
    # Spread of items around their cluster centre, relative to the centre.
    noise: float = 0.35
    nlist: int = 4096
    train_per_list: int = 40
    target_recall: float = 0.95
    n_recall_queries: int = 200
    seed: int = 0

    def key(self) -> str:
        return f"items{self.n_items}_dim{self.dim}_seed{self.seed}"

    @classmethod
    def for_size(cls, n_items: int) -> CatalogParams:
        """Parameters for `n_items`, with nlist the power of 2 nearest 4 sqrt(n)."""
        nlist = 2 ** round(np.log2(4 * np.sqrt(n_items)))
        return cls(n_items=n_items, nlist=int(nlist))


def clustered_vectors(params: CatalogParams) -> tuple[np.ndarray, np.ndarray]:
    """Draw unit-norm vectors around cluster centres.

    Returns (vectors, clusters): float32 (n_items, dim) and the int64 cluster
    of each item, which the synthetic shop uses as its category.
    """
    rng = np.random.default_rng(params.seed)
    centres = rng.standard_normal((params.n_clusters, params.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Zipf-like cluster sizes: a few large categories, many small ones.
    weights = 1.0 / np.arange(1, params.n_clusters + 1) ** 0.8
    assignment = rng.choice(
        params.n_clusters, params.n_items, p=weights / weights.sum()
    )
    vectors = centres[assignment]
    noise = rng.standard_normal((params.n_items, params.dim), dtype=np.float32)
    vectors += noise * np.float32(params.noise / np.sqrt(params.dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, assignment


def _recall_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    # Sums of two items plus noise: a stand-in for session embeddings.
    rng = np.random.default_rng(seed + 1)
    pairs = rng.integers(0, len(vectors), size=(n, 2))
    queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    queries += rng.normal(0.0, 0.05, size=queries.shape).astype(np.float32)
    return queries.astype(np.float32)


def build_ivf_index(vectors: np.ndarray, params: CatalogParams) -> ItemIndex:
    """Build an IVF-Flat `ItemIndex` over `vectors`, tuning nprobe for recall."""
    import faiss

    started = time.perf_counter()
    n_items, dim = vectors.shape
    rng = np.random.default_rng(params.seed + 2)
    n_train = min(n_items, params.nlist * params.train_per_list)
    sample = vectors[np.sort(rng.choice(n_items, n_train, replace=False))]

    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(vectors)
    index.make_direct_map()
    log.info("IVF%d over %d items in %.1f s", params.nlist, n_items, _since(started))

    queries = _recall_queries(vectors, params.n_recall_queries, params.seed)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, exact_ids = exact.search(queries, RECALL_K)
    del exact

    nprobe = 1
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, RECALL_K)
        hits = sum(
            len(np.intersect1d(f, e)) for f, e in zip(found, exact_ids, strict=True)
        )
        recall = hits / exact_ids.size
        log.info("nprobe=%d recall@%d=%.4f", nprobe, RECALL_K, recall)
        if recall >= params.target_recall or nprobe >= params.nlist:
            break
        nprobe *= 2

    info = IndexInfo(
        kind="ivf",
        n_items=n_items,
        dim=dim,
        params={"nlist": params.nlist, "nprobe": nprobe},
        recall_at_100=round(float(recall), 5),
        n_recall_queries=len(queries),
        build_seconds=round(_since(started), 3),
        fingerprint=vectors_fingerprint(vectors),
    )
    return ItemIndex(index, info)


def _since(started: float) -> float:
    return time.perf_counter() - started


def synthetic_catalog(cache_dir: Path, params: CatalogParams) -> Path:
    """Return a directory with the catalog's vectors and index, building it once.

    The directory contains `item_vectors.npy` (float32, row i = item i),
    `item_clusters.npy`, `items.faiss` with its `items.json` metadata, and
    `params.json`. A
    directory whose `params.json` differs from `params` is rebuilt.
    """
    folder = cache_dir / params.key()
    params_path = folder / PARAMS_FILE
    if params_path.exists() and json.loads(params_path.read_text()) == asdict(params):
        log.info("reusing synthetic catalog %s", folder)
        return folder

    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vectors, clusters = clustered_vectors(params)
    log.info("%d x %d vectors in %.1f s", *vectors.shape, _since(started))
    np.save(folder / VECTORS_FILE, vectors, allow_pickle=False)
    np.save(folder / CLUSTERS_FILE, clusters, allow_pickle=False)
    build_ivf_index(vectors, params).save(folder / INDEX_FILE)
    # Written last, so an interrupted build is redone on the next run.
    params_path.write_text(json.dumps(asdict(params), indent=2) + "\n")
    return folder
