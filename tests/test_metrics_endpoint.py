"""GET /metrics: the series the app exposes after real requests.

The app is the real one from `create_app`, with the Redis session store and,
where a test needs recommendations, a build holding a pipeline fitted on the
small synthetic sessions of `test_pipeline`. Metrics live in process-wide
collectors, so tests compare values before and after their own requests
rather than absolute counts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from recsys_api.app import create_app
from recsys_api.metrics import set_build_version

from recsys.builds import BuildStore, utc_now
from recsys.interactions import SessionData
from recsys.models.pipeline import PIPELINE_DIR, fit_pipeline, save_pipeline
from recsys.settings import Settings
from recsys.timing import parse_server_timing
from tests.test_pipeline import config, item, synthetic_events

API_KEY = "metrics-test-key"
RECOMMENDATIONS = "/v1/recommendations"
# Stages every recommendation of the test build goes through, besides one
# `candidates.<source>` stage per candidate source.
PIPELINE_STAGES = (
    "session_read",
    "pipeline",
    "encode",
    "candidates",
    "features",
    "ranker",
    "rules",
)


def publish_test_build(indexes_dir: Path) -> tuple[Path, str, tuple[str, ...]]:
    """Publish a pipeline fitted on the synthetic sessions of `test_pipeline`.

    Returns the indexes directory, the build version and the source names.
    """
    data = SessionData.from_events(synthetic_events())
    pipeline = fit_pipeline(data, config())
    builds = BuildStore(indexes_dir)
    with builds.lock():
        staged = builds.stage()
        save_pipeline(staged.path / PIPELINE_DIR, pipeline, config(), data)
        version = builds.publish(staged, {"created_at": utc_now()}).version
    return indexes_dir, version, pipeline.source_names


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, str, tuple[str, ...]]:
    return publish_test_build(tmp_path_factory.mktemp("indexes"))


@pytest.fixture
def no_builds(tmp_path: Path) -> Path:
    return tmp_path


def _app(redis_url: str, prefix: str, indexes_dir: Path):
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        api_key=API_KEY,
        redis_connect_timeout_seconds=0.2,
        redis_read_timeout_seconds=0.2,
        indexes_dir=indexes_dir,
    )
    return create_app(settings)


def _send(app, requests: list[tuple[str, str, dict | None]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            responses = []
            for method, path, body in requests:
                headers = {"X-API-Key": API_KEY}
                responses.append(
                    await client.request(method, path, json=body, headers=headers)
                )
            return responses

    return asyncio.run(main())


def _samples(app) -> dict[tuple[str, frozenset], float]:
    """Scrape /metrics and return {(sample name, labels): value}."""
    (response,) = _send(app, [("GET", "/metrics", None)])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _event(session_id: str, item_id: str = "item-1") -> dict:
    return {
        "session_id": session_id,
        "item_id": item_id,
        "event_type": "click",
        "ts": int(time.time() * 1000),
    }


def test_metrics_count_requests_by_route(redis_url, redis_prefix, no_builds):
    app = _app(redis_url, redis_prefix, no_builds)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    before = _samples(app)

    responses = _send(
        app,
        [
            ("POST", "/v1/events", _event(session_id)),
            ("POST", "/v1/events", {"events": [_event(session_id, "item-2")]}),
            ("GET", f"/v1/sessions/{session_id}", None),
            ("GET", "/healthz", None),
            ("GET", "/no/such/path", None),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404]
    after = _samples(app)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "recsys_http_requests_total"
    assert delta(requests, method="POST", route="/v1/events", status="200") == 2
    # The route template, not the session id, is the label.
    sessions = "/v1/sessions/{session_id}"
    assert delta(requests, method="GET", route=sessions, status="200") == 1
    assert delta(requests, method="GET", route="/healthz", status="200") == 1
    assert delta(requests, method="GET", route="unmatched", status="404") == 1
    assert not any(session_id in str(labels) for _, labels in after)

    duration = "recsys_http_request_duration_seconds"
    assert delta(f"{duration}_count", method="POST", route="/v1/events") == 2
    assert delta(f"{duration}_sum", method="POST", route="/v1/events") > 0
    assert (
        delta(f"{duration}_bucket", method="POST", route="/v1/events", le="+Inf") == 2
    )


def test_metrics_count_store_failures(redis_server_factory, no_builds):
    server = redis_server_factory()
    app = _app(server.url, "metrics-failure:", no_builds)
    before = _samples(app)
    server.kill()

    (response,) = _send(app, [("GET", "/v1/sessions/gone", None)])
    assert response.status_code == 503
    after = _samples(app)

    route = "/v1/sessions/{session_id}"
    name = "recsys_failed_responses_total"
    failed = _value(after, name, route=route, status="503")
    assert failed - _value(before, name, route=route, status="503") == 1


def test_metrics_show_build_version(redis_url, redis_prefix, no_builds):
    app = _app(redis_url, redis_prefix, no_builds)
    set_build_version("metrics-test-old")
    set_build_version("metrics-test-new")
    samples = _samples(app)
    assert _value(samples, "recsys_build_info", version="metrics-test-new") == 1
    assert _value(samples, "recsys_build_info", version="metrics-test-old") == 0


def test_every_response_has_server_timing(redis_url, redis_prefix, no_builds):
    app = _app(redis_url, redis_prefix, no_builds)
    responses = _send(
        app,
        [("GET", "/healthz", None), ("POST", "/v1/events", {"events": "bad"})],
    )
    assert [r.status_code for r in responses] == [200, 422]
    for response in responses:
        timings = parse_server_timing(response.headers["server-timing"])
        assert "total" in timings
        assert timings["total"] >= 0


_WORKER = textwrap.dedent(
    """
    from recsys.timing import Trace
    from recsys_api.metrics import observe_request, set_build_version
    from recsys_api.timing import RequestRecord

    trace = Trace()
    trace.add("session_read", 0.001)
    trace.mark_degraded("session_store_unavailable")
    set_build_version("multiprocess-build")
    for _ in range(3):
        observe_request(RequestRecord("GET", "/v1/recommendations", 200, 0.004,
                                      trace, raised=False))
    """
)
_SCRAPE = "from recsys_api.metrics import render_metrics\n" + (
    "import sys; sys.stdout.write(render_metrics().decode())"
)


def test_multiprocess_mode_sums_workers(tmp_path: Path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER], env=env, check=True)
    scraped = subprocess.run(
        [sys.executable, "-c", _SCRAPE], env=env, check=True, capture_output=True
    ).stdout.decode()

    values = {}
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    route = "/v1/recommendations"
    assert (
        _value(
            values,
            "recsys_http_requests_total",
            method="GET",
            route=route,
            status="200",
        )
        == 6
    )
    assert (
        _value(
            values,
            "recsys_stage_duration_seconds_count",
            route=route,
            stage="session_read",
        )
        == 6
    )
    assert (
        _value(
            values,
            "recsys_degraded_responses_total",
            route=route,
            reason="session_store_unavailable",
        )
        == 6
    )
    build = _value(values, "recsys_build_info", version="multiprocess-build")
    assert build == 1


def test_metrics_not_in_openapi_schema(redis_url, redis_prefix, no_builds):
    app = _app(redis_url, redis_prefix, no_builds)
    assert "/metrics" not in app.openapi()["paths"]


def test_metrics_show_served_build(redis_url, redis_prefix, published):
    indexes_dir, version, _ = published
    app = _app(redis_url, redis_prefix, indexes_dir)
    samples = _samples(app)
    assert _value(samples, "recsys_build_info", version=version) == 1


def test_recommendation_stages_in_metrics(redis_url, redis_prefix, published):
    indexes_dir, _, source_names = published
    app = _app(redis_url, redis_prefix, indexes_dir)
    stages = [*PIPELINE_STAGES, *(f"candidates.{name}" for name in source_names)]
    before = _samples(app)

    responses = _send(
        app,
        [
            ("POST", "/v1/events", _event("stages", item(0, 1))),
            ("POST", RECOMMENDATIONS, {"session_id": "stages", "k": 3}),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200]
    after = _samples(app)

    name = "recsys_stage_duration_seconds_count"
    for stage in stages:
        count = _value(after, name, route=RECOMMENDATIONS, stage=stage)
        assert count - _value(before, name, route=RECOMMENDATIONS, stage=stage) == 1


def test_degraded_recommendation_counted(redis_server_factory, published):
    indexes_dir, _, _ = published
    server = redis_server_factory()
    app = _app(server.url, "metrics-degraded:", indexes_dir)
    before = _samples(app)
    server.kill()

    (response,) = _send(app, [("POST", RECOMMENDATIONS, {"session_id": "x", "k": 3})])
    assert response.status_code == 200
    assert response.json()["degraded"] is True
    after = _samples(app)

    name = "recsys_degraded_responses_total"
    labels = {"route": RECOMMENDATIONS, "reason": "session_store_unavailable"}
    assert _value(after, name, **labels) - _value(before, name, **labels) == 1
    failed = "recsys_failed_responses_total"
    assert _value(after, failed, route=RECOMMENDATIONS, status="200") == 0
