"""The benchmark's HTTP client, traffic and report, against a real local server.

The server is the standard library's HTTP server on 127.0.0.1 in a thread,
which returns known statuses and a known `Server-Timing` header.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recsys.benchmarks.http_load import (
    Request,
    check_loopback,
    run_closed_loop,
    run_sequential,
)
from recsys.benchmarks.latency import ratios
from recsys.benchmarks.server import read_memory, worker_pids
from recsys.benchmarks.traffic import Traffic, TrafficShape
from recsys.errors import ValidationError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Server-Timing", "session_read;dur=0.5, total;dur=1.25")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        status = 404 if self.path == "/missing" else 200
        self._reply(status, b'{"status": "ok"}')

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        received = json.loads(self.rfile.read(length))
        self._reply(200, json.dumps({"echo": received}).encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_sequential_counts_statuses(server):
    requests = [Request("GET", "/ok")] * 5 + [Request("GET", "/missing")] * 2
    result = run_sequential("127.0.0.1", server, requests)
    assert result.count == 7
    assert result.statuses == {200: 5, 404: 2}
    assert all(latency > 0 for latency in result.latencies)
    assert result.wall_seconds >= sum(result.latencies)


def test_sequential_parses_server_timing(server):
    result = run_sequential("127.0.0.1", server, [Request("POST", "/x", {"a": 1})] * 3)
    assert result.stages == [{"session_read": 0.5, "total": 1.25}] * 3
    stages = result.stage_percentiles_ms()
    assert stages["session_read"] == {"p50": 0.5, "p95": 0.5, "p99": 0.5}


def test_sequential_counts_refused_connection():
    # A port that was free a moment ago has no server: status 0 per request.
    from recsys.benchmarks.server import free_port

    port = free_port()
    result = run_sequential("127.0.0.1", port, [Request("GET", "/")] * 2)
    assert result.statuses == {0: 2}


def test_closed_loop_counts_refused_connections():
    from recsys.benchmarks.server import free_port

    port = free_port()
    result = run_closed_loop("127.0.0.1", port, [Request("GET", "/")], 1, 0.05)
    assert result.count >= 1
    assert set(result.statuses) == {0}


def test_closed_loop_keeps_connections_busy(server):
    requests = [Request("GET", "/ok"), Request("POST", "/y", {"b": 2})]
    result = run_closed_loop("127.0.0.1", server, requests, concurrency=3, seconds=0.3)
    assert result.count > 3
    assert set(result.statuses) == {200}
    assert result.throughput > 0


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "0.0.0.0", ""])
def test_non_loopback_host_rejected(host):
    with pytest.raises(ValidationError, match="loopback"):
        check_loopback(host)


def test_loopback_hosts_accepted():
    check_loopback("127.0.0.1")
    check_loopback("::1")


def test_traffic_draws_catalog_items():
    item_ids = [f"item-{i}" for i in range(50)]
    shape = TrafficShape(n_sessions=40, max_session_events=4, known_user_share=0.5)
    traffic = Traffic(item_ids, shape, prefix="t")

    lengths = [len(session["item_ids"]) for session in traffic.sessions]
    assert min(lengths) >= 1
    assert max(lengths) <= 4
    assert all(item in item_ids for s in traffic.sessions for item in s["item_ids"])
    users = [session["user_id"] for session in traffic.sessions]
    assert any(user is None for user in users)
    assert any(user is not None for user in users)

    seeded = traffic.seed_requests(batch_size=10)
    stored = [event for request in seeded for event in request.body["events"]]
    assert len(stored) == sum(lengths)
    assert all(len(request.body["events"]) <= 10 for request in seeded)


def test_traffic_similar_paths_quote_ids():
    traffic = Traffic(["a/b c"], TrafficShape(n_sessions=1))
    (request,) = traffic.similar_requests(1)
    assert request.path == "/v1/items/a%2Fb%20c/similar?k=20"


def _figures(throughput: float, p99: float) -> dict:
    return {
        "sequential": {"latency_ms": {"p99": p99}},
        "closed_loop": {"throughput_per_second": throughput},
    }


def test_ratios_against_healthz():
    endpoints = {
        "healthz": _figures(1000.0, 2.0),
        "recommendations": _figures(250.0, 8.0),
        "events_batch": _figures(150.0, 4.0),
    }
    result = ratios(endpoints, event_batch_size=100)
    assert result["recommendations_throughput_vs_healthz"] == 0.25
    assert result["recommendations_p99_vs_healthz"] == 4.0
    assert result["events_per_second_batched"] == 15000.0


def test_memory_of_this_process():
    memory = read_memory(os.getpid())
    assert memory["Rss"] > 0
    assert 0 < memory["Pss"] <= memory["Rss"]
    # Without uvicorn workers, the process itself serves.
    assert worker_pids(os.getpid()) == [os.getpid()]
