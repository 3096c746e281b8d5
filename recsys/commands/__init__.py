"""Subcommands of the `recsys` CLI; each module exposes `register(subparsers)`."""
