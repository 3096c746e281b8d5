"""`recsys builds list|rollback`: inspect the published builds and switch back."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from recsys.cli import HelpFormatter

# The exit code of `recsys rebuild` when the lock is held, kept the same here.
EXIT_LOCK_HELD = 4
# The metrics `builds list` shows, at whatever cutoff `evaluation.k` set.
_SHOWN_METRIC = re.compile(r"(HR|MRR)@\d+$|recall@\d+$")


def indexes_dir_from(value: Path | None) -> Path:
    """Return `value`, else the `RECSYS_INDEXES_DIR` setting."""
    if value is not None:
        return value
    from recsys.settings import Settings

    return Settings.from_env().indexes_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "builds",
        help="list the published builds or roll back to an earlier one",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser(
        "list",
        help="list builds, oldest first, with metrics and the current one",
        formatter_class=HelpFormatter,
    )
    _add_indexes_dir(listing)
    listing.add_argument(
        "--verify",
        action="store_true",
        help="also check every file of every build against its checksum",
    )
    listing.add_argument(
        "--json", action="store_true", help="print one JSON object per build"
    )
    listing.set_defaults(handler=_list)

    rollback = actions.add_parser(
        "rollback",
        help="make an earlier build current (default: the one before current)",
        formatter_class=HelpFormatter,
    )
    _add_indexes_dir(rollback)
    rollback.add_argument(
        "--to", metavar="VERSION", default=None, help="the build to make current"
    )
    rollback.set_defaults(handler=_rollback)


def _add_indexes_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--indexes-dir",
        type=Path,
        default=None,
        help="directory of the builds (default: RECSYS_INDEXES_DIR, else ./indexes)",
    )


def _list(args: argparse.Namespace) -> int:
    from recsys.builds import BuildStore, open_build
    from recsys.errors import BuildError, NotFoundError

    store = BuildStore(indexes_dir_from(args.indexes_dir))
    if not store.root.is_dir():
        raise NotFoundError(
            f"indexes directory {store.root} does not exist; pass --indexes-dir "
            "or set RECSYS_INDEXES_DIR to where `recsys rebuild` publishes"
        )
    summaries = store.list_builds()
    if not summaries:
        print(f"no builds in {store.root}")
        return 0
    broken = 0
    for summary in summaries:
        status = ""
        if args.verify:
            try:
                open_build(summary.path)
                status = "verified"
            except BuildError as exc:
                status = f"invalid: {exc}"
                broken += 1
        if args.json:
            print(
                json.dumps(
                    {
                        "version": summary.version,
                        "created_at": summary.created_at,
                        "current": summary.is_current,
                        "metrics": summary.metrics,
                        "status": status,
                    }
                )
            )
            continue
        marker = "*" if summary.is_current else " "
        shown = "  ".join(
            f"{name}={_format(value)}"
            for name, value in summary.metrics.items()
            if _SHOWN_METRIC.search(name)
        )
        line = f"{marker} {summary.version}  {summary.created_at}  {shown}  {status}"
        print(line.rstrip())
    return 1 if broken else 0


def _rollback(args: argparse.Namespace) -> int:
    from recsys.builds import BuildStore
    from recsys.errors import LockHeldError

    store = BuildStore(indexes_dir_from(args.indexes_dir))
    before = store.current_version()
    try:
        build = store.rollback(args.to)
    except LockHeldError as exc:
        print(f"recsys builds rollback: error: {exc}", file=sys.stderr)
        return EXIT_LOCK_HELD
    print(f"current build: {build.version} (was {before})")
    return 0


def _format(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
