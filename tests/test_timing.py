"""Per-request stage timings: the trace API and the Server-Timing header.

The header tests run the real app over the build of `test_metrics_endpoint`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from recsys.timing import (
    collect,
    current_trace,
    format_server_timing,
    mark_degraded,
    parse_server_timing,
    stage,
)
from tests.test_metrics_endpoint import (
    PIPELINE_STAGES,
    RECOMMENDATIONS,
    _app,
    _event,
    _send,
    publish_test_build,
)
from tests.test_pipeline import item


def test_stage_outside_trace_records_nothing():
    with stage("session_read"):
        pass
    mark_degraded("session_store_unavailable")
    assert current_trace() is None


def test_stages_recorded_in_order():
    with collect() as trace:
        with stage("session_read"):
            time.sleep(0.002)
        with stage("ranking"):
            pass
    assert list(trace.stages) == ["session_read", "ranking"]
    assert trace.stages["session_read"] >= 0.002
    assert trace.stages["ranking"] >= 0.0
    assert current_trace() is None


def test_repeated_stage_adds_up():
    with collect() as trace:
        for _ in range(3):
            with stage("candidates.covisitation"):
                time.sleep(0.001)
    assert list(trace.stages) == ["candidates.covisitation"]
    assert trace.stages["candidates.covisitation"] >= 0.003


def test_stage_recorded_when_block_raises():
    with collect() as trace, pytest.raises(KeyError), stage("rules"):
        raise KeyError("item")
    assert "rules" in trace.stages


def test_nested_traces_are_separate():
    with collect() as outer:
        with stage("outer"):
            pass
        with collect() as inner, stage("inner"):
            pass
        assert current_trace() is outer
    assert list(outer.stages) == ["outer"]
    assert list(inner.stages) == ["inner"]


def test_degraded_reasons_kept_once():
    with collect() as trace:
        mark_degraded("session_store_unavailable")
        mark_degraded("session_store_unavailable")
        mark_degraded("no_index")
    assert trace.degraded == ["session_store_unavailable", "no_index"]


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "x" * 65, "é"])
def test_invalid_stage_name_rejected(name):
    with (
        collect(),
        pytest.raises(ValueError, match="invalid stage name"),
        stage(name),
    ):
        pass


def test_invalid_degradation_reason_rejected():
    with collect(), pytest.raises(ValueError, match="invalid degradation reason"):
        mark_degraded("store, down")


def test_trace_reaches_copied_context_thread():
    def work():
        with stage("in_thread"):
            pass

    with collect() as trace, ThreadPoolExecutor(1) as pool:
        pool.submit(contextvars.copy_context().run, work).result()
    assert "in_thread" in trace.stages


def test_trace_reaches_asyncio_to_thread():
    def work():
        with stage("in_thread"):
            pass

    async def main():
        with collect() as trace:
            await asyncio.to_thread(work)
        return trace

    trace = asyncio.run(main())
    assert "in_thread" in trace.stages


def test_format_server_timing_in_milliseconds():
    header = format_server_timing({"session_read": 0.0004, "ranking": 0.0021}, 0.005)
    assert header == "session_read;dur=0.400, ranking;dur=2.100, total;dur=5.000"


def test_format_server_timing_empty():
    assert format_server_timing({}) == ""
    assert format_server_timing({}, 0.001) == "total;dur=1.000"


def test_parse_server_timing_round_trip():
    stages = {"session_read": 0.0004, "candidates.ann": 0.0012}
    parsed = parse_server_timing(format_server_timing(stages, 0.002))
    assert parsed == {"session_read": 0.4, "candidates.ann": 1.2, "total": 2.0}


def test_parse_server_timing_other_servers():
    header = 'cache;desc="Cache Read";dur=23.2, db;dur=53 ,  missedCache'
    expected = {"cache": 23.2, "db": 53.0, "missedCache": 0.0}
    assert parse_server_timing(header) == expected


def test_parse_server_timing_invalid_duration():
    with pytest.raises(ValueError, match="invalid Server-Timing dur 'fast'"):
        parse_server_timing("db;dur=fast")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return publish_test_build(tmp_path_factory.mktemp("indexes"))


def test_recommendation_server_timing_names_stages(redis_url, redis_prefix, published):
    indexes_dir, _, source_names = published
    app = _app(redis_url, redis_prefix, indexes_dir)
    responses = _send(
        app,
        [
            ("POST", "/v1/events", _event("timed", item(1, 2))),
            ("POST", RECOMMENDATIONS, {"session_id": "timed", "k": 3}),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200]

    timings = parse_server_timing(responses[1].headers["server-timing"])
    sources = [f"candidates.{name}" for name in source_names]
    for name in [*PIPELINE_STAGES, *sources]:
        assert name in timings
        assert timings[name] >= 0
    assert next(iter(timings)) == "session_read"
    assert list(timings)[-1] == "total"
    # Stages run one after another inside the request, so none exceeds it.
    assert max(timings.values()) == timings["total"]


def test_similar_items_server_timing(redis_url, redis_prefix, published):
    indexes_dir, _, _ = published
    app = _app(redis_url, redis_prefix, indexes_dir)
    (response,) = _send(app, [("GET", f"/v1/items/{item(2, 3)}/similar?k=3", None)])
    assert response.status_code == 200
    timings = parse_server_timing(response.headers["server-timing"])
    assert "session_read" not in timings
    assert {"candidates", "ranker", "rules", "total"} <= set(timings)
