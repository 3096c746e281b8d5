"""Prometheus metrics of the HTTP API and the `GET /metrics` endpoint.

Series exposed (all names start with `recsys_`):

- `http_requests_total{method, route, status}`: responses sent.
- `http_request_duration_seconds{method, route}`: latency histogram.
- `stage_duration_seconds{route, stage}`: the stages that library code
  times with `recsys.timing.stage` (session read, encoding, each candidate
  source, ranking, rules), one histogram per route and stage.
- `degraded_responses_total{route, reason}`: responses that library code
  marked with `recsys.timing.mark_degraded`.
- `failed_responses_total{route, status}`: responses with a 5xx status,
  including requests whose handler raised.
- `build_info{version}`: 1 for the build each worker serves, 0 for builds it
  served before.

`route` is the matched path template, so item ids never become label values;
requests that match no route share the label `unmatched`.

Several workers: each uvicorn worker is a process with its own counters, and
a scrape reaches only one of them. Set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory before the workers start, and prometheus_client keeps the values in
files there which `GET /metrics` aggregates over all workers. The directory
must be emptied between server runs. Without the variable each worker exports
only its own figures. NOTE: nothing calls `mark_process_dead`, so the
`build_info` series of a worker that exited stays until the directory is
emptied.
"""

from __future__ import annotations

import os
import threading

from fastapi import APIRouter, FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from recsys_api.timing import RequestRecord, TimingMiddleware
from starlette.responses import Response

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"

# Bucket bounds in seconds: dense below 10 ms, where the latency targets lie.
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
STAGE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)

REQUESTS = Counter(
    "recsys_http_requests_total",
    "HTTP responses sent, by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "recsys_http_request_duration_seconds",
    "Time from receiving a request to sending the last byte of its response.",
    ["method", "route"],
    buckets=REQUEST_BUCKETS,
)
STAGE_DURATION = Histogram(
    "recsys_stage_duration_seconds",
    "Time spent in each named stage of a request.",
    ["route", "stage"],
    buckets=STAGE_BUCKETS,
)
DEGRADED = Counter(
    "recsys_degraded_responses_total",
    "Responses served with less than requested, by reason.",
    ["route", "reason"],
)
FAILED = Counter(
    "recsys_failed_responses_total",
    "Responses with a 5xx status, including handlers that raised.",
    ["route", "status"],
)
BUILD_INFO = Gauge(
    "recsys_build_info",
    "1 for the build version a worker serves, 0 for versions it served before.",
    ["version"],
    multiprocess_mode="livemax",
)

_build_lock = threading.Lock()
_build_version: str | None = None


def observe_request(record: RequestRecord) -> None:
    """Record one finished request in the metrics above."""
    route = record.route or UNMATCHED_ROUTE
    status = str(record.status)
    REQUESTS.labels(record.method, route, status).inc()
    REQUEST_DURATION.labels(record.method, route).observe(record.seconds)
    for name, seconds in record.trace.stages.items():
        STAGE_DURATION.labels(route, name).observe(seconds)
    for reason in record.trace.degraded:
        DEGRADED.labels(route, reason).inc()
    if record.status >= 500 or record.raised:
        FAILED.labels(route, status).inc()


def set_build_version(version: str) -> None:
    """Mark `version` as the build this process serves from now on."""
    global _build_version
    with _build_lock:
        if _build_version is not None and _build_version != version:
            BUILD_INFO.labels(_build_version).set(0)
        BUILD_INFO.labels(version).set(1)
        _build_version = version


def render_metrics() -> bytes:
    """Return the exposition text of all metrics, over all workers if shared."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Serve the metrics in the Prometheus text format."""
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)


def instrument(app: FastAPI) -> None:
    """Time every request of `app` and feed the metrics above.

    Call it once, after the app's other middleware is added, so the timing
    covers them too.
    """
    app.add_middleware(TimingMiddleware, observers=[observe_request])
