"""The datasets that `recsys data prepare` converts, and where their files are.

Each entry names the adapter function (imported on use), the folder under
`$RECSYS_DATA_DIR` that contains its source files, and a one-line summary.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, NotFoundError

DATA_DIR_ENV = "RECSYS_DATA_DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """How to prepare one dataset."""

    name: str
    # "module:function" under recsys.datasets; the function takes
    # (source_dir, out_dir) and returns the manifest.
    adapter: str
    # Folder of the source files relative to $RECSYS_DATA_DIR.
    subdir: str
    summary: str

    def load_adapter(self) -> Callable[[Path, Path], dict[str, Any]]:
        module_name, function_name = self.adapter.split(":")
        module = importlib.import_module(f"recsys.datasets.{module_name}")
        adapter: Callable[[Path, Path], dict[str, Any]] = getattr(module, function_name)
        return adapter


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "diginetica",
            "benchmarks:prepare_diginetica",
            "diginetica/srgnn_benchmark",
            "DIGINETICA SR-GNN benchmark: train sessions, test sessions, 60,858 "
            "published test cases",
        ),
        DatasetSpec(
            "yoochoose",
            "benchmarks:prepare_yoochoose",
            "yoochoose/srgnn_1_64",
            "YOOCHOOSE 1/64 SR-GNN benchmark with its published test cases",
        ),
        DatasetSpec(
            "retailrocket",
            "benchmarks:prepare_retailrocket",
            "retailrocket/cgenet_processed",
            "RetailRocket view sessions (CGENet split) with published test cases",
        ),
        DatasetSpec(
            "diginetica-purchases",
            "diginetica:prepare_diginetica_purchases",
            "diginetica/raw",
            "DIGINETICA raw purchases and view sample, items with categories",
        ),
        DatasetSpec(
            "yoochoose-clicks",
            "yoochoose:prepare_yoochoose_clicks",
            "yoochoose/session_rec_rsc15_100k",
            "YOOCHOOSE timestamped clicks sample (session-rec split)",
        ),
        DatasetSpec(
            "rees46",
            "rees46:prepare_rees46",
            "rees46",
            "REES46 raw event log (3-hour slice): views, carts, purchases, users",
        ),
        DatasetSpec(
            "taobao",
            "taobao:prepare_taobao",
            "taobao",
            "Taobao UserBehavior head: pv/cart/buy per user, 30-minute sessions",
        ),
        DatasetSpec(
            "bestbuy",
            "bestbuy:prepare_bestbuy",
            "bestbuy_search",
            "Best Buy search -> click log with query text",
        ),
        DatasetSpec(
            "otto",
            "otto:prepare_otto",
            "otto",
            "OTTO JSONL sessions (test fixture): clicks, carts, orders",
        ),
        DatasetSpec(
            "jdsearch",
            "jdsearch:prepare_jdsearch",
            "jdsearch",
            "JDsearch format fixture: click/cart/purchase with query term ids",
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of `name` or raise `NotFoundError` listing valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise NotFoundError(
            f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}"
        ) from None


def default_source(spec: DatasetSpec) -> Path:
    """Return `$RECSYS_DATA_DIR/<subdir>`, or raise `ConfigError` when unset."""
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        raise ConfigError(
            f"no source folder for {spec.name}: pass --source DIR or set "
            f"{DATA_DIR_ENV} to the folder that holds {spec.subdir}/"
        )
    return Path(root) / spec.subdir


def prepare(name: str, source: Path | None, out: Path) -> dict[str, Any]:
    """Prepare dataset `name` from `source` (default: under $RECSYS_DATA_DIR)."""
    spec = get_spec(name)
    if source is None:
        source = default_source(spec)
    if not Path(source).is_dir():
        raise NotFoundError(
            f"source folder not found: {source}; it should hold the {spec.name} "
            f"files ({spec.subdir}/ under {DATA_DIR_ENV})"
        )
    return spec.load_adapter()(Path(source), Path(out))
