"""Run the Locust load test headless against a local server (`make loadtest`).

Starts the API on a free port of 127.0.0.1 with `recsys serve`, over the
build that `--indexes-dir` serves (or one fitted on `--dataset`, a prepared
dataset, and kept under var/bench-cache) and the Redis server at
`--redis-url`. Then it writes the build's item ids for the locustfile, runs
Locust for a bounded time, and writes Locust's CSV files and `summary.md`
under `--out`. Session keys the test created in Redis are deleted
afterwards.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recsys.benchmarks.catalog import dataset_build, load_catalog
from recsys.benchmarks.latency import delete_keys, server_command
from recsys.benchmarks.server import ServerProcess, free_port

log = logging.getLogger("loadtest")
HOST = "127.0.0.1"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CACHE_DIR = Path("var/bench-cache")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--indexes-dir",
        type=Path,
        default=Path(os.environ.get("RECSYS_INDEXES_DIR") or "indexes"),
        help="directory of published builds; its current build is served",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="prepared dataset to fit the served build on, instead of --indexes-dir",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis server for the session store",
    )
    parser.add_argument("--users", type=int, default=20, help="simulated shoppers")
    parser.add_argument(
        "--spawn-rate", type=float, default=5.0, help="shoppers started per second"
    )
    parser.add_argument("--run-time", default="60s", help="Locust --run-time value")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/loadtest") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        help="directory for the CSV files and summary.md",
    )
    return parser.parse_args(argv)


def write_summary(csv_prefix: Path, out: Path, args: argparse.Namespace) -> str:
    """Turn Locust's `<prefix>_stats.csv` into a Markdown table."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    lines = [
        f"Locust, {args.users} users, spawn rate {args.spawn_rate}/s, "
        f"{args.run_time}, {args.workers} uvicorn workers.",
        "",
        "| request | count | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        name = row["Name"] if row["Type"] else "all"
        label = f"{row['Type']} {name}".strip()
        lines.append(
            f"| {label} | {row['Request Count']} | {row['Failure Count']} | "
            f"{float(row['Requests/s']):.1f} | {row['50%']} | {row['95%']} | "
            f"{row['99%']} | {float(row['Max Response Time']):.0f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset is not None:
        args.indexes_dir = dataset_build(args.dataset, CACHE_DIR)
    catalog = load_catalog(args.indexes_dir, label="served")
    item_file = args.out / "item_ids.txt"
    item_file.write_text("\n".join(catalog.item_ids) + "\n")

    port = free_port(HOST)
    api_key = secrets.token_hex(16)
    prefix = f"loadtest-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as metrics_dir:
        env = {
            **os.environ,
            "REDIS_URL": args.redis_url,
            "RECSYS_REDIS_PREFIX": prefix,
            "RECSYS_API_KEY": api_key,
            "RECSYS_INDEXES_DIR": str(args.indexes_dir),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "OMP_NUM_THREADS": "1",
        }
        server = ServerProcess(
            server_command(HOST, port, args.workers),
            HOST,
            port,
            env,
            log_path=args.out / "server.log",
        )
        try:
            with server:
                csv_prefix = args.out / "locust"
                locust = [
                    sys.executable, "-m", "locust",
                    "-f", str(LOCUSTFILE),
                    "--headless",
                    "--host", f"http://{HOST}:{port}",
                    "--users", str(args.users),
                    "--spawn-rate", str(args.spawn_rate),
                    "--run-time", args.run_time,
                    "--csv", str(csv_prefix),
                    "--only-summary",
                    "--stop-timeout", "5",
                ]  # fmt: skip
                locust_env = {**env, "LOADTEST_ITEM_IDS": str(item_file)}
                code = subprocess.run(locust, env=locust_env, check=False).returncode
        finally:
            delete_keys(args.redis_url, prefix)
    print(write_summary(csv_prefix, args.out, args))
    print(f"CSV files and summary.md in {args.out}")
    # Locust exits 1 when any request failed; the summary shows which.
    return code


if __name__ == "__main__":
    sys.exit(main())
