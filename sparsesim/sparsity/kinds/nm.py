"""N:M — at most N of every M consecutive weights along K (the reduction dimension), as sparse
tensor cores require (2:4 on NVIDIA Ampere and later, Mishra et al. 2021, arXiv 2104.08378).

Masks keep exactly N of every full group of M and min(N, len) of a shorter tail group; a group
longer than the row is the row itself. Analytic stats: exactly N per full group with uniformly
placed kept positions. Stored in the `nm` format: exactly N values per group of M (zeros stored
when a group keeps fewer) plus ceil(log2 M) bits of position per stored value (2 bits per kept
fp16 value for 2:4, i.e. 12.5 % of the value bytes, as in Mishra et al. 2021).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
from sparsesim.sparsity.records import OCCUPANCY_BINS, Pattern, SparsityStats
from sparsesim.sparsity.stats import bin_of, nm_group_max, pad_to, record, sizes

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

# two numbers (anything without letters, so a misspelt kind name is not mistaken for N:M)
_SPELLING = re.compile(r"([^:a-z]+):([^:a-z]+)", re.ASCII)
# largest M for which N:M masks rank slots pairwise instead of calling topk (cost grows as M^2)
_RANK_MAX_M = 8
# the worst-case group count of an analytic N:M mask is found exactly by walking one period of
# the two group grids when that takes at most this many windows; beyond it a safe upper bound
# is used (conformance is then only claimed where it is guaranteed anyway)
_WORST_WALK_MAX = 4096
# block columns summed exactly in analytic block counts; longer runs are sampled evenly
_SUM_POINTS = 1024
# overlaps up to this many slots get an exact product of probabilities, longer ones log-gamma
_EXACT_OVERLAP = 64


def nm_mask(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool rows x K mask keeping the n highest scores of every aligned group of m along K."""
    rows, k = s.shape
    m = max(1, min(m, k))  # a group longer than the row is the row: pad nothing beyond K
    n = min(n, m)
    if n >= m:
        return torch.ones(s.shape, dtype=torch.bool)
    pad = (-k) % m
    if pad:
        # padding scores are -inf: a short tail group never keeps a padding slot over a real one,
        # and padding slots are cut off afterwards, so the tail keeps at most min(n, len) weights
        s = torch.nn.functional.pad(s, (0, pad), value=float("-inf"))
    g = s.reshape(rows, -1, m)
    if m > _RANK_MAX_M:
        out = torch.zeros_like(g, dtype=torch.bool)
        out.scatter_(-1, g.topk(n, dim=-1).indices, True)
        return out.reshape(rows, -1)[:, :k]
    # small M: rank each slot against the others (ties go to the lower index); m*(m-1)
    # comparisons beat topk over a trailing dimension of 4 or 8 by ~2x. The slots are read as
    # strided views and every result lands in a buffer allocated once: a permuted copy of the
    # scores and fresh weight-sized temporaries cost more (page faults) than the comparisons
    keep = torch.empty(g.shape, dtype=torch.bool)
    rank = torch.empty(g.shape[:2], dtype=torch.uint8)
    beats = torch.empty(g.shape[:2], dtype=torch.bool)
    for i in range(m):
        rank.zero_()
        for j in range(m):
            if j != i:
                (torch.gt if j > i else torch.ge)(g[..., j], g[..., i], out=beats)
                rank.add_(beats)
        torch.lt(rank, n, out=keep[..., i])
    return keep.reshape(rows, -1)[:, :k]


def check_nm(b: torch.Tensor, n: int, m: int, layer: str) -> None:
    """MaskError at the first aligned group of m along K holding more than n nonzeros."""
    rows, k = b.shape
    if nm_group_max(b, m) <= n:  # the usual answer, without a float copy of the mask
        return
    m = max(1, min(m, k))
    pad = (-k) % m
    # float sums: vectorised and exact for counts this small
    counts = pad_to(b.float(), pad).reshape(rows, -1, m).sum(-1)
    bad = (counts > n).nonzero()
    if bad.numel():
        r, g = (int(v) for v in bad[0])
        raise MaskError(
            f"layer {layer!r}: mask breaks {n}:{m} at row {r}, group {g} (columns {g * m}-"
            f"{min(k, (g + 1) * m) - 1}) with {int(counts[r, g])} nonzeros > {n}")


def nm_worst(n_have: int, m_have: int, k: int, m: int) -> int:
    """Largest count in an aligned group of m along K when each aligned group of m_have holds n_have."""
    m_have = max(1, min(m_have, k))
    period = math.lcm(m, m_have)
    if min(k, period) // m > _WORST_WALK_MAX:
        # an aligned group of m overlaps at most ceil(m / m_have) + 1 groups of m_have
        return min(m, k, (-(-m // m_have) + 1) * n_have)
    worst = 0
    for start in range(0, min(k, period), m):
        end = min(start + m, k)
        cnt = 0
        g = start // m_have
        while g * m_have < end:
            lo, hi = max(start, g * m_have), min(end, (g + 1) * m_have)
            glen = min(k, (g + 1) * m_have) - g * m_have
            cnt += min(n_have, hi - lo, glen)
            g += 1
        worst = max(worst, cnt)
    return worst


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _none_kept(glen: int, keep: int, ov: int) -> float:
    """P(none of `ov` given slots of a group of `glen` is among `keep` kept uniformly at random)
    = C(glen - ov, keep) / C(glen, keep): an exact product for short overlaps, log-gamma beyond."""
    if glen - ov < keep:
        return 0.0
    if ov <= _EXACT_OVERLAP:
        p = 1.0
        for i in range(ov):
            p *= (glen - keep - i) / (glen - i)
        return p
    return math.exp(_log_comb(glen - ov, keep) - _log_comb(glen, keep))


def _row_zero_prob(k: int, n: int, m: int, lo: int, hi: int) -> float:
    """P(columns [lo, hi) of one row are all zero) when each group of m keeps n uniformly at random."""
    p = 1.0
    g = lo // m
    while g * m < hi and p > 0.0:
        glen = min(k, (g + 1) * m) - g * m
        ov = min(hi, (g + 1) * m) - max(lo, g * m)
        p *= _none_kept(glen, min(n, glen), ov)
        g += 1
    return p


def _sum_range(fn: Callable[[int], float], lo: int, hi: int) -> float:
    """fn(lo) + ... + fn(hi - 1), sampled at _SUM_POINTS evenly spaced j when the range is longer."""
    if hi - lo <= _SUM_POINTS:
        return sum(fn(j) for j in range(lo, hi))
    js = [lo + (hi - lo) * i // _SUM_POINTS for i in range(_SUM_POINTS)]
    return (hi - lo) * sum(fn(j) for j in js) / len(js)


def nm_block_zero(rows: int, k: int, n: int, m: int, r: int, c: int) -> float:
    """Expected number of all-zero r x c blocks of an n:m mask with uniformly placed kept weights.

    Away from the row's end the block columns repeat with period lcm(c, m) / c, so one period is
    evaluated and multiplied out; very long periods and tails are sampled. The cost does not
    grow with K."""
    m = max(1, min(m, k))  # a group longer than the row is the row
    col_blocks = -(-k // c)

    def block_col(j: int) -> float:
        q = _row_zero_prob(k, n, m, j * c, min(k, (j + 1) * c))
        return sum(cnt * q ** h for h, cnt in sizes(rows, r))

    # columns j < body end before the last group of the row starts (that group may be short)
    body = min(col_blocks, max(0, (k - m) // c - 1))
    period = math.lcm(c, m) // c
    reps, rest = divmod(body, period)
    if reps:
        total = reps * _sum_range(block_col, 0, period) + _sum_range(block_col, 0, rest)
    else:
        total = _sum_range(block_col, 0, body)
    return total + _sum_range(block_col, body, col_blocks)


class NM(PatternKind):
    name = "nm"
    grammar = "N:M (0 < N < M)"
    order = 1
    default_format = "nm"
    formats = ("nm",)
    skips_zeros = True
    row_local = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        if mt is None:
            return None
        n, m = pattern_int(text, mt.group(1), "N"), pattern_int(text, mt.group(2), "M")
        if not (0 < n < m):
            raise PatternError(f"pattern {text!r}: N:M needs 0 < N < M")
        return self.make(n=n, m=m)

    def label(self, p: Pattern) -> str:
        return f"{p.n}:{p.m}"

    def make(self, density: float = 0.0, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise PatternError(f"pattern '{n}:{m}': need whole numbers 0 < N < M")
        pattern_int(f"{n}:{m}", str(m), "M")
        return Pattern(self.name, round(n / m, DENSITY_DECIMALS), n=n, m=m)

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        return nm_mask(s, p.n, p.m)

    def check_mask(self, b: torch.Tensor, p: Pattern, *, group: int, layer: str) -> None:
        check_nm(b, p.n, p.m, layer)

    def conforms(self, b: torch.Tensor, p: Pattern) -> bool:
        return nm_group_max(b, p.m) <= p.n

    def ratios(self, p: Pattern) -> tuple[tuple[int, int], ...]:
        return ((p.n, p.m),)

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        rows, cols, n, m = f.rows, f.cols, p.n, p.m
        per_row = (cols // m) * n + min(n, cols % m)
        nnz = rows * per_row
        bnz = {(r, c): round(f.nblocks(r, c) - nm_block_zero(rows, cols, n, m, r, c)) for r, c in f.blocks}
        ntiles = f.nblocks(*f.tile)
        zf = nm_block_zero(rows, cols, n, m, *f.tile) / ntiles if ntiles else 0.0
        hist = [0.0] * len(OCCUPANCY_BINS)
        hist[0] = zf
        if zf < 1:
            hist[bin_of(min(1.0, (nnz / f.size) / (1 - zf)))] += 1 - zf
        return record(
            f, nnz=nnz, row_max=per_row, row_mean=float(per_row), row_std=0.0,
            conformance={(n2, m2): nm_worst(n, m, cols, m2) <= n2 for n2, m2 in f.ratios}, block_nonzero=bnz,
            hist=hist, kept_rows=rows if per_row else 0,
            kept_cols=round(cols * (1 - ((m - n) / m) ** rows)) if cols >= m else cols)

    def format_size(self, fmt: str, stats: SparsityStats, p: Pattern, value_bytes: float) -> FormatSize:
        if not stats.conforms_nm(p.n, p.m):
            raise FormatError(f"format 'nm': the mask does not conform to {p.n}:{p.m}")
        n, m, rows, cols = p.n, p.m, stats.rows, stats.cols
        stored = rows * ((cols // m) * n + min(n, cols % m))
        bits = max(1, math.ceil(math.log2(m)))
        return size_of(stored * value_bytes, stored * bits / 8)


register_kind(NM())
