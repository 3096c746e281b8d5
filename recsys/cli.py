"""The `recsys` command line: one command, one subcommand per job.

Each module in `recsys.commands`, and each entry point of the group
`recsys.commands` in an installed package, adds its subcommands through a
`register(subparsers)` function and sets `handler` on its parser; a handler
takes the parsed arguments and returns the exit code. Handlers import heavy
libraries (torch, faiss) inside the function, so `recsys --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

from recsys import __version__
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

# Modules under recsys.commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "data",
    "events",
    "train",
    "evaluate",
    "builds",
    "bench",
)
# Packages that depend on the library (the batch jobs, the HTTP shell) add
# their subcommands through this entry-point group.
ENTRY_POINT_GROUP = "recsys.commands"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in `--help` and keep the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A required option or one without a default has nothing to show.
        if action.required or action.default in (None, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LOG_LEVELS,
        help="logging level for messages on stderr",
    )


def _leaf_parsers(
    parser: argparse.ArgumentParser,
) -> list[argparse.ArgumentParser]:
    """Return the parsers of every subcommand that has no subcommands itself."""
    leaves = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                leaves.extend(_leaf_parsers(child) or [child])
    return leaves


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Session-aware recommendation engine.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    _add_log_level(parser, "INFO")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"recsys.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"recsys.commands.{name}":
                raise
            continue
        module.register(subparsers)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()(subparsers)
    # `--log-level` also works after the subcommand; SUPPRESS keeps the
    # top-level value when it is given only there.
    for leaf in _leaf_parsers(parser):
        if not any("--log-level" in a.option_strings for a in leaf._actions):
            _add_log_level(leaf, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faiss logs at INFO which optional CPU extensions it could not import.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code: int = args.handler(args)
    except RecsysError as exc:
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`recsys ... | head`). Point stdout
        # at /dev/null so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
