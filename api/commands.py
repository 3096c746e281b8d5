"""`recsys serve`: run the HTTP API under uvicorn.

The `recsys` CLI loads this module through the `recsys.commands` entry
point, so the library never imports the HTTP shell.

With `--workers N` above 1, each worker is a process with its own metrics.
Unless `PROMETHEUS_MULTIPROC_DIR` is already set, `recsys serve` creates an
empty temporary directory for it before uvicorn starts the workers, which
inherit the variable, so that `GET /metrics` on any worker reports the sums
over all of them (see `recsys_api.metrics`). The directory is removed when
the server stops; a server killed with SIGKILL leaves it in the system's
temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

APP_FACTORY = "recsys_api.app:create_app"
# The variable `recsys_api.metrics` reads; named here so that the master
# process does not import the app to start the workers.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def register(subparsers: Any) -> None:
    from recsys.cli import HelpFormatter

    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP API",
        description=(
            "Run the HTTP API under uvicorn. Settings come from environment\n"
            "variables (REDIS_URL, RECSYS_API_KEY, RECSYS_INDEXES_DIR, ...);\n"
            "see recsys/settings.py for the full list."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with the app"
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from recsys.settings import Settings

    if not 0 < args.port < 65536:
        raise ConfigError(f"invalid --port: got {args.port}; expected 1 to 65535")
    if args.workers < 1:
        raise ConfigError(f"invalid --workers: got {args.workers}; expected >= 1")
    # Fail here, with one line, rather than in each worker.
    settings = Settings.from_env()
    if args.workers > 1 and settings.redis_url is None:
        raise ConfigError(
            f"--workers {args.workers} needs REDIS_URL: without it each worker "
            "keeps its own in-process sessions, so a request may not see the "
            "events another worker stored; set REDIS_URL or use --workers 1"
        )
    settings.log_summary()
    with shared_metrics_dir(args.workers):
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=args.access_log,
            log_level=args.log_level.lower(),
        )
    return 0


@contextlib.contextmanager
def shared_metrics_dir(workers: int) -> Iterator[str | None]:
    """Set `PROMETHEUS_MULTIPROC_DIR` for the workers while the block runs.

    Yields the directory in use, or None with one worker. A directory set by
    the caller is used as it is (the caller empties it between runs);
    otherwise a new temporary directory is created, set in this process's
    environment, and removed with the variable when the block exits.
    """
    preset = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if workers == 1 or preset:
        yield preset
        return
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as directory:
        os.environ[MULTIPROC_DIR_VARIABLE] = directory
        log.info("workers share their metrics through %s", directory)
        try:
            yield directory
        finally:
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
