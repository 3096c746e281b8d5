"""The two-tower session model: training, export and the recommender.

Training cases are every prefix of every training session: the last
`max_len` events before an item event predict that item. Two losses exist.
`loss="sampled"` (the default) is a softmax over the batch's own targets
plus `n_sampled` uniform negatives, with the logQ correction: each
candidate's logit is lowered by the log of its expected count among the
candidates, from item popularity. Candidates that equal a row's positive
item elsewhere in the batch are masked. `loss="full"` is a softmax over all
item vectors: exact, but it took about five times the CPU time per step
of `sampled` on 43k items (batch 512, on a 2-core Xeon).
Training stops early on Recall@20 over a validation split cut from the end
of the training data (the sessions that end last).

Scores are dot products of exported float32 vectors: `item_vectors()` returns
unit item vectors and `encode_sessions()` returns session vectors already
divided by the temperature, so `encode_sessions(...) @ item_vectors().T`
equals the logits the torch model trains on.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys.errors import BuildError, ConfigError
from recsys.interactions import (
    EVENT_TYPE_CODES,
    ItemVocab,
    SessionData,
    check_same_vocab,
)
from recsys.models.base import top_k_scores
from recsys.models.tokens import category_codes, hash_tokens, token_matrix
from recsys.models.towers import PAD_EVENT_TYPE, TwoTowerNet
from recsys.models.two_tower_config import TwoTowerConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
ITEM_IDS_FILE = "item_ids.npy"
ITEM_VECTORS_FILE = "item_vectors.npy"
VOCABS_FILE = "vocabs.json"

# Event types whose item can be a training target.
_TARGET_TYPES = np.array(
    [EVENT_TYPE_CODES[t] for t in ("click", "cart_add", "purchase")], dtype=np.int8
)


@dataclass
class _Cases:
    """Prediction cases: events `start..end-1` of the log predict `items[end]`."""

    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.end)

    def subset(self, rows: np.ndarray) -> _Cases:
        return _Cases(self.start[rows], self.end[rows])


def _prefix_cases(data: SessionData, sessions: np.ndarray) -> _Cases:
    """Return one case per item event of `sessions` that has an event before it."""
    lengths = np.diff(data.indptr)
    session_of_event = np.repeat(np.arange(data.n_sessions), lengths)
    selected = np.zeros(data.n_sessions, dtype=bool)
    selected[sessions] = True

    starts = data.indptr[session_of_event]
    positions = np.arange(len(data.items))
    keep = (
        selected[session_of_event]
        & (positions > starts)
        & (data.items >= 0)
        & np.isin(data.event_types, _TARGET_TYPES)
    )
    return _Cases(starts[keep].astype(np.int64), positions[keep].astype(np.int64))


def _split_sessions(
    data: SessionData, valid_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split session indexes into training and the sessions that end last."""
    n = data.n_sessions
    n_valid = round(n * valid_fraction)
    if n_valid == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    last_ts = data.ts[data.indptr[1:] - 1]
    # Stable sort, so sessions with equal end times keep their log order.
    order = np.argsort(last_ts, kind="stable")
    return np.sort(order[:-n_valid]), np.sort(order[-n_valid:])


@dataclass
class _Batch:
    items: torch.Tensor
    event_types: torch.Tensor
    query_tokens: torch.Tensor | None
    users: torch.Tensor | None


class _Features:
    """Event arrays of a log, gathered into right-aligned session batches."""

    def __init__(
        self,
        items: np.ndarray,
        event_types: np.ndarray,
        query_tokens: np.ndarray | None,
        event_users: np.ndarray | None,
        max_len: int,
    ) -> None:
        self.items = items
        self.event_types = event_types.astype(np.int64)
        self.query_tokens = query_tokens
        self.event_users = event_users
        self.max_len = max_len

    def batch(self, start: np.ndarray, end: np.ndarray) -> _Batch:
        length = int(np.minimum(end - start, self.max_len).max())
        positions = end[:, None] - length + np.arange(length)[None, :]
        valid = positions >= start[:, None]
        positions = np.where(valid, positions, 0)

        items = np.where(valid, self.items[positions], -1)
        types = np.where(valid, self.event_types[positions], PAD_EVENT_TYPE)
        tokens = None
        if self.query_tokens is not None:
            tokens = torch.from_numpy(self.query_tokens[positions] * valid[..., None])
        users = None
        if self.event_users is not None:
            users = torch.from_numpy(self.event_users[start])
        return _Batch(torch.from_numpy(items), torch.from_numpy(types), tokens, users)


def _recall_mrr(
    scores: torch.Tensor, targets: torch.Tensor, k: int
) -> tuple[float, float]:
    """Sum Recall@k and MRR@k over rows; ties with the target rank above it."""
    target_scores = scores.gather(1, targets[:, None])
    ranks = (scores > target_scores).sum(1)
    hit = ranks < k
    return float(hit.sum()), float((hit / (ranks + 1.0)).sum())


class TwoTowerRecommender:
    """Session recommender over the two-tower model's exported vectors."""

    name = "two_tower"

    def __init__(
        self,
        config: TwoTowerConfig | None = None,
        *,
        item_categories: Sequence[str | None] | None = None,
        item_titles: Sequence[str | None] | None = None,
        exclude_seen: bool = False,
    ) -> None:
        """Create an untrained model.

        `item_categories` and `item_titles` are aligned with the vocabulary
        of the data passed to `fit` (None where unknown).
        """
        self.config = config or TwoTowerConfig()
        self.config.validate()
        self.exclude_seen = exclude_seen
        self._item_categories = item_categories
        self._item_titles = item_titles
        self.vocab: ItemVocab | None = None
        self.category_vocab: list[str] = []
        self.user_vocab: dict[str, int] = {}
        self.net: TwoTowerNet | None = None
        self.metrics: dict[str, Any] = {}
        self.params: dict[str, Any] = asdict(self.config)
        self._item_vectors: np.ndarray | None = None
        self._pretrained = False

    # Building the network

    def _build_net(self, n_items: int, n_users: int) -> TwoTowerNet:
        c = self.config
        return TwoTowerNet(
            n_items=n_items,
            dim=c.dim,
            n_categories=len(self.category_vocab),
            n_buckets=c.n_buckets,
            n_tokens=c.n_tokens,
            n_users=n_users,
            max_len=c.max_len,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            dropout=c.dropout,
            temperature=c.temperature,
        )

    def _set_content(self, data: SessionData) -> None:
        n_items = len(data.vocab)
        categories = None
        if self._item_categories is not None:
            codes, self.category_vocab = category_codes(self._item_categories)
            categories = torch.from_numpy(codes)
        tokens = None
        if self._item_titles is not None:
            tokens = torch.from_numpy(
                token_matrix(
                    self._item_titles, self.config.n_buckets, self.config.n_tokens
                )
            )
        for name, values in (("categories", categories), ("titles", tokens)):
            if values is not None and len(values) != n_items:
                raise ConfigError(
                    f"item {name} has {len(values)} rows but the vocabulary has "
                    f"{n_items} items; align them with data.vocab"
                )
        seen = np.zeros(n_items, dtype=np.float32)
        seen[data.items[data.items >= 0]] = 1.0
        self.net = self._build_net(n_items, len(self.user_vocab))
        self.net.item_tower.set_content(categories, tokens, torch.from_numpy(seen))

    def _features(
        self, data: SessionData, queries: Sequence[str | None] | None
    ) -> _Features:
        query_tokens = None
        if queries is not None:
            if len(queries) != len(data.items):
                raise ConfigError(
                    f"queries has {len(queries)} entries for {len(data.items)} events"
                )
            if any(q for q in queries):
                query_tokens = token_matrix(
                    queries, self.config.n_buckets, self.config.n_tokens
                )
        event_users = None
        if self.user_vocab:
            session_users = np.array(
                [
                    self.user_vocab.get(u, 0) if u is not None else 0
                    for u in data.user_ids
                ],
                dtype=np.int64,
            )
            event_users = np.repeat(session_users, np.diff(data.indptr))
        return _Features(
            data.items, data.event_types, query_tokens, event_users, self.config.max_len
        )

    # Training

    def fit(
        self,
        data: SessionData,
        *,
        queries: Sequence[str | None] | None = None,
    ) -> TwoTowerRecommender:
        """Train on every prefix of `data`'s sessions and return self.

        `queries` is the search text of each event of `data` (aligned with
        `data.items`, None on non-search events).
        """
        if self._pretrained:
            check_same_vocab(self.vocab, data.vocab)
            return self
        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        self.vocab = data.vocab
        if c.use_users:
            users = sorted({u for u in data.user_ids if u is not None})
            self.user_vocab = {u: i + 1 for i, u in enumerate(users)}
        self._set_content(data)
        assert self.net is not None
        features = self._features(data, queries)

        train_sessions, valid_sessions = _split_sessions(data, c.valid_fraction)
        train = _prefix_cases(data, train_sessions)
        valid = _prefix_cases(data, valid_sessions)
        if len(valid) > c.max_valid_cases:
            valid = valid.subset(
                np.sort(rng.choice(len(valid), c.max_valid_cases, replace=False))
            )
        if len(train) == 0:
            raise ConfigError(
                "the training data has no session with two or more item events; "
                "nothing to train on"
            )
        log.info(
            "two-tower: %d items, %d training cases, %d validation cases, loss=%s",
            len(data.vocab),
            len(train),
            len(valid),
            c.loss,
        )

        counts = np.bincount(data.items[train.end], minlength=len(data.vocab)) + 1.0
        item_probability = torch.from_numpy((counts / counts.sum()).astype(np.float32))
        optimizer = torch.optim.Adam(
            self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay
        )
        started = time.monotonic()
        # The best validation recall so far, with its weights and epoch.
        best: tuple[float, dict[str, Any] | None, int] = (-1.0, None, 0)
        history = []
        for epoch in range(1, c.epochs + 1):
            loss, rate = self._train_epoch(
                features, train, optimizer, item_probability, rng, epoch, started
            )
            recall, mrr = self._validate(features, valid) if len(valid) else (0.0, 0.0)
            history.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "examples_per_s": rate,
                    "valid_recall@20": recall,
                    "valid_mrr@20": mrr,
                }
            )
            log.info(
                "epoch %d: loss %.4f, %.0f examples/s, validation Recall@20 %.4f "
                "MRR@20 %.4f",
                epoch,
                loss,
                rate,
                recall,
                mrr,
            )
            # Without a validation split, the last epoch counts as the best.
            if recall > best[0] or not len(valid):
                best = (recall, copy.deepcopy(self.net.state_dict()), epoch)
            elif epoch - best[2] >= c.patience:
                log.info("stopping early: no gain for %d epochs", epoch - best[2])
                break
            if c.max_minutes and time.monotonic() - started > 60 * c.max_minutes:
                log.info("stopping: time budget of %.1f minutes used", c.max_minutes)
                break
        if best[1] is not None:
            self.net.load_state_dict(best[1])
        self.net.eval()
        self._item_vectors = None
        self.metrics = {
            "best_epoch": best[2],
            "valid_recall@20": best[0],
            "train_seconds": time.monotonic() - started,
            "n_train_cases": len(train),
            "n_valid_cases": len(valid),
            "history": history,
        }
        return self

    def _ordered_batches(
        self, train: _Cases, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Shuffle cases, then group similar lengths to cut padding."""
        c = self.config
        order = rng.permutation(len(train))
        lengths = np.minimum(train.end - train.start, c.max_len)
        chunk = c.batch_size * 50
        batches: list[np.ndarray] = []
        for lo in range(0, len(order), chunk):
            part = order[lo : lo + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(
                part[i : i + c.batch_size] for i in range(0, len(part), c.batch_size)
            )
        return [batches[i] for i in rng.permutation(len(batches))]

    def _train_epoch(
        self, features, train, optimizer, item_probability, rng, epoch, started
    ):
        c = self.config
        net = self._require_net()
        net.train()
        total_loss, seen, tick = 0.0, 0, time.monotonic()
        epoch_start = tick
        batches = self._ordered_batches(train, rng)
        for step, rows in enumerate(batches, 1):
            cases = train.subset(rows)
            batch = features.batch(cases.start, cases.end)
            targets = torch.from_numpy(features.items[cases.end])
            if c.loss == "full":
                item_vectors = net.item_tower()
                sessions = net.encode_sessions(
                    batch.items,
                    batch.event_types,
                    batch.query_tokens,
                    batch.users,
                    item_vectors=item_vectors,
                )
                loss = F.cross_entropy(sessions @ item_vectors.T, targets)
            else:
                loss = self._sampled_loss(batch, targets, item_probability)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.detach().item() * len(rows)
            seen += len(rows)
            if step % c.log_every == 0:
                now = time.monotonic()
                log.info(
                    "epoch %d step %d/%d: loss %.4f, %.0f examples/s, %.1f min",
                    epoch,
                    step,
                    len(batches),
                    total_loss / seen,
                    c.log_every * c.batch_size / (now - tick),
                    (now - started) / 60,
                )
                tick = now
        return total_loss / seen, seen / (time.monotonic() - epoch_start)

    def _sampled_loss(
        self, batch: _Batch, targets: torch.Tensor, item_probability: torch.Tensor
    ) -> torch.Tensor:
        """Softmax over in-batch positives plus uniform negatives, logQ-corrected.

        Candidates are the batch's targets (drawn in proportion to item
        popularity `item_probability`) and `n_sampled` uniformly drawn items.
        Each logit is lowered by the log of its item's expected count among
        the candidates, batch * q + n_sampled / n_items, so the sampled
        softmax estimates the full one. Candidates equal to a row's own
        target are masked, except the row's own positive.
        """
        net = self._require_net()
        n_items = len(item_probability)
        n_sampled = self.config.n_sampled
        candidates = targets
        if n_sampled:
            extra = torch.randint(0, n_items, (n_sampled,))
            candidates = torch.cat([targets, extra])
        expected = len(targets) * item_probability[candidates] + n_sampled / n_items

        sessions = net.encode_sessions(
            batch.items, batch.event_types, batch.query_tokens, batch.users
        )
        logits = sessions @ net.item_tower(candidates).T - expected.log()
        rows = torch.arange(len(targets))
        same = targets[:, None] == candidates[None, :]
        same[rows, rows] = False
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, rows)

    @torch.no_grad()
    def _validate(self, features: _Features, valid: _Cases) -> tuple[float, float]:
        net = self._require_net()
        net.eval()
        item_vectors = net.item_tower()
        hits = rr = 0.0
        for lo in range(0, len(valid), 1024):
            cases = valid.subset(np.arange(lo, min(lo + 1024, len(valid))))
            batch = features.batch(cases.start, cases.end)
            sessions = net.encode_sessions(
                batch.items,
                batch.event_types,
                batch.query_tokens,
                batch.users,
                item_vectors=item_vectors,
            )
            targets = torch.from_numpy(features.items[cases.end])
            h, r = _recall_mrr(sessions @ item_vectors.T, targets, 20)
            hits += h
            rr += r
        return hits / len(valid), rr / len(valid)

    # Export and scoring

    def _require_net(self) -> TwoTowerNet:
        if self.net is None or self.vocab is None:
            raise ConfigError(
                "the two-tower model is not trained; call fit or load first"
            )
        return self.net

    def _require_vocab(self) -> ItemVocab:
        if self.vocab is None:
            raise ConfigError(
                "the two-tower model is not trained; call fit or load first"
            )
        return self.vocab

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """Return unit item vectors, float32 (n_items, dim), for FAISS."""
        if self._item_vectors is None:
            net = self._require_net()
            net.eval()
            self._item_vectors = net.item_tower().numpy().astype(np.float32)
        return self._item_vectors

    @torch.no_grad()
    def encode_sessions(
        self,
        sessions: Sequence[np.ndarray],
        *,
        event_types: Sequence[np.ndarray | None] | None = None,
        queries: Sequence[Sequence[str | None] | None] | None = None,
        user_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Encode sessions into float32 vectors (n_sessions, dim).

        Each session is an int64 array of item indexes, oldest first, -1 for
        searches and unknown items; unknown item events are dropped.
        `event_types` gives per-event type names or codes (default: all
        clicks), `queries` the search text per event. A session with no
        events gets a zero vector unless its user is known.
        Scores are `encode_sessions(...) @ item_vectors().T`.
        """
        net = self._require_net()
        net.eval()
        c = self.config
        n = len(sessions)
        events = [
            self._known_events(sessions, event_types, queries, row) for row in range(n)
        ]
        longest = max((len(items) for items, _, _ in events), default=1)
        length = max(1, min(c.max_len, longest))
        items = np.full((n, length), -1, dtype=np.int64)
        types = np.full((n, length), PAD_EVENT_TYPE, dtype=np.int64)
        tokens = np.zeros((n, length, c.n_tokens), dtype=np.int64)
        for row, (row_items, row_types, row_queries) in enumerate(events):
            m = min(len(row_items), length)
            if m == 0:
                # One empty click keeps the attention softmax defined.
                types[row, -1] = EVENT_TYPE_CODES["click"]
                continue
            items[row, -m:] = row_items[-m:]
            types[row, -m:] = row_types[-m:]
            for j, text in enumerate(row_queries[-m:]):
                hashed = hash_tokens(text, c.n_buckets, c.n_tokens)
                tokens[row, length - m + j, : len(hashed)] = hashed
        users = None
        if self.user_vocab:
            users = torch.tensor(
                [
                    self.user_vocab.get(u, 0) if u is not None else 0
                    for u in (user_ids or [None] * n)
                ],
                dtype=torch.int64,
            )
        vectors = net.encode_sessions(
            torch.from_numpy(items),
            torch.from_numpy(types),
            torch.from_numpy(tokens) if tokens.any() else None,
            users,
            item_vectors=torch.from_numpy(self.item_vectors()),
        )
        return vectors.numpy().astype(np.float32)

    def _known_events(self, sessions, event_types, queries, row: int):
        """Return one session's items, type codes and queries, oldest first.

        Item events outside the vocabulary carry no signal and are dropped;
        searches stay (item -1), represented by their query text.
        """
        items = np.asarray(sessions[row], dtype=np.int64)
        types = self._type_codes(event_types, row, len(items))
        texts = [None] * len(items)
        if queries is not None and queries[row] is not None:
            texts = list(queries[row])
        is_search = types == EVENT_TYPE_CODES["search"]
        n_items = len(self._require_vocab())
        keep = ((items >= 0) & (items < n_items)) | is_search
        items = np.where(is_search, -1, items)
        kept_texts = [t for t, k in zip(texts, keep, strict=True) if k]
        return items[keep], types[keep], kept_texts

    @staticmethod
    def _type_codes(event_types, row: int, n: int) -> np.ndarray:
        if event_types is None or event_types[row] is None:
            return np.full(n, EVENT_TYPE_CODES["click"], dtype=np.int64)
        values = np.asarray(event_types[row])
        if values.dtype.kind in "iu":
            return values.astype(np.int64)
        try:
            return np.array([EVENT_TYPE_CODES[t] for t in values], dtype=np.int64)
        except KeyError as exc:
            raise ConfigError(
                f"invalid event type {exc.args[0]!r}; expected one of "
                f"{sorted(EVENT_TYPE_CODES)}"
            ) from None

    def recommend(
        self,
        items: np.ndarray,
        k: int,
        *,
        event_types: np.ndarray | None = None,
        ts: np.ndarray | None = None,
        queries: Sequence[str | None] | None = None,
        user_id: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank all items for one session, best first (see SessionRecommender).

        Items already in the session stay eligible unless `exclude_seen`.
        """
        items = np.asarray(items, dtype=np.int64)
        session = self.encode_sessions(
            [items],
            event_types=None if event_types is None else [event_types],
            queries=None if queries is None else [queries],
            user_ids=[user_id],
        )[0]
        scores = self.item_vectors() @ session
        if self.exclude_seen:
            seen = items[(items >= 0) & (items < len(scores))]
            scores[seen] = -np.inf
        return top_k_scores(scores, k)

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        """Score all items for click-only sessions, float32 (n_sessions, n_items).

        Items of -1 (outside the vocabulary) are dropped from each session.
        """
        return self.encode_sessions(sessions) @ self.item_vectors().T

    # Persistence

    def save(self, directory: Path | str) -> None:
        """Write weights, config, vocabularies and exported item vectors."""
        net = self._require_net()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        (directory / VOCABS_FILE).write_text(
            json.dumps({"categories": self.category_vocab, "users": self.user_vocab})
        )
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2))
        self._require_vocab().save(directory / ITEM_IDS_FILE)
        np.save(directory / ITEM_VECTORS_FILE, self.item_vectors(), allow_pickle=False)

    @classmethod
    def load(
        cls, directory: Path | str, *, exclude_seen: bool = False
    ) -> TwoTowerRecommender:
        """Load a model written by `save`; weights load with weights_only=True."""
        directory = Path(directory)
        try:
            config = TwoTowerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
            vocabs = json.loads((directory / VOCABS_FILE).read_text())
            state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise BuildError(
                f"cannot load the two-tower model: {exc}", str(directory)
            ) from exc
        model = cls(config, exclude_seen=exclude_seen)
        model.vocab = ItemVocab.load(directory / ITEM_IDS_FILE)
        model.category_vocab = vocabs["categories"]
        model.user_vocab = vocabs["users"]
        metrics_path = directory / METRICS_FILE
        if metrics_path.exists():
            model.metrics = json.loads(metrics_path.read_text())
        model.net = model._build_net(len(model.vocab), len(model.user_vocab))
        model.net.load_state_dict(state)
        model.net.item_tower.has_tokens = bool(
            (model.net.item_tower.item_tokens > 0).any()
        )
        model.net.eval()
        model._pretrained = True
        model.params["model_dir"] = str(directory)
        return model


def create_two_tower(
    model_dir: str | None = None, exclude_seen: bool = False, **config: Any
) -> TwoTowerRecommender:
    """Create an unfitted two-tower model from config values, or load one.

    With `model_dir`, the saved model is loaded and `fit` only checks that
    the data has the same item vocabulary, so `recsys evaluate` can score a
    model trained by `recsys train two-tower`.
    """
    if model_dir is not None:
        if config:
            raise ConfigError(
                f"model_dir loads a trained model; drop the other parameters "
                f"{sorted(config)}"
            )
        return TwoTowerRecommender.load(model_dir, exclude_seen=exclude_seen)
    return TwoTowerRecommender(TwoTowerConfig(**config), exclude_seen=exclude_seen)
