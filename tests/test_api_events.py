"""The events and sessions API, run as the real app against real stores."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from recsys_api.app import create_app
from recsys_api.routes import events, health, sessions

from recsys.sessions import InProcessStore, SessionStore
from recsys.sessions.redis_store import RedisStore
from recsys.settings import Settings
from tests.conftest import RedisServer, free_port

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
T0 = 1_764_806_400_000

ClientFactory = Callable[..., TestClient]
# The routers under test; without the recommendations router the app has no
# build to load, so /readyz reports the session store alone.
ROUTERS = [health.router, events.router, sessions.router]


def click(session_id: str = "s1", ts: int = T0, **fields: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "event_type": "click",
        "item_id": "i1",
        "ts": ts,
        **fields,
    }


def stored(session_id: str = "s1", ts: int = T0, **fields: Any) -> dict[str, Any]:
    """The event as GET /v1/sessions shows it."""
    return {
        "session_id": session_id,
        "event_type": "click",
        "ts": ts,
        "item_id": "i1",
        "user_id": None,
        "query": None,
        "event_id": None,
        **fields,
    }


def invalid(field: str, value: Any, expected: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "invalid_input",
            "message": f"invalid {field}: got {value!r}; expected {expected}",
            "field": field,
            "value": value,
            "expected": expected,
        }
    }


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    clients: list[TestClient] = []
    stores: list[SessionStore] = []

    def make(store: SessionStore | None = None, **settings: Any) -> TestClient:
        store = store or InProcessStore()
        stores.append(store)
        app = create_app(
            Settings(**{"api_key": KEY, **settings}), store=store, routers=ROUTERS
        )
        client = TestClient(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    for store in stores:
        store.close()


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def test_post_one_event(client: TestClient) -> None:
    response = client.post("/v1/events", json=click(user_id="u1"), headers=AUTH)

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert client.get("/v1/sessions/s1").json() == {
        "session_id": "s1",
        "events": [stored(user_id="u1")],
    }


def test_post_batch_counts_duplicates(client: TestClient) -> None:
    batch = {
        "events": [
            click(ts=T0 + 2, item_id="b", event_id="e2"),
            click(ts=T0 + 1, item_id="a", event_id="e1"),
            click(ts=T0 + 3, item_id="c", event_id="e1"),
        ]
    }

    response = client.post("/v1/events", json=batch, headers=AUTH)

    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 1}
    assert client.get("/v1/sessions/s1").json() == {
        "session_id": "s1",
        "events": [
            stored(ts=T0 + 1, item_id="a", event_id="e1"),
            stored(ts=T0 + 2, item_id="b", event_id="e2"),
        ],
    }


def test_search_event_round_trip(client: TestClient) -> None:
    search = {"session_id": "s1", "event_type": "search", "query": " tea ", "ts": T0}

    client.post("/v1/events", json=search, headers=AUTH)

    assert client.get("/v1/sessions/s1").json()["events"] == [
        stored(event_type="search", item_id=None, query="tea")
    ]


def test_invalid_event_names_field(client: TestClient) -> None:
    response = client.post("/v1/events", json=click(ts=1_700_000_000), headers=AUTH)

    assert response.status_code == 422
    assert response.json() == invalid(
        "ts", 1_700_000_000, "it looks like seconds; send 1700000000000 milliseconds"
    )


def test_invalid_batch_event_names_index(client: TestClient) -> None:
    batch = {"events": [click(), click(event_type="view")]}

    response = client.post("/v1/events", json=batch, headers=AUTH)

    assert response.status_code == 422
    assert response.json() == invalid(
        "events[1].event_type",
        "view",
        "one of ['click', 'search', 'cart_add', 'cart_remove', 'purchase']",
    )
    # All or nothing: the valid first event was not stored either.
    assert client.get("/v1/sessions/s1").status_code == 404


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            [click()],
            invalid(
                "body",
                "a JSON array",
                'one event object, or {"events": [...]} for a batch',
            ),
        ),
        ({"events": []}, invalid("events", "0 events", "1 to 3 events per request")),
        (
            {"events": [click()] * 4},
            invalid("events", "4 events", "1 to 3 events per request"),
        ),
        ({"events": click()}, invalid("events", click(), "a JSON array of events")),
        (
            {"events": [click()], "extra": 1},
            invalid("extra", 1, 'only "events" beside a batch of events'),
        ),
        (
            click(color="red"),
            invalid(
                "color",
                "red",
                "one of the fields session_id, user_id, item_id, event_type, "
                "query, ts, event_id",
            ),
        ),
    ],
    ids=["array", "empty", "too-many", "not-a-list", "extra-key", "unknown-field"],
)
def test_malformed_bodies_get_422(
    make_client: ClientFactory, body: Any, expected: dict[str, Any]
) -> None:
    client = make_client(max_batch_events=3)

    response = client.post("/v1/events", json=body, headers=AUTH)

    assert response.status_code == 422
    assert response.json() == expected


def test_invalid_json_gets_400(client: TestClient) -> None:
    response = client.post(
        "/v1/events",
        content=b'{"session_id": ',
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_json",
            "message": "request body is not valid JSON: Expecting value: "
            "line 1 column 16 (char 15)",
        }
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"ts": NaN}', "NaN is not a JSON number"),
        (b'{"ts": -Infinity}', "-Infinity is not a JSON number"),
        (
            b'{"ts": ' + b"9" * 5000 + b"}",
            "a number has 5,000 digits; at most 1,000 are accepted",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "maximum recursion depth exceeded"),
    ],
    ids=["nan", "infinity", "5000-digit-number", "deep-nesting"],
)
def test_nonstandard_json_gets_400(
    client: TestClient, body: bytes, reason: str
) -> None:
    response = client.post(
        "/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("request body is not valid JSON: " + reason)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"session_id": "s1", "event_type": "click", "item_id": "i1", '
            b'"ts": 1e400}',
            invalid("ts", "inf", "a finite number of milliseconds"),
        ),
        (
            b'{"session_id": "s1", "event_type": "click", "item_id": "a\\ud800b", '
            b'"ts": %d}' % T0,
            invalid(
                "item_id",
                "a\\ud800b",
                "valid Unicode text; character 2 is a lone surrogate",
            ),
        ),
        (
            b'{"session_id": "s1", "event_type": "search", "query": "tv \\udc00", '
            b'"ts": %d}' % T0,
            invalid(
                "query",
                "tv \\udc00",
                "valid Unicode text; character 4 is a lone surrogate",
            ),
        ),
    ],
    ids=["overflowing-ts", "surrogate-in-id", "surrogate-in-query"],
)
def test_unencodable_values_get_422(
    client: TestClient, body: bytes, expected: dict[str, Any]
) -> None:
    response = client.post(
        "/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json() == expected
    assert client.get("/v1/sessions/s1").status_code == 404


def too_large(what: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "payload_too_large",
            "message": f"{what} exceeds the limit of 1024 bytes; send fewer events "
            "per request",
        }
    }


def test_large_content_length_gets_413(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=1024)
    body = b'{"events": [' + b" " * 2000 + b"]}"

    response = client.post("/v1/events", content=body, headers=AUTH)

    assert response.status_code == 413
    assert response.json() == too_large(f"request body of {len(body)} bytes")


def test_large_streamed_body_gets_413(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=1024)

    def chunks() -> Iterator[bytes]:
        # No Content-Length: the body arrives chunked and is counted as read.
        yield b'{"events": ['
        for _ in range(10):
            yield b" " * 500

    response = client.post("/v1/events", content=chunks(), headers=AUTH)

    assert response.status_code == 413
    assert "content-length" not in response.request.headers
    assert response.json() == too_large("request body")


def test_body_at_limit_accepted(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=1024)
    body = b'{"session_id": "s1", "event_type": "click", "item_id": "i", "ts": '
    body += str(T0).encode() + b"}"
    body = body.ljust(1024)

    response = client.post("/v1/events", content=body, headers=AUTH)

    assert response.status_code == 200


UNAUTHORIZED_MISSING = {
    "error": {
        "code": "unauthorized",
        "message": "missing API key; send it in the X-API-Key header or as "
        "Authorization: Bearer <key>",
    }
}
UNAUTHORIZED_WRONG = {"error": {"code": "unauthorized", "message": "invalid API key"}}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, UNAUTHORIZED_MISSING),
        ({"X-API-Key": "wrong"}, UNAUTHORIZED_WRONG),
        ({"Authorization": f"Basic {KEY}"}, UNAUTHORIZED_MISSING),
        ({"Authorization": "Bearer wrong"}, UNAUTHORIZED_WRONG),
        ({"X-API-Key": KEY[:-1]}, UNAUTHORIZED_WRONG),
    ],
    ids=["none", "wrong-header", "basic", "wrong-bearer", "prefix"],
)
def test_write_without_key_gets_401(
    client: TestClient, headers: dict[str, str], expected: dict[str, Any]
) -> None:
    response = client.post("/v1/events", json=click(), headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == expected
    assert client.get("/v1/sessions/s1").status_code == 404


def test_bearer_key_accepted(client: TestClient) -> None:
    response = client.post(
        "/v1/events", json=click(), headers={"Authorization": f"Bearer {KEY}"}
    )

    assert response.status_code == 200


def test_server_without_key_rejects_writes(make_client: ClientFactory) -> None:
    client = make_client(api_key=None)

    response = client.post("/v1/events", json=click(), headers=AUTH)

    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "unauthorized",
            "message": "the server has no API key configured; set RECSYS_API_KEY "
            "to accept this request",
        }
    }


def test_reads_can_require_key(make_client: ClientFactory) -> None:
    client = make_client(require_key_for_reads=True)
    client.post("/v1/events", json=click(), headers=AUTH)

    assert client.get("/v1/sessions/s1").json() == UNAUTHORIZED_MISSING
    assert client.get("/v1/sessions/s1", headers=AUTH).status_code == 200
    assert client.get("/v1/users/u1/sessions").status_code == 401


def test_key_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    client.post("/v1/events", json=click(), headers=AUTH)
    client.post("/v1/events", json=click(), headers={"X-API-Key": KEY + "x"})

    assert KEY not in caplog.text


def test_user_sessions(client: TestClient) -> None:
    client.post("/v1/events", json=click("s1", user_id="u1"), headers=AUTH)
    client.post("/v1/events", json=click("s2", user_id="u1"), headers=AUTH)

    assert client.get("/v1/users/u1/sessions").json() == {
        "user_id": "u1",
        "session_ids": ["s2", "s1"],
    }
    assert client.get("/v1/users/u2/sessions").json() == {
        "error": {"code": "not_found", "message": "user 'u2' has no live sessions"}
    }


def test_unknown_session_gets_404(client: TestClient) -> None:
    response = client.get("/v1/sessions/nope")

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": "session 'nope' not found: it has no events or expired",
        }
    }


def test_unknown_route_gets_json_404(client: TestClient) -> None:
    response = client.get("/v2/nothing")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"session_store": {"ready": True, "backend": "memory"}},
    }


def test_real_redis_round_trip(
    make_client: ClientFactory, redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    client = make_client(store)
    batch = {"events": [click(ts=T0 + i, item_id=f"i{i}") for i in range(3)]}

    response = client.post("/v1/events", json=batch, headers=AUTH)

    assert response.json() == {"accepted": 3, "duplicates": 0}
    assert client.get("/v1/sessions/s1").json() == {
        "session_id": "s1",
        "events": [stored(ts=T0 + i, item_id=f"i{i}") for i in range(3)],
    }
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"session_store": {"ready": True, "backend": "redis"}},
    }
    assert len(store.log) == 3


STORE_UNAVAILABLE = {
    "error": {"code": "store_unavailable", "message": "session store unavailable"}
}


def test_unreachable_redis_gets_503(make_client: ClientFactory) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = make_client(RedisStore(url, connect_timeout_seconds=0.5))

    for method, path in [("POST", "/v1/events"), ("GET", "/v1/sessions/s1")]:
        start = time.monotonic()
        response = client.request(method, path, json=click(), headers=AUTH)
        elapsed = time.monotonic() - start

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json() == STORE_UNAVAILABLE
        assert elapsed < 1.0


def test_killed_redis_gets_503_then_recovers(
    make_client: ClientFactory, redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    client = make_client(RedisStore(server.url, read_timeout_seconds=0.5))
    assert client.post("/v1/events", json=click(), headers=AUTH).status_code == 200
    server.kill()

    start = time.monotonic()
    response = client.post("/v1/events", json=click(ts=T0 + 1), headers=AUTH)
    assert time.monotonic() - start < 1.0
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json() == STORE_UNAVAILABLE
    assert client.get("/readyz").json() == {
        "status": "not_ready",
        "checks": {
            "session_store": {
                "ready": False,
                "backend": "redis",
                "error": "unavailable",
            }
        },
    }

    server.start()
    assert client.post("/v1/events", json=click(ts=T0 + 2), headers=AUTH).json() == {
        "accepted": 1,
        "duplicates": 0,
    }
    assert client.get("/readyz").status_code == 200
