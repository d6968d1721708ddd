"""Row-stationary energy model: a hand-counted layer, invariants, and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from deepkmeans.energy import Hardware, Layer, Sharing, estimate, unique_macs

# A hardware so small that the mapping is forced: one PE set of 3 x 1 PEs, one filter and one
# channel per PE (p = q = r = t = 1, e = 1) and a GLB large enough to hold the whole layer.
TINY_HW = Hardware(array_rows=3, array_cols=1, rf_ifmap_words=3, rf_filter_words=3, rf_psum_words=1)
# N=1, M=2, C=2, 4x4 ifmap, 3x3 filters, stride 1, no padding -> 2x2 ofmap.
TINY = dict(name="tiny", M=2, C=2, H=4, R=3)


def test_tiny_layer_dense_counts_by_hand() -> None:
    b = estimate([Layer(**TINY)], TINY_HW).layers[0].dense
    m = b.mapping
    assert (m.n, m.p, m.q, m.e, m.r, m.t, m.m_glb, m.e_glb) == (1, 1, 1, 1, 1, 1, 2, 2)
    # MACs = N*M*C*R^2*E*F = 1*2*2*9*2*2.
    assert b.macs == 144
    # Weights (36 words): a=1 DRAM fetch; b=2 GLB reads (one per ofmap-row strip, 2 strips of
    # e=1 row); c=1 (a strip has one PE per filter row); d=2 uses in the RF (F=2 output columns).
    assert b.accesses["DRAM"]["weights"] == 36
    assert b.accesses["GLB"]["weights"] == 36 * 2
    assert b.accesses["array"]["weights"] == 36 * 2
    assert b.accesses["RF"]["weights"] == 36 * 4
    # Ifmaps (2 channels x 4 x 4 = 32 words) read once from DRAM. Each filter pass (2 of them, one
    # filter each) reads each strip's 3 rows x 4 columns per channel: 2 * 2 * (2 strips * 3 rows) * 4.
    # The array hands every PE (3 per strip) its own 4-word row: 2 passes * 2 ch * 3 PEs * 2 strips * 4.
    assert b.accesses["DRAM"]["ifmaps"] == 32
    assert b.accesses["GLB"]["ifmaps"] == 2 * 2 * 6 * 4
    assert b.accesses["array"]["ifmaps"] == 2 * 2 * 3 * 2 * 4
    assert b.accesses["RF"]["ifmaps"] == 144
    # Psums (8 ofmap values) accumulate C*R*R = 18 times: a=1, b=2 channel passes, c=3 PEs of the
    # set column, d=3 taps per PE. DRAM (2a-1)=1, GLB 2a(b-1)=2, array ab(c-1)=4, RF 2abc(d-1)=24.
    assert b.accesses["DRAM"]["psums"] == 8
    assert b.accesses["GLB"]["psums"] == 8 * 2
    assert b.accesses["array"]["psums"] == 8 * 4
    assert b.accesses["RF"]["psums"] == 8 * 24
    # Energy: MAC 1, DRAM 200, GLB 6, array 2, RF 1 per 16-bit access.
    assert b.computation == 144
    assert b.level_energy("DRAM") == (36 + 32 + 8) * 200
    assert b.level_energy("GLB") == (72 + 96 + 16) * 6
    assert b.level_energy("array") == (72 + 96 + 32) * 2
    assert b.level_energy("RF") == 144 + 144 + 192
    assert b.total == 144 + 15200 + 1104 + 400 + 480


def test_tiny_layer_shared_counts_by_hand() -> None:
    # 12 rows (m, c, r); the center depends on the channel only: rows of channel 0 -> 0, channel 1 -> 1.
    assignments = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    le = estimate([Layer(**TINY, sharing=Sharing(K=2, d=3, assignments=assignments))], TINY_HW).layers[0]
    # Per channel, one center touches ifmap rows {e + r : e in 0..1, r in 0..2} = 4 rows, so the
    # unique 1-D convolutions are 2 channels * 4 rows, each F*d = 2*3 MACs: 48 of the 144 MACs.
    assert le.unique_macs == 48
    s = le.shared
    assert s.mapping.reuse_results
    # The 96 MACs saved become 96/d = 32 psum additions.
    assert s.adds == 32
    # Weight stream: 2 centers * 3 values * 16 bits + 12 rows * 1 index bit = 108 bits, against
    # 36 * 16 = 576 dense bits: DRAM and GLB weight traffic scale by 108/576.
    assert s.accesses["DRAM"]["weights"] == 36 * 108 / 576
    assert s.accesses["GLB"]["weights"] == 72 * 108 / 576
    # RF weights and ifmaps follow the unique MACs; psums keep 1/3 of their dense RF traffic and
    # each addition reads and writes its psum (2 RF accesses) and crosses the array once.
    assert s.accesses["RF"]["weights"] == 48
    assert s.accesses["RF"]["ifmaps"] == 48
    assert s.accesses["RF"]["psums"] == 192 / 3 + 2 * 32
    assert s.accesses["array"]["psums"] == 32 + 32
    assert s.computation == 48 + 32
    dram = (36 * 108 / 576 + 32 + 8) * 200
    glb = (72 * 108 / 576 + 96 + 16) * 6
    assert s.total == pytest.approx(80 + dram + glb + (72 + 96 + 64) * 2 + (48 + 48 + 128))


def _random_conv(sharing: Sharing | None = None) -> Layer:
    return Layer("conv", M=8, C=6, H=10, R=3, P=1, sharing=sharing)


def test_identity_sharing_computes_like_dense() -> None:
    conv_rows = 8 * 6 * 3
    conv = _random_conv(Sharing(K=conv_rows, d=3, assignments=np.arange(conv_rows)))
    fc = Layer("fc", M=10, C=40, H=1, R=1, sharing=Sharing(K=100, d=4, assignments=np.arange(100)))
    for le in estimate([conv, fc]).layers:
        assert le.unique_macs == le.layer.macs
        assert le.shared.macs == le.dense.macs
        assert le.shared.adds == 0


def test_unique_macs_never_exceed_macs() -> None:
    rng = np.random.default_rng(0)
    for K in (1, 3, 17, 144):
        layer = _random_conv(Sharing(K=K, d=3, assignments=rng.integers(0, K, 144)))
        assert 0 < unique_macs(layer) <= layer.macs
    strided = Layer("s2", M=4, C=3, H=9, R=3, U=2, P=1, sharing=Sharing(K=5, d=3, assignments=rng.integers(0, 5, 36)))
    assert 0 < unique_macs(strided) <= strided.macs
    fc = Layer("fc", M=10, C=40, H=1, R=1, sharing=Sharing(K=7, d=4, assignments=rng.integers(0, 7, 100)))
    assert 0 < unique_macs(fc) <= fc.macs


def test_energy_is_monotone_in_k_for_nested_assignments() -> None:
    rows = np.arange(8 * 6 * 3)
    energies = []
    for K in (1, 2, 4, 8, 16, 48, 144):
        layer = _random_conv(Sharing(K=K, d=3, assignments=rows % K))
        energies.append(estimate([layer]).layers[0].shared.total)
    assert all(a <= b + 1e-9 * b for a, b in zip(energies, energies[1:], strict=False))
    assert energies[0] < estimate([_random_conv()]).layers[0].dense.total


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(M=-1, C=2, H=4, R=3), "M must be >= 1"),
        (dict(M=2, C=2, H=4, R=0), "R must be >= 1"),
        (dict(M=2, C=2, H=4, R=3, P=-1), "padding P must be >= 0"),
        (dict(M=2, C=2, H=2, R=3), "larger than the padded ifmap"),
    ],
)
def test_bad_shapes_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layer("bad", **kwargs)


def test_bad_sharing_raises() -> None:
    with pytest.raises(ValueError, match="K must be >= 1"):
        Sharing(K=0, d=3, assignments=np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match="expected 12 assignments"):
        Layer(**TINY, sharing=Sharing(K=2, d=3, assignments=np.zeros(11, dtype=int)))
    with pytest.raises(ValueError, match=r"must lie in \[0, K=2\)"):
        Sharing(K=2, d=3, assignments=np.array([0, 2]))
    with pytest.raises(ValueError, match="do not tile the kernel width R = 3"):
        Layer(**TINY, sharing=Sharing(K=2, d=2, assignments=np.zeros(18, dtype=int)))


def test_padding_is_not_fetched_from_dram() -> None:
    b = estimate([Layer("pad", M=4, C=2, H=6, R=3, P=1)]).layers[0].dense
    assert b.accesses["DRAM"]["ifmaps"] == 2 * 6 * 6
    assert b.macs == 4 * 2 * 9 * 6 * 6


def test_narrow_words_scale_energy() -> None:
    wide = estimate([Layer("w", M=4, C=2, H=6, R=3)]).layers[0].dense
    narrow = estimate([Layer("w", M=4, C=2, H=6, R=3, weight_bits=8, act_bits=8)]).layers[0].dense
    assert narrow.computation == wide.computation / 4
    assert narrow.total < wide.total


def test_filter_taller_than_array_is_reported() -> None:
    with pytest.raises(ValueError, match="exceeds the PE array height"):
        estimate([Layer("big", M=2, C=1, H=20, R=13)])


def test_scalar_sharing_of_a_conv_saves_weight_traffic_but_no_macs() -> None:
    """Rows shorter than the kernel width (d = 1) do not make 1-D computations identical: unique MACs = MACs,
    while the weights move as K centers plus indexes."""
    rng = np.random.default_rng(0)
    sharing = Sharing(K=4, d=1, assignments=rng.integers(0, 4, 8 * 4 * 3 * 3), index_bits_per_row=2.0)
    layer = Layer("c", M=8, C=4, H=10, R=3, sharing=sharing)
    assert unique_macs(layer) == layer.macs
    (result,) = estimate([layer]).layers
    assert result.shared.total < result.dense.total
    with pytest.raises(ValueError, match="do not tile the kernel width"):
        Layer("c", M=8, C=4, H=10, R=3, sharing=Sharing(K=4, d=2, assignments=np.zeros(144, dtype=np.int64)))
