"""Entropy coding of assignment indexes with rANS (``constriction``), near the empirical entropy.

The model is the empirical distribution itself (integer counts stored in the file), so the
decoder rebuilds the exact same quantized probabilities and the stream costs ~N*H bits.
"""

from __future__ import annotations

import constriction
import numpy as np


def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def encode_indexes(assignments: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode indexes in ``[0, k)``; returns (compressed uint32 words, per-symbol counts)."""
    symbols = np.ascontiguousarray(assignments, dtype=np.int32)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
        raise ValueError(f"assignment indexes must lie in [0, {k})")
    counts = np.bincount(symbols, minlength=k).astype(np.int64)
    if k == 1 or symbols.size == 0:
        return np.zeros(0, dtype=np.uint32), counts
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(counts))
    return coder.get_compressed(), counts


def decode_indexes(words: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_indexes`; raises ValueError on a stream that does not decode.

    ``counts`` fixes how many indexes are decoded, whatever the length of ``words``: callers bound its sum.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    k = len(counts)
    if words.dtype != np.uint32 or words.ndim != 1:
        raise ValueError(f"index stream must be a 1-D uint32 array, got {words.dtype} of shape {words.shape}")
    if (counts < 0).any():
        raise ValueError("negative symbol count")
    if k == 1 or n == 0:
        if words.size:
            raise ValueError("index stream given where every index is known (one symbol or none)")
        return np.zeros(n, dtype=np.int64)
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words))
    symbols = coder.decode(_model(counts), n).astype(np.int64)
    if not coder.is_empty() or not np.array_equal(np.bincount(symbols, minlength=k), counts):
        raise ValueError("index stream does not match its symbol counts")
    return symbols
