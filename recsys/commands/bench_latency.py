"""`recsys bench latency`: latency, throughput and memory of the running API.

Registered by `recsys.commands.bench`; the measurement lives in
`recsys.benchmarks.latency`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from recsys.cli import HelpFormatter
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("var/bench-cache")


def _int_list(text: str, low: int) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < low:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected integers >= {low} separated by "
            "commas, such as 1,2"
        )
    return values


def _positive_ints(text: str) -> tuple[int, ...]:
    return _int_list(text, 1)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(size for size in _int_list(text, 0) if size > 0)


def register_latency(benchmarks: Any) -> None:
    """Add `latency` to the subcommands of `recsys bench`."""
    from recsys.benchmarks import latency

    parser = benchmarks.add_parser(
        "latency",
        help="latency, throughput and worker memory of the API per catalog size",
        description=latency.__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--indexes-dir",
        type=Path,
        action="append",
        default=None,
        help="directory of published builds whose current build is measured; "
        "repeat for several catalogs (default without --dataset: "
        "RECSYS_INDEXES_DIR or ./indexes)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        action="append",
        default=None,
        help="prepared dataset directory to fit a build on and measure; the "
        "build is kept under --cache-dir; repeat for several catalogs",
    )
    parser.add_argument(
        "--synthetic-items",
        type=_sizes,
        default="1000000",
        help="also measure synthetic catalogs of these sizes, separated by "
        "commas; 0 skips them",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="where the synthetic catalog and its build are kept between runs",
    )
    parser.add_argument(
        "--workers",
        type=_positive_ints,
        default="1,2",
        help="uvicorn worker counts to measure, separated by commas",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="sequential requests per endpoint",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="requests per endpoint before timing"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="connections of the closed loop"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="closed-loop time per endpoint"
    )
    parser.add_argument(
        "--batch-size", type=int, default=100, help="events per batched POST"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis server of the session store (default: REDIS_URL or the "
        "local server)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for report.json, report.md and the plot "
        "(default: runs/bench/latency-<UTC time>)",
    )
    parser.set_defaults(handler=run_latency)


def check_bench_args(args: argparse.Namespace, counts: tuple[str, ...]) -> None:
    """Raise ConfigError unless each count is at least 1 and --seconds > 0."""
    for name in counts:
        value = getattr(args, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"invalid {flag}: got {value}; expected at least 1")
    if not args.seconds > 0:
        raise ConfigError(f"invalid --seconds: got {args.seconds}; expected > 0")


def run_latency(args: argparse.Namespace) -> int:
    from recsys.benchmarks.catalog import (
        dataset_build,
        load_catalog,
        synthetic_build,
    )
    from recsys.benchmarks.latency import LatencyConfig, run_latency_benchmark
    from recsys.benchmarks.report import plot_latency, render_markdown

    check_bench_args(args, ("requests", "warmup", "concurrency", "batch_size"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or Path("runs/bench") / f"latency-{stamp}"
    indexes_dirs = list(args.indexes_dir or [])
    if not indexes_dirs and not args.dataset:
        indexes_dirs = [Path(os.environ.get("RECSYS_INDEXES_DIR") or "indexes")]

    catalogs = [load_catalog(path, label=path.name) for path in indexes_dirs]
    for dataset in args.dataset or []:
        indexes_dir = dataset_build(dataset, args.cache_dir)
        catalogs.append(load_catalog(indexes_dir, label=dataset.name))
    # Synthetic builds rank with the ranker of the first real build.
    lender = catalogs[0].indexes_dir if catalogs else None
    extra: dict[str, Any] = {"synthetic_indexes": {}}
    for n_items in args.synthetic_items:
        synthetic, figures = synthetic_build(
            args.cache_dir, n_items, ranker_from=lender
        )
        catalogs.append(synthetic)
        extra["synthetic_indexes"][str(n_items)] = figures

    config = LatencyConfig(
        redis_url=args.redis_url,
        workers=args.workers,
        sequential_requests=args.requests,
        warmup_requests=args.warmup,
        concurrency=args.concurrency,
        throughput_seconds=args.seconds,
        event_batch_size=args.batch_size,
    )
    report = run_latency_benchmark(catalogs, config, out, extra=extra)

    markdown = render_markdown(report)
    (out / "report.md").write_text(markdown)
    plot_latency(report, out / "latency_vs_catalog.png")
    print(markdown)
    print(f"report.json, report.md and latency_vs_catalog.png in {out}")
    log.debug("report: %s", json.dumps(report)[:2000])
    return 0
