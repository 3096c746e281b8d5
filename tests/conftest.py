"""Shared fixtures: real Redis servers, per-test key prefixes, a fake clock.

Redis tests use the server at REDIS_URL (default redis://127.0.0.1:6379/0)
under a key prefix unique to the test, and delete only keys under that
prefix. Without a reachable server they start a private `redis-server`;
without that binary they are skipped, except under CI=true, where they fail.
Tests that stop or kill Redis use `redis_server_factory`, which starts
private servers on free loopback ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recsys.settings import mask_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    """A clock in seconds, like `time.monotonic`, that moves only on `advance`."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RedisServer:
    """A private redis-server on a free loopback port, data under `directory`."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_redis(self.url, timeout_seconds=10)

    def kill(self) -> None:
        """Stop the server with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, replies stop."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


def wait_for_redis(url: str, *, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not redis_answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server at {url} did not start")
        time.sleep(0.05)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete the keys under `prefix`, and nothing else."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    finally:
        client.close()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires Redis")
    pytest.skip(reason)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a reachable Redis server: REDIS_URL, the default, or a private one."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if redis_answers(url):
        yield url
        return
    if shutil.which("redis-server") is None:
        _skip_or_fail(
            f"no Redis server answers at {mask_url(url)} and redis-server is "
            "not installed"
        )
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers; each is killed when the test ends."""
    if shutil.which("redis-server") is None:
        _skip_or_fail("redis-server is not installed")
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.resume()
        server.kill()
