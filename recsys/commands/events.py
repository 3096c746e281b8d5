"""`recsys events export`: drain the durable event log into Parquet."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError

log = logging.getLogger(__name__)


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
    from recsys.commands.data import make_output_dir
    from recsys.sessions import open_store
    from recsys.sessions.exporter import export_events
    from recsys.settings import Settings, mask_url

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
    # Not log_summary(): its warning about a missing API key concerns the API.
    log.info(
        "exporting from Redis at %s, prefix %r",
        mask_url(settings.redis_url),
        settings.redis_prefix,
    )
    make_output_dir(args.out)
    store = open_store(settings)
    try:
        summary = export_events(
            store.log,
            args.out,
            consumer=args.consumer,
            batch_size=args.batch_size,
            min_idle_ms=int(args.min_idle_seconds * 1000),
        )
    finally:
        store.close()
    print(
        f"exported {summary.events:,} events in {summary.batches:,} batches to "
        f"{summary.files:,} files under {args.out} in {summary.seconds:.1f} s"
    )
    return 0
