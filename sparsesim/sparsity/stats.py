"""SparsityStats measured from a real 0/1 mask, or drawn from an analytic model when only a
density is known (weights on the meta device), as Sparseloop does. Both fill the same record,
so a cost model cannot tell (and need not care) which one it got, except via `analytic`.

Measured stats are vectorised: the mask is zero-padded to a multiple of 32 in both dimensions
and summed pairwise (1x2 -> 1x4 -> 1x8 along K for N:M, 2x2 -> ... -> 32x32 for blocks), a band
of 32-row multiples (about a million cells) at a time, so every level stays in cache and no
weight-sized temporary is made: an 8192 x 8192 mask takes about 0.07 s on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from sparsesim.core.lazy import lazy_module, scipy_stats
from sparsesim.sparsity.kinds.base import Frame
from sparsesim.sparsity.masks import matrix_view, row_bands
from sparsesim.sparsity.records import OCCUPANCY_BINS, Pattern, SparsityStats

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy_module("numpy")
    torch = lazy_module("torch")

# N:M ratios every stats record reports (the ratios sparse tensor cores and papers use)
STANDARD_NM = ((1, 2), (2, 4), (1, 4), (2, 8), (4, 8))
# block sizes every stats record reports: vector blocks 1x4 / 4x1 (CPU SIMD) and square tiles
STANDARD_BLOCKS = ((1, 4), (4, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32))
# occupancy histogram tile: 16x16 is the tensor-core/BSR tile most kernels skip at
DEFAULT_TILE = (16, 16)
# hierarchy padding: largest power-of-two block measured
_PAD = 32


def pad_to(x: torch.Tensor, cols: int, rows: int = 0, value: float = 0.0) -> torch.Tensor:
    """`x` with `cols` columns and `rows` rows of `value` appended; `x` itself (no copy of a
    weight-sized tensor) when there is nothing to append."""
    return torch.nn.functional.pad(x, (0, cols, 0, rows), value=value) if cols or rows else x


@lru_cache(maxsize=1)
def _wide() -> dict[torch.dtype, torch.dtype]:
    """A count dtype -> the integer twice its width, whose halves are two neighbouring counts
    (a function, not a module constant: torch is imported on first use)."""
    return {torch.uint8: torch.int16, torch.int16: torch.int32}


def _pair_k(x: torch.Tensor) -> torch.Tensor:
    """Sums of neighbouring pairs along K of a count matrix. A contiguous one is read as integers
    of twice the width, the high half added to the low half and the sum cut back to the low
    half (exact modulo 2**bits, as the counts' own dtype is): ~3x faster than adding two
    strided views."""
    wide = _wide().get(x.dtype)
    if wide is None or not x.is_contiguous() or x.shape[1] % 2:
        return x[:, 0::2] + x[:, 1::2]
    v = x.view(wide)
    return (v + (v >> (8 * x.element_size()))).to(x.dtype)


def _pair_r(x: torch.Tensor) -> torch.Tensor:
    return x[0::2, :] + x[1::2, :]


def _occupancy_hist(counts: torch.Tensor, area: torch.Tensor) -> tuple[float, ...]:
    frac = (counts.double() / area.to(counts.device).double()).contiguous()
    edges = torch.tensor(OCCUPANCY_BINS[1:], dtype=torch.float64, device=counts.device)
    zero = (counts == 0)
    bins = torch.bucketize(frac, edges, right=False)  # (0,.25] -> 0, (.25,.5] -> 1, ...
    total = counts.numel()
    hist = [float(zero.sum()) / total]
    for b in range(len(edges)):
        hist.append(float(((bins == b) & ~zero).sum()) / total)
    return tuple(hist)


def _edge_area(rows: int, cols: int, r: int, c: int) -> torch.Tensor:
    """Real (unpadded) cell count of every r x c tile of a rows x cols grid."""
    hr = torch.full(((rows + r - 1) // r,), r, dtype=torch.int64)
    hc = torch.full(((cols + c - 1) // c,), c, dtype=torch.int64)
    if rows % r:
        hr[-1] = rows % r
    if cols % c:
        hc[-1] = cols % c
    return hr[:, None] * hc[None, :]


def nm_group_max(b: torch.Tensor, m: int) -> int:
    """Most nonzeros in any aligned group of m along K of a bool rows x K mask (a group longer
    than the row is the row itself, so nothing is padded beyond K)."""
    rows, k = b.shape
    m = min(m, k)
    if not b.numel():
        return 0
    if m & (m - 1) == 0 and m <= _PAD and k % m == 0:
        # a power-of-two group: pairwise sums of neighbours (elementwise adds, no reduction),
        # a band of rows at a time (in cache, no weight-sized temporaries)
        u = b.view(torch.uint8) if b.dtype == torch.bool else (b != 0).view(torch.uint8)
        most = 0
        for band in row_bands(rows, k):
            x = u[band]
            while x.shape[1] > k // m:
                x = _pair_k(x)
            most = max(most, int(x.max()))
        return most
    # float sums are vectorised (integer reductions are not) and exact far beyond any group size
    cnt = pad_to(b.to(torch.float32), (-k) % m).reshape(rows, -1, m).sum(-1)
    return int(cnt.max())


def block_counts(b: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Nonzeros of every r x c block of the zero-padded grid of a rows x K mask (a side longer
    than the matrix is clamped to it: the single edge block holds the same cells).

    Power-of-two sides up to 32 add neighbours pairwise in bytes (int16 once a count may pass
    255), so no float copy of the mask is made; other sides sum floats (vectorised, exact)."""
    rows, k = b.shape
    r, c = max(1, min(r, rows)), max(1, min(c, k))
    if r & (r - 1) or c & (c - 1) or r > _PAD or c > _PAD:
        x = pad_to(b.to(torch.float32), (-k) % c, (-rows) % r)  # float: vectorised
        return x.reshape(x.shape[0] // r, r, x.shape[1] // c, c).sum(dim=(1, 3)).to(torch.int64)
    u = b.view(torch.uint8) if b.dtype == torch.bool else (b != 0).view(torch.uint8)
    out = []
    # bands of whole block rows stay in cache (an empty matrix is one empty band)
    for band in list(row_bands(rows, k + (-k) % c, r)) or [slice(0, 0)]:
        x = u[band]
        x = pad_to(x, (-k) % c, (-x.shape[0]) % r)
        area = 1
        for pair, steps in ((_pair_k, c), (_pair_r, r)):
            while steps > 1:
                if area * 2 > 255 and x.dtype == torch.uint8:
                    x = x.to(torch.int16)
                x, area, steps = pair(x), area * 2, steps // 2
        out.append(x)
    return torch.cat(out) if len(out) > 1 else out[0]


def measure_stats(mask: torch.Tensor | np.ndarray, *, pattern: Pattern | None = None,
                  tile: tuple[int, int] = DEFAULT_TILE) -> SparsityStats:
    """Stats of a real mask (any dtype; nonzero = kept), viewed as rows x K. With `pattern`,
    also the ratios and blocks its kind asks for and whether the mask conforms to it."""
    t = torch.from_numpy(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask.detach()
    b = matrix_view(t)
    if b.dtype != torch.bool:
        b = b != 0
    b = b.contiguous()  # reductions over a broadcast (stride-0) view are ~100x slower
    rows, k = b.shape
    group_max = {2: 0, 4: 0, 8: 0}
    block_nonzero = dict.fromkeys(STANDARD_BLOCKS, 0)
    row_nnz = torch.empty(rows, dtype=torch.int64)
    col_kept = torch.zeros(k, dtype=torch.bool)
    c16s = []
    # every count below is local to a band of 32 rows: bands of ~1 MB keep each level of the
    # hierarchy in cache (and the allocator reuses their buffers) instead of a weight-sized pass
    for band in row_bands(rows, k + (-k) % _PAD, _PAD):
        p = b[band].view(torch.uint8)
        p = pad_to(p, (-k) % _PAD, (-p.shape[0]) % _PAD)
        c12 = _pair_k(p)
        c14 = _pair_k(c12)
        c18 = _pair_k(c14)
        for m, c in ((2, c12), (4, c14), (8, c18)):
            group_max[m] = max(group_max[m], int(c.max()))
        c22 = _pair_r(c12)
        c44 = _pair_r(_pair_k(c22))
        c88 = _pair_r(_pair_k(c44))
        c16 = _pair_r(_pair_k(c88.to(torch.int16)))
        c32 = _pair_r(_pair_k(c16))
        c41 = _pair_r(_pair_r(p))
        counts = {(1, 4): c14, (4, 1): c41, (2, 2): c22, (4, 4): c44, (8, 8): c88, (16, 16): c16, (32, 32): c32}
        for rc, v in counts.items():
            block_nonzero[rc] += int(torch.count_nonzero(v))
        # float sums are vectorised (integer reductions of uint8 are not) and exact below 2**24
        row_nnz[band] = c18[: band.stop - band.start].float().sum(dim=1).to(torch.int64)
        col_kept |= c41.amax(dim=0)[:k] > 0
        c16s.append(c16)
    nnz = int(row_nnz.sum())

    nm = {}
    for n, m in STANDARD_NM:
        nm[(n, m)] = group_max[m] <= n
    conformance: tuple[tuple[str, bool], ...] = ()
    if pattern is not None:
        spec = pattern.spec
        for n, m in spec.ratios(pattern):
            nm[(n, m)] = group_max[m] <= n if m in group_max else nm_group_max(b, m) <= n
        for rc in spec.blocks(pattern):
            if rc not in block_nonzero:
                block_nonzero[rc] = int(torch.count_nonzero(block_counts(b, *rc)))
        conformance = ((pattern.label, bool(spec.conforms(b, pattern))),)

    if tile == (16, 16):
        tcount = torch.cat(c16s)[: (rows + 15) // 16, : (k + 15) // 16]
    else:
        tcount = block_counts(b, *tile)
    hist = _occupancy_hist(tcount, _edge_area(rows, k, *tile))

    rn = row_nnz.double()
    return SparsityStats(
        rows=rows, cols=k, nnz=nnz,
        nm_conformance=tuple(sorted(nm.items())),
        row_nnz_max=int(row_nnz.max()) if rows else 0,
        row_nnz_mean=float(rn.mean()) if rows else 0.0,
        row_nnz_std=float(rn.std(unbiased=False)) if rows else 0.0,
        block_nonzero=tuple(sorted(block_nonzero.items())),
        tile=(tile[0], tile[1]),
        occupancy_hist=hist,
        zero_tile_fraction=hist[0],
        kept_rows=int(torch.count_nonzero(row_nnz)),
        kept_cols=int(torch.count_nonzero(col_kept)),
        analytic=False,
        pattern_conformance=conformance,
    )


# ---------------------------------------------------------------- analytic -----------------
# Shared pieces of the per-kind analytic stats (each kind's module has its own `analytic`).

# Expected row maxima sum P(max >= k) over a window of this many standard deviations around
# the mean (outside it the terms are 1 or 0 to far below float precision) ...
_MAX_WINDOW_SD = 40
# ... sampled at no more than this many points (a Riemann sum with unit error per stride when
# the window is wider), so the cost never scales with K
_MAX_WINDOW_POINTS = 4096


def sizes(n: int, b: int) -> list[tuple[int, int]]:
    """(extent, how many) of the tiles of side b covering n cells (full tiles, then the edge)."""
    out = []
    if n // b:
        out.append((b, n // b))
    if n % b:
        out.append((n % b, 1))
    return out


def bin_of(frac: float) -> int:
    if frac <= 0:
        return 0
    for i, edge in enumerate(OCCUPANCY_BINS[1:]):
        if frac <= edge + 1e-12:
            return i + 1
    return len(OCCUPANCY_BINS) - 1


def expected_max(logcdf: Callable[[np.ndarray], np.ndarray], mean: float, sd: float, n: int, count: int) -> float:
    """E[max of `count` i.i.d. draws of a distribution on 0..n with this log-cdf, mean and sd]
    = sum_k P(max > k): exact for windows of up to _MAX_WINDOW_POINTS values of k around the
    mean, a strided sum beyond (a K in the billions stays cheap)."""
    if count <= 0 or n <= 0:
        return 0.0
    lo = max(0, math.floor(mean - _MAX_WINDOW_SD * sd) - 1)
    hi = min(n, math.ceil(mean + _MAX_WINDOW_SD * sd) + 1)
    stride = max(1, -(-(hi - lo) // _MAX_WINDOW_POINTS))
    lc = logcdf(np.arange(lo, hi, stride))  # log P(X <= k)
    # terms below lo are P(max > k) = 1 to float precision, above hi 0
    return float(lo + stride * np.sum(-np.expm1(count * lc)))


# draws up to this many get an exact product form of the hypergeometric pmf (a tile or block
# side); scipy's general routine is used beyond, where it is accurate and the population small
_EXACT_DRAWS = 64
# a hypergeometric over more than this many values is taken as normal (with a continuity
# correction) for expected maxima: scipy's discrete cdf sums pmfs, which scales with the support
_NORMAL_SUPPORT = 10**5


def hypergeom_pmf(pop: int, good: int, draws: int) -> np.ndarray:
    """P(j of `good` among `draws` taken without replacement from `pop`), j = 0..draws.

    Exact and independent of `pop`'s size for short draws (a weight of 10^12 columns costs the
    same as one of 64)."""
    if draws > _EXACT_DRAWS:
        return np.asarray(scipy_stats().hypergeom(pop, good, draws).pmf(np.arange(draws + 1)), dtype=float)
    out = np.zeros(draws + 1)
    for j in range(draws + 1):
        if j > good or draws - j > pop - good:
            continue
        p = float(math.comb(draws, j))
        for i in range(j):
            p *= (good - i) / (pop - i)
        for i in range(draws - j):
            p *= (pop - good - i) / (pop - j - i)
        out[j] = p
    return out


def expected_max_hypergeom(pop: int, good: int, draws: int, count: int) -> float:
    """E[max of `count` i.i.d. Hypergeometric(pop, good, draws)]."""
    q = good / pop if pop else 0.0
    mean = draws * q
    sd = math.sqrt(max(0.0, draws * q * (1 - q) * (pop - draws) / max(pop - 1, 1)))
    if draws > _NORMAL_SUPPORT:
        def logcdf(ks: np.ndarray) -> np.ndarray:
            if sd <= 0:
                return np.where(ks + 0.5 >= mean, 0.0, -np.inf)
            return np.asarray(scipy_stats().norm.logcdf(ks + 0.5, mean, sd))
    else:
        def logcdf(ks: np.ndarray) -> np.ndarray:
            return np.log(np.clip(scipy_stats().hypergeom.cdf(ks, pop, good, draws), 1e-300, 1.0))
    return expected_max(logcdf, mean, sd, draws, count)


def expected_max_binomial(n: int, p: float, count: int) -> float:
    """E[max of `count` i.i.d. Binomial(n, p)]."""
    if p <= 0:
        return 0.0
    if p >= 1:
        return float(n) if count > 0 else 0.0
    return expected_max(lambda ks: np.asarray(scipy_stats().binom.logcdf(ks, n, p)), n * p, math.sqrt(n * p * (1 - p)),
                        n, count)


def full_conforms(k: int, n: int, m: int) -> bool:
    """Does a row of K ones conform to n:m? Only if no group of m holds more than n ones."""
    return min(m, k) <= n


def tile_hist_binomial(area_counts: list[tuple[int, int]], p: float) -> tuple[float, ...]:
    """Occupancy histogram of tiles whose kept count is Binomial(area, p)."""
    hist = np.zeros(len(OCCUPANCY_BINS))
    tiles = 0
    for area, count in area_counts:
        pmf = scipy_stats().binom.pmf(np.arange(area + 1), area, p)
        for j, pj in enumerate(pmf):
            hist[bin_of(j / area)] += pj * count
        tiles += count
    return tuple(float(h / tiles) for h in hist)


def tile_areas(rows: int, cols: int, tile: tuple[int, int]) -> list[tuple[int, int]]:
    return [(h * w, a * b) for h, a in sizes(rows, tile[0]) for w, b in sizes(cols, tile[1])]


def record(f: Frame, *, nnz: float, row_max: float, row_mean: float, row_std: float,
           conformance: Mapping[tuple[int, int], bool], block_nonzero: Mapping[tuple[int, int], float],
           hist: Iterable[float], kept_rows: float, kept_cols: float) -> SparsityStats:
    """An analytic SparsityStats record (counts rounded to whole numbers)."""
    h = tuple(float(x) for x in hist)
    return SparsityStats(
        rows=f.rows, cols=f.cols, nnz=int(nnz),
        nm_conformance=tuple(sorted((k, bool(v)) for k, v in conformance.items())),
        row_nnz_max=int(row_max), row_nnz_mean=float(row_mean), row_nnz_std=float(row_std),
        block_nonzero=tuple(sorted((k, int(v)) for k, v in block_nonzero.items())),
        tile=f.tile, occupancy_hist=h, zero_tile_fraction=h[0],
        kept_rows=int(kept_rows), kept_cols=int(kept_cols), analytic=True,
    )


def full_stats(f: Frame) -> SparsityStats:
    """Stats of a weight with every cell kept (dense, or any kind at density 1)."""
    return record(f, nnz=f.size, row_max=f.cols, row_mean=float(f.cols), row_std=0.0,
                  conformance={nm: full_conforms(f.cols, *nm) for nm in f.ratios},
                  block_nonzero={rc: f.nblocks(*rc) for rc in f.blocks},
                  hist=tuple(0.0 for _ in OCCUPANCY_BINS[:-1]) + (1.0,), kept_rows=f.rows, kept_cols=f.cols)


@lru_cache(maxsize=512)
def analytic_stats(rows: int, cols: int, pattern: Pattern, *, tile: tuple[int, int] = DEFAULT_TILE,
                   group: int = 1, kept_cols: int | None = None) -> SparsityStats:
    """Stats a mask of `pattern` would have on a rows x cols weight, when only the density is known.

    Each kind's module models its own masks (see `PatternKind.analytic`); counts are
    expectations, rounded. `group` is the row unit of channel pruning (whole heads) and
    `kept_cols` the input columns left when a producer's pruning removed the others.
    N:M conformance is True only where it is guaranteed or near-certain (P >= 0.5).
    """
    spec = pattern.spec
    ratios = tuple(dict.fromkeys(STANDARD_NM + spec.ratios(pattern)))
    blocks = tuple(dict.fromkeys(STANDARD_BLOCKS + spec.blocks(pattern)))
    f = Frame(rows, cols, (tile[0], tile[1]), group, kept_cols, ratios, blocks)
    out = spec.analytic(pattern, f)
    return replace(out, pattern_conformance=((pattern.label, True),))
