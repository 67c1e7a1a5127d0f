"""V:N:M (VENOM, Castro et al., SC'23, arXiv 2310.02065) — N:M sparsity that sparse tensor cores
can run at any M: the weight is cut into V x M blocks (V rows, M consecutive columns along K);
each block keeps the same 4 columns for all its V rows (column pruning), and each row keeps N
of those 4 (the 2:4 the tensor cores support, so N is 1 or 2). The density is N/M: `64:2:8`
keeps 2 of every 8 weights of a row, 75 % sparsity, with 64 rows sharing each column choice.
The Spatha kernel (same paper) gathers the 4 selected activation columns of each block and runs
the result as a 2:4 GEMM on the sparse tensor cores, so M/4 fewer K-steps than 2:4 itself.

Masks (pure, vectorised): a column is scored by the energy of its scores over the block's V
rows, the best 4 (fewer in a short tail group) are selected, then each row keeps its N best
selected columns. Rows beyond the last full V-block and a short last group of K follow the same
rules on what they have; a V or M longer than the matrix is clamped to it.

Storage (`vnm` format, the layout Spatha reads): per row and group, the 2:4 of the 4 selected
columns — 2 values (a stored zero when N = 1) with 2 bits of position each (Mishra et al. 2021,
arXiv 2104.08378) — plus, per V x M block, the 4 selected column positions at ceil(log2 M) bits
each (VENOM §4: the column-location metadata), packed.

Analytic stats: selected columns uniform among each group's M, kept columns uniform among the
selected 4, independently per V-block and group; block and tile counts exact under that model.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from sparsesim.core.errors import MaskError
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.formats import FormatError, FormatSize, size_of
from sparsesim.sparsity.kinds.base import (
    DENSITY_DECIMALS,
    Frame,
    PatternError,
    PatternKind,
    pattern_int,
    register_kind,
)
from sparsesim.sparsity.kinds.nm import nm_worst
from sparsesim.sparsity.records import OCCUPANCY_BINS, Pattern, SparsityStats
from sparsesim.sparsity.stats import bin_of, record

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

# columns each V x M block keeps (the group of 4 a 2:4 sparse tensor core instruction reads)
SELECTED = 4
# values stored per row and selected group: the 2 of 2:4 (Mishra et al. 2021)
STORED = 2
# position bits per stored value in the 2:4 metadata (Mishra et al. 2021: 2 bits per value)
POSITION_BITS = 2
_SPELLING = re.compile(r"([^:a-z]+):([^:a-z]+):([^:a-z]+)", re.ASCII)
# distinct block-row / block-column layouts evaluated exactly in analytic counts; more are sampled
_LAYOUTS_MAX = 4096


def _blocks_view(x: torch.Tensor, v: int, m: int, fill: float) -> torch.Tensor:
    """rows x K -> (row blocks, V, groups, M), padding with `fill`."""
    rows, k = x.shape
    x = torch.nn.functional.pad(x, (0, (-k) % m, 0, (-rows) % v), value=fill)
    return x.reshape(x.shape[0] // v, v, x.shape[1] // m, m)


def _clamp(rows: int, k: int, p: Pattern) -> tuple[int, int, int]:
    """(V, N, M) with V and M clamped to the matrix (a block longer than it is the matrix)."""
    v, m = max(1, min(p.block[0], rows)), max(1, min(p.m, k))
    return v, min(p.n, m), m


def vnm_mask(s: torch.Tensor, p: Pattern) -> torch.Tensor:
    """Bool rows x K V:N:M mask keeping the highest scores `s` (see module doc)."""
    rows, k = s.shape
    if not s.numel():
        return torch.ones(s.shape, dtype=torch.bool)
    v, n, m = _clamp(rows, k, p)
    sel = min(SELECTED, m)
    real = _blocks_view(torch.ones(s.shape, dtype=torch.uint8), v, m, 0).bool()
    blocks = _blocks_view(s, v, m, 0.0)
    # a column's score is its energy over the block's rows; padding columns are never chosen
    # over real ones, nor padding slots over real ones within a row
    col_energy = (blocks * blocks).sum(dim=1).masked_fill(~real[:, 0], float("-inf"))   # (rb, g, M)
    idx = col_energy.topk(sel, dim=-1).indices[:, None].expand(-1, v, -1, -1)         # (rb, V, g, sel)
    picked = blocks.gather(-1, idx).masked_fill(~real.gather(-1, idx), float("-inf"))
    keep = idx.gather(-1, picked.topk(min(n, sel), dim=-1).indices)
    out = torch.zeros(blocks.shape, dtype=torch.bool).scatter_(-1, keep, True) & real
    return out.reshape(out.shape[0] * v, -1)[:rows, :k]


def vnm_violation(b: torch.Tensor, p: Pattern) -> str:
    """'' when a bool rows x K mask is V:N:M, else the first violation in words."""
    rows, k = b.shape
    if not b.numel():
        return ""
    v, n, m = _clamp(rows, k, p)
    blocks = _blocks_view(b.to(torch.uint8), v, m, 0)
    cols = blocks.amax(dim=1).sum(dim=-1)                              # selected columns per block
    bad = (cols > SELECTED).nonzero()
    if bad.numel():
        i, g = (int(x) for x in bad[0])
        return (f"rows {i * v}-{min(rows, (i + 1) * v) - 1}, columns {g * m}-{min(k, (g + 1) * m) - 1}: "
                f"{int(cols[i, g])} columns used > {SELECTED} per {p.block[0]}x{p.m} block")
    per_row = blocks.sum(dim=-1, dtype=torch.int32)                    # (rb, v, g)
    bad = (per_row > n).nonzero()
    if bad.numel():
        i, r, g = (int(x) for x in bad[0])
        return (f"row {i * v + r}, columns {g * m}-{min(k, (g + 1) * m) - 1}: "
                f"{int(per_row[i, r, g])} kept > {n}")
    return ""


def _q(h: int, glen: int, ov: int, n: int) -> float:
    """P(h rows of one V-block keep none of `ov` given columns of a group of `glen`)."""
    sel = min(SELECTED, glen)
    keep = min(n, sel)
    total = 0.0
    for j in range(min(sel, ov) + 1):  # j of the given columns are among the selected
        if sel - j > glen - ov:
            continue
        hyp = math.comb(ov, j) * math.comb(glen - ov, sel - j) / math.comb(glen, sel) if glen <= 64 else \
            math.exp(_lcomb(ov, j) + _lcomb(glen - ov, sel - j) - _lcomb(glen, sel))
        none = math.comb(sel - j, keep) / math.comb(sel, keep) if sel - j >= keep else 0.0
        total += hyp * none ** h
    return total


def _lcomb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _layouts(extent: int, side: int, unit: int) -> dict[tuple[tuple[int, int], ...], float]:
    """How the blocks of `side` along an axis of `extent` cut the units (V-blocks or groups) of
    `unit`: how many blocks have each layout ((unit length, overlap), ...), exact up to _LAYOUTS_MAX blocks
    per period, sampled beyond."""
    nblocks = -(-extent // side)

    def layout(j: int) -> tuple[tuple[int, int], ...]:
        lo, hi = j * side, min(extent, (j + 1) * side)
        out, g = [], lo // unit
        while g * unit < hi:
            ulen = min(extent, (g + 1) * unit) - g * unit
            out.append((ulen, min(hi, (g + 1) * unit) - max(lo, g * unit)))
            g += 1
        return tuple(out)

    period = math.lcm(side, unit) // side
    # blocks before the last unit starts repeat with `period`; the rest are taken one by one
    body = min(nblocks, max(0, (extent - unit) // side - 1))
    counts: defaultdict[tuple[tuple[int, int], ...], float] = defaultdict(float)
    reps, rest = divmod(body, period)

    def add(lo: int, hi: int, weight: float) -> None:
        if hi - lo <= _LAYOUTS_MAX:
            for j in range(lo, hi):
                counts[layout(j)] += weight
        else:
            step = (hi - lo) / _LAYOUTS_MAX
            for i in range(_LAYOUTS_MAX):
                counts[layout(lo + int(i * step))] += weight * step

    if reps:
        add(0, period, reps)
        add(0, rest, 1)
    else:
        add(0, body, 1)
    add(body, nblocks, 1)
    return counts


def vnm_zero_blocks(rows: int, cols: int, p: Pattern, r: int, c: int) -> float:
    """Expected all-zero r x c blocks of a V:N:M mask under the uniform model (module doc)."""
    v, n, m = _clamp(rows, cols, p)
    row_l, col_l = _layouts(rows, r, v), _layouts(cols, c, m)
    total = 0.0
    for rl, rc in row_l.items():
        for cl, cc in col_l.items():
            q = 1.0
            for _, h in rl:
                for glen, ov in cl:
                    q *= _q(h, glen, ov, n)
            total += rc * cc * q
    return total


class VNM(PatternKind):
    name = "vnm"
    grammar = "V:N:M (N in 1, 2; M >= 4)"
    order = 2
    default_format = "vnm"
    formats = ("vnm",)
    skips_zeros = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        if mt is None:
            return None
        v, n, m = (pattern_int(text, mt.group(i), w) for i, w in ((1, "V"), (2, "N"), (3, "M")))
        return self._checked(text, v, n, m)

    def _checked(self, text: str, v: int, n: int, m: int) -> Pattern:
        if v < 1:
            raise PatternError(f"pattern {text!r}: V:N:M needs V >= 1 rows per block")
        if m < SELECTED:
            raise PatternError(f"pattern {text!r}: V:N:M needs M >= {SELECTED} (each block keeps {SELECTED} columns)")
        if not (1 <= n <= STORED):
            raise PatternError(f"pattern {text!r}: V:N:M keeps N of the {SELECTED} selected columns under "
                               f"{STORED}:{SELECTED}, so N must be 1 or 2")
        return Pattern(self.name, round(n / m, DENSITY_DECIMALS), n=n, m=m, block=(v, m))

    def label(self, p: Pattern) -> str:
        return f"{p.block[0]}:{p.n}:{p.m}"

    def make(self, density: float = 0.0, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        v = block[0]
        text = f"{v}:{n}:{m}"
        if not all(isinstance(x, int) for x in (v, n, m)):
            raise PatternError(f"pattern {text!r}: V, N and M must be whole numbers")
        for x, w in ((v, "V"), (n, "N"), (m, "M")):
            pattern_int(text, str(x), w)
        return self._checked(text, v, n, m)

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        return vnm_mask(s, p)

    def check_mask(self, b: torch.Tensor, p: Pattern, *, group: int, layer: str) -> None:
        bad = vnm_violation(b, p)
        if bad:
            raise MaskError(f"layer {layer!r}: mask breaks {p.label} at {bad}")

    def conforms(self, b: torch.Tensor, p: Pattern) -> bool:
        return not vnm_violation(b, p)

    def ratios(self, p: Pattern) -> tuple[tuple[int, int], ...]:
        return ((p.n, p.m),)

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        rows, cols = f.rows, f.cols
        v, n, m = _clamp(rows, cols, p)
        tail = cols % m
        per_row = (cols // m) * n + min(n, SELECTED, tail)
        nnz = rows * per_row
        bnz = {(r, c): round(f.nblocks(r, c) - vnm_zero_blocks(rows, cols, p, r, c)) for r, c in f.blocks}
        ntiles = f.nblocks(*f.tile)
        zf = vnm_zero_blocks(rows, cols, p, *f.tile) / ntiles if ntiles else 0.0
        hist = [0.0] * len(OCCUPANCY_BINS)
        hist[0] = zf
        if zf < 1:
            hist[bin_of(min(1.0, (nnz / f.size) / (1 - zf)))] += 1 - zf
        # a column is used when its V-block selects it and one of the block's rows keeps it
        p_unused = _q(v, m, 1, n) ** (rows // v) * (_q(rows % v, m, 1, n) if rows % v else 1.0)
        return record(
            f, nnz=nnz, row_max=per_row, row_mean=float(per_row), row_std=0.0,
            conformance={(n2, m2): nm_worst(n, m, cols, m2) <= n2 for n2, m2 in f.ratios}, block_nonzero=bnz,
            hist=hist, kept_rows=rows if per_row else 0, kept_cols=round(cols * (1 - p_unused)))

    def format_size(self, fmt: str, stats: SparsityStats, p: Pattern, value_bytes: float) -> FormatSize:
        if not stats.conforms_to(p):
            raise FormatError(f"format 'vnm': the mask does not conform to {p.label}")
        rows, cols = stats.rows, stats.cols
        v, _, m = _clamp(rows, cols, p)
        groups = [(m, cols // m)] + ([(cols % m, 1)] if cols % m else [])
        stored = sum(cnt * min(STORED, SELECTED, glen) for glen, cnt in groups) * rows
        blocks = -(-rows // v)
        index_bits = max(1, math.ceil(math.log2(m)))
        cols_meta = sum(cnt * min(SELECTED, glen) for glen, cnt in groups) * blocks * index_bits
        return size_of(stored * value_bytes, (stored * POSITION_BITS + cols_meta) / 8)


register_kind(VNM())
