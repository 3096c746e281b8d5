"""Inner-product search over item vectors (ALS item factors, tower embeddings).

`ItemIndex` hides the FAISS index type behind one interface. `ItemIndex.build`
picks the type from the catalog size: exact search (`IndexFlatIP`) up to
`exact_max_items`, HNSW (`IndexHNSWFlat`, inner-product metric) above it, or
IVF (`IndexIVFFlat`) on request. An approximate index is tuned at build time:
`efSearch` (HNSW) or `nprobe` (IVF) grows until recall@100 against exact
search reaches `target_recall` on held-out queries, and the measured recall is
stored with the index.

Approximate indexes store each item vector with one extra coordinate,
sqrt(max_norm^2 - |x|^2), so that every stored vector has the same norm, and
queries get a 0 there: inner products are unchanged, but the graph (HNSW) and
the coarse clusters (IVF) are built over vectors of equal norm, where
inner-product search behaves like cosine search. This is the reduction of
Bachrach et al., "Speeding up the Xbox recommender system using a Euclidean
transformation for inner-product spaces" (RecSys 2014). Measured on 8,000
clustered 32-d vectors with M=16, efConstruction=40 and efSearch=100:
recall@100 0.68 without it and 0.99 with it.

NOTE: ALS item factors, whose norms spread with item popularity, can still
miss the target: on DIGINETICA (43,097 items, 64 factors, fold-in session
queries) HNSW reached recall@100 0.95 at efSearch 4096 and fell back to
exact search, while the two-tower unit vectors (100-d) reached 0.994 at
efSearch 100, 5.6 times faster than exact search.

Ids are the dense item indexes 0..n-1 of the model's `ItemVocab` (row `i` of
the item vectors is item `i`). `search` returns `(item_ids, scores)`, ids
first, never FAISS's -1 padding.

Threads: FAISS CPU indexes are safe for concurrent searches that do not
change the index (FAISS wiki, "Threads and asynchronous calls"). `search`
passes its parameters per call through `SearchParameters` and never mutates
the index, so one `ItemIndex` may serve many threads. Each search also runs
OpenMP threads of its own; a server that searches one session per request
thread should call `set_search_threads(1)` once at start-up.

Memory: `ItemIndex.load` maps the index file (`faiss.IO_FLAG_MMAP_IFC`)
instead of copying it into the process, so worker processes that load one
build share a single copy of the index in the page cache. faiss 1.15 maps
flat, HNSW and IVF indexes this way; where a FAISS build cannot, the file is
read into memory and `ItemIndex.memory_mapped` is False.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.errors import BuildError, ValidationError

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
RECALL_K = 100
# efSearch / nprobe stop growing here; an index that still misses the target
# recall falls back to exact search.
MAX_EF_SEARCH = 4096
METADATA_SUFFIX = ".json"
# Rows hashed at a time, so that a fingerprint never copies all vectors at once.
_FINGERPRINT_ROWS = 1 << 14
# 0 where this FAISS build has no zero-copy reading.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) and (
    faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
)


def set_search_threads(n: int) -> None:
    """Set the OpenMP threads that each FAISS call may use (process-wide)."""
    if n < 1:
        raise ValidationError("threads", n, "a positive integer")
    faiss.omp_set_num_threads(n)


def vectors_fingerprint(vectors: np.ndarray) -> dict[str, Any]:
    """Return the shape and sha256 of float32 vectors, to match an index to them.

    The digest covers the little-endian float32 bytes in row-major order. It
    is computed a block of rows at a time, so a memory-mapped array is read
    but never copied whole.
    """
    data = np.asarray(vectors)
    digest = hashlib.sha256()
    for start in range(0, len(data), _FINGERPRINT_ROWS):
        block = data[start : start + _FINGERPRINT_ROWS]
        digest.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
    return {"shape": list(data.shape), "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class IndexInfo:
    """What was built and how well it matches exact search.

    `params` contains the search parameter under its FAISS name (`efSearch`,
    `nprobe`) and the build parameters (`M`, `efConstruction`, `nlist`).
    `recall_at_100` is the mean recall@100 against exact search on the
    held-out queries (1.0 for exact search).
    """

    kind: str
    n_items: int
    dim: int
    params: dict[str, int] = field(default_factory=dict)
    recall_at_100: float = 1.0
    n_recall_queries: int = 0
    build_seconds: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ItemIndex:
    """A read-only inner-product index over item vectors.

    Build it with `ItemIndex.build` or read it with `ItemIndex.load`.
    """

    def __init__(
        self, index: faiss.Index, info: IndexInfo, *, memory_mapped: bool = False
    ) -> None:
        # Any, because FAISS's type stubs lack the attributes of the concrete
        # index classes (storage, nlist) that this class reads.
        self._index: Any = index
        self.info = info
        # True when the vectors stay in the index file, mapped read-only.
        self.memory_mapped = memory_mapped
        # 1 when the stored vectors carry the equal-norm coordinate.
        self._extra_dims = index.d - info.dim

    def __len__(self) -> int:
        return self.info.n_items

    @property
    def dim(self) -> int:
        return self.info.dim

    # -- building ---------------------------------------------------------

    @classmethod
    def build(
        cls,
        item_vectors: np.ndarray,
        *,
        kind: str = "auto",
        queries: np.ndarray | None = None,
        target_recall: float = 0.98,
        exact_max_items: int = 50_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        n_recall_queries: int = 1000,
        seed: int = 0,
    ) -> ItemIndex:
        """Index `item_vectors` and measure recall@100 against exact search.

        Parameters
        ----------
        item_vectors : float array (n_items, dim); row i is item index i.
        kind : "auto" (flat up to `exact_max_items`, else "hnsw"), "flat",
            "hnsw" or "ivf".
        queries : float array (n_queries, dim) of held-out query vectors (user
            factors, session embeddings). Without it, the recall check uses
            `n_recall_queries` sums of two random item vectors plus noise, a
            stand-in for sessions the index has not seen.
        target_recall : recall@100 that an approximate index must reach; the
            search parameter grows until it does, and an index that cannot
            reach it falls back to exact search with a warning.
        """
        start = time.perf_counter()
        vectors = _as_matrix(item_vectors, "item_vectors")
        n_items, dim = vectors.shape
        if kind not in INDEX_KINDS:
            raise ValidationError("kind", kind, f"one of {list(INDEX_KINDS)}")
        if not 0.0 < target_recall <= 1.0:
            raise ValidationError("target_recall", target_recall, "in (0, 1]")
        if kind == "auto":
            kind = "flat" if n_items <= exact_max_items else "hnsw"
        if kind == "flat":
            info = IndexInfo("flat", n_items, dim, fingerprint=_fingerprint(vectors))
            return cls(_new_flat(vectors), _timed(info, start))

        if queries is None:
            queries = _synthetic_queries(vectors, n_recall_queries, seed)
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != dim:
            raise ValidationError("queries", queries.shape, f"{dim} columns")

        stored = _equal_norm(vectors)
        index: Any
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim + 1, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.add(stored)
            params = {"M": hnsw_m, "efConstruction": ef_construction}
            tuned = "efSearch"
        else:
            # About 4 sqrt(n) lists, with the 39 training points per list
            # that FAISS's k-means requires.
            nlist = max(1, min(int(4 * np.sqrt(n_items)), n_items // 39))
            quantizer = faiss.IndexFlatIP(dim + 1)
            index = faiss.IndexIVFFlat(
                quantizer, dim + 1, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.train(stored)
            index.add(stored)
            index.make_direct_map()
            params = {"nlist": nlist}
            tuned = "nprobe"

        k = min(RECALL_K, n_items)
        _, exact_ids = _new_flat(vectors).search(queries, k)
        value = k if kind == "hnsw" else 1
        limit = MAX_EF_SEARCH if kind == "hnsw" else params["nlist"]
        while True:
            candidate = cls(
                index, IndexInfo(kind, n_items, dim, {**params, tuned: value})
            )
            # Raw FAISS results: -1 padding counts as a miss here, where
            # `search` would have filled the row by exact search.
            _, found = candidate._search_raw(candidate._pad(queries), k, None)
            recall = _recall(found, exact_ids)
            log.debug("%s %s=%d recall@%d=%.4f", kind, tuned, value, k, recall)
            if recall >= target_recall or value >= limit:
                break
            value = min(value * 2, limit)

        # IVF at nprobe = nlist scans every list: exact, but slower than flat.
        exhaustive = kind == "ivf" and value >= limit
        if recall < target_recall or exhaustive:
            log.warning(
                "%s index reached recall@%d=%.4f (target %.2f) only at %s=%d; "
                "using exact search",
                kind,
                k,
                recall,
                target_recall,
                tuned,
                value,
            )
            info = IndexInfo("flat", n_items, dim, fingerprint=_fingerprint(vectors))
            return cls(_new_flat(vectors), _timed(info, start))
        info = IndexInfo(
            kind,
            n_items,
            dim,
            params={**params, tuned: value},
            recall_at_100=round(recall, 5),
            n_recall_queries=len(queries),
            fingerprint=_fingerprint(vectors),
        )
        return cls(index, _timed(info, start))

    # -- searching --------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the k items with the largest inner product with each query.

        Parameters
        ----------
        vectors : float array (dim,) for one query or (n_queries, dim).
        k : results per query; fewer come back when the catalog (less the
            excluded items) is smaller than k.
        exclude : item ids left out of every query's results, filtered inside
            FAISS by an `IDSelector`. Ids outside the catalog are ignored.
            Queries with different exclusions go in separate calls.

        Returns
        -------
        (item_ids, scores): int64 and float32 arrays of shape (k',) for one
        query or (n_queries, k'), best first, where k' = min(k, items left).
        No -1 ever appears: a row that an approximate index cannot fill is
        searched again exactly.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValidationError("k", k, "a positive integer")
        queries = _as_matrix(vectors, "vectors", allow_1d=True)
        if queries.shape[1] != self.dim:
            raise ValidationError("vectors", queries.shape, f"{self.dim} columns")

        excluded = _valid_ids(exclude, self.info.n_items)
        k_out = min(int(k), self.info.n_items - len(excluded))
        n_queries = len(queries)
        if k_out <= 0:
            empty_ids = np.zeros((n_queries, 0), dtype=np.int64)
            empty_scores = np.zeros((n_queries, 0), dtype=np.float32)
            return _shape_like(vectors, empty_ids, empty_scores)

        queries = self._pad(queries)
        # The selector must stay referenced until the search returns.
        selector = _selector(excluded)
        scores, ids = self._search_raw(queries, k_out, selector)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):
            exact_scores, exact_ids = self._exact_search(
                queries[short], k_out, selector
            )
            scores[short], ids[short] = exact_scores, exact_ids
        return _shape_like(vectors, ids.astype(np.int64), scores.astype(np.float32))

    def _pad(self, queries: np.ndarray) -> np.ndarray:
        if not self._extra_dims:
            return queries
        padding = np.zeros((len(queries), self._extra_dims), dtype=np.float32)
        return np.hstack([queries, padding])

    def _search_raw(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k, params=self._params(k, selector))

    def _params(
        self, k: int, selector: faiss.IDSelector | None
    ) -> faiss.SearchParameters | None:
        kind = self.info.kind
        if kind == "hnsw":
            ef = max(self.info.params["efSearch"], k)
            return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                sel=selector, efSearch=ef
            )
        if kind == "ivf":
            return faiss.SearchParametersIVF(  # type: ignore[call-arg]
                sel=selector, nprobe=self.info.params["nprobe"]
            )
        return self._selector_only(selector)

    @staticmethod
    def _selector_only(
        selector: faiss.IDSelector | None,
    ) -> faiss.SearchParameters | None:
        if selector is None:
            return None
        return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]

    def _exact_search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.info.kind == "hnsw":
            storage = faiss.downcast_index(self._index.storage)
            return storage.search(queries, k, params=self._selector_only(selector))
        if self.info.kind == "ivf":
            params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
                sel=selector, nprobe=self._index.nlist
            )
            return self._index.search(queries, k, params=params)
        return self._index.search(queries, k, params=self._params(k, selector))

    # -- saving and loading -----------------------------------------------

    def save(self, path: Path | str) -> list[Path]:
        """Write the FAISS index to `path` and its `IndexInfo` beside it.

        Returns the two paths written (`path` and `path` with suffix .json).
        """
        path = Path(path)
        faiss.write_index(self._index, str(path))
        meta_path = path.with_suffix(METADATA_SUFFIX)
        meta_path.write_text(json.dumps(self.info.to_dict(), indent=2) + "\n")
        return [path, meta_path]

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        vectors: np.ndarray | None = None,
        fingerprint: dict[str, Any] | None = None,
        mmap: bool = True,
    ) -> ItemIndex:
        """Read an index written by `save` and check it holds the right vectors.

        The vectors stored in the FAISS file must match the fingerprint in
        the metadata file and, when given, `fingerprint` (for example from a
        build manifest) and the fingerprint of `vectors` (the model's item
        vectors). Any mismatch raises `BuildError` naming the file.

        With `mmap` (the default) the file is mapped read-only where FAISS
        supports it, so processes loading the same file share its pages;
        the file must then stay unchanged while the index is in use, which
        published builds guarantee. Checking the fingerprint reads every
        vector once, through the mapping, a block of rows at a time.
        """
        path = Path(path)
        meta_path = path.with_suffix(METADATA_SUFFIX)
        try:
            info = IndexInfo(**json.loads(meta_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise BuildError(
                f"cannot read index metadata {meta_path}: {exc}", str(meta_path)
            ) from exc
        index, mapped = _read_index(path, mmap)
        if info.kind == "ivf":
            faiss.extract_index_ivf(index).make_direct_map()

        stored = _index_fingerprint(index, info.dim)
        expected = [("its metadata file", info.fingerprint)]
        if fingerprint is not None:
            expected.append(("the build manifest", fingerprint))
        if vectors is not None:
            expected.append(("the model's item vectors", _fingerprint(vectors)))
        for source, wanted in expected:
            if stored != wanted:
                raise BuildError(
                    f"FAISS index {path} does not match {source}: it holds vectors "
                    f"{stored['shape']} sha256 {stored['sha256'][:12]}, expected "
                    f"{wanted.get('shape')} sha256 {str(wanted.get('sha256'))[:12]}; "
                    "rebuild the index from the model's vectors",
                    str(path),
                )
        return cls(index, info, memory_mapped=mapped)


def _read_index(path: Path, mmap: bool) -> tuple[Any, bool]:
    """Return the FAISS index in `path` and whether it is memory-mapped."""
    if mmap and MMAP_FLAGS:
        try:
            return faiss.read_index(str(path), MMAP_FLAGS), True
        except RuntimeError as exc:
            # A truncated file fails the plain read below too, with its error.
            log.debug("cannot map %s, reading it instead: %s", path, exc)
    try:
        return faiss.read_index(str(path)), False
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise BuildError(
            f"cannot read FAISS index {path}: {first_line}", str(path)
        ) from exc


def _index_fingerprint(index: Any, dim: int) -> dict[str, Any]:
    """Fingerprint the first `dim` coordinates of the vectors stored in `index`.

    Equal to `vectors_fingerprint` of the vectors the index was built from.
    """
    digest = hashlib.sha256()
    n_items, width = index.ntotal, min(dim, index.d)
    for start in range(0, n_items, _FINGERPRINT_ROWS):
        rows = min(_FINGERPRINT_ROWS, n_items - start)
        block = index.reconstruct_n(start, rows)[:, :width]
        digest.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
    return {"shape": [n_items, width], "sha256": digest.hexdigest()}


def _as_matrix(values: Any, name: str, *, allow_1d: bool = False) -> np.ndarray:
    array = np.asarray(values)
    if allow_1d and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValidationError(name, array.shape, "a non-empty 2-D array (rows, dim)")
    if not np.issubdtype(array.dtype, np.number):
        raise ValidationError(name, array.dtype, "a numeric array")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValidationError(name, "non-finite values", "finite numbers only")
    return array


def _fingerprint(vectors: np.ndarray) -> dict[str, Any]:
    # vectors_fingerprint converts to float32 a block at a time.
    return vectors_fingerprint(vectors)


def _new_flat(vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _equal_norm(vectors: np.ndarray) -> np.ndarray:
    norms_sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    extra = np.sqrt(np.maximum(norms_sq.max() - norms_sq, 0.0))
    return np.hstack([vectors, extra[:, None]]).astype(np.float32)


def _timed(info: IndexInfo, start: float) -> IndexInfo:
    seconds = round(time.perf_counter() - start, 3)
    return IndexInfo(**{**info.to_dict(), "build_seconds": seconds})


def _synthetic_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(vectors), size=(n, 2))
    queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    scale = float(np.std(vectors)) or 1.0
    queries += rng.normal(0.0, 0.1 * scale, size=queries.shape).astype(np.float32)
    return queries.astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


def _valid_ids(exclude: Sequence[int] | np.ndarray | None, n_items: int) -> np.ndarray:
    if exclude is None:
        return np.zeros(0, dtype=np.int64)
    ids = np.unique(np.asarray(exclude, dtype=np.int64).ravel())
    return ids[(ids >= 0) & (ids < n_items)]


def _selector(excluded: np.ndarray) -> faiss.IDSelector | None:
    if len(excluded) == 0:
        return None
    batch = faiss.IDSelectorBatch(excluded)
    selector = faiss.IDSelectorNot(batch)
    # IDSelectorNot keeps a raw pointer to `batch`; keep it alive with it.
    selector.referenced_objects = [batch]  # type: ignore[attr-defined]
    return selector


def _shape_like(
    vectors: Any, ids: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if np.asarray(vectors).ndim == 1:
        return ids[0], scores[0]
    return ids, scores
