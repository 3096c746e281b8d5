"""`recsys rebuild`: train, index, evaluate and publish a new build.

The `recsys` CLI loads this module through the `recsys.commands` entry
point, so the library never imports the batch jobs.

Exit codes: 0 published; 1 invalid arguments, config or data directory;
3 the quality gate rejected the build; 4 another rebuild holds the lock;
5 a phase failed. In every case but 0 the current build keeps serving.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from recsys.cli import HelpFormatter
from recsys.commands.builds import indexes_dir_from

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rebuild",
        help="train the models, build the indexes and publish a new build",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared dataset directory, or the event log directory that "
        "`recsys events export` writes (date=YYYY-MM-DD/*.parquet); required "
        "unless --print-config",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML or JSON file overriding the default rebuild config",
    )
    parser.add_argument(
        "--indexes-dir",
        type=Path,
        default=None,
        help="directory of the builds (default: RECSYS_INDEXES_DIR, else ./indexes)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="publish even when the quality gate rejects the build",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit",
    )
    parser.set_defaults(handler=_rebuild, usage_error=parser.error)


def _rebuild(args: argparse.Namespace) -> int:
    import json

    from recsys_training.rebuild import load_config, run_rebuild

    # faiss logs each CPU-instruction-set build it tries at INFO.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.data is None and not args.print_config:
        # argparse's own message and exit code 2, as for any missing argument.
        args.usage_error("the following arguments are required: --data")
    config = load_config(args.config)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    signal.signal(signal.SIGTERM, _raise_system_exit)
    result = run_rebuild(
        args.data,
        indexes_dir_from(args.indexes_dir),
        config,
        force=args.force,
        command=sys.argv,
    )
    log.info("rebuild %s (exit code %d)", result.status, result.exit_code)
    return result.exit_code


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds the job, so its staging directory is removed.
    raise SystemExit(128 + signum)
