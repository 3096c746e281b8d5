"""Mixed shop traffic for Locust: browsing sessions that ask for recommendations.

Each simulated shopper opens a session, half of them as a known user, and
then, with think time between steps:

- clicks items (POST /v1/events), drawn from the served catalog with a
  Zipf-like popularity skew,
- requests recommendations for the session so far (POST /v1/recommendations),
- requests items similar to the one it looks at (GET /v1/items/{id}/similar),
- now and then adds an item to the cart or buys it,

and starts a new session after 3 to 15 clicks. `loadtest/run.py` starts the
server, writes the catalog file and runs this file headless; to run it by
hand against a server on 127.0.0.1:

    LOADTEST_ITEM_IDS=items.txt RECSYS_API_KEY=... \\
        locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Environment:
- LOADTEST_ITEM_IDS: a text file with one catalog item id per line (required).
- RECSYS_API_KEY: the key the server expects on writes.
- LOADTEST_KNOWN_USER_SHARE: share of sessions with a user id (default 0.5).
- LOADTEST_K: results per recommendation request (default 20).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

from locust import FastHttpUser, between, events, task

KNOWN_USER_SHARE = float(os.environ.get("LOADTEST_KNOWN_USER_SHARE", "0.5"))
K = int(os.environ.get("LOADTEST_K", "20"))
N_USERS = 5000
ZIPF_EXPONENT = 1.1


def _load_catalog() -> tuple[list[str], list[float]]:
    path = os.environ.get("LOADTEST_ITEM_IDS")
    if not path:
        raise SystemExit(
            "LOADTEST_ITEM_IDS is not set: point it to a file with one catalog "
            "item id per line (loadtest/run.py writes one from the served build)"
        )
    item_ids = [line for line in Path(path).read_text().splitlines() if line]
    if not item_ids:
        raise SystemExit(f"LOADTEST_ITEM_IDS file {path} contains no item ids")
    # A fixed random order decides which items are popular.
    random.Random(0).shuffle(item_ids)
    weights = (1.0 / rank**ZIPF_EXPONENT for rank in range(1, len(item_ids) + 1))
    return item_ids, list(itertools.accumulate(weights))


ITEM_IDS, CUMULATIVE_WEIGHTS = _load_catalog()


@events.test_start.add_listener
def _check_host(environment, **_kwargs):
    host = urlsplit(environment.host or "").hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"--host {environment.host!r} is not a loopback address; this load "
            "test sends traffic only to 127.0.0.1"
        )


class Shopper(FastHttpUser):
    """One shopper at a time: a session of clicks, recommendations and carts."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        api_key = os.environ.get("RECSYS_API_KEY")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self._new_session()

    def _new_session(self) -> None:
        self.session_id = f"loadtest-{uuid.uuid4().hex}"
        self.user_id = None
        if random.random() < KNOWN_USER_SHARE:
            self.user_id = f"loadtest-user-{random.randrange(N_USERS)}"
        self.clicks_left = random.randint(3, 15)
        self.current_item = self._draw_item()

    def _draw_item(self) -> str:
        return random.choices(ITEM_IDS, cum_weights=CUMULATIVE_WEIGHTS)[0]

    def _post_event(self, event_type: str, item_id: str) -> None:
        event = {
            "session_id": self.session_id,
            "item_id": item_id,
            "event_type": event_type,
            "ts": int(time.time() * 1000),
        }
        if self.user_id is not None:
            event["user_id"] = self.user_id
        self.client.post(
            "/v1/events", json=event, headers=self.headers, name=f"event {event_type}"
        )

    @task(6)
    def click(self) -> None:
        if self.clicks_left <= 0:
            self._new_session()
        self.current_item = self._draw_item()
        self._post_event("click", self.current_item)
        self.clicks_left -= 1

    @task(3)
    def recommend(self) -> None:
        body: dict[str, object] = {"session_id": self.session_id, "k": K}
        if self.user_id is not None:
            body["user_id"] = self.user_id
        self.client.post(
            "/v1/recommendations",
            json=body,
            headers=self.headers,
            name="/v1/recommendations",
        )

    @task(1)
    def similar(self) -> None:
        self.client.get(
            f"/v1/items/{quote(self.current_item, safe='')}/similar?k={K}",
            headers=self.headers,
            name="/v1/items/[item_id]/similar",
        )

    @task(1)
    def cart(self) -> None:
        self._post_event("cart_add", self.current_item)
        if random.random() < 0.3:
            self._post_event("purchase", self.current_item)
            self._new_session()
