"""Patterns parse and round-trip; masks built for a pattern conform to it; check_mask catches
corruptions and names the layer; existing prune masks and zeros are picked up."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from sparsesim.core.errors import MaskError, PlanError, SparsesimError
from sparsesim.sparsity.masks import activation_aware_scores, build_mask, check_mask, existing_mask, kept_units
from sparsesim.sparsity.patterns import PatternError, make_pattern, parse_pattern
from sparsesim.sparsity.records import Pattern

torch.set_num_threads(1)
FAST = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------ patterns ---------------

@pytest.mark.parametrize("text,kind,density,extra", [
    ("dense", "dense", 1.0, {}),
    ("2:4", "nm", 0.5, {"n": 2, "m": 4}),
    ("1:2", "nm", 0.5, {"n": 1, "m": 2}),
    ("2:8", "nm", 0.25, {"n": 2, "m": 8}),
    ("unstructured:0.9", "unstructured", 0.1, {}),
    ("block4x4:0.5", "block", 0.5, {"block": (4, 4)}),
    ("block1x16:0.75", "block", 0.25, {"block": (1, 16)}),
    ("channel:0.3", "channel", 0.7, {}),
    (" Unstructured:0 ", "unstructured", 1.0, {}),
])
def test_parse_pattern(text, kind, density, extra):
    p = parse_pattern(text)
    assert p.kind == kind and p.density == pytest.approx(density, abs=1e-12)
    for k, v in extra.items():
        assert getattr(p, k) == v
    assert parse_pattern(p.label) == p


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2:", "unstructured", "unstructured:1",
                                 "unstructured:-0.1", "block0x4:0.5", "block4x4:x", "channel:1.5",
                                 "sparse", "", "2:4:8"])
def test_parse_pattern_rejects(bad):
    with pytest.raises(PatternError) as e:
        parse_pattern(bad)
    assert repr(bad) in str(e.value) or bad.strip() in str(e.value)
    assert isinstance(e.value, SparsesimError) and isinstance(e.value, PlanError) and isinstance(e.value, ValueError)


@given(st.floats(0, 0.999999), st.sampled_from(["unstructured", "channel", "block"]),
       st.integers(1, 32), st.integers(1, 32))
@FAST
def test_label_round_trips(s, kind, r, c):
    s = float(f"{s:.6g}")
    text = f"block{r}x{c}:{s:g}" if kind == "block" else f"{kind}:{s:g}"
    p = parse_pattern(text)
    assert parse_pattern(p.label) == p
    assert p.sparsity == pytest.approx(s, abs=1e-9)


def test_make_pattern_validates():
    assert make_pattern("nm", n=1, m=4) == parse_pattern("1:4")
    assert make_pattern("block", 0.5, block=(2, 8)) == parse_pattern("block2x8:0.5")
    with pytest.raises(PatternError):
        make_pattern("unstructured", 0.0)
    with pytest.raises(PatternError):
        make_pattern("diagonal", 0.5)


# ------------------------------------------------------------------ building ---------------

def _w(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g)


def test_nm_mask_keeps_largest_per_group():
    w = torch.tensor([[0.1, -5.0, 3.0, 0.2, 9.0, 8.0, -7.0, 1.0, 0.5, 0.4, 0.3]])
    m = build_mask(w, parse_pattern("2:4"), layer="l")
    assert m.tolist() == [[0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0]]  # tail group of 3 keeps 2
    assert m.dtype == w.dtype


@pytest.mark.parametrize("n,m", [(2, 4), (3, 8), (5, 16)])
def test_nm_mask_equals_per_group_topk(n, m):
    w = _w(32, 4 * m, seed=m)
    mask = build_mask(w, parse_pattern(f"{n}:{m}"), layer="l").bool()
    g = w.abs().reshape(32, -1, m)
    ref = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(n, dim=-1).indices, True)
    assert torch.equal(mask, ref.reshape(32, -1))


def test_unstructured_mask_exact_topk_and_rounding():
    w = _w(10, 10)
    m = build_mask(w, parse_pattern("unstructured:0.75"), layer="l")
    assert int(m.sum()) == 25
    kept = w.abs()[m.bool()]
    assert kept.min() >= w.abs()[~m.bool()].max()
    ties = torch.ones(3, 4)  # all scores equal: exactly the target count, lowest indices first
    mt = build_mask(ties, parse_pattern("unstructured:0.5"), layer="l")
    assert mt.reshape(-1).tolist() == [1.0] * 6 + [0.0] * 6
    # nearest integer, at least one
    assert kept_units(0.125, 10) == 1 and kept_units(0.15, 10) == 2 and kept_units(0.001, 10) == 1


def test_block_and_channel_masks():
    w = torch.zeros(4, 8)
    w[0:2, 2:4] = 10.0
    m = build_mask(w, parse_pattern("block2x2:0.875"), layer="l")  # keep 1 of 8 blocks
    assert m.sum() == 4 and m[0:2, 2:4].all()
    w = _w(6, 5)
    w[3] *= 100
    m = build_mask(w, parse_pattern("channel:0.8"), layer="l")  # keep 1 of 6 rows (round(1.2))
    assert m[3].all() and m.sum() == 5


def test_channel_heads_group():
    w = _w(12, 4)
    w[4:8] *= 50  # head 1 of 3 (head_dim 4) dominates
    m = build_mask(w, parse_pattern("channel:0.6"), layer="q", group=4)
    assert m[4:8].all() and m.sum() == 16
    with pytest.raises(MaskError, match="'q'"):
        build_mask(w, parse_pattern("channel:0.5"), layer="q", group=5)


def test_conv_masks_work_on_matrix_view():
    w = torch.randn(8, 3, 3, 3)
    m = build_mask(w, parse_pattern("2:4"), layer="conv")
    assert m.shape == w.shape
    check_mask(m, parse_pattern("2:4"), layer="conv", shape=tuple(w.shape))
    rows = m.reshape(8, -1)
    assert (rows[:, :24].reshape(8, 6, 4).sum(-1) == 2).all()


def test_activation_aware_scores_change_choice():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([10.0, 10.0, 0.1, 0.1])
    s = activation_aware_scores(w, norms)
    assert torch.allclose(s, torch.tensor([[10.0, 20.0, 0.3, 0.4]]))
    m = build_mask(w, parse_pattern("2:4"), scores=s, layer="l")
    assert m.tolist() == [[1, 1, 0, 0]]


def test_activation_aware_scores_conv_shapes():
    w = torch.randn(6, 2, 3, 3)  # grouped conv: groups=2, Cin=4, Cout=6
    per_cin = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = activation_aware_scores(w, per_cin)
    assert torch.allclose(s[0, 1], w[0, 1].abs() * 2.0)  # output 0 reads group 0 (channels 0,1)
    assert torch.allclose(s[5, 0], w[5, 0].abs() * 3.0)  # output 5 reads group 1 (channels 2,3)
    s2 = activation_aware_scores(w, torch.tensor([5.0, 7.0]))  # per channel of the group
    assert torch.allclose(s2[3, 1], w[3, 1].abs() * 7.0)
    s3 = activation_aware_scores(w, torch.full((6, 2, 1, 1), 2.0))  # the tracer's broadcast form
    assert torch.allclose(s3, w.abs() * 2)
    with pytest.raises(MaskError, match="'c'"):
        activation_aware_scores(w, torch.ones(5), layer="c")


@given(rows=st.integers(1, 24), cols=st.integers(1, 40), m=st.integers(2, 9), data=st.data())
@FAST
def test_property_nm_conforms(rows, cols, m, data):
    n = data.draw(st.integers(1, m - 1))
    p = parse_pattern(f"{n}:{m}")
    mask = build_mask(_w(rows, cols, seed=rows * cols), p, layer="l")
    check_mask(mask, p, layer="l", shape=(rows, cols))
    expected = rows * ((cols // m) * n + min(n, cols % m))
    assert int(mask.sum()) == expected


@given(rows=st.integers(1, 30), cols=st.integers(1, 30), r=st.integers(1, 6), c=st.integers(1, 6),
       s=st.floats(0.0, 0.95))
@FAST
def test_property_block_conforms(rows, cols, r, c, s):
    p = parse_pattern(f"block{r}x{c}:{s:.3f}")
    mask = build_mask(_w(rows, cols, seed=r * c), p, layer="l")
    check_mask(mask, p, layer="l", shape=(rows, cols))
    nb = math.ceil(rows / r) * math.ceil(cols / c)
    padded = torch.nn.functional.pad(mask, (0, (-cols) % c, 0, (-rows) % r))
    kept_blocks = int((padded.reshape(padded.shape[0] // r, r, -1, c).sum((1, 3)) > 0).sum())
    assert abs(kept_blocks - p.density * nb) <= 1  # right density within one block


@given(rows=st.integers(1, 40), cols=st.integers(1, 20), group=st.sampled_from([1, 2, 4]),
       s=st.floats(0.0, 0.95))
@FAST
def test_property_channel_conforms(rows, cols, group, s):
    rows = rows * group
    p = parse_pattern(f"channel:{s:.3f}")
    mask = build_mask(_w(rows, cols), p, layer="l", group=group)
    check_mask(mask, p, layer="l", shape=(rows, cols), group=group)
    units = rows // group
    kept = int(mask[:, 0].sum()) // group
    assert abs(kept - p.density * units) <= 1


@given(rows=st.integers(1, 20), cols=st.integers(1, 60), s=st.floats(0.0, 0.99))
@FAST
def test_property_unstructured_density(rows, cols, s):
    p = parse_pattern(f"unstructured:{s:.3f}")
    mask = build_mask(_w(rows, cols), p, layer="l")
    assert abs(int(mask.sum()) - p.density * rows * cols) <= 1 or int(mask.sum()) == 1


# ------------------------------------------------------------------ checking ---------------

@given(rows=st.integers(1, 12), cols=st.integers(4, 40), data=st.data())
@FAST
def test_property_check_catches_nm_corruption(rows, cols, data):
    p = parse_pattern("2:4")
    mask = build_mask(_w(rows, cols), p, layer="enc.0.fc")
    r = data.draw(st.integers(0, rows - 1))
    g = data.draw(st.integers(0, cols // 4 - 1))
    mask[r, 4 * g: 4 * g + 4] = 1  # a full group of 4 breaks 2:4
    with pytest.raises(MaskError) as e:
        check_mask(mask, p, layer="enc.0.fc")
    msg = str(e.value)
    assert "'enc.0.fc'" in msg and "2:4" in msg and "nonzeros" in msg


def test_check_nm_names_first_violation():
    mask = torch.zeros(3, 8)
    mask[1, 4:7] = 1
    with pytest.raises(MaskError, match=r"'blk\.1'.*2:4 at row 1, group 1 \(columns 4-7\) with 3 nonzeros"):
        check_mask(mask, parse_pattern("2:4"), layer="blk.1")


@given(rows=st.integers(2, 16), cols=st.integers(2, 16), data=st.data())
@FAST
def test_property_check_catches_block_and_channel_corruption(rows, cols, data):
    pb = parse_pattern("block2x2:0.5")
    mask = build_mask(_w(rows, cols), pb, layer="b")
    i = data.draw(st.integers(0, rows - 1))
    j = data.draw(st.integers(0, cols - 1))
    bi, bj = i // 2 * 2, j // 2 * 2
    block = mask[bi:bi + 2, bj:bj + 2]
    if block.numel() > 1:  # flip one cell of a multi-cell block: it becomes partially filled
        mask[i, j] = 1 - mask[i, j]
        with pytest.raises(MaskError, match=r"'b'.*block2x2 at block"):
            check_mask(mask, pb, layer="b")
    pc = parse_pattern("channel:0.5")
    cm = build_mask(_w(rows, cols), pc, layer="c")
    kept_rows = int(cm[:, 0].sum())
    if cm[i, j] == 1 and kept_rows == 1:
        return  # dropping a cell of the only kept row just prunes an input column: still a submatrix
    cm[i, j] = 1 - cm[i, j]
    with pytest.raises(MaskError, match=rf"'c'.*channel pruning at row {i}"):
        check_mask(cm, pc, layer="c")


def test_channel_check_accepts_submatrix_and_rejects_partial_heads():
    m = torch.zeros(8, 6)
    m[0:4, :] = 1
    m[:, 2] = 0  # rows 0-3 kept, input column 2 pruned: a 4 x 5 dense matrix
    check_mask(m, parse_pattern("channel:0.5"), layer="o", group=4)
    m[4] = m[0]  # one row of head 1 (rows 4-7) kept
    with pytest.raises(MaskError, match=r"'o'.*rows 4-7 \(unit 1 of 4 rows\): 1 of 4 rows kept"):
        check_mask(m, parse_pattern("channel:0.5"), layer="o", group=4)


def test_check_shape_and_values():
    with pytest.raises(MaskError, match=r"'x\.weight'.*shape \(4, 4\) != weight shape \(4, 8\)"):
        check_mask(torch.ones(4, 4), parse_pattern("2:4"), layer="x.weight", shape=(4, 8))
    bad = torch.ones(2, 4)
    bad[1, 2] = 0.5
    with pytest.raises(MaskError, match=r"'x'.*0\.5 at index \(1, 2\).*0/1"):
        check_mask(bad, parse_pattern("dense"), layer="x")
    check_mask(torch.ones(2, 4, dtype=torch.bool), parse_pattern("dense"), layer="x")


def test_build_refuses_meta_and_bad_scores():
    with pytest.raises(MaskError, match="meta"):
        build_mask(torch.empty(4, 4, device="meta"), parse_pattern("2:4"), layer="m")
    with pytest.raises(MaskError, match="scores shape"):
        build_mask(torch.ones(4, 4), parse_pattern("2:4"), scores=torch.ones(4, 8), layer="m")


# ------------------------------------------------------------------ existing masks ---------

def test_existing_mask_from_prune_and_zeros():
    lin = nn.Linear(8, 4)
    assert existing_mask(lin, "weight") is None
    prune.l1_unstructured(lin, "weight", amount=0.5)
    m = existing_mask(lin, "weight")
    assert m is not None and int(m.sum()) == 16
    assert torch.equal(m.bool(), lin.weight_mask.bool())
    seq = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        seq[0].weight[0, :2] = 0
    m2 = existing_mask(seq, "0.weight")
    assert int(m2.sum()) == 14 and m2[0, :2].sum() == 0
    assert existing_mask(nn.Linear(2, 2, device="meta"), "weight") is None


def test_pattern_is_frozen_record():
    p = parse_pattern("2:4")
    with pytest.raises(Exception):
        p.n = 3  # type: ignore[misc]
    assert isinstance(p, Pattern)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300_000), at=st.floats(0.0, 1.0), levels=st.sampled_from([0, 3, 50]), seed=st.integers(0, 9))
def test_kth_smallest_is_the_partition_value(n, at, levels, seed):
    """The sampled bracket never changes the answer: the same value as a whole partition, for
    arrays small (partitioned whole) and large, with many ties (`levels` distinct values) or none,
    and sorted runs that a strided sample sees unevenly."""
    import numpy as np

    from sparsesim.sparsity.masks import kth_smallest

    rng = np.random.default_rng(seed)
    values = rng.integers(0, levels, n).astype(np.float32) if levels else rng.random(n, dtype=np.float32)
    if seed % 3 == 0:
        values = np.sort(values)  # rows of ascending scores: the sample's stride lands on a pattern
    k = min(n - 1, int(at * n))
    assert kth_smallest(values, k) == float(np.partition(values, k)[k])


def test_kth_smallest_rejects_a_rank_outside_the_array():
    import numpy as np

    from sparsesim.sparsity.masks import kth_smallest

    with pytest.raises(IndexError, match="outside"):
        kth_smallest(np.zeros(4, dtype=np.float32), 4)
