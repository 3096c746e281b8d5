"""`recsys bench ...`: benchmarks that report measured figures.

Each benchmark is a subcommand added by one `_register_*` function below.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsys.cli import HelpFormatter
from recsys.commands.bench_latency import check_bench_args, register_latency

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark and report its figures",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    benchmarks.required = True
    _register_ingest(benchmarks)
    register_latency(benchmarks)


def _register_ingest(benchmarks: Any) -> None:
    from recsys.benchmarks import ingest

    parser = benchmarks.add_parser(
        "ingest",
        help="events/s into the Redis session store, direct and over HTTP",
        description=ingest.__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--redis-url",
        help="Redis server to write to; unset means $REDIS_URL, else "
        f"{DEFAULT_REDIS_URL}",
    )
    parser.add_argument(
        "--events", type=int, default=50_000, help="max events per measurement"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="max seconds per measurement"
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, help="events per batch request"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="open HTTP connections"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument(
        "--json-out", type=Path, help="also write the results to this JSON file"
    )
    parser.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    from recsys.benchmarks.ingest import IngestConfig, run_ingest_benchmark
    from recsys.settings import mask_url

    check_bench_args(args, ("events", "batch_size", "concurrency", "workers"))

    config = IngestConfig(
        redis_url=args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        max_events=args.events,
        max_seconds=args.seconds,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        workers=args.workers,
    )
    results = run_ingest_benchmark(config)

    print("| mode | events | calls | seconds | events/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for result in results:
        print(
            f"| {result.mode} | {result.events} | {result.calls} | "
            f"{result.seconds:.2f} | {result.events_per_second:,.0f} |"
        )
    if args.json_out is not None:
        report = {
            "config": {**asdict(config), "redis_url": mask_url(config.redis_url)},
            "results": [result.to_dict() for result in results],
        }
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
