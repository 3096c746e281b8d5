"""`recsys train als|two-tower`: fit an embedding model on a prepared dataset.

The command reads `events.parquet` (and `items.parquet` when present) from a
prepared dataset directory, fits the model and writes its artifacts to
`--out`. When the dataset has published test cases, it also scores them with
a full ranking over all items and writes HR@20 and MRR@20 to `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from recsys.cli import HelpFormatter
from recsys.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an embedding model (ALS or two-tower)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    models = parser.add_subparsers(dest="model", metavar="MODEL")
    models.required = True
    _register_als(models)
    _register_two_tower(models)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=Path, required=True, help="prepared dataset directory"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for the model artifacts"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads for training"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument(
        "--no-evaluate",
        action="store_true",
        help="skip scoring the dataset's test cases after training",
    )


def _register_als(models: argparse._SubParsersAction) -> None:
    parser = models.add_parser(
        "als",
        help="implicit ALS with fold-in for unseen users and live sessions",
        formatter_class=HelpFormatter,
    )
    _add_common(parser)
    from recsys.models.als import ALSConfig

    defaults = ALSConfig()
    for name, kind, help_text in (
        ("factors", int, "latent factors"),
        ("regularization", float, "L2 regularization weight"),
        ("iterations", int, "ALS sweeps over users and items"),
        ("alpha", float, "scale of the confidence of every event"),
    ):
        parser.add_argument(
            "--" + name, type=kind, default=getattr(defaults, name), help=help_text
        )
    parser.add_argument(
        "--event-weights",
        type=json.loads,
        default=None,
        help="JSON object of confidence per event type; None uses "
        + json.dumps(defaults.event_weights),
    )
    parser.add_argument(
        "--rows",
        choices=["auto", "users", "sessions"],
        default="auto",
        help="matrix rows: users where events carry user ids (auto), or sessions",
    )
    parser.set_defaults(handler=_train_als)


def _register_two_tower(models: argparse._SubParsersAction) -> None:
    from recsys.models.two_tower_config import TwoTowerConfig

    defaults = TwoTowerConfig()
    parser = models.add_parser(
        "two-tower",
        help="two-tower session model (torch)",
        formatter_class=HelpFormatter,
    )
    _add_common(parser)
    for name, help_text in (
        ("dim", "embedding dimension"),
        ("max_len", "events of a session the session tower reads"),
        ("n_layers", "transformer layers in the session tower"),
        ("n_heads", "attention heads"),
        ("dropout", "dropout rate"),
        ("temperature", "softmax temperature over cosine scores"),
        ("n_buckets", "hash buckets for title and query tokens"),
        ("n_sampled", "uniformly sampled negatives per step (loss=sampled)"),
        ("batch_size", "training cases per step"),
        ("lr", "Adam learning rate"),
        ("epochs", "maximum epochs"),
        ("patience", "epochs without validation gain before stopping"),
        ("valid_fraction", "share of sessions, ending last, kept for validation"),
        ("max_valid_cases", "validation cases scored per epoch at most"),
        ("max_minutes", "stop after the first epoch that ends past this many minutes"),
    ):
        default = getattr(defaults, name)
        kind = float if isinstance(default, float) or default is None else int
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=default, help=help_text
        )
    parser.add_argument(
        "--loss",
        choices=["full", "sampled"],
        default=defaults.loss,
        help="softmax over all items (full), or over in-batch and sampled "
        "negatives with the logQ correction (sampled)",
    )
    parser.add_argument(
        "--no-users", action="store_true", help="train without user embeddings"
    )
    parser.set_defaults(handler=_train_two_tower)


def _train_two_tower(args: argparse.Namespace) -> int:
    import torch

    from recsys.models.prepared import load_prepared
    from recsys.models.two_tower import TwoTowerRecommender
    from recsys.models.two_tower_config import TwoTowerConfig

    torch.set_num_threads(args.threads)
    fields = TwoTowerConfig.__dataclass_fields__
    config = TwoTowerConfig(
        **{name: getattr(args, name) for name in fields if hasattr(args, name)},
        use_users=not args.no_users,
    )
    prepared = load_prepared(args.dataset)
    model = TwoTowerRecommender(
        config,
        item_categories=prepared.item_categories,
        item_titles=prepared.item_titles,
    )
    started = time.monotonic()
    model.fit(prepared.data, queries=prepared.queries)
    seconds = time.monotonic() - started
    log.info("two-tower trained in %.0f s", seconds)
    model.metrics["fit_seconds"] = seconds
    _finish(model, prepared, args)
    return 0


def _train_als(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    from recsys.models.als import ALSConfig, ALSRecommender
    from recsys.models.prepared import load_prepared

    config = ALSConfig(
        factors=args.factors,
        regularization=args.regularization,
        iterations=args.iterations,
        alpha=args.alpha,
        rows=args.rows,
        random_state=args.seed,
        num_threads=args.threads,
    )
    if args.event_weights is not None:
        if not isinstance(args.event_weights, dict):
            raise ConfigError(
                f"invalid --event-weights {args.event_weights!r}; "
                "expected a JSON object"
            )
        weights = args.event_weights.items()
        config.event_weights = {str(name): float(w) for name, w in weights}
    prepared = load_prepared(args.dataset)
    model = ALSRecommender(config)
    with threadpool_limits(1, "blas"):
        started = time.monotonic()
        model.fit(prepared.data)
        seconds = time.monotonic() - started
        log.info("ALS trained in %.0f s", seconds)
        model.metrics["fit_seconds"] = seconds
        _finish(model, prepared, args)
    return 0


def _finish(model: Any, prepared: Any, args: argparse.Namespace) -> None:
    """Score the test cases when asked, then save the model and its metrics."""
    from recsys.models.prepared import evaluate_cases

    if prepared.cases is not None and not args.no_evaluate:
        started = time.monotonic()
        hr, mrr, n = evaluate_cases(model, prepared.cases, k=20)
        model.metrics["test"] = {
            "hr@20": hr,
            "mrr@20": mrr,
            "n_cases": n,
            "seconds": time.monotonic() - started,
        }
        log.info("test cases: HR@20 %.4f, MRR@20 %.4f over %d cases", hr, mrr, n)
    model.metrics["dataset"] = str(args.dataset)
    try:
        model.save(args.out)
    except FileNotFoundError as exc:
        raise NotFoundError(f"cannot write to {args.out}: {exc}") from exc
    log.info("saved %s to %s", model.name, args.out)
