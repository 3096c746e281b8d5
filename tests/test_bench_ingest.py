"""`recsys bench ingest` on a few events, against the real Redis server."""

from __future__ import annotations

import pytest
import redis

from recsys.benchmarks.ingest import IngestConfig, run_ingest_benchmark


@pytest.mark.slow
def test_bench_ingest_stores_every_event(redis_url: str) -> None:
    config = IngestConfig(redis_url, max_events=200, max_seconds=30, batch_size=50)
    client = redis.Redis.from_url(redis_url)
    before = set(client.scan_iter(match="bench-ingest-*"))

    results = run_ingest_benchmark(config)
    left = set(client.scan_iter(match="bench-ingest-*")) - before
    client.close()

    assert [result.mode for result in results] == [
        "store single",
        "store batch",
        "http single",
        "http batch",
    ]
    assert [result.events for result in results] == [200, 200, 200, 200]
    assert [result.calls for result in results] == [200, 4, 200, 4]
    assert all(result.events_per_second > 0 for result in results)
    assert left == set()
