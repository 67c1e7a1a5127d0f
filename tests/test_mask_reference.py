"""The vectorised mask builders and measured stats against straightforward references: every
pattern kind on random and heavily tied scores, odd shapes, short tail groups and edge blocks,
with row bands small enough that every weight is built and measured in many bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesim.sparsity import masks as masks_module
from sparsesim.sparsity.masks import keep_matrix, kept_units
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.records import OCCUPANCY_BINS
from sparsesim.sparsity.stats import STANDARD_BLOCKS, STANDARD_NM, measure_stats

torch.set_num_threads(1)
SHAPES = [(1, 7), (17, 3), (33, 70), (64, 64), (40, 129), (5, 1000)]
KINDS = ("random", "ties", "signed ties")


@pytest.fixture(params=[None, 64], ids=["default-bands", "small-bands"])
def bands(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default bands, and bands of 64 cells (a row or a few per band, a partial last band)."""
    if request.param is not None:
        monkeypatch.setattr(masks_module, "SLICE_CELLS", request.param)


def _weight(shape: tuple[int, int], kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(shape, generator=g)
    if kind == "ties":
        return torch.randint(0, 3, shape, generator=g).float()
    return torch.randint(-2, 3, shape, generator=g).float()


# ------------------------------------------------------------------ references -------------

def ref_nm(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per aligned group of m along K (a shorter tail group, a group longer than K is the
    row): keep the n highest, ties to the lower index up to M = 8 (ranked slot by slot), in
    topk's order beyond (one topk per group)."""
    k = s.shape[1]
    m = max(1, min(m, k))
    out = torch.zeros(s.shape, dtype=torch.bool)
    for lo in range(0, k, m):
        g = s[:, lo:lo + m]
        if m > 8:
            g = torch.nn.functional.pad(g, (0, m - g.shape[1]), value=float("-inf"))
            top = torch.zeros(g.shape, dtype=torch.bool).scatter_(-1, g.topk(min(n, m), dim=-1).indices, True)
            out[:, lo:lo + m] = top[:, : min(m, k - lo)]
            continue
        i = torch.arange(g.shape[1])
        beats = (g[:, None, :] > g[:, :, None]) | ((g[:, None, :] == g[:, :, None]) & (i[None, :] < i[:, None]))
        out[:, lo:lo + m] = beats.sum(-1) < n
    return out


def ref_unstructured(s: torch.Tensor, density: float) -> torch.Tensor:
    """The `keep` highest scores of the whole matrix, ties in index order."""
    flat = s.reshape(-1).numpy()
    keep = kept_units(density, flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))[:keep]
    out = np.zeros(flat.size, dtype=bool)
    out[order] = True
    return torch.from_numpy(out).reshape(s.shape)


def ref_block(s: torch.Tensor, r: int, c: int, density: float) -> torch.Tensor:
    """Blocks of the zero-padded grid ranked by their sum of squared scores, in one reshape."""
    rows, k = s.shape
    r, c = max(1, min(r, rows)), max(1, min(c, k))
    sq = torch.nn.functional.pad(s * s, (0, (-k) % c, 0, (-rows) % r))
    br, bc = sq.shape[0] // r, sq.shape[1] // c
    bs = sq.reshape(br, r, bc, c).sum(dim=(1, 3)).reshape(-1)
    bm = torch.zeros(bs.numel(), dtype=torch.bool)
    bm[bs.topk(kept_units(density, bs.numel())).indices] = True
    return bm.reshape(br, 1, bc, 1).expand(br, r, bc, c).reshape(br * r, bc * c)[:rows, :k]


def ref_channel(s: torch.Tensor, group: int, density: float) -> torch.Tensor:
    """Units of `group` rows ranked by their energy, in one reshape."""
    rows, k = s.shape
    energy = (s * s).reshape(rows // group, group * k).sum(dim=1)
    um = torch.zeros(energy.numel(), dtype=torch.bool)
    um[energy.topk(kept_units(density, energy.numel())).indices] = True
    return um.repeat_interleave(group).reshape(rows, 1).expand(rows, k)


def ref_counts(b: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Kept cells of every r x c block of the zero-padded grid (sides clamped to the matrix)."""
    rows, k = b.shape
    r, c = max(1, min(r, rows)), max(1, min(c, k))
    x = torch.nn.functional.pad(b.double(), (0, (-k) % c, 0, (-rows) % r))
    return x.reshape(x.shape[0] // r, r, x.shape[1] // c, c).sum(dim=(1, 3))


def ref_edge_area(rows: int, k: int, r: int, c: int) -> np.ndarray:
    hr = [min(r, rows - i) for i in range(0, rows, r)]
    hc = [min(c, k - j) for j in range(0, k, c)]
    return np.outer(hr, hc).astype(float)


# ------------------------------------------------------------------ masks ------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (2, 8), (3, 16), (5, 64)])
def test_nm_masks_match_reference(bands: None, shape: tuple[int, int], kind: str, n: int, m: int) -> None:
    w = _weight(shape, kind, seed=n * 100 + m)
    assert torch.equal(keep_matrix(w, parse_pattern(f"{n}:{m}")), ref_nm(w.abs(), n, m))
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(m))
    assert torch.equal(keep_matrix(w, parse_pattern(f"{n}:{m}"), scores=scores), ref_nm(scores, n, m))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_unstructured_masks_match_reference(bands: None, shape: tuple[int, int], kind: str, sparsity: float) -> None:
    w = _weight(shape, kind, seed=int(sparsity * 1000))
    p = parse_pattern(f"unstructured:{sparsity}")
    assert torch.equal(keep_matrix(w, p), ref_unstructured(w.abs(), p.density))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", [(4, 4), (1, 8), (3, 5), (16, 16), (2, 1), (64, 64)])
def test_block_masks_match_reference(bands: None, shape: tuple[int, int], kind: str, block: tuple[int, int]) -> None:
    w = _weight(shape, kind, seed=block[0] * 7 + block[1])
    p = parse_pattern(f"block{block[0]}x{block[1]}:0.5")
    assert torch.equal(keep_matrix(w, p), ref_block(w.abs(), *block, p.density))


@pytest.mark.parametrize("shape", [(1, 7), (16, 3), (32, 70), (64, 64), (40, 129)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("group", [1, 2, 8])
def test_channel_masks_match_reference(bands: None, shape: tuple[int, int], kind: str, group: int) -> None:
    if shape[0] % group:
        pytest.skip("rows not a multiple of the group")
    w = _weight(shape, kind, seed=group)
    p = parse_pattern("channel:0.5")
    assert torch.equal(keep_matrix(w, p, group=group), ref_channel(w.abs(), group, p.density))


# ------------------------------------------------------------------ stats ------------------

def _masks(shape: tuple[int, int], seed: int) -> list[tuple[torch.Tensor, str]]:
    w = _weight(shape, "random", seed)
    g = torch.Generator().manual_seed(seed)
    out = [(torch.rand(shape, generator=g) < d, "") for d in (0.0, 0.1, 0.5, 0.97, 1.0)]
    for spec in ("2:4", "1:2", "4:8", "3:16", "unstructured:0.8", "block4x4:0.5", "block3x5:0.6", "channel:0.5", "64:2:8"):
        out.append((keep_matrix(w, parse_pattern(spec)), spec))
    return out


@pytest.mark.parametrize("shape", SHAPES + [(100, 33), (31, 257)])
@pytest.mark.parametrize("tile", [(16, 16), (8, 4), (3, 5)])
def test_measured_stats_match_reference(bands: None, shape: tuple[int, int], tile: tuple[int, int]) -> None:
    rows, k = shape
    for b, spec in _masks(shape, seed=rows + k):
        pattern = parse_pattern(spec) if spec else None
        st = measure_stats(b, pattern=pattern, tile=tile)
        row_nnz = b.sum(dim=1)
        assert st.nnz == int(b.sum())
        assert st.row_nnz_max == int(row_nnz.max())
        assert st.row_nnz_mean == float(row_nnz.double().mean())
        assert st.row_nnz_std == float(row_nnz.double().std(unbiased=False))
        assert st.kept_rows == int(b.any(dim=1).sum()) and st.kept_cols == int(b.any(dim=0).sum())
        blocks = dict(st.block_nonzero)
        for rc in STANDARD_BLOCKS + (pattern.spec.blocks(pattern) if pattern else ()):
            assert blocks[rc] == int((ref_counts(b, *rc) > 0).sum()), rc
        conforms = dict(st.nm_conformance)
        for n, m in STANDARD_NM + (pattern.spec.ratios(pattern) if pattern else ()):
            assert conforms[(n, m)] == (float(ref_counts(b, 1, m).max()) <= n), (n, m)
        counts = ref_counts(b, *tile).numpy()
        frac = counts / ref_edge_area(rows, k, *tile)
        bins = np.searchsorted(np.array(OCCUPANCY_BINS[1:]), frac, side="left")
        total = counts.size
        ref_hist = [float((counts == 0).sum()) / total] + [
            float(((bins == i) & (counts != 0)).sum()) / total for i in range(len(OCCUPANCY_BINS) - 1)]
        assert st.occupancy_hist == tuple(ref_hist)
        if pattern is not None:
            assert dict(st.pattern_conformance)[pattern.label]


@pytest.mark.parametrize("shape", [(16, 12), (32, 70), (40, 129)])
def test_channel_conformance_matches_reference(bands: None, shape: tuple[int, int]) -> None:
    """A mask conforms to channel pruning iff it is (kept rows) x (kept columns)."""
    g = torch.Generator().manual_seed(shape[1])
    p = parse_pattern("channel:0.5")
    for _ in range(20):
        rows = torch.rand(shape[0], generator=g) < 0.6
        cols = torch.rand(shape[1], generator=g) < 0.6
        b = rows[:, None] & cols[None, :]
        if bool(torch.rand(1, generator=g) < 0.5):
            i, j = (int(torch.randint(0, s, (1,), generator=g)) for s in shape)
            b[i, j] = ~b[i, j]
        ref = bool((b == (b.any(dim=1)[:, None] & b.any(dim=0)[None, :])).all())
        assert p.spec.conforms(b, p) == ref
