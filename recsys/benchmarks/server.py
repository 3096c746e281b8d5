"""Start a server process for a benchmark and read its workers' memory.

`ServerProcess` runs a command line (normally `recsys serve`) in its own
process group, waits until a readiness path returns 200 on the loopback
address and stops the group on exit. `worker_pids` finds the processes that
serve requests and `read_memory` reads their RSS and PSS from
`/proc/<pid>/smaps_rollup` (Linux 4.14 and later).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from recsys.benchmarks.http_load import check_loopback
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

# smaps_rollup fields the report shows, in the kernel's spelling.
MEMORY_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Swap")


class ServerStartError(RecsysError):
    """The benchmark server exited or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` at the time of the call."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_memory(pid: int) -> dict[str, int]:
    """Return the `MEMORY_FIELDS` of process `pid` in bytes."""
    path = Path(f"/proc/{pid}/smaps_rollup")
    values = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in MEMORY_FIELDS:
            values[name] = int(rest.split()[0]) * 1024
    return values


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(child) for child in text]
    return children


def _command_line(pid: int) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode(errors="replace")


def worker_pids(master_pid: int) -> list[int]:
    """Return the pids that serve requests under `master_pid`.

    uvicorn with `--workers N` (N > 1) spawns N worker processes through
    multiprocessing; with one worker the master serves requests itself.
    Helper processes (multiprocessing's resource tracker) are left out.
    """
    workers = [
        pid
        for pid in _children(master_pid)
        if "spawn_main" in _command_line(pid)
        or "multiprocessing-fork" in _command_line(pid)
    ]
    return sorted(workers) or [master_pid]


class ServerProcess:
    """A server command run for the length of a `with` block."""

    def __init__(
        self,
        argv: Sequence[str],
        host: str,
        port: int,
        env: Mapping[str, str],
        ready_path: str = "/readyz",
        ready_timeout_seconds: float = 120.0,
        log_path: Path | None = None,
    ) -> None:
        check_loopback(host)
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.env = dict(env)
        self.ready_path = ready_path
        self.ready_timeout_seconds = ready_timeout_seconds
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        log.info("starting server: %s", " ".join(self.argv))
        if self.log_path is None:
            self.process = self._spawn(subprocess.DEVNULL)
        else:
            # The child keeps its own descriptor of the log file.
            with open(self.log_path, "ab") as log_file:
                self.process = self._spawn(log_file)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, output: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def _wait_ready(self) -> None:
        url = f"http://{self.host}:{self.port}{self.ready_path}"
        deadline = time.monotonic() + self.ready_timeout_seconds
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.process.returncode} before "
                    f"{self.ready_path} returned 200; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        log.info("server ready in %.1f s", time.monotonic() - started)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise ServerStartError(
            f"{url} did not return 200 within {self.ready_timeout_seconds:.0f} s; "
            f"see {self.log_path}"
        )

    def stop(self) -> None:
        """Send SIGTERM to the server's process group, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
