"""blockRxC:S — whole R x C blocks kept or removed (BSR kernels; CPU SIMD vector blocks).

Blocks tile the zero-padded matrix; a block is scored by the L2 norm of its scores. A block
side longer than the matrix is clamped to it (the single edge block holds the same cells), so
nothing is allocated beyond the weight. Analytic stats: the kept blocks (by the build_mask
rounding rule) placed uniformly. Stored as BSR.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from sparsesim.core.errors import MaskError
from sparsesim.core.lazy import lazy_module, scipy_stats
from sparsesim.sparsity.kinds.base import (
    Frame,
    PatternError,
    PatternKind,
    check_density,
    density_of,
    pattern_int,
    register_kind,
    sparsity_number,
)
from sparsesim.sparsity.masks import kept_units, row_bands
from sparsesim.sparsity.records import OCCUPANCY_BINS, Pattern, SparsityStats
from sparsesim.sparsity.stats import (
    bin_of,
    block_counts,
    expected_max_hypergeom,
    full_conforms,
    full_stats,
    pad_to,
    record,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy_module("numpy")
    torch = lazy_module("torch")

_SPELLING = re.compile(r"block([^x:]+)x([^:]+):(.+)", re.ASCII)


def _clamped(rows: int, k: int, r: int, c: int) -> tuple[int, int]:
    return max(1, min(r, rows)), max(1, min(c, k))


class Block(PatternKind):
    name = "block"
    grammar = "blockRxC:S"
    order = 4
    default_format = "bsr"
    squares_scores = True
    sparse_output = True
    skips_zeros = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        if mt is None:
            return None
        r, c = pattern_int(text, mt.group(1), "block rows"), pattern_int(text, mt.group(2), "block columns")
        if r < 1 or c < 1:
            raise PatternError(f"pattern {text!r}: block sides must be >= 1")
        return Pattern(self.name, density_of(sparsity_number(text, mt.group(3))), block=(r, c))

    def label(self, p: Pattern) -> str:
        return f"block{p.block[0]}x{p.block[1]}:{p.sparsity:g}"

    def make(self, density: float = 1.0, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        r, c = block
        if not (isinstance(r, int) and isinstance(c, int)) or r < 1 or c < 1:
            raise PatternError(f"pattern block{r}x{c}: block sides must be whole numbers >= 1")
        for side in (r, c):
            pattern_int(f"block{r}x{c}", str(side), "block side")
        return Pattern(self.name, check_density(self.name, density), block=(r, c))

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        rows, k = s.shape
        r, c = _clamped(rows, k, *p.block)
        pc = (-k) % c
        br, bc = -(-rows // r), (k + pc) // c
        # block score = squared L2 norm of the scores inside the block (edge blocks are zero-padded),
        # a band of block rows at a time (no weight-sized temporaries); each block sums its rows'
        # sums over c, in the order a sum over both block dimensions takes
        bs = torch.empty(br, bc)
        for band in row_bands(rows, k + pc, r):
            x = s[band]
            sq = pad_to(x * x, pc, (-x.shape[0]) % r)
            torch.sum(sq.reshape(sq.shape[0], bc, c).sum(dim=2).reshape(-1, r, bc), dim=1,
                      out=bs[band.start // r: band.start // r + sq.shape[0] // r])
        bs = bs.reshape(-1)
        keep = kept_units(p.density, bs.numel())
        bm = torch.zeros(bs.numel(), dtype=torch.bool)
        bm[bs.topk(keep, sorted=False).indices] = True  # the same set as sorted, without sorting it
        full = bm.reshape(br, 1, bc, 1).expand(br, r, bc, c).reshape(br * r, bc * c)
        return full[:rows, :k]

    def check_mask(self, b: torch.Tensor, p: Pattern, *, group: int, layer: str) -> None:
        rows, k = b.shape
        r0, c0 = p.block
        r, c = _clamped(rows, k, r0, c0)
        pr, pc = (-rows) % r, (-k) % c
        cnt = block_counts(b, r, c)
        br, bc = cnt.shape
        hr = torch.full((br,), r, dtype=torch.int64)
        hc = torch.full((bc,), c, dtype=torch.int64)
        if pr:
            hr[-1] = rows % r
        if pc:
            hc[-1] = k % c
        area = hr[:, None] * hc[None, :]  # real (unpadded) cells of each block
        bad = ((cnt > 0) & (cnt < area)).nonzero()
        if bad.numel():
            i, j = (int(v) for v in bad[0])
            raise MaskError(
                f"layer {layer!r}: mask breaks block{r0}x{c0} at block ({i}, {j}) (rows {i * r}-"
                f"{min(rows, (i + 1) * r) - 1}, columns {j * c}-{min(k, (j + 1) * c) - 1}): "
                f"{int(cnt[i, j])} of {int(area[i, j])} kept; blocks must be all or nothing")

    def conforms(self, b: torch.Tensor, p: Pattern) -> bool:
        try:
            self.check_mask(b, p, group=1, layer="")
        except MaskError:
            return False
        return True

    def blocks(self, p: Pattern) -> tuple[tuple[int, int], ...]:
        return (p.block,)

    def bsr_block(self, p: Pattern) -> tuple[int, int] | None:
        return p.block

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        d, rows, cols = p.density, f.rows, f.cols
        if d >= 1.0:
            return full_stats(f)
        r, c = _clamped(rows, cols, *p.block)
        nb = f.nblocks(r, c)
        kb = kept_units(d, nb)
        db = kb / nb
        nbc, nbr = -(-cols // c), -(-rows // r)
        # kept blocks in one block row ~ Hypergeometric(nb, kb, nbc); rows inside it share the count
        emax = expected_max_hypergeom(nb, kb, nbc, nbr)
        hg_var = nbc * db * (1 - db) * (nb - nbc) / max(nb - 1, 1)
        bnz = {}
        for r2, c2 in f.blocks:
            cover = max(1, -(-r2 // r)) * max(1, -(-c2 // c))
            bnz[(r2, c2)] = round(f.nblocks(r2, c2) * (1 - (1 - db) ** cover))
        cover = max(1, f.tile[0] // r) * max(1, f.tile[1] // c)
        hist = [0.0] * len(OCCUPANCY_BINS)
        for j, pj in enumerate(scipy_stats().binom.pmf(np.arange(cover + 1), cover, db)):
            hist[bin_of(j / cover)] += float(pj)
        return record(
            f, nnz=round(db * f.size), row_max=min(cols, round(emax * c)), row_mean=cols * db,
            row_std=c * math.sqrt(max(hg_var, 0.0)), conformance={nm: kb == 0 or full_conforms(cols, *nm) for nm in f.ratios},
            block_nonzero=bnz, hist=hist, kept_rows=min(rows, round(rows * (1 - (1 - db) ** nbc))),
            kept_cols=min(cols, round(cols * (1 - (1 - db) ** nbr))))


register_kind(Block())
