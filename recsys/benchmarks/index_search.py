"""In-process measurements of one FAISS index: search latency and sharing.

`measure_search` times `ItemIndex.search` one query at a time on one thread,
as a request would run it. `measure_sharing` loads the index with
`ItemIndex.load` in two worker processes, either read into memory
(`mmap=False`) or mapped (the default), and reads their RSS and PSS. With a
mapped file
the page cache keeps one copy that both processes share. PSS splits shared
pages between their users, so it drops to about half the index per
process.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.benchmarks.server import read_memory

log = logging.getLogger(__name__)

# Loads the index, searches so that its pages are touched, reports ready and
# waits for stdin to close.
_SHARING_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from recsys.index import ItemIndex

    path, mode = sys.argv[1], sys.argv[2]
    index = ItemIndex.load(path, mmap=mode == "mmap")
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((2000, index.dim)).astype("float32")
    index.search(queries, 100)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def measure_search(
    index_path: Path, vectors_path: Path, n_queries: int = 1000, k: int = 100
) -> dict[str, Any]:
    """Time single-query searches of the index at `index_path` on one thread.

    Queries are sums of two item vectors from `vectors_path`, a stand-in for
    session embeddings. Returns load seconds, the index description and
    p50/p95/p99/max latency in milliseconds.
    """
    from recsys.index import ItemIndex, set_search_threads

    set_search_threads(1)
    started = time.perf_counter()
    index = ItemIndex.load(index_path)
    load_seconds = time.perf_counter() - started

    vectors = np.load(vectors_path, mmap_mode="r")
    rng = np.random.default_rng(1)
    first = rng.integers(0, len(vectors), n_queries)
    second = rng.integers(0, len(vectors), n_queries)
    queries = np.asarray(vectors[first] + vectors[second], dtype=np.float32)

    for query in queries[:50]:
        index.search(query, k)
    latencies = []
    for query in queries:
        sent = time.perf_counter()
        index.search(query, k)
        latencies.append(time.perf_counter() - sent)
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {
        "index": index.info.to_dict() | {"fingerprint": None},
        "load_seconds": round(load_seconds, 2),
        "k": k,
        "queries": n_queries,
        "latency_ms": {
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
            "max": round(max(latencies) * 1000, 3),
        },
    }


def measure_sharing(index_path: Path, processes: int = 2) -> dict:
    """Return RSS and PSS (bytes) of processes holding the index, per load mode.

    Each process searches with the index's own parameters (`nprobe`,
    `efSearch`), as a served request would.
    """
    result: dict[str, Any] = {"index_file_bytes": index_path.stat().st_size}
    for mode in ("read", "mmap"):
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SHARING_CHILD,
                    str(index_path),
                    mode,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        try:
            for child in children:
                if child.stdout is None or child.stdout.readline().strip() != "ready":
                    raise RuntimeError(
                        f"index loader {child.pid} failed in {mode} mode"
                    )
            result[mode] = [read_memory(child.pid) for child in children]
        finally:
            for child in children:
                if child.stdin is not None:
                    child.stdin.close()
                child.wait(timeout=30)
        log.info("index sharing, %s mode: %s", mode, result[mode])
    return result
