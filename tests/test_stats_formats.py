"""Stats of hand-made masks are exact; analytic stats agree with masks drawn from the same
model; format byte counts match hand-computed values and torch's own sparse tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsesim.sparsity.formats import FormatError, FormatSize, default_format, format_bytes, storage_format
from sparsesim.sparsity.masks import build_mask
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.records import OCCUPANCY_BINS
from sparsesim.sparsity.stats import STANDARD_BLOCKS, STANDARD_NM, analytic_stats, measure_stats

torch.set_num_threads(1)


def test_stats_of_hand_made_mask():
    # 4 x 8: row 0 = 1100 1100 (2:4), row 1 = 1111 0000, row 2 empty, row 3 = 1000 0001
    m = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0],
                      [1, 1, 1, 1, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0, 0],
                      [1, 0, 0, 0, 0, 0, 0, 1]])
    s = measure_stats(m, pattern=parse_pattern("2:4"))
    assert (s.rows, s.cols, s.nnz) == (4, 8, 10)
    assert s.density == 10 / 32
    assert s.row_nnz_max == 4 and s.row_nnz_mean == 2.5
    assert s.row_nnz_std == pytest.approx(np.std([4, 4, 0, 2]))
    assert s.imbalance == pytest.approx(4 / 2.5)
    assert not s.conforms_nm(2, 4)  # row 1 holds 4 in its first group
    assert s.conforms_nm(4, 8) and not s.conforms_nm(1, 2) and not s.conforms_nm(2, 8)
    assert s.kept_rows == 3 and s.kept_cols == 7  # column 6 is empty everywhere
    assert s.nonzero_blocks(2, 2) == 5  # rows 0-1: cols 0-1, 2-3, 4-5; rows 2-3: cols 0-1, 6-7
    assert s.nonzero_blocks(1, 4) == 5
    assert s.nonzero_blocks(4, 1) == 7
    assert s.nonzero_blocks(4, 4) == 2 and s.nonzero_blocks(32, 32) == 1
    # one 16x16 tile (edge-clipped to 4 x 8): occupancy 10/32 = 0.3125 -> bin (.25, .5]
    assert s.tile == (16, 16)
    assert s.occupancy_hist == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert s.zero_tile_fraction == 0.0
    assert not s.analytic


def test_stats_tiles_and_edges():
    m = torch.zeros(20, 40)
    m[0:16, 0:16] = 1       # full tile
    m[0, 16] = 1            # tile (0, 1): 1/256
    m[16:20, 32:40] = 1     # edge tile (1, 2): 4 x 8 real cells, all kept -> occupancy 1
    s = measure_stats(m)
    # tiles: (0,0) full, (0,1) sparse, (0,2) empty, (1,0) empty, (1,1) empty, (1,2) full edge
    assert s.occupancy_hist == pytest.approx((3 / 6, 1 / 6, 0, 0, 2 / 6))
    assert s.zero_tile_fraction == pytest.approx(0.5)
    assert len(s.occupancy_hist) == len(OCCUPANCY_BINS)


def test_stats_own_pattern_entries_and_numpy_input():
    m = np.zeros((6, 10), dtype=np.float32)
    m[:, ::5] = 1  # one per group of 5
    s = measure_stats(m, pattern=parse_pattern("1:5"))
    assert s.conforms_nm(1, 5) and s.nnz == 12
    b = measure_stats(torch.ones(6, 10), pattern=parse_pattern("block3x5:0.5"))
    assert b.nonzero_blocks(3, 5) == 4
    assert {rc for rc, _ in b.block_nonzero} >= set(STANDARD_BLOCKS) | {(3, 5)}
    assert {nm for nm, _ in s.nm_conformance} >= set(STANDARD_NM)


def test_stats_conv_mask_uses_matrix_view():
    m = torch.ones(4, 2, 3, 3)
    m[1] = 0
    s = measure_stats(m)
    assert (s.rows, s.cols, s.kept_rows, s.kept_cols, s.nnz) == (4, 18, 3, 18, 54)


@pytest.mark.parametrize("spec", ["2:4", "1:2", "4:8", "2:8"])
def test_built_nm_masks_measure_as_conforming(spec):
    p = parse_pattern(spec)
    s = measure_stats(build_mask(torch.randn(64, 96), p, layer="l"), pattern=p)
    assert s.conforms_nm(p.n, p.m) and s.density == pytest.approx(p.density)
    assert s.row_nnz_std == 0.0 and s.imbalance == 1.0


def _bernoulli(rows, cols, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g) < d)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_analytic_matches_measured_bernoulli(sparsity):
    d = 1 - sparsity
    meas = measure_stats(_bernoulli(512, 512, d))
    ana = analytic_stats(512, 512, parse_pattern(f"unstructured:{sparsity}"))
    assert ana.analytic
    sigma = math.sqrt(d * (1 - d) / (512 * 512))  # sampling error of the measured density
    assert abs(ana.density - meas.density) < 4 * sigma
    assert abs(ana.row_nnz_mean - meas.row_nnz_mean) < 4 * sigma * 512
    assert ana.row_nnz_std == pytest.approx(meas.row_nnz_std, rel=0.1)
    # the expected maximum of 512 binomial rows; one sample's maximum spreads by ~2-3 counts
    assert abs(ana.row_nnz_max - meas.row_nnz_max) <= max(4, 0.05 * meas.row_nnz_max)
    for (rc, a), (rc2, b) in zip(ana.block_nonzero, meas.block_nonzero):
        assert rc == rc2 and a == pytest.approx(b, rel=0.05, abs=20)
    assert ana.nm_conformance == meas.nm_conformance
    assert np.allclose(ana.occupancy_hist, meas.occupancy_hist, atol=0.05)
    assert ana.kept_rows == meas.kept_rows and abs(ana.kept_cols - meas.kept_cols) <= 3


@pytest.mark.parametrize("spec", ["2:4", "1:4", "block4x4:0.75", "block8x1:0.5", "channel:0.5", "dense"])
def test_analytic_close_to_built_masks(spec):
    p = parse_pattern(spec)
    meas = measure_stats(build_mask(torch.randn(256, 384, generator=torch.Generator().manual_seed(1)), p, layer="l"),
                         pattern=p)
    ana = analytic_stats(256, 384, p)
    assert ana.nnz == pytest.approx(meas.nnz, rel=0.01)
    assert ana.row_nnz_mean == pytest.approx(meas.row_nnz_mean, rel=0.01)
    assert ana.kept_rows == pytest.approx(meas.kept_rows, rel=0.02)
    assert ana.kept_cols == pytest.approx(meas.kept_cols, rel=0.02)
    assert ana.nm_conformance == meas.nm_conformance
    for (rc, a), (_, b) in zip(ana.block_nonzero, meas.block_nonzero):
        assert a == pytest.approx(b, rel=0.06), rc
    assert ana.zero_tile_fraction == pytest.approx(meas.zero_tile_fraction, abs=0.05)


# ------------------------------------------------------------------ formats ----------------

def test_default_formats():
    expect = {"dense": "dense", "unstructured:0.9": "csr", "2:4": "nm", "block4x4:0.5": "bsr", "channel:0.5": "dense"}
    for spec, fmt in expect.items():
        assert default_format(parse_pattern(spec)) == fmt


def test_format_bytes_hand_computed():
    m = torch.zeros(8, 16)
    m[0, :4] = 1
    m[5, 8:16] = 1  # nnz 12, 2 rows
    s = measure_stats(m, pattern=parse_pattern("block4x4:0.5"))
    assert format_bytes("dense", s, value_bytes=2) == FormatSize(256, 0, 256)
    assert format_bytes("bitmap", s, value_bytes=2) == FormatSize(24, 16, 40)
    assert format_bytes("csr", s, value_bytes=2) == FormatSize(24, 12 * 4 + 9 * 4, 24 + 84)
    assert format_bytes("csr", s, value_bytes=2, index_bytes=2) == FormatSize(24, 24 + 36, 84)
    assert format_bytes("coo", s, value_bytes=4) == FormatSize(48, 96, 144)
    # blocks 4x4 nonzero: (0,0), (1,2), (1,3) -> 3 blocks of 16 values; 2 block rows + 1 pointers
    bsr = format_bytes("bsr", s, value_bytes=2, pattern=parse_pattern("block4x4:0.5"))
    assert bsr == FormatSize(3 * 16 * 2, 3 * 4 + 3 * 4, 96 + 24)
    assert format_bytes("bsr", s, value_bytes=1, block=(2, 2)).values == s.nonzero_blocks(2, 2) * 4


def test_nm_format_metadata_overhead():
    p = parse_pattern("2:4")
    s = analytic_stats(4096, 4096, p)
    f = format_bytes("nm", s, value_bytes=2, pattern=p)
    assert f.values == 4096 * 4096 // 2 * 2
    assert f.metadata == 4096 * 4096 // 2 * 2 // 8  # 2 bits per kept value
    assert f.metadata / f.values == 0.125  # Mishra et al. 2021: 12.5 % for 16-bit values
    p3 = parse_pattern("2:8")  # 3-bit indices; a tail group of 3 stores 2 values
    s3 = analytic_stats(3, 11, p3)
    f3 = format_bytes("nm", s3, value_bytes=1, pattern=p3)
    assert f3.values == 3 * 4 and f3.metadata == math.ceil(12 * 3 / 8)
    with pytest.raises(FormatError, match="2:4"):
        format_bytes("nm", measure_stats(torch.ones(4, 8)), value_bytes=2, pattern=p)


def test_channel_dense_uses_kept_shape():
    p = parse_pattern("channel:0.5")
    s = measure_stats(build_mask(torch.randn(16, 8), p, layer="l"), pattern=p)
    assert format_bytes("dense", s, value_bytes=2, pattern=p) == FormatSize(8 * 8 * 2, 0, 128)


@pytest.mark.parametrize("shape,d", [((32, 48), 0.1), ((64, 64), 0.5), ((7, 13), 0.3)])
def test_formats_match_torch_sparse_tensors(shape, d):
    mask = _bernoulli(*shape, d, seed=shape[0])
    w = torch.randn(shape, dtype=torch.float16) * mask
    s = measure_stats(mask)
    csr = w.to_sparse_csr()
    torch_csr = csr.values().nbytes + csr.col_indices().nbytes + csr.crow_indices().nbytes
    ours = format_bytes("csr", s, value_bytes=2, index_bytes=8, pointer_bytes=8)
    assert ours.total == torch_csr and ours.values == csr.values().nbytes
    coo = w.to_sparse_coo().coalesce()
    assert format_bytes("coo", s, value_bytes=2, index_bytes=8).total == coo.values().nbytes + coo.indices().nbytes
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), shape)
    ours32 = format_bytes("csr", s, value_bytes=2)
    assert ours32.metadata == csr32.crow_indices().nbytes + csr32.col_indices().nbytes


@pytest.mark.parametrize("block", [(2, 2), (4, 4), (16, 16), (1, 4), (4, 1)])
def test_bsr_matches_torch(block):
    p = parse_pattern(f"block{block[0]}x{block[1]}:0.6")
    w = torch.randn(64, 96)
    mask = build_mask(w, p, layer="l")
    s = measure_stats(mask, pattern=p)
    bsr = (w * mask).to_sparse_bsr(block)
    torch_bytes = bsr.values().nbytes + bsr.col_indices().nbytes + bsr.crow_indices().nbytes
    ours = format_bytes("bsr", s, value_bytes=4, pattern=p, index_bytes=8, pointer_bytes=8)
    assert ours.total == torch_bytes and ours.values == bsr.values().nbytes


def test_storage_format_prefers_dense_when_csr_is_larger():
    p = parse_pattern("unstructured:0.3")
    s = analytic_stats(128, 128, p)
    assert storage_format(p, s, value_bytes=2) == "dense"
    p9 = parse_pattern("unstructured:0.9")
    assert storage_format(p9, analytic_stats(128, 128, p9), value_bytes=2) == "csr"


def test_format_errors():
    s = measure_stats(torch.ones(4, 4))
    with pytest.raises(FormatError, match="'ell'"):
        format_bytes("ell", s, value_bytes=2)
    with pytest.raises(FormatError, match="block size"):
        format_bytes("bsr", s, value_bytes=2)
    with pytest.raises(FormatError, match="3x3"):
        format_bytes("bsr", s, value_bytes=2, block=(3, 3))


def test_analytic_channel_with_pruned_input_columns():
    g = torch.Generator().manual_seed(3)
    rows_kept = torch.randperm(256, generator=g)[:128]
    cols_kept = torch.randperm(384, generator=g)[:96]
    m = torch.zeros(256, 384, dtype=torch.bool)
    m[rows_kept[:, None], cols_kept[None, :]] = True
    meas = measure_stats(m)
    ana = analytic_stats(256, 384, parse_pattern("channel:0.5"), kept_cols=96)
    assert (ana.nnz, ana.kept_rows, ana.kept_cols, ana.row_nnz_max) == (meas.nnz, 128, 96, 96)
    assert ana.row_nnz_mean == meas.row_nnz_mean and ana.row_nnz_std == pytest.approx(meas.row_nnz_std)
    for (rc, a), (_, b) in zip(ana.block_nonzero, meas.block_nonzero):
        assert a == pytest.approx(b, rel=0.08), rc
    assert np.allclose(ana.occupancy_hist, meas.occupancy_hist, atol=0.06)
    heads = analytic_stats(64, 32, parse_pattern("channel:0.6"), group=16)  # 4 heads of 16 rows
    assert heads.kept_rows == 32  # round(0.4 * 4) = 2 heads
