"""`recsys data`: prepare public datasets and generate the synthetic shop."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys.cli import HelpFormatter
from recsys.datasets.registry import DATA_DIR_ENV, DATASETS
from recsys.errors import ConfigError, ValidationError

# `ShopConfig` field -> the `recsys data synth` option that sets it.
SYNTH_OPTIONS = {
    "n_users": "--users",
    "n_items": "--items",
    "n_sessions": "--sessions",
    "seed": "--seed",
    "days": "--days",
    "start": "--start",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare datasets into the Parquet layout",
        description="Prepare datasets into the Parquet layout used for training "
        "and evaluation.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    commands.required = True

    datasets = "\n".join(f"  {spec.name}: {spec.summary}" for spec in DATASETS.values())
    prepare = commands.add_parser(
        "prepare",
        help="convert a public dataset",
        description="Convert a public dataset into events.parquet, "
        "test_events.parquet, test_cases.parquet, items.parquet and "
        f"manifest.json.\n\nDatasets:\n{datasets}",
        formatter_class=HelpFormatter,
    )
    prepare.add_argument(
        "--dataset",
        required=True,
        choices=list(DATASETS),
        metavar="NAME",
        help="dataset to prepare, one of those listed above",
    )
    prepare.add_argument(
        "--source",
        type=Path,
        default=None,
        help=f"folder of the source files; when unset, ${DATA_DIR_ENV}/<dataset "
        "folder>, e.g. $RECSYS_DATA_DIR/diginetica/srgnn_benchmark",
    )
    prepare.add_argument(
        "--out", type=Path, required=True, help="output folder (created if missing)"
    )
    prepare.set_defaults(handler=run_prepare)

    synth = commands.add_parser(
        "synth",
        help="generate the synthetic shop",
        description="Generate a seeded synthetic shop (catalog, users, sessions "
        "with searches, carts and purchases) in the same layout.",
        formatter_class=HelpFormatter,
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--users", type=int, default=2000, help="number of users")
    synth.add_argument("--items", type=int, default=5000, help="catalog size")
    synth.add_argument("--sessions", type=int, default=20000, help="number of sessions")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument(
        "--days", type=int, default=28, help="days the sessions are spread over"
    )
    synth.add_argument(
        "--start", default="2024-03-01", help="first day (UTC) as YYYY-MM-DD"
    )
    synth.set_defaults(handler=run_synth)


def run_prepare(args: argparse.Namespace) -> int:
    from recsys.datasets.registry import prepare

    started = time.perf_counter()
    make_output_dir(args.out)
    manifest = prepare(args.dataset, args.source, args.out)
    print(format_manifest(manifest))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from recsys.datasets.synthetic import ShopConfig, write_shop

    config = ShopConfig(
        n_users=args.users,
        n_items=args.items,
        n_sessions=args.sessions,
        seed=args.seed,
        days=args.days,
        start=args.start,
    )
    try:
        config.validate()
    except ValidationError as exc:
        # Name the option the user typed, not the config field behind it.
        option = SYNTH_OPTIONS.get(exc.field, exc.field)
        raise ValidationError(option, exc.value, exc.expected) from None
    started = time.perf_counter()
    make_output_dir(args.out)
    manifest = write_shop(config, args.out)
    print(format_manifest(manifest))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def make_output_dir(path: Path, option: str = "--out") -> None:
    """Create the folder `path`, or raise `ConfigError` naming the option."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"invalid {option}: {path} is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"invalid {option}: cannot create the folder {path}: {exc.strerror}"
        ) from None


def format_manifest(manifest: dict[str, Any]) -> str:
    """Render the counts of a manifest as two small plain-text tables."""
    lines = [f"dataset {manifest['dataset']}", ""]
    rows: list[tuple[str, ...]] = [("source file", "read", "kept", "dropped")]
    for source in manifest["sources"]:
        dropped = ", ".join(f"{n:,} {why}" for why, n in source["dropped"].items())
        rows.append(
            (
                source["file"],
                f"{source['read']:,}",
                f"{source['kept']:,}",
                dropped or "0",
            )
        )
    if len(rows) > 1:
        lines += [*_table(rows), ""]

    counts = manifest["counts"]
    rows = [("table", "sessions", "events", "items", "users", "event types")]
    for key in ("events", "test_events"):
        if key in counts:
            c = counts[key]
            types = ", ".join(f"{t} {n:,}" for t, n in c["event_types"].items())
            rows.append(
                (
                    key,
                    f"{c['sessions']:,}",
                    f"{c['events']:,}",
                    f"{c['items']:,}",
                    f"{c['users']:,}",
                    types,
                )
            )
    lines += _table(rows)
    for key in ("test_cases", "items"):
        if key in counts:
            lines.append(f"{key}: {counts[key]:,} rows")
    lines.append(f"synthetic timestamps: {'yes' if manifest['synthetic_ts'] else 'no'}")
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 or i == len(row) - 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out
