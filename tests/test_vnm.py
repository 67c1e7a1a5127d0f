"""V:N:M (VENOM): its sparsity module (grammar, masks from real weights, checker, stats, format)
and its cost rules: Spatha on Ampere sparse tensor cores, N:M fallback elsewhere, density
exploited by CPUs, FPGAs and S4-style engines."""

from __future__ import annotations

import math

import pytest
import torch
from op_cases import layer_of

from sparsesim.core.errors import MaskError
from sparsesim.core.ir import GemmShape, Op
from sparsesim.cost import estimate_op
from sparsesim.hw.devices import builtin_device_files, load_device
from sparsesim.sparsity.formats import format_bytes
from sparsesim.sparsity.kinds.vnm import vnm_violation
from sparsesim.sparsity.masks import build_mask, check_mask
from sparsesim.sparsity.patterns import PatternError, make_pattern, parse_pattern
from sparsesim.sparsity.stats import analytic_stats, measure_stats

P = parse_pattern("64:2:8")


def fp16_linear(m: int, n: int, k: int) -> Op:
    return Op(0, "linear", "aten.mm", "fc", 0, "fp16", ((m, k),), (m, n), 2 * m * n * k, 0,
              GemmShape(m, n, k), None, "fc.weight", (n, k))


def test_grammar_and_label():
    assert P.kind == "vnm" and P.block == (64, 8) and (P.n, P.m) == (2, 8)
    assert P.density == 0.25 and P.label == "64:2:8"
    assert parse_pattern(P.label) == P == make_pattern("vnm", n=2, m=8, block=(64, 8))
    for bad, why in (("64:3:8", "N must be 1 or 2"), ("64:2:2", "M >= 4"), ("0:2:8", "V >= 1")):
        with pytest.raises(PatternError, match=why):
            parse_pattern(bad)


@pytest.mark.parametrize("shape", [(128, 256), (100, 70), (130, 8), (3, 5)])
def test_mask_conforms_and_keeps_the_strongest(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    mask = build_mask(w, P)
    check_mask(mask, P, layer="w", shape=shape)
    rows, k = shape
    v, m = min(64, rows), min(8, k)
    per_row = (k // m) * 2 + min(2, k % m)
    assert int(mask.sum()) == rows * per_row
    # within each V x M block at most 4 columns are used, and the block's strongest column is one
    b = mask.bool()
    blocks = torch.nn.functional.pad(b, (0, (-k) % m, 0, (-rows) % v)).reshape(-(-rows // v), v, -(-k // m), m)
    assert int(blocks.any(dim=1).sum(dim=-1).max()) <= 4
    energy = torch.nn.functional.pad(w * w, (0, (-k) % m, 0, (-rows) % v)).reshape(blocks.shape).sum(dim=1)
    top = energy.argmax(dim=-1)
    assert bool(blocks.any(dim=1).gather(-1, top[..., None]).all())


def test_checker_names_the_first_violation():
    nm_only = build_mask(torch.randn(128, 256, generator=torch.Generator().manual_seed(1)), parse_pattern("2:8"))
    with pytest.raises(MaskError, match=r"breaks 64:2:8 at rows 0-63.*columns used > 4"):
        check_mask(nm_only, P, layer="fc.weight")
    too_many = build_mask(torch.randn(64, 8), parse_pattern("64:2:8")).bool()
    too_many[0] = False
    too_many[0, :3] = True
    assert "kept > 2" in vnm_violation(too_many, P) or "columns used" in vnm_violation(too_many, P)


@pytest.mark.parametrize("shape", [(128, 256), (192, 512), (100, 70)])
def test_analytic_stats_match_measured(shape):
    torch.manual_seed(2)
    measured = measure_stats(build_mask(torch.randn(*shape), P), pattern=P)
    analytic = analytic_stats(*shape, P)
    assert analytic.nnz == measured.nnz and analytic.row_nnz_max == measured.row_nnz_max
    assert measured.conforms_nm(2, 8) and analytic.conforms_nm(2, 8)
    assert measured.conforms_nm(2, 4) and analytic.conforms_nm(2, 4)
    for rc in ((4, 4), (16, 16), (32, 32)):
        assert analytic.nonzero_blocks(*rc) == pytest.approx(measured.nonzero_blocks(*rc), rel=0.06)
    assert analytic.kept_cols == pytest.approx(measured.kept_cols, rel=0.06)


def test_format_bytes_values_and_metadata():
    st = measure_stats(build_mask(torch.randn(128, 256), P), pattern=P)
    size = format_bytes("vnm", st, value_bytes=2, pattern=P)
    stored = 128 * (256 // 8) * 2                     # 2 values per row per group (2:4 of the 4 selected)
    col_bits = 2 * (256 // 8) * 4 * math.ceil(math.log2(8))   # 4 column positions per 64 x 8 block
    assert size.values == stored * 2
    assert size.metadata == math.ceil((stored * 2 + col_bits) / 8)


def test_spatha_on_a100_beats_24_and_stays_under_the_published_bound():
    dev = load_device("a100-sxm4-80gb")
    op = fp16_linear(4096, 4096, 4096)
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(3))
    dense = estimate_op(op, None, dev)
    lat = {}
    for spec in ("2:4", "64:2:8", "64:2:32"):
        c = estimate_op(op, layer_of(build_mask(w, parse_pattern(spec)), spec, "fp16"), dev)
        assert not c.fallback, c.why
        lat[spec] = c.latency_s
    assert lat["64:2:32"] < lat["64:2:8"] < lat["2:4"] < dense.latency_s
    # VENOM: Spatha up to 37x over cuBLAS at 2:64-class sparsity (published.md §2.5)
    assert dense.latency_s / lat["64:2:32"] < 37
    # 2:8 on Spatha: at most the ideal 4x over dense at equal efficiency
    assert dense.latency_s / lat["64:2:8"] < 4


def test_h100_runs_vnm_as_24_and_says_why():
    dev = load_device("h100-sxm5")
    op = fp16_linear(4096, 4096, 4096)
    layer = layer_of(build_mask(torch.randn(4096, 4096), P), P, "fp16")
    c = estimate_op(op, layer, dev)
    assert c.fallback and "not run by Spatha" in c.why and "2:4" in c.kernel


def test_misaligned_rows_fall_back_with_the_rule():
    dev = load_device("a100-sxm4-80gb")
    op = fp16_linear(512, 96, 512)  # 96 rows are not whole 64-row blocks
    layer = layer_of(build_mask(torch.randn(96, 512), P), P, "fp16")
    c = estimate_op(op, layer, dev)
    assert c.fallback and "not whole 64-row blocks" in c.why


@pytest.mark.parametrize("device", sorted(builtin_device_files()))
def test_every_device_costs_vnm(device):
    dev = load_device(device)
    op = fp16_linear(256, 512, 1024)
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(4))
    c = estimate_op(op, layer_of(build_mask(w, P), P, "fp16"), dev)
    assert c.latency_s > 0 and math.isfinite(c.energy_j)
    assert c.why

