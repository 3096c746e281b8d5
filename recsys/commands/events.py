"""`recsys events export`: drain the durable event log into Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError


def register(subparsers: Any) -> None:
    from recsys.cli import HelpFormatter

    parser = subparsers.add_parser(
        "events",
        help="work with the live event log",
        description="Work with the durable log of events accepted by the API.",
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    export = actions.add_parser(
        "export",
        help="drain the Redis event log into day-partitioned Parquet",
        description=(
            "Drain the Redis event log (REDIS_URL) into\n"
            "OUT/date=YYYY-MM-DD/part-<first id>_<last id>.parquet.\n"
            "Entries are deleted from Redis only after their file is on disk;\n"
            "a rerun after a crash rewrites the same files, never duplicates."
        ),
        formatter_class=HelpFormatter,
    )
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        help="events per batch; a batch writes one file per UTC day it covers",
    )
    export.add_argument(
        "--consumer",
        default="exporter",
        help="consumer name in the Redis consumer group; keep it stable across runs",
    )
    export.add_argument(
        "--min-idle-seconds",
        type=float,
        default=60.0,
        help="claim another consumer's unacknowledged batch after this idle time",
    )
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from recsys.sessions import open_store
    from recsys.sessions.exporter import export_events
    from recsys.settings import Settings

    if args.batch_size < 1:
        raise ConfigError(
            f"invalid --batch-size: got {args.batch_size}; expected at least 1"
        )
    settings = Settings.from_env()
    if settings.redis_url is None:
        raise ConfigError(
            "REDIS_URL is not set; export reads the Redis event log, and the "
            "in-process store keeps its log inside the API process"
        )
    settings.log_summary()
    store = open_store(settings)
    try:
        export_events(
            store.log,
            args.out,
            consumer=args.consumer,
            batch_size=args.batch_size,
            min_idle_ms=int(args.min_idle_seconds * 1000),
        )
    finally:
        store.close()
    return 0
