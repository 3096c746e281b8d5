"""The requests a benchmark sends: sessions, events and recommendation calls.

Item ids come from the served build's catalog, drawn with a Zipf-like skew
so that popular items recur as in real traffic. Every request is built up
front as a `Request`, so the load generator only sends bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from recsys.benchmarks.http_load import Request

EVENTS_PATH = "/v1/events"
RECOMMENDATIONS_PATH = "/v1/recommendations"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class TrafficShape:
    """Shape of the generated sessions.

    `known_user_share` of sessions carry a `user_id`; the rest are
    anonymous. Sessions have 1 to `max_session_events` clicks before their
    recommendation call, and `k` results are requested.
    """

    n_sessions: int = 2000
    max_session_events: int = 10
    known_user_share: float = 0.5
    n_users: int = 5000
    k: int = 20
    zipf_exponent: float = 1.1
    seed: int = 0


class Traffic:
    """Sessions over a catalog and the requests that replay them."""

    def __init__(
        self, item_ids: Sequence[str], shape: TrafficShape, prefix: str = "bench"
    ) -> None:
        if len(item_ids) == 0:
            raise ValueError("the catalog is empty: no item ids to draw from")
        self.shape = shape
        self.prefix = prefix
        self._rng = np.random.default_rng(shape.seed)
        self._item_ids = np.asarray(item_ids, dtype=object)
        # A random order decides which items are popular.
        order = self._rng.permutation(len(item_ids))
        weights = 1.0 / np.arange(1, len(item_ids) + 1) ** shape.zipf_exponent
        self._order = order
        self._cumulative = np.cumsum(weights) / weights.sum()
        self.sessions = [self._session(i) for i in range(shape.n_sessions)]

    def items(self, n: int) -> list[str]:
        """Draw `n` item ids with the popularity skew."""
        ranks = np.searchsorted(self._cumulative, self._rng.random(n))
        ranks = np.minimum(ranks, len(self._order) - 1)
        return [str(item) for item in self._item_ids[self._order[ranks]]]

    def _session(self, i: int) -> dict:
        n_events = int(self._rng.integers(1, self.shape.max_session_events + 1))
        user_id = None
        if self._rng.random() < self.shape.known_user_share:
            user_id = f"{self.prefix}-user-{self._rng.integers(self.shape.n_users)}"
        return {
            "session_id": f"{self.prefix}-session-{i}",
            "user_id": user_id,
            "item_ids": self.items(n_events),
        }

    # -- requests ---------------------------------------------------------

    def seed_requests(self, batch_size: int = 100) -> list[Request]:
        """Batched POST /v1/events that store every session's events."""
        now = int(time.time() * 1000)
        events = []
        for session in self.sessions:
            n = len(session["item_ids"])
            for position, item_id in enumerate(session["item_ids"]):
                event = {
                    "session_id": session["session_id"],
                    "item_id": item_id,
                    "event_type": "click",
                    "ts": now - (n - position) * 1000,
                }
                if session["user_id"] is not None:
                    event["user_id"] = session["user_id"]
                events.append(event)
        return [
            Request("POST", EVENTS_PATH, {"events": events[i : i + batch_size]})
            for i in range(0, len(events), batch_size)
        ]

    def event_requests(self, n: int, batch_size: int = 1) -> list[Request]:
        """POST /v1/events with new clicks on the sessions, `batch_size` each."""
        now = int(time.time() * 1000)
        requests = []
        for i in range(n):
            batch = []
            for j in range(batch_size):
                session = self.sessions[(i * batch_size + j) % len(self.sessions)]
                event = {
                    "session_id": session["session_id"],
                    "item_id": self.items(1)[0],
                    "event_type": "click",
                    "ts": now,
                }
                if session["user_id"] is not None:
                    event["user_id"] = session["user_id"]
                batch.append(event)
            body = batch[0] if batch_size == 1 else {"events": batch}
            requests.append(Request("POST", EVENTS_PATH, body))
        return requests

    def recommendation_requests(self, n: int) -> list[Request]:
        """POST /v1/recommendations for stored sessions, in session order."""
        requests = []
        for i in range(n):
            session = self.sessions[i % len(self.sessions)]
            body: dict = {"session_id": session["session_id"], "k": self.shape.k}
            if session["user_id"] is not None:
                body["user_id"] = session["user_id"]
            requests.append(Request("POST", RECOMMENDATIONS_PATH, body))
        return requests

    def similar_requests(self, n: int) -> list[Request]:
        """GET /v1/items/{item_id}/similar for popular-skewed items."""
        return [
            Request(
                "GET", f"/v1/items/{quote(item_id, safe='')}/similar?k={self.shape.k}"
            )
            for item_id in self.items(n)
        ]


def health_requests(n: int) -> list[Request]:
    return [Request("GET", HEALTH_PATH)] * n
