"""ItemIndex: recall against exact search, padding, exclusions, threads, files."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys import index as index_module
from recsys.errors import BuildError, ValidationError
from recsys.index import MMAP_FLAGS, ItemIndex, vectors_fingerprint


def clustered(n_items: int, dim: int, n_clusters: int, seed: int) -> np.ndarray:
    """Item vectors around random centres, the shape embeddings tend to have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    labels = rng.integers(0, n_clusters, size=n_items)
    vectors = centres[labels] + 0.3 * rng.normal(size=(n_items, dim))
    return vectors.astype(np.float32)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Slow reference: full scoring and argsort."""
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(f) & set(e)) for f, e in zip(found, exact, strict=True))
    return hits / exact.size


@pytest.fixture(scope="module")
def catalog() -> np.ndarray:
    return clustered(8000, 32, 40, seed=1)


@pytest.fixture(scope="module")
def held_out_queries() -> np.ndarray:
    # Same clusters as `catalog` (same seed), rows that were never indexed.
    return clustered(8300, 32, 40, seed=1)[8000:]


@pytest.fixture(scope="module")
def hnsw_index(catalog: np.ndarray) -> ItemIndex:
    return ItemIndex.build(catalog, kind="hnsw", hnsw_m=16, ef_construction=80)


def test_small_catalog_uses_exact_search(catalog: np.ndarray) -> None:
    index = ItemIndex.build(catalog[:500])
    assert index.info.kind == "flat"
    assert index.info.recall_at_100 == 1.0


def test_large_catalog_uses_hnsw(catalog: np.ndarray) -> None:
    index = ItemIndex.build(
        catalog, exact_max_items=5000, hnsw_m=16, ef_construction=40
    )
    assert index.info.kind == "hnsw"
    assert index.info.params["efSearch"] >= 100


def test_hnsw_recall_against_exact(
    catalog: np.ndarray, hnsw_index: ItemIndex, held_out_queries: np.ndarray
) -> None:
    # Measured on this data: 0.994 at build time (efSearch tuned to 400) and
    # 0.9998 on these held-out queries.
    assert hnsw_index.info.recall_at_100 >= 0.98
    found, _ = hnsw_index.search(held_out_queries, 100)
    measured = recall(found, exact_top(catalog, held_out_queries, 100))
    assert measured >= 0.97


def test_ivf_recall_against_exact(
    catalog: np.ndarray, held_out_queries: np.ndarray
) -> None:
    index = ItemIndex.build(catalog, kind="ivf")
    assert index.info.kind == "ivf"
    assert index.info.recall_at_100 >= 0.98
    found, _ = index.search(held_out_queries, 100)
    # Measured on this data: 0.981 at build time (nlist 205, nprobe 8) and
    # 0.998 on these held-out queries.
    assert recall(found, exact_top(catalog, held_out_queries, 100)) >= 0.97


def test_scores_are_inner_products(catalog: np.ndarray) -> None:
    index = ItemIndex.build(catalog[:1000])
    query = catalog[7]
    ids, scores = index.search(query, 10)
    np.testing.assert_allclose(scores, catalog[:1000][ids] @ query, rtol=1e-5)
    assert list(ids) == list(exact_top(catalog[:1000], query[None], 10)[0])


def test_unreachable_recall_falls_back_to_exact(
    monkeypatch: pytest.MonkeyPatch, catalog: np.ndarray, caplog
) -> None:
    monkeypatch.setattr("recsys.index.MAX_EF_SEARCH", 100)
    index = ItemIndex.build(
        catalog, kind="hnsw", target_recall=1.0, hnsw_m=4, ef_construction=16
    )
    assert index.info.kind == "flat"
    assert index.info.recall_at_100 == 1.0
    assert "using exact search" in caplog.text


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_k_above_catalog_has_no_padding(kind: str, catalog: np.ndarray) -> None:
    vectors = catalog[:50]
    index = ItemIndex.build(vectors, kind=kind, hnsw_m=8, ef_construction=20)
    ids, scores = index.search(catalog[100:103], 80)
    assert ids.shape == (3, 50)
    assert scores.shape == (3, 50)
    assert (ids >= 0).all()
    assert all(len(set(row)) == 50 for row in ids)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_excluded_items_never_returned(
    kind: str, catalog: np.ndarray, held_out_queries: np.ndarray
) -> None:
    vectors = catalog[:2000]
    index = ItemIndex.build(vectors, kind=kind, hnsw_m=16, ef_construction=40)
    queries = held_out_queries[:20]
    top, _ = index.search(queries, 10)
    exclude = np.unique(top[:, :5])

    ids, _ = index.search(queries, 10, exclude=exclude)

    assert ids.shape == (20, 10)
    assert not np.isin(ids, exclude).any()
    assert (ids >= 0).all()


def test_exclusions_shrink_results_when_catalog_runs_out(catalog: np.ndarray) -> None:
    index = ItemIndex.build(catalog[:10])
    ids, _ = index.search(catalog[20], 10, exclude=[0, 1, 2, 99, -1])
    assert sorted(ids) == list(range(3, 10))
    everything, _ = index.search(catalog[20], 5, exclude=range(10))
    assert everything.shape == (0,)


def test_concurrent_searches_match_sequential(
    hnsw_index: ItemIndex, held_out_queries: np.ndarray
) -> None:
    queries = list(held_out_queries[:64])
    exclude = [3, 5, 8]
    sequential = [hnsw_index.search(q, 20, exclude=exclude) for q in queries]

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(
            pool.map(lambda q: hnsw_index.search(q, 20, exclude=exclude), queries)
        )

    for (ids_a, scores_a), (ids_b, scores_b) in zip(
        sequential, concurrent, strict=True
    ):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(scores_a, scores_b)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(
    kind: str, tmp_path, catalog: np.ndarray, held_out_queries: np.ndarray
) -> None:
    vectors = catalog[:1500]
    index = ItemIndex.build(vectors, kind=kind, hnsw_m=8, ef_construction=40)
    written = index.save(tmp_path / "items.faiss")
    assert [p.name for p in written] == ["items.faiss", "items.json"]

    loaded = ItemIndex.load(tmp_path / "items.faiss", vectors=vectors)

    assert loaded.info == index.info
    np.testing.assert_array_equal(
        loaded.search(held_out_queries[:5], 10)[0],
        index.search(held_out_queries[:5], 10)[0],
    )


def mapped_files() -> set[str]:
    """Paths of the files this process has mapped, from /proc/self/maps."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    fields = [line.split(maxsplit=5) for line in lines]
    return {parts[5].strip() for parts in fields if len(parts) == 6}


@pytest.mark.skipif(not MMAP_FLAGS, reason="this FAISS build cannot map indexes")
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_load_maps_file_and_matches_plain_read(
    kind: str, tmp_path, catalog: np.ndarray, held_out_queries: np.ndarray
) -> None:
    path = tmp_path / "items.faiss"
    vectors = catalog[:1500]
    ItemIndex.build(vectors, kind=kind, hnsw_m=8, ef_construction=40).save(path)

    mapped = ItemIndex.load(path, vectors=vectors)
    plain = ItemIndex.load(path, vectors=vectors, mmap=False)

    assert mapped.memory_mapped
    assert not plain.memory_mapped
    if sys.platform == "linux":
        assert str(path) in mapped_files()
    queries, exclude = held_out_queries[:20], np.arange(0, 1500, 7)
    for got, want in zip(
        mapped.search(queries, 50, exclude=exclude),
        plain.search(queries, 50, exclude=exclude),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_load_reads_file_when_mapping_fails(
    tmp_path, catalog: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "items.faiss"
    index = ItemIndex.build(catalog[:300])
    index.save(path)
    read_index = faiss.read_index

    def read_without_mapping(name: str, flags: int = 0) -> faiss.Index:
        if flags:
            raise RuntimeError("Error in read_index: mapping not supported")
        return read_index(name, flags)

    monkeypatch.setattr(faiss, "read_index", read_without_mapping)
    loaded = ItemIndex.load(path, vectors=catalog[:300])

    assert not loaded.memory_mapped
    np.testing.assert_array_equal(
        loaded.search(catalog[:5], 10)[0], index.search(catalog[:5], 10)[0]
    )


def test_fingerprint_in_blocks_equals_whole_hash(
    tmp_path, catalog: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of 7 rows: 1500 rows end in a partial block.
    monkeypatch.setattr(index_module, "_FINGERPRINT_ROWS", 7)
    vectors = catalog[:1500]
    whole = hashlib.sha256(vectors.astype("<f4").tobytes()).hexdigest()

    assert vectors_fingerprint(vectors) == {"shape": [1500, 32], "sha256": whole}
    assert vectors_fingerprint(vectors.astype(np.float64))["sha256"] == whole
    ItemIndex.build(vectors, kind="ivf").save(tmp_path / "items.faiss")
    assert len(ItemIndex.load(tmp_path / "items.faiss", vectors=vectors)) == 1500


def test_load_rejects_other_vectors(tmp_path, catalog: np.ndarray) -> None:
    ItemIndex.build(catalog[:300]).save(tmp_path / "items.faiss")
    message = r"items\.faiss does not match the model's item vectors"
    with pytest.raises(BuildError, match=message) as err:
        ItemIndex.load(tmp_path / "items.faiss", vectors=catalog[300:600])
    assert err.value.path == str(tmp_path / "items.faiss")


def test_load_rejects_index_swapped_under_metadata(
    tmp_path, catalog: np.ndarray
) -> None:
    ItemIndex.build(catalog[:300]).save(tmp_path / "items.faiss")
    other = faiss.IndexFlatIP(32)
    other.add(catalog[300:600])
    faiss.write_index(other, str(tmp_path / "items.faiss"))
    with pytest.raises(BuildError, match="does not match its metadata file"):
        ItemIndex.load(tmp_path / "items.faiss")


def test_load_rejects_truncated_file(tmp_path, catalog: np.ndarray) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(catalog[:300]).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BuildError, match="cannot read FAISS index") as err:
        ItemIndex.load(path)
    assert err.value.path == str(path)


def test_fingerprint_changes_with_any_value(catalog: np.ndarray) -> None:
    changed = catalog[:100].copy()
    changed[50, 3] += 1e-3
    assert vectors_fingerprint(catalog[:100]) != vectors_fingerprint(changed)
    assert vectors_fingerprint(catalog[:100])["shape"] == [100, 32]


@pytest.mark.parametrize(
    ("k", "message"), [(0, "invalid k"), (-3, "invalid k"), (True, "invalid k")]
)
def test_search_rejects_bad_k(k, message: str, catalog: np.ndarray) -> None:
    index = ItemIndex.build(catalog[:100])
    with pytest.raises(ValidationError, match=message):
        index.search(catalog[0], k)


def test_search_rejects_wrong_dimension(catalog: np.ndarray) -> None:
    index = ItemIndex.build(catalog[:100])
    with pytest.raises(ValidationError, match="32 columns"):
        index.search(np.ones(16, dtype=np.float32), 5)


def test_exhaustive_ivf_falls_back_to_exact(
    catalog: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Recall 1.0 needs every list scanned, which flat search does faster.
    index = ItemIndex.build(catalog[:2000], kind="ivf", target_recall=1.0)
    assert index.info.kind == "flat"
    assert "only at nprobe=" in caplog.text
