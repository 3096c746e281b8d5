"""`recsys serve --workers 2`: one scrape of /metrics counts every worker."""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path

import pytest

from recsys.benchmarks.latency import metrics_request_counts
from recsys.benchmarks.server import ServerProcess, free_port, worker_pids

HOST = "127.0.0.1"
VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {key.decode(): value.decode() for key, value in pairs}


def get_on_new_connection(port: int, path: str) -> int:
    # A new connection per request lets the kernel hand it to either worker.
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_two_workers_share_one_metrics_directory(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != VARIABLE}
    env |= {
        "REDIS_URL": redis_url,
        "RECSYS_REDIS_PREFIX": redis_prefix,
        "RECSYS_INDEXES_DIR": str(tmp_path / "indexes"),
        "OMP_NUM_THREADS": "1",
    }
    port = free_port(HOST)
    argv = [sys.executable, "-m", "recsys", "--log-level", "WARNING", "serve"]
    argv += ["--port", str(port), "--workers", "2", "--no-access-log"]
    server = ServerProcess(
        argv,
        HOST,
        port,
        env,
        ready_path="/healthz",
        ready_timeout_seconds=60,
        log_path=tmp_path / "server.log",
    )
    with server:
        pids = worker_pids(server.pid)
        directories = {environment_of(pid).get(VARIABLE) for pid in pids}
        assert len(pids) == 2
        assert len(directories) == 1
        directory = Path(str(directories.pop()))
        assert directory.is_dir()

        before = metrics_request_counts(HOST, port).get("/healthz", 0.0)
        statuses = [get_on_new_connection(port, "/healthz") for _ in range(40)]
        after = metrics_request_counts(HOST, port).get("/healthz", 0.0)

        assert statuses == [200] * 40
        assert after - before == 40

    assert not directory.exists()
