"""In-memory views of an event log that models and evaluation share.

`ItemVocab` maps string item ids to dense indexes 0..n-1 and back.
`SessionData` holds an event log grouped by session in CSR form: the events
of session `s` are rows `indptr[s]:indptr[s + 1]`, oldest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import BuildError, ConfigError
from recsys.events import EVENT_TYPES

# Dense code of each event type, stored in `SessionData.event_types`.
EVENT_TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}


class ItemVocab:
    """A fixed mapping between item ids (strings) and dense indexes."""

    def __init__(self, item_ids: Sequence[str] | np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids, dtype=object)
        self._index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise ValueError("item_ids contains duplicates")

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def index(self, item_id: str) -> int:
        """Return the dense index of `item_id`, or -1 when it is unknown."""
        return self._index.get(item_id, -1)

    def encode(self, item_ids: Iterable[str | None]) -> np.ndarray:
        """Map ids to indexes (int64); unknown ids and None become -1."""
        get = self._index.get
        return np.fromiter(
            (get(i, -1) if i is not None else -1 for i in item_ids), dtype=np.int64
        )

    def decode(self, indexes: np.ndarray | Sequence[int]) -> list[str]:
        """Map indexes back to ids; every index must be in range."""
        return [str(x) for x in self.item_ids[np.asarray(indexes, dtype=np.int64)]]

    def save(self, path: Path) -> None:
        np.save(path, self.item_ids.astype(str), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BuildError(f"cannot read item vocabulary: {exc}", str(path)) from exc
        return cls(ids.astype(object))


def check_same_vocab(stored: ItemVocab | None, data: ItemVocab) -> None:
    """Raise unless a loaded model's vocabulary is the data's, in order."""
    if stored is None or not np.array_equal(stored.item_ids, data.item_ids):
        raise ConfigError(
            "the loaded model's item vocabulary differs from the data's "
            f"({0 if stored is None else len(stored)} vs {len(data)} items); "
            "evaluate it on the dataset it was trained on, or drop model_dir"
        )


@dataclass(frozen=True)
class SessionData:
    """An event log grouped by session, items as dense indexes.

    Arrays of length n_events: `items` (int64, -1 for search events or items
    outside the vocabulary), `ts` (int64 ms), `event_types` (int8 codes of
    `EVENT_TYPE_CODES`). Arrays of length n_sessions: `session_ids`,
    `user_ids` (None where the session has no user). `indptr` has length
    n_sessions + 1.
    """

    vocab: ItemVocab
    session_ids: np.ndarray
    user_ids: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    event_types: np.ndarray

    @property
    def n_sessions(self) -> int:
        return len(self.session_ids)

    def session_items(self, s: int) -> np.ndarray:
        return self.items[self.indptr[s] : self.indptr[s + 1]]

    @classmethod
    def from_events(
        cls, events: pa.Table, vocab: ItemVocab | None = None
    ) -> SessionData:
        """Group an events table (schema `EVENTS_SCHEMA`) by session.

        Without `vocab`, the vocabulary is built from the table's item ids in
        order of first appearance after sorting by session and time.
        """
        events = events.sort_by([("session_id", "ascending"), ("ts", "ascending")])
        session_col = events.column("session_id").to_numpy(zero_copy_only=False)
        item_col = events.column("item_id").to_pylist()
        if vocab is None:
            seen = dict.fromkeys(i for i in item_col if i is not None)
            vocab = ItemVocab(list(seen))
        items = vocab.encode(item_col)
        ts = events.column("ts").to_numpy().astype(np.int64)
        type_codes = pc.index_in(
            events.column("event_type"), value_set=pa.array(EVENT_TYPES)
        )
        event_types = type_codes.to_numpy(zero_copy_only=False).astype(np.int8)

        n = len(session_col)
        if n:
            starts = np.flatnonzero(
                np.concatenate(([True], session_col[1:] != session_col[:-1]))
            )
        else:
            starts = np.zeros(0, dtype=np.int64)
        indptr = np.append(starts, n).astype(np.int64)
        user_col = events.column("user_id").to_numpy(zero_copy_only=False)
        return cls(
            vocab=vocab,
            session_ids=session_col[starts],
            user_ids=user_col[starts],
            indptr=indptr,
            items=items,
            ts=ts,
            event_types=event_types,
        )
