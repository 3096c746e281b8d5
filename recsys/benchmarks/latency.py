"""`recsys bench latency`: latency, throughput and memory of the served API.

For each catalog (a published build) and each worker count, the benchmark
starts the API as production does: `recsys serve`, which runs uvicorn with
`--workers`, Redis at `REDIS_URL` and the build under `RECSYS_INDEXES_DIR`.
It stores a set of sessions through `POST /v1/events` and then measures
each endpoint twice:

- sequential: one keep-alive connection, one request at a time, giving
  p50/p95/p99 latency without queueing, and the per-stage timings the
  server reports in its `Server-Timing` header;
- closed loop: `concurrency` connections for `throughput_seconds`, giving
  throughput, latency under load and server CPU milliseconds per request.

`GET /healthz` runs through the same app, middleware and server, so its
figures are the framework's floor and the ratios against it show what the
recommendation work adds. Worker memory (RSS and PSS from
`/proc/<pid>/smaps_rollup`) is read after start-up and after the load.

The load generator runs in this process and competes with the server for
the CPUs. The report records its CPU time and the machine's load, so
figures from a busy machine can be recognised.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import secrets
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.benchmarks.http_load import (
    NO_RESPONSE,
    LoadResult,
    Request,
    check_loopback,
    run_closed_loop,
    run_sequential,
)
from recsys.benchmarks.server import (
    ServerProcess,
    free_port,
    read_memory,
    worker_pids,
)
from recsys.benchmarks.traffic import Traffic, TrafficShape, health_requests
from recsys.settings import mask_url

log = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Catalog:
    """A catalog to benchmark: a published build and the ids it serves."""

    label: str
    indexes_dir: Path
    version: str
    item_ids: list[str]
    # Bytes of the FAISS index files and item vectors of the build.
    index_bytes: int = 0
    # Bytes of the files the served pipeline loads (the build's pipeline/).
    pipeline_bytes: int = 0


@dataclass
class LatencyConfig:
    """Settings of one `recsys bench latency` run."""

    host: str = "127.0.0.1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    workers: tuple[int, ...] = (1, 2)
    sequential_requests: int = 1000
    warmup_requests: int = 100
    concurrency: int = 8
    throughput_seconds: float = 10.0
    event_batch_size: int = 100
    ready_timeout_seconds: float = 300.0
    traffic: TrafficShape = field(default_factory=TrafficShape)

    def __post_init__(self) -> None:
        check_loopback(self.host)


def server_command(host: str, port: int, workers: int) -> list[str]:
    """Return the `recsys serve` command line (uvicorn with workers) to run."""
    return [
        sys.executable,
        "-m",
        "recsys",
        "--log-level",
        "WARNING",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
    ]


def machine_description() -> dict[str, Any]:
    """CPU model, core count, memory and software versions of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _process_cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def _client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds() -> float:
    # Busy CPU time of the whole machine: every process, not only ours.
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / _CLOCK_TICKS


def _summarise(result: LoadResult) -> dict[str, Any]:
    return {
        "requests": result.count,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "seconds": round(result.wall_seconds, 3),
        "throughput_per_second": round(result.throughput, 1),
        "latency_ms": {k: round(v, 3) for k, v in result.percentiles_ms().items()},
    }


# Stages that follow one another at the top level of the recommendation route.
TOP_LEVEL_STAGES = ("session_read", "pipeline")
OUTSIDE_STAGE = "outside_stages"


def _add_outside_stages(result: LoadResult) -> None:
    """Add the time outside the top-level stages to each response's timings.

    It is the server time (`total`) less session read and pipeline: request
    parsing, validation, the response model and JSON encoding, and waiting
    for the event loop.
    """
    for timings in result.stages:
        if "total" in timings and all(name in timings for name in TOP_LEVEL_STAGES):
            inside = sum(timings[name] for name in TOP_LEVEL_STAGES)
            timings[OUTSIDE_STAGE] = max(timings["total"] - inside, 0.0)


class _Measurement:
    """Runs the sequential and closed-loop measurements against one server."""

    def __init__(self, config: LatencyConfig, port: int, api_key: str, pids: list[int]):
        self.config = config
        self.port = port
        self.headers = {"X-API-Key": api_key}
        self.pids = pids
        # Responses received per route template, to compare with GET /metrics.
        self.sent: dict[str, int] = {}

    def _count(self, requests: list[Request], result: LoadResult) -> None:
        segments = [part for part in requests[0].path.split("?")[0].split("/") if part]
        route = ROUTES.get(segments[-1] if len(segments) == 1 else segments[1], "")
        answered = result.count - result.statuses.get(NO_RESPONSE, 0)
        self.sent[route] = self.sent.get(route, 0) + answered

    def sequential(self, requests: list[Request]) -> LoadResult:
        result = run_sequential(self.config.host, self.port, requests, self.headers)
        self._count(requests, result)
        return result

    def sequential_summary(self, requests: list[Request]) -> dict[str, Any]:
        result = self.sequential(requests)
        summary = _summarise(result)
        _add_outside_stages(result)
        summary["stages_ms"] = {
            name: {k: round(v, 3) for k, v in values.items()}
            for name, values in result.stage_percentiles_ms().items()
        }
        return summary

    def closed_loop(self, requests: list[Request]) -> dict[str, Any]:
        server_before = _process_cpu_seconds(self.pids)
        client_before = _client_cpu_seconds()
        machine_before = _machine_busy_seconds()
        result = run_closed_loop(
            self.config.host,
            self.port,
            requests,
            self.config.concurrency,
            self.config.throughput_seconds,
            self.headers,
        )
        self._count(requests, result)
        server = _process_cpu_seconds(self.pids) - server_before
        client = _client_cpu_seconds() - client_before
        machine = _machine_busy_seconds() - machine_before
        summary = _summarise(result)
        per_request = 1000 / max(result.count, 1)
        summary["server_cpu_ms_per_request"] = round(server * per_request, 3)
        summary["client_cpu_seconds"] = round(client, 2)
        summary["server_cpu_seconds"] = round(server, 2)
        # CPU time of other processes on the machine during the run.
        summary["other_cpu_seconds"] = round(max(machine - server - client, 0.0), 2)
        return summary


# Resource name in a request path (`healthz`, or the segment after `/v1/`)
# -> the route template the API reports.
ROUTES = {
    "healthz": "/healthz",
    "recommendations": "/v1/recommendations",
    "items": "/v1/items/{item_id}/similar",
    "events": "/v1/events",
}


def metrics_request_counts(host: str, port: int) -> dict[str, float]:
    """Return `recsys_http_requests_total` from GET /metrics, summed by route."""
    check_loopback(host)
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("recsys_http_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        route = labels.split('route="', 1)[1].split('"', 1)[0]
        counts[route] = counts.get(route, 0.0) + float(value)
    return counts


def _endpoint_requests(
    traffic: Traffic, config: LatencyConfig, n: int
) -> dict[str, list[Request]]:
    return {
        "healthz": health_requests(n),
        "recommendations": traffic.recommendation_requests(n),
        "similar": traffic.similar_requests(n),
        "events": traffic.event_requests(n),
        "events_batch": traffic.event_requests(
            max(n // 10, 1), batch_size=config.event_batch_size
        ),
    }


def _available(measure: _Measurement, requests: list[Request]) -> bool:
    # A route that is not registered returns 404 for every request.
    probe = measure.sequential(requests[:5])
    return any(status != 404 for status in probe.statuses)


def run_scenario(
    catalog: Catalog, workers: int, config: LatencyConfig, log_dir: Path
) -> dict[str, Any]:
    """Start the API over `catalog` with `workers` workers and measure it."""
    port = free_port(config.host)
    api_key = secrets.token_hex(16)
    prefix = f"bench-{secrets.token_hex(4)}:"
    traffic = Traffic(catalog.item_ids, config.traffic, prefix=prefix.rstrip(":"))
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as metrics_dir:
        env = {
            **os.environ,
            "REDIS_URL": config.redis_url,
            "RECSYS_REDIS_PREFIX": prefix,
            "RECSYS_API_KEY": api_key,
            "RECSYS_INDEXES_DIR": str(catalog.indexes_dir),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        started = time.perf_counter()
        server = ServerProcess(
            server_command(config.host, port, workers),
            config.host,
            port,
            env,
            ready_timeout_seconds=config.ready_timeout_seconds,
            log_path=log_dir / f"server-{catalog.label}-{workers}w.log",
        )
        try:
            with server:
                startup = time.perf_counter() - started
                return _measure_server(
                    server, traffic, catalog, workers, config, api_key, startup
                )
        finally:
            delete_keys(config.redis_url, prefix)


def _measure_server(
    server: ServerProcess,
    traffic: Traffic,
    catalog: Catalog,
    workers: int,
    config: LatencyConfig,
    api_key: str,
    startup_seconds: float,
) -> dict[str, Any]:
    pids = worker_pids(server.pid)
    if len(pids) != workers and workers > 1:
        log.warning("expected %d worker processes, found %s", workers, pids)
    measure = _Measurement(config, server.port, api_key, pids)
    memory_started = {str(pid): read_memory(pid) for pid in pids}

    seeding = measure.sequential(traffic.seed_requests(config.event_batch_size))
    if set(seeding.statuses) != {200}:
        log.warning("storing the sessions returned statuses %s", seeding.statuses)

    warmup = _endpoint_requests(traffic, config, config.warmup_requests)
    available = {name: _available(measure, reqs) for name, reqs in warmup.items()}
    for name, requests in warmup.items():
        if available[name]:
            measure.sequential(requests)
        else:
            log.warning("%s returns only 404, so it is left out", name)

    endpoints: dict[str, Any] = {}
    measured = _endpoint_requests(traffic, config, config.sequential_requests)
    for name, requests in measured.items():
        if not available[name]:
            continue
        log.info("%s, %d workers: %s", catalog.label, workers, name)
        endpoints[name] = {
            "sequential": measure.sequential_summary(requests),
            "closed_loop": measure.closed_loop(requests),
        }

    # Every worker's requests must show in one scrape (multiprocess mode).
    scraped = metrics_request_counts(config.host, server.port)
    metrics_check = {
        route: {"sent": sent, "in_metrics": scraped.get(route, 0.0)}
        for route, sent in measure.sent.items()
    }
    memory_loaded = {str(pid): read_memory(pid) for pid in pids}
    # With several workers the master only supervises; it counts all the same.
    master_memory = read_memory(server.pid) if server.pid not in pids else None
    return {
        "catalog": catalog.label,
        "n_items": len(catalog.item_ids),
        "build_version": catalog.version,
        "index_bytes": catalog.index_bytes,
        "pipeline_bytes": catalog.pipeline_bytes,
        "workers": workers,
        "worker_pids": pids,
        "startup_seconds": round(startup_seconds, 1),
        "memory_started": memory_started,
        "memory_loaded": memory_loaded,
        "master_memory": master_memory,
        "endpoints": endpoints,
        "ratios": ratios(endpoints, config.event_batch_size),
        "metrics_check": metrics_check,
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def ratios(endpoints: dict[str, Any], event_batch_size: int) -> dict[str, float]:
    """Compare each endpoint with /healthz: throughput share and p99 multiple."""
    floor = endpoints.get("healthz")
    result: dict[str, float] = {}
    for name, figures in endpoints.items():
        if name == "healthz" or floor is None:
            continue
        loop, floor_loop = figures["closed_loop"], floor["closed_loop"]
        if floor_loop["throughput_per_second"] > 0:
            share = loop["throughput_per_second"] / floor_loop["throughput_per_second"]
            result[f"{name}_throughput_vs_healthz"] = round(share, 3)
        floor_p99 = floor["sequential"]["latency_ms"]["p99"]
        if floor_p99 > 0:
            multiple = figures["sequential"]["latency_ms"]["p99"] / floor_p99
            result[f"{name}_p99_vs_healthz"] = round(multiple, 2)
    batch = endpoints.get("events_batch")
    if batch is not None:
        rate = batch["closed_loop"]["throughput_per_second"] * event_batch_size
        result["events_per_second_batched"] = round(rate, 1)
    return result


def delete_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
        log.info("deleted %d benchmark keys under %s", len(keys), prefix)
    except redis.RedisError as exc:
        log.warning("could not delete benchmark keys under %s: %s", prefix, exc)
    finally:
        client.close()


def run_latency_benchmark(
    catalogs: list[Catalog],
    config: LatencyConfig,
    out_dir: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every catalog with every worker count; write report.json.

    `extra` (in-process figures such as the index search) goes into the
    report as it is.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "config": {**asdict(config), "redis_url": mask_url(config.redis_url)},
        **(extra or {}),
        "scenarios": [],
    }
    for catalog in catalogs:
        for workers in config.workers:
            scenario = run_scenario(catalog, workers, config, out_dir)
            report["scenarios"].append(scenario)
            _write_json(out_dir / "report.json", report)
    return report


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")
