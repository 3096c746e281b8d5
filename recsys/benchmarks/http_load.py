"""A small HTTP/1.1 load generator for benchmarks against a local server.

Two modes, both over keep-alive connections:

- `run_sequential`: one connection, one request at a time. Its latencies are
  those of a single client, with no queueing in the server.
- `run_closed_loop`: `concurrency` connections, each sending its next request
  as soon as the previous response arrives, for a fixed time. Its request
  rate is the server's throughput at that concurrency.

The client parses only what the benchmark needs (status, `Content-Length`,
`Server-Timing`) and rejects chunked responses. Requests are prepared as
bytes up front, so the client spends its time on the wire, not on encoding.
It refuses any host but the loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.errors import ValidationError
from recsys.timing import parse_server_timing

_HEADER_END = b"\r\n\r\n"
# Status recorded for a request whose connection failed before a response.
NO_RESPONSE = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared HTTP request: method, path and JSON body (or None)."""

    method: str
    path: str
    body: object = None

    def encode(self, host: str, port: int, headers: dict[str, str]) -> bytes:
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self.body is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass
class LoadResult:
    """Latencies (seconds) and statuses of one run, with its wall time."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    # Server-Timing entries, milliseconds, one dict per response.
    stages: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Responses per second over the run's wall time."""
        return self.count / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentiles_ms(self) -> dict[str, float]:
        """Return p50, p95, p99 and max latency in milliseconds."""
        if not self.latencies:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        values = np.asarray(self.latencies) * 1000
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "max": float(values.max()),
        }

    def stage_percentiles_ms(self) -> dict[str, dict[str, float]]:
        """Return p50/p95/p99 (ms) per Server-Timing stage.

        A response that lacks a stage counts as 0 ms for it, so a source
        skipped for anonymous users lowers its percentiles.
        """
        names: dict[str, None] = {}
        for entry in self.stages:
            names.update(dict.fromkeys(entry))
        summary = {}
        for name in names:
            values = np.array([entry.get(name, 0.0) for entry in self.stages])
            p50, p95, p99 = np.percentile(values, [50, 95, 99])
            summary[name] = {"p50": float(p50), "p95": float(p95), "p99": float(p99)}
        return summary


def check_loopback(host: str) -> None:
    """Raise ValidationError unless `host` is a loopback IP address."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValidationError(
            "host",
            host,
            "a loopback address such as 127.0.0.1; benchmarks "
            "send traffic only to this machine",
        )


def _parse_head(head: bytes) -> tuple[int, int, str | None]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    server_timing = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"server-timing":
            server_timing = value.strip().decode()
        elif key == b"transfer-encoding":
            raise ValueError(
                f"unsupported Transfer-Encoding {value.strip().decode()!r}: "
                "the benchmark client reads Content-Length bodies only"
            )
    return status, length, server_timing


class _BlockingConnection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, payload: bytes) -> tuple[int, str | None, bytes]:
        self.sock.sendall(payload)
        while _HEADER_END not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(_HEADER_END)
        status, length, server_timing = _parse_head(head)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, server_timing, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _record(
    result: LoadResult, status: int, server_timing: str | None, seconds: float
) -> None:
    result.latencies.append(seconds)
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if server_timing is not None:
        result.stages.append(parse_server_timing(server_timing))


def run_sequential(
    host: str,
    port: int,
    requests: Sequence[Request],
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> LoadResult:
    """Send `requests` one after another on one connection and time each.

    A request whose connection fails (refused, reset, or closed before the
    response) counts with status 0, and the next request opens a new
    connection.
    """
    check_loopback(host)
    headers = headers or {}
    payloads = [request.encode(host, port, headers) for request in requests]
    connection: _BlockingConnection | None = None
    result = LoadResult()
    started = time.perf_counter()
    try:
        for payload in payloads:
            sent = time.perf_counter()
            try:
                if connection is None:
                    connection = _BlockingConnection(host, port, timeout)
                status, server_timing, _ = connection.exchange(payload)
            except (ConnectionError, TimeoutError):
                if connection is not None:
                    connection.close()
                connection = None
                status, server_timing = NO_RESPONSE, None
            _record(result, status, server_timing, time.perf_counter() - sent)
    finally:
        if connection is not None:
            connection.close()
    result.wall_seconds = time.perf_counter() - started
    return result


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    return reader, writer


async def _closed_loop_worker(
    host: str,
    port: int,
    payloads: Iterator[bytes],
    deadline: float,
    result: LoadResult,
) -> None:
    connection: tuple[asyncio.StreamReader, Any] | None = None
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                if connection is None:
                    connection = await _open(host, port)
                reader, writer = connection
                writer.write(next(payloads))
                head = await reader.readuntil(_HEADER_END)
                status, length, server_timing = _parse_head(head[: -len(_HEADER_END)])
                if length:
                    await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError):
                if connection is not None:
                    connection[1].close()
                connection = None
                status, server_timing = NO_RESPONSE, None
            _record(result, status, server_timing, time.perf_counter() - sent)
    finally:
        if connection is not None:
            connection[1].close()


def _cycle(payloads: list[bytes]) -> Iterator[bytes]:
    while True:
        yield from payloads


def run_closed_loop(
    host: str,
    port: int,
    requests: Sequence[Request],
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Keep `concurrency` requests in flight for `seconds`, cycling `requests`.

    Requests are shared by the connections in order, so each request of the
    list is sent about equally often. Requests still in flight at the
    deadline complete and count.
    """
    check_loopback(host)
    if concurrency < 1:
        raise ValidationError("concurrency", concurrency, "an integer >= 1")
    headers = headers or {}
    payloads = _cycle([request.encode(host, port, headers) for request in requests])
    result = LoadResult()

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _closed_loop_worker(host, port, payloads, deadline, result)
                for _ in range(concurrency)
            )
        )

    started = time.perf_counter()
    asyncio.run(main())
    result.wall_seconds = time.perf_counter() - started
    return result
