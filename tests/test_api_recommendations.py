"""The recommendation endpoints, run as the real app on published builds.

Builds hold a pipeline fitted on the synthetic sessions of `test_pipeline`,
where the next item is always the current one plus one inside its block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from recsys_api.app import create_app
from recsys_api.routes.recommendations import PipelineHolder, install

from recsys.builds import BuildStore, utc_now
from recsys.evaluation import Cases, run_cases
from recsys.interactions import SessionData
from recsys.models.pipeline import (
    PIPELINE_DIR,
    PipelineRecommender,
    fit_pipeline,
    prefix_cases,
    save_pipeline,
)
from recsys.sessions import InProcessStore, SessionStore
from recsys.sessions.redis_store import RedisStore
from recsys.settings import Settings
from recsys.timing import parse_server_timing
from tests.conftest import RedisServer, free_port
from tests.test_pipeline import config, item, synthetic_events

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
T0 = 1_764_806_400_000


@pytest.fixture(scope="module")
def data() -> SessionData:
    return SessionData.from_events(synthetic_events())


def served_config():
    # Event times on, so the replay test also checks that times pass through.
    return config(use_timestamps=True)


@pytest.fixture(scope="module")
def fitted(data):
    return fit_pipeline(data, served_config())


def publish(indexes_dir: Path, pipeline, data) -> str:
    builds = BuildStore(indexes_dir)
    with builds.lock():
        staged = builds.stage()
        save_pipeline(staged.path / PIPELINE_DIR, pipeline, served_config(), data)
        return builds.publish(staged, {"created_at": utc_now()}).version


@pytest.fixture(scope="module")
def published(tmp_path_factory, fitted, data) -> tuple[Path, str]:
    indexes_dir = tmp_path_factory.mktemp("indexes")
    return indexes_dir, publish(indexes_dir, fitted, data)


@pytest.fixture
def make_client(published) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(store: SessionStore | None = None, **settings: Any) -> TestClient:
        values = {"api_key": KEY, "indexes_dir": published[0], **settings}
        app = create_app(Settings(**values), store=store or InProcessStore())
        client = TestClient(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def click(session_id: str, item_id: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "event_type": "click",
        "item_id": item_id,
        "ts": ts,
        **fields,
    }


def recommend(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_response_body_matches_pipeline(client, fitted, published):
    client.post("/v1/events", json=click("s1", item(1, 2), T0), headers=AUTH)
    body = recommend(client, session_id="s1", k=3)

    from recsys.events import Event

    expected = fitted.recommend([Event("s1", "click", T0, item_id=item(1, 2))], 3)
    assert body == {
        "session_id": "s1",
        "items": [
            {"item_id": i.item_id, "score": i.score, "sources": list(i.sources)}
            for i in expected.items
        ],
        "build_version": published[1],
        "ignored": {"unknown_items": 0, "search_events": 0, "unknown_exclude": 0},
        "degraded": False,
    }
    assert body["items"][0]["item_id"] == item(1, 3)


def test_get_equals_post(client):
    client.post("/v1/events", json=click("s2", item(2, 5), T0), headers=AUTH)
    posted = recommend(
        client, session_id="s2", k=5, exclude=[item(2, 6)], category=None
    )
    got = client.get(
        "/v1/recommendations",
        params={"session_id": "s2", "k": 5, "exclude": [item(2, 6)]},
    )
    assert got.status_code == 200
    assert got.json() == posted
    assert item(2, 6) not in [i["item_id"] for i in posted["items"]]


def test_default_k_is_20(client):
    assert len(recommend(client, session_id="new")["items"]) == 20


@pytest.mark.parametrize("k", [0, 201, "many"])
def test_invalid_k_gets_422(client, k):
    response = client.post("/v1/recommendations", json={"session_id": "s", "k": k})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body.k"
    got = client.get("/v1/recommendations", params={"session_id": "s", "k": k})
    assert got.status_code == 422
    assert got.json()["error"]["field"] == "query.k"


def test_unknown_field_gets_422(client):
    response = client.post("/v1/recommendations", json={"session_id": "s", "kk": 3})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body.kk"


def test_long_exclude_id_gets_422(client):
    body = {"session_id": "s", "exclude": ["x" * 257]}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body.exclude.0"


def test_oversized_body_gets_413(make_client):
    client = make_client(max_body_bytes=2048)
    body = {"session_id": "s", "exclude": [f"item-{i}" for i in range(400)]}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    small = client.post("/v1/recommendations", json={"session_id": "s", "k": 3})
    assert small.status_code == 200


def test_accepted_event_changes_next_recommendation(client):
    before = recommend(client, session_id="fresh", k=5)
    client.post("/v1/events", json=click("fresh", item(3, 6), T0), headers=AUTH)
    after = recommend(client, session_id="fresh", k=5)
    assert after["items"] != before["items"]
    assert after["items"][0]["item_id"] == item(3, 7)


def test_unknown_items_counted(client):
    client.post(
        "/v1/events",
        json={
            "events": [
                click("u", "not-in-catalog", T0),
                click("u", item(0, 4), T0 + 1000),
            ]
        },
        headers=AUTH,
    )
    body = recommend(client, session_id="u", k=2, exclude=["gone"])
    assert body["ignored"] == {
        "unknown_items": 1,
        "search_events": 0,
        "unknown_exclude": 1,
    }
    assert body["items"][0]["item_id"] == item(0, 5)


def test_purchased_item_not_recommended(client):
    events = [
        click("p", item(1, 1), T0),
        click("p", item(1, 2), T0 + 1000, event_type="purchase"),
    ]
    client.post("/v1/events", json={"events": events}, headers=AUTH)
    ids = [i["item_id"] for i in recommend(client, session_id="p", k=30)["items"]]
    assert item(1, 2) not in ids
    assert len(ids) == 30


def test_context_item_on_new_session(client):
    body = recommend(client, session_id="empty", k=4, context_item_id=item(2, 8))
    ids = [i["item_id"] for i in body["items"]]
    assert ids[0] == item(2, 9)
    assert item(2, 8) not in ids


def test_similar_items(client, published):
    response = client.get(f"/v1/items/{item(0, 3)}/similar", params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["item_id"] == item(0, 3)
    assert body["build_version"] == published[1]
    assert body["items"][0]["item_id"] == item(0, 4)
    assert len(body["items"]) == 3


def test_similar_unknown_item_gets_404(client, published):
    response = client.get("/v1/items/nope/similar")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": f"item 'nope' not found in build {published[1]}",
        }
    }


def test_no_build_means_not_ready(make_client, tmp_path):
    client = make_client(indexes_dir=tmp_path)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["build"] == {"ready": False, "version": None}
    response = client.post("/v1/recommendations", json={"session_id": "s"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "build_unavailable"


def test_ready_with_build(client, published):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["build"] == {"ready": True, "version": published[1]}


def test_unreachable_redis_degrades(make_client):
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = make_client(RedisStore(url, connect_timeout_seconds=0.2))
    started = time.monotonic()
    body = recommend(client, session_id="s1", k=5)
    assert time.monotonic() - started < 1.0
    assert body["degraded"] is True
    assert len(body["items"]) == 5
    for recommended in body["items"]:
        assert {"popular", "trending"} & set(recommended["sources"])


def test_paused_redis_answers_within_timeout(
    make_client, redis_server_factory: Callable[..., RedisServer]
):
    server = redis_server_factory()
    store = RedisStore(server.url, read_timeout_seconds=2.0)
    client = make_client(store)
    client.post("/v1/events", json=click("s1", item(1, 1), T0), headers=AUTH)
    assert recommend(client, session_id="s1", k=3)["degraded"] is False

    server.pause()
    try:
        started = time.monotonic()
        body = recommend(client, session_id="s1", k=3)
        elapsed = time.monotonic() - started
    finally:
        server.resume()
    assert body["degraded"] is True
    assert len(body["items"]) == 3
    # The session timeout is 0.3 s; the rest is slack for a loaded machine.
    assert elapsed < 1.0
    # The read given up on finishes in the background; the next request
    # reads the session again.
    assert recommend(client, session_id="s1", k=3)["degraded"] is False


def test_server_timing_names_the_stages(client):
    client.post("/v1/events", json=click("st", item(1, 2), T0), headers=AUTH)
    response = client.post("/v1/recommendations", json={"session_id": "st"})
    assert response.status_code == 200
    stages = parse_server_timing(response.headers["Server-Timing"])
    expected = ["session_read", "pipeline", "encode", "candidates", "features"]
    for name in [*expected, "ranker", "rules", "total"]:
        assert name in stages, name


def test_redis_store_freshness(make_client, redis_url, redis_prefix):
    client = make_client(RedisStore(redis_url, prefix=redis_prefix))
    client.post("/v1/events", json=click("r", item(2, 1), T0), headers=AUTH)
    body = recommend(client, session_id="r", k=3)
    assert body["degraded"] is False
    assert body["items"][0]["item_id"] == item(2, 2)


# -- hot swap ------------------------------------------------------------------


@pytest.fixture
def two_builds(tmp_path, fitted, data) -> tuple[Path, str, str]:
    first = publish(tmp_path, fitted, data)
    time.sleep(1.1)  # versions are named by the second
    second = publish(tmp_path, fitted, data)
    BuildStore(tmp_path).switch(first)
    return tmp_path, first, second


def test_admin_reload_swaps_build(make_client, two_builds):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    assert recommend(client, session_id="s", k=1)["build_version"] == first

    denied = client.post("/v1/admin/reload", json={"version": second})
    assert denied.status_code == 401

    response = client.post("/v1/admin/reload", json={"version": second}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"build_version": second, "previous_version": first}
    assert recommend(client, session_id="s", k=1)["build_version"] == second


def test_broken_build_keeps_old_one(make_client, two_builds):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    ranker_file = indexes_dir / "builds" / second / PIPELINE_DIR / "ranker"
    for path in ranker_file.iterdir():
        path.write_text("corrupt\n")

    response = client.post("/v1/admin/reload", json={"version": second}, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "reload_failed"
    assert f"still serving {first}" in response.json()["error"]["message"]
    assert recommend(client, session_id="s", k=1)["build_version"] == first


def test_current_pointer_change_is_picked_up(make_client, two_builds):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    holder = install(
        client.app, PipelineHolder(BuildStore(indexes_dir), refresh_interval_seconds=0)
    )
    holder.reload()
    assert holder.version == first

    BuildStore(indexes_dir).switch(second)
    deadline = time.monotonic() + 20
    version = first
    while version != second and time.monotonic() < deadline:
        version = recommend(client, session_id="s", k=1)["build_version"]
        time.sleep(0.05)
    assert version == second


def test_pinned_version_kept_until_pointer_moves(make_client, two_builds):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    install(
        client.app, PipelineHolder(BuildStore(indexes_dir), refresh_interval_seconds=0)
    ).reload()
    assert recommend(client, session_id="s", k=1)["build_version"] == first

    client.post("/v1/admin/reload", json={"version": second}, headers=AUTH)
    for _ in range(5):
        assert recommend(client, session_id="s", k=1)["build_version"] == second


def test_broken_current_build_tried_once(make_client, two_builds, caplog):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    holder = install(
        client.app, PipelineHolder(BuildStore(indexes_dir), refresh_interval_seconds=0)
    )
    holder.reload()
    ranker_dir = indexes_dir / "builds" / second / PIPELINE_DIR / "ranker"
    for path in ranker_dir.iterdir():
        path.write_text("corrupt\n")
    BuildStore(indexes_dir).switch(second)

    def failures() -> int:
        return sum("failed, still serving" in r.getMessage() for r in caplog.records)

    deadline = time.monotonic() + 20
    while failures() == 0 and time.monotonic() < deadline:
        assert recommend(client, session_id="s", k=1)["build_version"] == first
        time.sleep(0.05)
    for _ in range(5):
        assert recommend(client, session_id="s", k=1)["build_version"] == first
    assert failures() == 1


def test_requests_during_reload_all_succeed(make_client, two_builds):
    indexes_dir, first, second = two_builds
    client = make_client(indexes_dir=indexes_dir)
    versions: list[str] = []
    failures: list[str] = []

    def hammer() -> None:
        for _ in range(15):
            response = client.post(
                "/v1/recommendations", json={"session_id": "h", "k": 5}
            )
            if response.status_code != 200:
                failures.append(response.text)
            else:
                versions.append(response.json()["build_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for version in (second, first, second):
        reply = client.post("/v1/admin/reload", json={"version": version}, headers=AUTH)
        assert reply.status_code == 200
    for thread in threads:
        thread.join()
    assert failures == []
    assert set(versions) <= {first, second}
    assert len(versions) == 45


# -- parity with the offline evaluator ----------------------------------------


def test_http_replay_matches_evaluator(client, data):
    served = client.app.state.pipeline_holder.pipeline
    held_out = np.arange(data.n_sessions - 40, data.n_sessions)
    rows = prefix_cases(data, held_out, max_cases=25, seed=1)
    lengths = rows[:, 1]
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    spans = [np.arange(data.indptr[s], data.indptr[s] + p) for s, p in rows.tolist()]
    flat = np.concatenate(spans)
    cases = Cases(
        case_ids=np.arange(len(rows)),
        prefix_indptr=indptr,
        prefix_items=data.items[flat],
        truth={
            "next": [
                [data.vocab.decode([data.items[span[-1] + 1]])[0]] for span in spans
            ]
        },
        prefix_event_types=data.event_types[flat],
        prefix_ts=data.ts[flat],
    )
    ranked, _ = run_cases(PipelineRecommender(pipeline=served), cases, 20)

    for case, span in enumerate(spans):
        session_id = f"replay-{case}"
        events = [
            click(
                session_id, data.vocab.decode([data.items[row]])[0], int(data.ts[row])
            )
            for row in span
        ]
        client.post("/v1/events", json={"events": events}, headers=AUTH)
        body = recommend(client, session_id=session_id, k=20)
        served_ids = [i["item_id"] for i in body["items"]]
        assert served_ids == data.vocab.decode(ranked[case]), case
