"""`recsys serve`: run the HTTP API under uvicorn.

The `recsys` CLI loads this module through the `recsys.commands` entry
point, so the library never imports the HTTP shell.
"""

from __future__ import annotations

import argparse
from typing import Any

from recsys.errors import ConfigError

APP_FACTORY = "recsys_api.app:create_app"


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
