"""`recsys evaluate`: fit a recommender and score it offline on a prepared dataset."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, NotFoundError, ValidationError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fit a recommender on a prepared dataset and evaluate it with full ranking.

Protocols:
  next-item  the dataset's published test cases (prefix -> next item);
             reports HR@k, MRR@k, NDCG@k. With --validation-fraction, the
             cases come from the most recent training sessions instead, so
             settings can be tuned without touching the test set.
  time       trains on events before a cut time and cuts each later session
             at a seeded random point; reports Recall@k for the next click,
             later cart adds and purchases, and the 0.1/0.3/0.6 score.
  freshness  the time protocol for --model pipeline (ALS on unless --param
             als=null), ranking each case with a user id with and without
             the session's events; reports both and the lift.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from recsys.cli import HelpFormatter
    from recsys.evaluation import MODELS, PROTOCOLS

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a recommender offline",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--dataset", required=True, type=Path, help="prepared dataset directory"
    )
    parser.add_argument(
        "--model", required=True, choices=sorted(MODELS), help="recommender"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model parameter, repeatable; values parse as JSON when they can",
    )
    parser.add_argument(
        "--protocol",
        choices=(*PROTOCOLS, "freshness"),
        default="next-item",
        help="evaluation protocol, described above",
    )
    parser.add_argument("--k", type=int, default=20, help="cutoff of the metrics")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate a seeded sample of N cases (time: N test sessions)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of samples and cuts")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="next-item only: hold out this share of the most recent training "
        "sessions as cases and ignore the test set",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="time only: share of the events that fall after the cut",
    )
    parser.add_argument(
        "--cut-ts", type=int, default=None, help="time only: cut time, Unix ms"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write results JSON here"
    )
    parser.add_argument(
        "--dump-predictions",
        type=Path,
        default=None,
        metavar="FILE",
        help="write one JSON line per case: case_id, item_ids, truth",
    )
    parser.set_defaults(handler=run)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """Turn NAME=VALUE strings into a dict; values are JSON when they parse."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValidationError("--param", pair, "NAME=VALUE, e.g. window=5")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
    return params


def git_commit() -> dict[str, Any]:
    """Return the repository's HEAD commit and whether the tree has changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("git commit unknown: %s", exc)
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(status.strip())}


def _cpuinfo() -> dict[str, str]:
    """Return the first processor's fields from /proc/cpuinfo, or {} without it."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        return {}
    return fields


def machine() -> dict[str, Any]:
    """Describe the CPU, core count, memory and software versions of this machine."""
    import numpy as np
    import scipy

    cpuinfo = _cpuinfo()
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (OSError, ValueError):
        memory_gib = None
    return {
        "cpu": cpuinfo.get("model name") or platform.processor() or None,
        "cpu_mhz": cpuinfo.get("cpu MHz"),
        "cache": cpuinfo.get("cache size"),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def dataset_summary(dataset: Any) -> dict[str, Any]:
    manifest = dataset.manifest
    return {
        "path": str(dataset.path),
        "name": manifest.get("dataset"),
        "counts": manifest.get("counts"),
        "synthetic_ts": manifest.get("synthetic_ts"),
    }


def command_line(args: argparse.Namespace) -> str:
    """Rebuild the `recsys evaluate` command that reproduces this run."""
    words = ["recsys", "evaluate", "--dataset", str(args.dataset)]
    words += ["--model", args.model]
    for pair in args.param:
        words += ["--param", pair]
    words += ["--protocol", args.protocol, "--k", str(args.k)]
    options = {
        "--limit": args.limit,
        "--validation-fraction": args.validation_fraction,
        "--cut-ts": args.cut_ts,
        "--out": args.out,
        "--dump-predictions": args.dump_predictions,
    }
    if args.limit is not None or args.protocol in ("time", "freshness"):
        options["--seed"] = args.seed
    if args.protocol in ("time", "freshness"):
        options["--test-fraction"] = args.test_fraction
    for option, value in options.items():
        if value is not None:
            words += [option, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def format_table(report: dict[str, Any]) -> str:
    """Render metrics and case counts as aligned plain-text lines."""
    lines = [f"{report['model']['name']} on {report['dataset']['name']}"]
    values = report["metrics"]
    width = max(len(name) for name in values)
    for name, value in values.items():
        if value is None:
            shown = "n/a"
        elif isinstance(value, int):
            shown = str(value)
        else:
            shown = f"{value:.4f}"
        lines.append(f"  {name:<{width}}  {shown}")
    cases = report["cases"]
    lines.append(f"  cases evaluated: {cases['evaluated']}")
    for reason, count in cases["skipped"].items():
        lines.append(f"  skipped ({reason}): {count}")
    timings = report["timings"]
    lines.append(
        f"  fit {timings['fit_s']:.1f} s, recommend {timings['recommend_s']:.1f} s,"
        f" total {timings['total_s']:.1f} s"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from recsys.datasets.io import load_prepared
    from recsys.evaluation import (
        create_model,
        evaluate_next_item,
        evaluate_time_split,
        model_params,
        validation_split,
    )

    if args.k < 1:
        raise ValidationError("--k", args.k, "an integer >= 1")
    began = time.perf_counter()
    dataset = load_prepared(args.dataset)
    load_s = time.perf_counter() - began
    if args.protocol == "freshness":
        from recsys.freshness import freshness_command

        print(freshness_command(args, dataset))
        return 0
    model = create_model(args.model, parse_params(args.param))

    if args.protocol == "time":
        if args.validation_fraction is not None:
            raise ConfigError("--validation-fraction applies to --protocol next-item")
        events = dataset.events
        if dataset.test_events is not None:
            events = _concat_tables(events, dataset.test_events)
        result = evaluate_time_split(
            model, events, k=args.k, cut_ts=args.cut_ts,
            test_fraction=args.test_fraction, limit=args.limit, seed=args.seed,
        )  # fmt: skip
    else:
        train, cases = dataset.events, dataset.cases
        if args.validation_fraction is not None:
            train, cases = validation_split(train, args.validation_fraction)
        elif cases is None:
            raise NotFoundError(
                f"{args.dataset} has no test_cases.parquet; use --protocol time or "
                "--validation-fraction"
            )
        result = evaluate_next_item(
            model, train, cases, k=args.k, limit=args.limit, seed=args.seed
        )

    report = result.to_dict()
    report["timings"] = {"load_s": load_s, **report["timings"]}
    report["timings"]["total_s"] = time.perf_counter() - began
    # CPU seconds of this process, which other jobs on the machine do not inflate.
    report["timings"]["cpu_s"] = time.process_time()
    report["settings"]["validation_fraction"] = args.validation_fraction
    report = {
        "model": {"name": args.model, "params": model_params(model)},
        "dataset": dataset_summary(dataset),
        **report,
        "command": command_line(args),
        "git": git_commit(),
        "machine": machine(),
    }
    print(format_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.dump_predictions is not None:
        args.dump_predictions.parent.mkdir(parents=True, exist_ok=True)
        with args.dump_predictions.open("w", encoding="utf-8") as handle:
            for row in result.prediction_rows():
                handle.write(json.dumps(row) + "\n")
    return 0


def _concat_tables(first: Any, second: Any) -> Any:
    import pyarrow as pa

    return pa.concat_tables(
        [first, second.select(first.column_names).cast(first.schema)]
    )
