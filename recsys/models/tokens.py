"""Hashed text tokens and item content features for the two towers.

Item titles and search queries share one token space. Text is lowercased
and split on anything that is not a letter or digit. Every token is hashed
into one of `n_buckets` buckets with CRC32, which is stable across processes,
unlike Python's `hash`, which is salted per process. Bucket indexes start at 1, so 0
can pad token rows.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str | None) -> list[str]:
    """Split text into lowercase word tokens; None gives no tokens."""
    if not text:
        return []
    return _TOKEN.findall(text.lower())


def hash_tokens(text: str | None, n_buckets: int, max_tokens: int) -> list[int]:
    """Return the bucket (1..n_buckets) of each token, at most `max_tokens`."""
    return [
        1 + zlib.crc32(token.encode()) % n_buckets
        for token in tokenize(text)[:max_tokens]
    ]


def token_matrix(
    texts: Iterable[str | None], n_buckets: int, max_tokens: int
) -> np.ndarray:
    """Hash many texts into an int64 (n_texts, max_tokens) matrix, 0-padded."""
    rows = [hash_tokens(text, n_buckets, max_tokens) for text in texts]
    matrix = np.zeros((len(rows), max_tokens), dtype=np.int64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def category_codes(
    categories: Sequence[str | None], vocab: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Map categories to codes 1..n, 0 for a missing or unknown category.

    Without `vocab` the category vocabulary is built from `categories` in
    sorted order; it is returned so a saved model can map the same way.
    """
    if vocab is None:
        vocab = sorted({c for c in categories if c is not None})
    code_of = {c: i + 1 for i, c in enumerate(vocab)}
    codes = np.fromiter(
        (code_of.get(c, 0) if c is not None else 0 for c in categories),
        dtype=np.int64,
        count=len(categories),
    )
    return codes, list(vocab)
