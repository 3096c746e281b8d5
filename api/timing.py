"""The ASGI middleware that times each request and reports its stages.

`TimingMiddleware` opens a `recsys.timing` trace around the request, so the
stages that library code records (`with stage("session_read"): ...`) are
collected per request. It sends them as a `Server-Timing` header, with a
final `total` entry measuring the app up to the start of the response, and
hands the finished request to its observers (the Prometheus metrics).

It is plain ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs the
endpoint in a separate task and costs more per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.timing import Trace, collect, format_server_timing


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished HTTP request as the observers see it.

    `route` is the path template that matched (`/v1/items/{item_id}/similar`),
    or None when no route matched. `status` is 500 when the app raised before
    sending a response. `seconds` runs from the middleware's entry until the
    app returns, after the last body chunk was sent.
    """

    method: str
    route: str | None
    status: int
    seconds: float
    trace: Trace
    raised: bool


RequestObserver = Callable[[RequestRecord], None]


def _route_template(scope: Scope) -> str | None:
    # FastAPI's router stores the matched route in the scope it routes with.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class TimingMiddleware:
    """Collect per-stage timings and send them as a `Server-Timing` header."""

    def __init__(self, app: ASGIApp, observers: Sequence[RequestObserver] = ()) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        status = 500
        raised = False
        with collect() as trace:

            async def send_with_timing(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = MutableHeaders(scope=message)
                    elapsed = time.perf_counter() - start
                    headers.append(
                        "Server-Timing", format_server_timing(trace.stages, elapsed)
                    )
                await send(message)

            try:
                await self.app(scope, receive, send_with_timing)
            except BaseException:
                raised = True
                raise
            finally:
                record = RequestRecord(
                    method=scope["method"],
                    route=_route_template(scope),
                    status=status,
                    seconds=time.perf_counter() - start,
                    trace=trace,
                    raised=raised,
                )
                for observer in self.observers:
                    observer(record)
