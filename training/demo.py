"""The quickstart: build from the shipped REES46 slice, serve, show requests.

`make demo` runs `python -m recsys_training.demo`. On first use it prepares
the REES46 slice in `data/rees46/` (or the prepared dataset given with
`--data`, or a synthetic shop with `--data synthetic`), runs `recsys rebuild`
into `var/demo/indexes/`, then serves the API on 127.0.0.1 with the
in-process session store and prints example requests. `--replay` posts the
events of one real session, one at a time, and prints how the
recommendations change after each event.

Everything goes through the public `recsys` commands and HTTP endpoints, so
the demo shows exactly what a deployment does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger("recsys_training.demo")

REPO = Path(__file__).resolve().parent.parent
SHIPPED_REES46 = REPO / "data" / "rees46"
READY_TIMEOUT_SECONDS = 120.0
# Fewer two-tower epochs keep the first build of the 17k-event slice to a
# few minutes on two cores; the nightly rebuild uses the defaults.
DEMO_CONFIG = {
    "models": {"two_tower": {"params": {"epochs": 3, "patience": 1}}},
    "ranker": {"enabled": True},
}


def _recsys(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "recsys", *args]
    log.info("running: recsys %s", " ".join(args))
    subprocess.run(command, check=True, env=env)


def prepare_data(choice: str | None, workdir: Path) -> Path:
    """Return a prepared dataset folder, preparing it on first use."""
    if choice and choice != "synthetic":
        path = Path(choice)
        if not (path / "manifest.json").is_file():
            raise SystemExit(
                f"demo: {path} is not a prepared dataset (no manifest.json); "
                "create one with `recsys data prepare` or `recsys data synth`"
            )
        return path
    if choice == "synthetic":
        out = workdir / "synthetic"
        if not (out / "manifest.json").is_file():
            _recsys(
                "data", "synth", "--out", str(out),
                "--users", "500", "--items", "1000", "--sessions", "4000",
            )  # fmt: skip
        return out
    out = workdir / "rees46"
    if not (out / "manifest.json").is_file():
        _recsys(
            "data", "prepare", "--dataset", "rees46",
            "--source", str(SHIPPED_REES46), "--out", str(out),
        )  # fmt: skip
    return out


def ensure_build(data: Path, indexes: Path, workdir: Path, rebuild: bool) -> None:
    """Run `recsys rebuild` unless a build is already current."""
    if (indexes / "current").exists() and not rebuild:
        log.info("using the current build in %s (--rebuild to replace it)", indexes)
        return
    config = workdir / "demo-rebuild.json"
    config.write_text(json.dumps(DEMO_CONFIG, indent=2))
    _recsys(
        "rebuild", "--data", str(data), "--config", str(config),
        "--indexes-dir", str(indexes), "--force",
    )  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Client:
    """A minimal JSON client for the demo's own server on loopback."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.api_key = api_key

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "X-API-Key": self.api_key},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_ready(self, server: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(
                    f"demo: the server exited with code {server.returncode}"
                )
            try:
                self.request("GET", "/readyz")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise SystemExit(
            f"demo: the server was not ready after {READY_TIMEOUT_SECONDS:.0f} s"
        )


def pick_session(data: Path, min_events: int = 5) -> list[dict[str, Any]]:
    """Return up to 8 events of the shortest session with `min_events` items."""
    events = pq.read_table(data / "events.parquet")
    sessions = events.group_by("session_id").aggregate([("item_id", "count_distinct")])
    sessions = sessions.filter(
        pc.greater_equal(sessions["item_id_count_distinct"], min_events)
    ).sort_by([("item_id_count_distinct", "ascending"), ("session_id", "ascending")])
    if sessions.num_rows == 0:
        raise SystemExit(f"demo: no session in {data} has {min_events} distinct items")
    session_id = sessions["session_id"][0].as_py()
    rows = events.filter(pc.equal(events["session_id"], session_id)).to_pylist()
    return rows[:8]


def replay(client: Client, data: Path, k: int) -> None:
    """Post one real session event by event and print the top k after each."""
    rows = pick_session(data)
    session_id = f"demo-replay-{secrets.token_hex(3)}"
    print(f"\nReplaying {len(rows)} events of session {rows[0]['session_id']}")
    print(f"as {session_id}; top {k} after each event:\n")
    start_ms = int(time.time() * 1000) - 60_000 * len(rows)
    before = client.request("GET", f"/v1/recommendations?session_id={session_id}&k={k}")
    print(f"  (no events)        -> {_ids(before)}")
    for position, row in enumerate(rows):
        event = {
            "session_id": session_id,
            "event_type": row["event_type"],
            "item_id": row["item_id"],
            "ts": start_ms + 60_000 * position,
        }
        if row["event_type"] == "search":
            event["query"] = row["query"]
            del event["item_id"]
        client.request("POST", "/v1/events", event)
        after = client.request(
            "GET", f"/v1/recommendations?session_id={session_id}&k={k}"
        )
        label = f"{row['event_type']} {row['item_id'] or row['query']}"
        print(f"  {label:<18} -> {_ids(after)}")


def _ids(response: dict[str, Any]) -> str:
    return " ".join(str(item["item_id"]) for item in response["items"])


def popular_item(data: Path) -> str:
    """Return the most frequent item id of the dataset, for the examples."""
    items = pq.read_table(data / "events.parquet", columns=["item_id"])["item_id"]
    counts = pc.value_counts(items.drop_null()).to_pylist()
    return str(max(counts, key=lambda row: row["counts"])["values"])


def print_examples(base_url: str, api_key: str, item_id: str) -> None:
    print(
        f"""
The engine is serving on {base_url} (in-process session store).
Try, in another terminal:

  curl -s -X POST {base_url}/v1/events -H 'X-API-Key: {api_key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"session_id": "s1", "event_type": "click", "item_id": "{item_id}",
            "ts": {int(time.time() * 1000)}}}'
  curl -s '{base_url}/v1/recommendations?session_id=s1&k=5'
  curl -s '{base_url}/v1/items/{item_id}/similar?k=5'
  curl -s {base_url}/v1/sessions/s1
  curl -s {base_url}/metrics | head
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys_training.demo",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        help="a prepared dataset folder, or 'synthetic'; unset uses the "
        "REES46 slice shipped in data/rees46",
    )
    parser.add_argument("--workdir", default=str(REPO / "var" / "demo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rebuild", action="store_true", help="build anew")
    parser.add_argument("--replay", action="store_true", help="replay one session")
    parser.add_argument("--k", type=int, default=5, help="items shown per replay step")
    parser.add_argument(
        "--exit",
        action="store_true",
        help="stop the server after the examples (and the replay) instead of "
        "serving until Ctrl-C",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"--host {args.host!r}: the demo serves on loopback only")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.data, workdir)
    indexes = workdir / "indexes"
    ensure_build(data, indexes, workdir, args.rebuild)

    port = args.port or free_port(args.host)
    api_key = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "RECSYS_INDEXES_DIR": str(indexes),
        "RECSYS_API_KEY": api_key,
    }
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys", "--log-level", "WARNING", "serve",
         "--host", args.host, "--port", str(port)],
        env=env,
    )  # fmt: skip
    base_url = f"http://{args.host}:{port}"
    client = Client(base_url, api_key)
    try:
        client.wait_ready(server)
        print_examples(base_url, api_key, popular_item(data))
        if args.replay:
            replay(client, data, args.k)
        if not args.exit:
            print("\nServing until Ctrl-C.")
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
