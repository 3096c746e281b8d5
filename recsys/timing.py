"""Per-request stage timings and degradation marks.

Library code names the steps of a request and this module records how long
each one took, without knowing who reads the result:

    from recsys.timing import mark_degraded, stage

    with stage("session_read"):
        events = store.recent_events(session_id)

A caller that wants the figures opens a trace around the work. The API does
this once per HTTP request, and sends the stages as a `Server-Timing` header
and as Prometheus histograms. A benchmark may do the same around an
in-process call:

    with collect() as trace:
        recommend(...)
    trace.stages  # {"session_read": 0.00041, ...} in seconds

Outside a trace, `stage` and `mark_degraded` do nothing beyond one context
variable lookup, so the offline evaluator runs the same code at no cost.

The trace lives in a context variable. asyncio tasks and the thread pool that
Starlette runs sync endpoints in copy the context, so stages recorded there
land in the request's trace. A plain `ThreadPoolExecutor.submit` does not
copy it: submit `contextvars.copy_context().run` with the function instead.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Server-Timing metric names are HTTP tokens, and this subset of them also
# suits Prometheus label values and log lines.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_valid_names: set[str] = set()


class Trace:
    """Stage durations (seconds) and degradation reasons of one request.

    A stage entered several times adds up its durations. Nested stages are
    recorded separately, so the sum over stages may exceed the request time.
    """

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.degraded: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.stages[name] = self.stages.get(name, 0.0) + seconds

    def mark_degraded(self, reason: str) -> None:
        with self._lock:
            if reason not in self.degraded:
                self.degraded.append(reason)


_current: ContextVar[Trace | None] = ContextVar("recsys_trace", default=None)


def _check_name(kind: str, name: str) -> None:
    if name in _valid_names:
        return
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: expected 1-64 characters "
            "from letters, digits, '_', '.' and '-'"
        )
    _valid_names.add(name)


@contextmanager
def collect() -> Iterator[Trace]:
    """Open a trace for the enclosed work and yield it."""
    trace = Trace()
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def current_trace() -> Trace | None:
    """Return the open trace, or None outside `collect`."""
    return _current.get()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the enclosed block as stage `name` of the open trace, if any.

    The duration is recorded when the block exits, also when it raises.
    """
    trace = _current.get()
    if trace is None:
        yield
        return
    _check_name("stage", name)
    start = time.perf_counter()
    try:
        yield
    finally:
        trace.add(name, time.perf_counter() - start)


def format_server_timing(stages: dict[str, float], total: float | None = None) -> str:
    """Render stage durations (seconds) as a `Server-Timing` header value.

    Durations are written in milliseconds, as the header's `dur` parameter
    expects, in the order the stages were first entered; `total` comes last.
    """
    parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items()]
    if total is not None:
        parts.append(f"total;dur={total * 1000:.3f}")
    return ", ".join(parts)


def parse_server_timing(value: str) -> dict[str, float]:
    """Parse a `Server-Timing` header value into {name: milliseconds}.

    Metrics without a `dur` parameter map to 0.0. Parameter values in quotes
    must not contain commas or semicolons, which is true of every header
    `format_server_timing` writes.
    """
    timings: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if not name:
            continue
        duration = 0.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    duration = float(raw.strip().strip('"'))
                except ValueError as exc:
                    raise ValueError(
                        f"invalid Server-Timing dur {raw!r} for metric {name!r}: "
                        "expected a number of milliseconds"
                    ) from exc
        timings[name] = duration
    return timings


def mark_degraded(reason: str) -> None:
    """Record that the request was answered with less than it asked for.

    `reason` is a short token such as `session_store_unavailable`; the API
    counts degraded responses by reason.
    """
    trace = _current.get()
    if trace is None:
        return
    _check_name("degradation reason", reason)
    trace.mark_degraded(reason)
