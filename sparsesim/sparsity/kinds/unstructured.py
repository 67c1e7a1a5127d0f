"""unstructured:S — any weights removed; kept by score, ties broken in index order.

Analytic stats: i.i.d. Bernoulli(d) cells (binomial row counts, expected row maximum,
P(block all zero) = (1-d)^(r*c)). Stored as CSR, or dense when CSR would be larger.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from sparsesim.core.lazy import lazy_module, scipy_stats
from sparsesim.sparsity.formats import format_bytes
from sparsesim.sparsity.kinds.base import (
    Frame,
    PatternKind,
    density_of,
    register_kind,
    sparsity_number,
)
from sparsesim.sparsity.masks import kept_units, kth_smallest, row_bands
from sparsesim.sparsity.records import Pattern, SparsityStats
from sparsesim.sparsity.stats import (
    expected_max_binomial,
    full_stats,
    record,
    sizes,
    tile_areas,
    tile_hist_binomial,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

_SPELLING = re.compile(r"unstructured:(.+)", re.ASCII)


class Unstructured(PatternKind):
    name = "unstructured"
    grammar = "unstructured:S"
    order = 3
    default_format = "csr"
    sparse_output = True
    skips_zeros = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        return Pattern(self.name, density_of(sparsity_number(text, mt.group(1)))) if mt else None

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        flat = s.reshape(-1).contiguous()
        keep = kept_units(p.density, flat.numel())
        if keep == flat.numel():
            return torch.ones(s.shape, dtype=torch.bool)
        # the threshold by selection (kth_smallest: far faster than torch.topk or a whole partial
        # sort), then ties at the threshold broken in index order so exactly `keep` survive
        thr = kth_smallest(flat.numpy(), flat.numel() - keep)
        # compared a band at a time (no weight-sized temporaries besides the mask itself)
        bands = list(row_bands(flat.numel(), 1))
        out = torch.empty(flat.shape, dtype=torch.bool)
        for band in bands:
            torch.ge(flat[band], thr, out=out[band])
        # more than `keep` when several scores equal the threshold: the last `extra` of those
        # are dropped (ties kept in index order), looked for from the end
        extra = int(torch.count_nonzero(out)) - keep  # a vectorised count (a bool sum is not)
        for band in reversed(bands):
            if extra <= 0:
                break
            at = (flat[band] == thr).nonzero().reshape(-1)[-extra:]
            out[at + band.start] = False
            extra -= at.numel()
        return out.reshape(s.shape)

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        d, rows, cols = p.density, f.rows, f.cols
        if d >= 1.0:
            return full_stats(f)
        conf = {}
        for n, m in f.ratios:
            groups = rows * (cols // m)
            tail = cols % m
            logp = groups * scipy_stats().binom.logcdf(n, m, d) + (rows * scipy_stats().binom.logcdf(n, tail, d) if tail else 0.0)
            conf[(n, m)] = bool(logp >= math.log(0.5))
        bnz = {}
        for r, c in f.blocks:
            zero = sum(cnt_r * cnt_c * (1 - d) ** (h * w) for h, cnt_r in sizes(rows, r) for w, cnt_c in sizes(cols, c))
            bnz[(r, c)] = round(f.nblocks(r, c) - zero)
        return record(
            f, nnz=kept_units(d, f.size), row_max=round(expected_max_binomial(cols, d, rows)),
            row_mean=cols * d, row_std=math.sqrt(cols * d * (1 - d)), conformance=conf, block_nonzero=bnz,
            hist=tile_hist_binomial(tile_areas(rows, cols, f.tile), d),
            kept_rows=round(rows * (1 - (1 - d) ** cols)), kept_cols=round(cols * (1 - (1 - d) ** rows)))

    def storage_format(self, p: Pattern, stats: SparsityStats, value_bytes: float) -> str:
        """CSR, except that the weight stays dense when CSR would be larger (e.g. 30 % sparsity
        in fp16, or stray zeros)."""
        dense = format_bytes("dense", stats, value_bytes=value_bytes, pattern=p).total
        return "dense" if format_bytes("csr", stats, value_bytes=value_bytes, pattern=p).total >= dense else "csr"


register_kind(Unstructured())
