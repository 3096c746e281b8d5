"""Reading a prepared dataset for model training, and a quick test-case score.

`load_prepared` turns a prepared dataset directory (layout in
`recsys.datasets.schema`) into a `SessionData` plus what the models need
beside it: the search text of each event and the category and title of each
item. `evaluate_cases` scores published test cases with a full ranking over
all items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.datasets.schema import CASES_FILE, EVENTS_FILE, ITEMS_FILE
from recsys.errors import BuildError, NotFoundError
from recsys.interactions import ItemVocab, SessionData

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """A training log with its search text, item content and test cases.

    `queries` is aligned with `data.items`; `item_categories` and
    `item_titles` with `data.vocab` (None when the dataset has no items
    file). `cases` is the test cases table, or None.
    """

    data: SessionData
    queries: list[str | None] | None
    item_categories: list[str | None] | None
    item_titles: list[str | None] | None
    cases: pa.Table | None


def load_prepared(directory: Path | str) -> PreparedData:
    """Read events, items and test cases of a prepared dataset directory.

    The vocabulary lists the items of the events, then the catalog items of
    `items.parquet` that no event touches, so cold items can be ranked.
    """
    directory = Path(directory)
    events_path = directory / EVENTS_FILE
    if not events_path.exists():
        raise NotFoundError(
            f"no {EVENTS_FILE} in {directory}; pass a prepared dataset directory"
        )
    # SessionData sorts the same way; sorting here first aligns the queries.
    events = pq.read_table(events_path).sort_by(
        [("session_id", "ascending"), ("ts", "ascending")]
    )
    event_items = events.column("item_id").to_pylist()
    item_ids = list(dict.fromkeys(i for i in event_items if i is not None))

    items_table = None
    if (directory / ITEMS_FILE).exists():
        items_table = pq.read_table(directory / ITEMS_FILE)
        known = set(item_ids)
        item_ids += [
            i for i in items_table.column("item_id").to_pylist() if i not in known
        ]
    vocab = ItemVocab(item_ids)
    data = SessionData.from_events(events, vocab)

    queries = events.column("query").to_pylist()
    if not any(queries):
        queries = None
    categories: list[str | None] | None = None
    titles: list[str | None] | None = None
    if items_table is not None:
        rows = vocab.encode(items_table.column("item_id").to_pylist())
        categories = [None] * len(vocab)
        titles = [None] * len(vocab)
        for row, category, title in zip(
            rows,
            items_table.column("category").to_pylist(),
            items_table.column("title").to_pylist(),
            strict=True,
        ):
            categories[row] = category
            titles[row] = title
        if not any(titles):
            titles = None
        if not any(categories):
            categories = None

    cases = None
    if (directory / CASES_FILE).exists():
        cases = pq.read_table(directory / CASES_FILE)
    log.info(
        "loaded %s: %d events, %d sessions, %d items, %s test cases",
        directory,
        len(data.items),
        data.n_sessions,
        len(vocab),
        "no" if cases is None else cases.num_rows,
    )
    return PreparedData(data, queries, categories, titles, cases)


class BatchScorer(Protocol):
    vocab: ItemVocab | None

    def score_sessions(self, sessions: list[np.ndarray]) -> np.ndarray: ...


def evaluate_cases(
    model: BatchScorer, cases: pa.Table, k: int = 20, batch_size: int = 1024
) -> tuple[float, float, int]:
    """Return HR@k, MRR@k and the case count over a test cases table.

    Every case ranks all items. A label outside the vocabulary is a miss;
    items of the prefix outside the vocabulary are dropped from the session.
    Ties with the label rank below it (the label gets the best rank among
    equal scores), as in the usual SR-GNN evaluation with a strict count.
    """
    vocab = model.vocab
    if vocab is None:
        raise BuildError(
            "evaluate_cases called before fit: the model has no item vocabulary; "
            "fit or load the model first"
        )
    prefixes = [vocab.encode(p) for p in cases.column("prefix").to_pylist()]
    labels = vocab.encode(cases.column("label").to_pylist())
    hits = reciprocal = 0.0
    for lo in range(0, len(labels), batch_size):
        scores = model.score_sessions(prefixes[lo : lo + batch_size])
        batch_labels = labels[lo : lo + batch_size]
        known = batch_labels >= 0
        label_scores = scores[np.arange(len(batch_labels)), np.maximum(batch_labels, 0)]
        ranks = (scores > label_scores[:, None]).sum(axis=1)
        hit = known & (ranks < k)
        hits += hit.sum()
        reciprocal += (hit / (ranks + 1.0)).sum()
    n = len(labels)
    return hits / n, reciprocal / n, n
