import numpy as np
import pytest

from deepkmeans.codec.entropy import decode_indexes, encode_indexes


@pytest.mark.parametrize("k,n", [(1, 10), (2, 1), (2, 1000), (7, 5000), (256, 20000)])
def test_roundtrip(k: int, n: int) -> None:
    rng = np.random.default_rng(k)
    probs = rng.dirichlet(np.ones(k))
    symbols = rng.choice(k, size=n, p=probs)
    words, counts = encode_indexes(symbols, k)
    assert counts.sum() == n
    np.testing.assert_array_equal(decode_indexes(words, counts), symbols)


def test_stream_near_entropy() -> None:
    rng = np.random.default_rng(0)
    k, n = 32, 80_000
    probs = np.full(k, 0.1 / (k - 1))
    probs[0] = 0.9
    symbols = rng.choice(k, size=n, p=probs)
    words, counts = encode_indexes(symbols, k)
    p = counts[counts > 0] / n
    ideal = n * float(-(p * np.log2(p)).sum())
    assert ideal <= words.size * 32 <= 1.01 * ideal + 64


def test_out_of_range_and_corrupt_stream() -> None:
    with pytest.raises(ValueError, match="lie in"):
        encode_indexes(np.array([0, 3]), 3)
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 16, size=4000)
    words, counts = encode_indexes(symbols, 16)
    bad = words.copy()
    bad[len(bad) // 2] ^= 0x5A5A5A5A
    with pytest.raises(ValueError):
        decode_indexes(bad, counts)
