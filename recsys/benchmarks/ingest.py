"""`recsys bench ingest`: events per second into the Redis session store.

Four measurements, each bounded by an event count and a time limit:

- store, single: `RedisStore.append` one event at a time, one thread;
- store, batch: `RedisStore.append_many` with `batch_size` events;
- HTTP, single: `POST /v1/events` with one event per request;
- HTTP, batch: `POST /v1/events` with `{"events": [...]}` of `batch_size`.

The HTTP runs start the real app under uvicorn on a free loopback port and
keep `concurrency` keep-alive connections busy, each sending its next
request when the previous response arrives. Every event carries a unique
`event_id`. The rate is the number of events that the server stored (read
back from the length of the Redis event log) over the run's wall time.
Keys go under a fresh prefix and are deleted at the end, so the shared
Redis server keeps nothing of the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from recsys.events import Event
from recsys.sessions.redis_store import RedisStore

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Bounds and shape of one benchmark run."""

    redis_url: str
    max_events: int = 50_000
    max_seconds: float = 10.0
    batch_size: int = 500
    concurrency: int = 8
    workers: int = 1


@dataclass(frozen=True, slots=True)
class IngestResult:
    """One measurement: events stored, requests or calls made, wall time."""

    mode: str
    events: int
    calls: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_second": round(self.events_per_second)}


def make_events(count: int, run_id: str) -> Iterator[Event]:
    """Yield shop-like clicks: sessions of 10 events, half of them logged in."""
    now_ms = int(time.time() * 1000)
    for i in range(count):
        session = i // 10
        yield Event(
            session_id=f"bench-{run_id}-s{session}",
            event_type="click",
            ts=now_ms - 10_000 + i % 10,
            item_id=f"item-{(i * 7919) % 10_000}",
            user_id=f"user-{session % 5_000}" if session % 2 == 0 else None,
            event_id=f"{run_id}-{i}",
        )


def run_ingest_benchmark(config: IngestConfig) -> list[IngestResult]:
    """Run the four measurements and return them in the order listed above."""
    prefix = f"bench-ingest-{uuid.uuid4().hex[:8]}:"
    store = RedisStore(config.redis_url, prefix=prefix)
    try:
        store.ping()
        results = [
            _store_single(store, config),
            _store_batch(store, config),
            *_http_runs(store, config),
        ]
    finally:
        _delete_prefix(store, prefix)
        store.close()
    for result in results:
        log.info(
            "%s: %d events in %.2f s, %.0f events/s",
            result.mode,
            result.events,
            result.seconds,
            result.events_per_second,
        )
    return results


def _timed(
    mode: str, store: RedisStore, config: IngestConfig, step: Callable[[], int]
) -> IngestResult:
    """Call `step` (returns events sent) until the count or time bound is hit."""
    before = len(store.log)
    sent = calls = 0
    start = time.perf_counter()
    deadline = start + config.max_seconds
    while sent < config.max_events and time.perf_counter() < deadline:
        sent += step()
        calls += 1
    seconds = time.perf_counter() - start
    return IngestResult(mode, len(store.log) - before, calls, seconds)


def _store_single(store: RedisStore, config: IngestConfig) -> IngestResult:
    events = make_events(config.max_events, uuid.uuid4().hex[:8])

    def step() -> int:
        store.append(next(events))
        return 1

    return _timed("store single", store, config, step)


def _store_batch(store: RedisStore, config: IngestConfig) -> IngestResult:
    events = list(make_events(config.max_events, uuid.uuid4().hex[:8]))
    batches = iter(range(0, len(events), config.batch_size))

    def step() -> int:
        start = next(batches)
        batch = events[start : start + config.batch_size]
        store.append_many(batch)
        return len(batch)

    return _timed("store batch", store, config, step)


def _http_runs(store: RedisStore, config: IngestConfig) -> list[IngestResult]:
    from recsys.benchmarks.http_load import Request
    from recsys.benchmarks.server import ServerProcess, free_port

    port = free_port(HOST)
    api_key = secrets.token_hex(16)
    body_bytes = max(1_048_576, config.batch_size * 400)
    env = {
        **os.environ,
        "REDIS_URL": config.redis_url,
        "RECSYS_REDIS_PREFIX": store.prefix,
        "RECSYS_API_KEY": api_key,
        "RECSYS_MAX_BATCH_EVENTS": str(config.batch_size),
        "RECSYS_MAX_BODY_BYTES": str(body_bytes),
    }
    # `recsys serve` starts the app as a deployment does, and the library
    # never names the HTTP package itself.
    command = [
        sys.executable, "-m", "recsys", "--log-level", "WARNING", "serve",
        "--host", HOST, "--port", str(port), "--workers", str(config.workers),
        "--no-access-log",
    ]  # fmt: skip
    headers = {"X-API-Key": api_key}

    def measure(mode: str, requests: list[Request]) -> IngestResult:
        payloads = [request.encode(HOST, port, headers) for request in requests]
        before = len(store.log)
        statuses, seconds = post_all(
            port, payloads, config.concurrency, config.max_seconds
        )
        failed = {s: n for s, n in statuses.items() if s != 200}
        if failed:
            log.warning("%s: responses other than 200: %s", mode, failed)
        stored = len(store.log) - before
        return IngestResult(mode, stored, sum(statuses.values()), seconds)

    with ServerProcess(command, HOST, port, env, ready_path="/healthz"):
        run_id = uuid.uuid4().hex[:8]
        singles = [
            Request("POST", "/v1/events", event.to_dict())
            for event in make_events(config.max_events, run_id)
        ]
        single = measure("http single", singles)

        run_id = uuid.uuid4().hex[:8]
        events = [event.to_dict() for event in make_events(config.max_events, run_id)]
        batches = [
            Request("POST", "/v1/events", {"events": events[i : i + config.batch_size]})
            for i in range(0, len(events), config.batch_size)
        ]
        batch = measure("http batch", batches)
    return [single, batch]


def post_all(
    port: int, payloads: list[bytes], concurrency: int, max_seconds: float
) -> tuple[dict[int, int], float]:
    """Send each prepared request once over `concurrency` keep-alive connections.

    Stops early at `max_seconds` and returns the count per status and the
    wall time. No request is sent twice, so no event id repeats.
    """
    statuses: dict[int, int] = {}
    queue = iter(payloads)

    async def connection(deadline: float) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for payload in queue:
                writer.write(payload)
                status = await _read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
                if time.perf_counter() >= deadline:
                    break
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> None:
        deadline = time.perf_counter() + max_seconds
        await asyncio.gather(*(connection(deadline) for _ in range(concurrency)))

    start = time.perf_counter()
    asyncio.run(main())
    return statuses, time.perf_counter() - start


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            await reader.readexactly(int(value))
    return status


def _delete_prefix(store: RedisStore, prefix: str) -> None:
    client = store.client
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    log.info("deleted %d benchmark keys under %s", len(keys), prefix)
