"""The torch modules of the two-tower model: an item tower and a session tower.

Both towers write into one space of unit vectors. An item vector is the sum
of an item id embedding, a category embedding and the mean of the item's
hashed title-token embeddings, then L2-normalised. Items without training
interactions get no id part, so their vector comes from content alone.

The session tower reads the last events of a session, most recent last. Each
event is represented by the vector of its item, or for a search by the
normalised mean of its hashed query-token embeddings (the same token table as
titles). A small transformer over these vectors plus event-type and recency
embeddings computes one attention weight per event. The session vector is
the weighted sum of the event vectors themselves, plus a learned linear shift
of the weighted transformer outputs and an optional user embedding,
normalised and divided by a temperature. The item embeddings are shared
between towers, and the mixture of item vectors puts the session in the item
space from the start. The shift lets it move from the items already seen to
the next one, because a pure mixture always ranks a one-item session's own
item first. A dot product with the exported unit item vectors then ranks
items by cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.events import EVENT_TYPES

# Event-type code used for padding positions of a session batch.
PAD_EVENT_TYPE = len(EVENT_TYPES)


class ItemTower(nn.Module):
    """Item id, category and title-token embeddings summed and normalised.

    Buffers, saved in the state_dict:

    - `item_categories`, int64 (n_items,): category codes from 1, 0 for none.
    - `item_tokens`, int64 (n_items, n_tokens): title token buckets from 1,
      0 for padding.
    - `id_mask`, float32 (n_items,): 1 where the item's id embedding is used,
      0 for items never seen in training.
    """

    # Buffer types for type checkers, which see nn.Module attributes as
    # Tensor | Module.
    item_categories: torch.Tensor
    item_tokens: torch.Tensor
    id_mask: torch.Tensor

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_categories: int,
        n_buckets: int,
        n_tokens: int,
    ) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        self.category_embedding = (
            nn.Embedding(n_categories + 1, dim, padding_idx=0) if n_categories else None
        )
        # The token table also embeds search queries in the session tower.
        self.token_embedding = nn.EmbeddingBag(
            n_buckets + 1, dim, mode="mean", padding_idx=0
        )
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()
        self.register_buffer("item_categories", torch.zeros(n_items, dtype=torch.int64))
        self.register_buffer(
            "item_tokens", torch.zeros(n_items, n_tokens, dtype=torch.int64)
        )
        self.register_buffer("id_mask", torch.ones(n_items))
        self.has_tokens = False

    def set_content(
        self,
        categories: torch.Tensor | None,
        tokens: torch.Tensor | None,
        id_mask: torch.Tensor,
    ) -> None:
        """Store the content features of every item and which ids to use."""
        if categories is not None:
            self.item_categories.copy_(categories)
        if tokens is not None:
            self.item_tokens.copy_(tokens)
        self.id_mask.copy_(id_mask)
        self.has_tokens = bool((self.item_tokens > 0).any())

    def forward(self, indexes: torch.Tensor | None = None) -> torch.Tensor:
        """Return unit item vectors, (*indexes.shape, dim) or (n_items, dim)."""
        if indexes is None:
            vectors = self.item_embedding.weight * self.id_mask[:, None]
            categories, tokens = self.item_categories, self.item_tokens
        else:
            shape = indexes.shape
            indexes = indexes.reshape(-1)
            vectors = self.item_embedding(indexes) * self.id_mask[indexes, None]
            categories = self.item_categories[indexes]
            tokens = self.item_tokens[indexes]
        if self.category_embedding is not None:
            vectors = vectors + self.category_embedding(categories)
        if self.has_tokens:
            vectors = vectors + self.token_embedding(tokens)
        vectors = F.normalize(vectors, dim=-1)
        if indexes is None:
            return vectors
        return vectors.reshape(*shape, -1)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token rows (..., n_tokens) as unit vectors (..., dim)."""
        shape = tokens.shape
        flat = self.token_embedding(tokens.reshape(-1, shape[-1]))
        return F.normalize(flat, dim=-1).reshape(*shape[:-1], -1)


class SessionTower(nn.Module):
    """Attention weights over a session's events from a small transformer."""

    def __init__(
        self,
        dim: int,
        max_len: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        n_users: int,
    ) -> None:
        super().__init__()
        self.type_embedding = nn.Embedding(PAD_EVENT_TYPE + 1, dim)
        self.recency_embedding = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim,
            n_heads,
            dim_feedforward=2 * dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, n_layers, enable_nested_tensor=False
        )
        self.attention = nn.Linear(dim, 1)
        # Starts at zero, so training begins from the pure mixture of item
        # vectors and learns how far the next item lies from it.
        self.shift = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.shift.weight)
        for table in (self.type_embedding, self.recency_embedding):
            nn.init.normal_(table.weight, std=0.02)
        self.event_dropout = nn.Dropout(dropout)
        self.user_embedding = (
            nn.Embedding(n_users + 1, dim, padding_idx=0) if n_users else None
        )
        if self.user_embedding is not None:
            nn.init.normal_(self.user_embedding.weight, std=0.02)
            with torch.no_grad():
                self.user_embedding.weight[0].zero_()

    def forward(
        self,
        event_vectors: torch.Tensor,
        event_types: torch.Tensor,
        mask: torch.Tensor,
        users: torch.Tensor | None,
    ) -> torch.Tensor:
        """Return unnormalised session vectors (batch, dim).

        `event_vectors` (batch, length, dim) are right-aligned: the most
        recent event sits at the last position; `mask` is True on events.
        """
        length = event_vectors.shape[1]
        recency = torch.arange(length - 1, -1, -1, device=event_vectors.device)
        hidden = (
            event_vectors
            + self.type_embedding(event_types)
            + self.recency_embedding(recency)[None]
        )
        hidden = self.input_dropout(self.input_norm(hidden))
        hidden = self.encoder(hidden, src_key_padding_mask=~mask)

        logits = self.attention(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        session = (weights[..., None] * self.event_dropout(event_vectors)).sum(1)
        session = session + self.shift((weights[..., None] * hidden).sum(1))
        if self.user_embedding is not None and users is not None:
            session = session + self.user_embedding(users)
        return session


class TwoTowerNet(nn.Module):
    """Both towers and the temperature that turns cosines into logits."""

    def __init__(
        self,
        *,
        n_items: int,
        dim: int,
        n_categories: int,
        n_buckets: int,
        n_tokens: int,
        n_users: int,
        max_len: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        temperature: float,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.item_tower = ItemTower(n_items, dim, n_categories, n_buckets, n_tokens)
        self.session_tower = SessionTower(
            dim, max_len, n_layers, n_heads, dropout, n_users
        )

    def encode_sessions(
        self,
        items: torch.Tensor,
        event_types: torch.Tensor,
        query_tokens: torch.Tensor | None,
        users: torch.Tensor | None,
        item_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return session vectors scaled by 1/temperature, (batch, dim).

        `items` (batch, length) contains item indexes, -1 on searches and
        padding; padding is where `event_types` equals `PAD_EVENT_TYPE`.
        `query_tokens` (batch, length, n_tokens) contains the query's token
        buckets on search events. Pass `item_vectors` when the caller has
        already computed every item's vector for this step.
        """
        mask = event_types != PAD_EVENT_TYPE
        has_item = items >= 0
        safe_items = items.clamp(min=0)
        if item_vectors is None:
            event_vectors = self.item_tower(safe_items)
        else:
            event_vectors = item_vectors[safe_items]
        event_vectors = event_vectors * has_item[..., None]
        if query_tokens is not None:
            is_text = mask & ~has_item
            text_vectors = self.item_tower.embed_text(query_tokens)
            event_vectors = event_vectors + text_vectors * is_text[..., None]

        session = self.session_tower(event_vectors, event_types, mask, users)
        return F.normalize(session, dim=-1) / self.temperature
