"""channel:S — whole output rows (neurons, channels; heads in units of `group` rows) removed.

Not a sparse matrix: the op shrinks to a smaller dense one (`shrinks_op`), and the consumer of
pruned outputs loses the matching input columns (`kept_cols` of the stats). Masks keep whole
rows, scored by the energy of their scores. Analytic stats: the kept row count exact, which rows
uniform. Stored dense at the kept size.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from sparsesim.core.errors import MaskError
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.kinds.base import (
    Frame,
    PatternKind,
    density_of,
    register_kind,
    sparsity_number,
)
from sparsesim.sparsity.masks import kept_units, row_bands
from sparsesim.sparsity.records import OCCUPANCY_BINS, Pattern, SparsityStats
from sparsesim.sparsity.stats import (
    bin_of,
    full_conforms,
    full_stats,
    hypergeom_pmf,
    record,
    sizes,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

_SPELLING = re.compile(r"channel:(.+)", re.ASCII)


def check_submatrix(b: torch.Tensor, layer: str, group: int) -> None:
    """Channel pruning leaves a smaller dense matrix: the kept cells are exactly
    (kept rows) x (kept columns); rows go in units of `group` (whole attention heads)."""
    rows = b.shape[0]
    if group < 1 or rows % group:
        raise MaskError(f"layer {layer!r}: {rows} rows cannot be checked in units of {group} rows")
    b = b.contiguous()  # reductions over a broadcast (stride-0) view are ~100x slower
    if b.numel():
        # bytes, not bools: max-reductions of uint8 are vectorised, any() along dim 0 is not
        cells = b.view(torch.uint8) if b.dtype == torch.bool else (b != 0).view(torch.uint8)
        row_kept, col_kept = cells.amax(dim=1) > 0, cells.amax(dim=0) > 0
    else:
        row_kept, col_kept = b.any(dim=1), b.any(dim=0)
    # the kept cells always lie in (kept rows) x (kept columns): they fill it iff they are as many
    whole = int(torch.count_nonzero(b)) == int(torch.count_nonzero(row_kept)) * int(torch.count_nonzero(col_kept))
    wrong = torch.empty(0) if whole else (b != (row_kept[:, None] & col_kept[None, :])).any(dim=1).nonzero()
    if wrong.numel():
        i = int(wrong[0])
        raise MaskError(
            f"layer {layer!r}: mask breaks channel pruning at row {i}: it keeps {int(b[i].sum())} of the "
            f"{int(col_kept.sum())} kept columns; a row is kept whole (over the kept columns) or pruned whole")
    if group > 1:
        per_unit = row_kept.reshape(rows // group, group).sum(dim=1)
        bad = ((per_unit > 0) & (per_unit < group)).nonzero()
        if bad.numel():
            u = int(bad[0])
            raise MaskError(
                f"layer {layer!r}: mask breaks channel pruning at rows {u * group}-{(u + 1) * group - 1} "
                f"(unit {u} of {group} rows): {int(per_unit[u])} of {group} rows kept; a head is kept or pruned whole")


class Channel(PatternKind):
    name = "channel"
    grammar = "channel:S"
    order = 5
    default_format = "dense"
    shrinks_op = True
    squares_scores = True
    uses_group = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        return Pattern(self.name, density_of(sparsity_number(text, mt.group(1)))) if mt else None

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        rows, k = s.shape
        if group < 1 or rows % group:
            raise MaskError(f"layer {layer!r}: {rows} rows cannot be pruned in units of {group} rows")
        # a unit's energy, a band of units at a time (no weight-sized temporary, the same sums)
        unit_score = torch.empty(rows // group)
        for band in row_bands(rows, k, group):
            x = s[band]
            torch.sum((x * x).reshape(-1, group * k), dim=1, out=unit_score[band.start // group: band.stop // group])
        keep = kept_units(p.density, unit_score.numel())
        um = torch.zeros(unit_score.numel(), dtype=torch.bool)
        um[unit_score.topk(keep, sorted=False).indices] = True  # the same set as sorted, without sorting it
        return um.repeat_interleave(group).reshape(rows, 1).expand(rows, k)

    def check_mask(self, b: torch.Tensor, p: Pattern, *, group: int, layer: str) -> None:
        check_submatrix(b, layer, group)

    def conforms(self, b: torch.Tensor, p: Pattern) -> bool:
        try:
            check_submatrix(b, "", 1)
        except MaskError:
            return False
        return True

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        rows, cols, group = f.rows, f.cols, f.group
        if p.density >= 1.0 and f.kept_cols in (None, cols):
            return full_stats(f)
        if rows % group:
            raise MaskError(f"{rows} x {cols} weight: {rows} rows cannot be pruned in units of {group} rows")
        kept_r = kept_units(p.density, rows // group) * group
        kept_c = cols if f.kept_cols is None else f.kept_cols
        q = kept_r / rows
        nnz = kept_r * kept_c
        bnz = {}
        for r, c in f.blocks:
            # kept cells are (kept rows) x (kept cols): nonzero blocks = nonzero block rows x block cols
            brows = sum(cnt * (1 - hypergeom_pmf(rows, kept_r, h)[0]) for h, cnt in sizes(rows, r))
            bcols = sum(cnt * (1 - hypergeom_pmf(cols, kept_c, w)[0]) for w, cnt in sizes(cols, c))
            bnz[(r, c)] = round(brows * bcols)
        hist = [0.0] * len(OCCUPANCY_BINS)
        th, tw = min(f.tile[0], rows), min(f.tile[1], cols)
        pr = hypergeom_pmf(rows, kept_r, th)
        pc = hypergeom_pmf(cols, kept_c, tw)
        for i, pi in enumerate(pr):
            for j, pj in enumerate(pc):
                hist[bin_of(i * j / (th * tw))] += float(pi * pj)
        return record(
            f, nnz=nnz, row_max=kept_c, row_mean=nnz / rows, row_std=kept_c * math.sqrt(q * (1 - q)),
            conformance={nm: kept_r == 0 or full_conforms(kept_c, *nm) for nm in f.ratios},
            block_nonzero=bnz, hist=hist, kept_rows=kept_r, kept_cols=kept_c)


register_kind(Channel())
