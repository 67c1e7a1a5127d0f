"""What a pattern kind supplies, in one module per kind: its grammar (parse and label), its mask
builder and checker, its analytic stats, its storage format, and the facts other stages ask
about it (does it shrink the op, can a zero-skipping engine skip its zeros).

Stages never compare `pattern.kind` with strings: they ask `pattern.spec` (the registered
`PatternKind`), so a new pattern is one new module here plus the cost rules of the families
that exploit it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from sparsesim.core.errors import PlanError
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.records import KINDS, Pattern

if TYPE_CHECKING:
    import torch

    from sparsesim.sparsity.formats import FormatSize
    from sparsesim.sparsity.records import SparsityStats
else:
    torch = lazy_module("torch")

# Largest integer a pattern may carry (N, M, V, block sides): int32, the index type of every
# sparse kernel library (cuSPARSE, cuSPARSELt, torch's sparse kernels), so no kernel can address
# a larger group. Bounding it at parse time keeps overflow out of every later product.
MAX_PATTERN_INT = 2**31 - 1
# rounding applied to 1 - sparsity so that label -> parse -> label is stable
DENSITY_DECIMALS = 12
# a sparsity number: plain ASCII decimal, optional exponent (no nan/inf/hex/Unicode digits)
_NUMBER = re.compile(r"[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?", re.ASCII)


class PatternError(PlanError, ValueError):
    """A pattern spelling that is not in the grammar (also a ValueError, for argparse)."""


def pattern_int(text: str, raw: str, what: str) -> int:
    """An ASCII integer of a pattern spelling, bounded by MAX_PATTERN_INT."""
    if not raw.isascii() or not raw.isdigit():
        raise PatternError(f"pattern {text!r}: {what} {raw!r} is not a whole number")
    if len(raw) > len(str(MAX_PATTERN_INT)) or int(raw) > MAX_PATTERN_INT:
        raise PatternError(f"pattern {text!r}: {what} {raw[:12]}{'...' if len(raw) > 12 else ''} "
                           f"exceeds {MAX_PATTERN_INT} (the int32 index range of sparse kernels)")
    return int(raw)


def sparsity_number(text: str, raw: str) -> float:
    """The sparsity (fraction removed) of a spelling, in [0, 1)."""
    if not _NUMBER.fullmatch(raw):
        raise PatternError(f"pattern {text!r}: sparsity {raw!r} is not a number like 0.5; expected {grammar()}")
    s = float(raw)
    if not (0.0 <= s < 1.0):
        raise PatternError(f"pattern {text!r}: sparsity {s:g} must be in [0, 1) (it is the fraction removed)")
    return s


def density_of(sparsity: float) -> float:
    return round(1.0 - sparsity, DENSITY_DECIMALS)


def check_density(kind: str, density: float) -> float:
    if not isinstance(density, (int, float)) or not (0.0 < density <= 1.0):
        raise PatternError(f"pattern {kind}: density {density!r} must be in (0, 1]")
    return round(float(density), DENSITY_DECIMALS)


@dataclass(frozen=True)
class Frame:
    """The weight an analytic stats record describes, and what every record reports besides
    the pattern's own figures: the N:M ratios checked and the block sizes counted."""

    rows: int
    cols: int
    tile: tuple[int, int]
    group: int
    kept_cols: int | None
    ratios: tuple[tuple[int, int], ...]
    blocks: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def nblocks(self, r: int, c: int) -> int:
        return -(-self.rows // r) * -(-self.cols // c)


class PatternKind:
    """One pattern kind. Subclasses set the class facts and override what applies to them.

    Mask builders and checkers work on the rows x K matrix view (`masks.matrix_view`) and are
    pure functions of (scores, pattern): no state, no I/O, vectorised.
    """

    name: ClassVar[str]
    grammar: ClassVar[str]
    # position in the printed grammar (spellings never overlap, so parsing needs no order)
    order: ClassVar[int] = 100
    # the format a kernel for this kind normally reads (a generic format or one in `formats`)
    default_format: ClassVar[str]
    # storage formats this kind owns (their byte counts live in the kind's module)
    formats: ClassVar[tuple[str, ...]] = ()
    is_dense: ClassVar[bool] = False
    # channel/neuron/head pruning: a smaller dense op, not a sparse matrix
    shrinks_op: ClassVar[bool] = False
    # a zero-skipping engine (FPGA PEs, S4 lanes) can skip this pattern's weight zeros
    skips_zeros: ClassVar[bool] = False
    # masks are built and checked in units of `group` rows (whole attention heads)
    uses_group: ClassVar[bool] = False
    # a row's mask depends on that row's scores alone, so masks may be built a band of rows at
    # a time (no weight-sized score tensor)
    row_local: ClassVar[bool] = False
    # scores are read only through their squares (block and row energies), so magnitude scores
    # may be handed over as the signed weight itself: no weight-sized |W| is made
    squares_scores: ClassVar[bool] = False
    # activation sparsity alone (`act:S`): the weight stays dense, the op's inputs are sparse
    activation_only: ClassVar[bool] = False
    # a kernel can compute a product at this pattern's kept positions only (an SDDMM writing the
    # sparse weight gradient): index-based formats can; N:M sparse tensor cores take a sparse
    # input, never write a sparse output
    sparse_output: ClassVar[bool] = False

    # -- grammar --------------------------------------------------------------------------
    def parse(self, text: str) -> Pattern | None:
        """The pattern `text` spells (lower-cased, stripped), None when it is not this kind's
        spelling, PatternError when it is but its numbers are out of range."""
        raise NotImplementedError

    def label(self, p: Pattern) -> str:
        return f"{p.kind}:{p.sparsity:g}"

    def make(self, density: float, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        """A validated pattern from parts (what a search uses instead of a string)."""
        return Pattern(self.name, check_density(self.name, density))

    # -- masks ----------------------------------------------------------------------------
    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        """A bool rows x K mask keeping the highest scores `s` (rows x K float) the pattern allows."""
        raise NotImplementedError

    def check_mask(self, b: torch.Tensor, p: Pattern, *, group: int, layer: str) -> None:
        """Raise MaskError naming `layer` and the first violation of the pattern's structure."""

    def conforms(self, b: torch.Tensor, p: Pattern) -> bool:
        """Whether a bool rows x K mask has the pattern's structure (for measured stats)."""
        return True

    # -- stats ----------------------------------------------------------------------------
    def ratios(self, p: Pattern) -> tuple[tuple[int, int], ...]:
        """N:M ratios stats should check besides the standard ones."""
        return ()

    def blocks(self, p: Pattern) -> tuple[tuple[int, int], ...]:
        """Block sizes stats should count besides the standard ones."""
        return ()

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        """Stats a mask of `p` would have on an f.rows x f.cols weight when only its density is known."""
        raise NotImplementedError

    # -- storage --------------------------------------------------------------------------
    def bsr_block(self, p: Pattern) -> tuple[int, int] | None:
        """The block a BSR format of this pattern uses, if it has one."""
        return None

    def format_size(self, fmt: str, stats: SparsityStats, p: Pattern, value_bytes: float) -> FormatSize:
        """Bytes of an owned format (one of `formats`)."""
        raise NotImplementedError

    def storage_format(self, p: Pattern, stats: SparsityStats, value_bytes: float) -> str:
        """The format a weight of this pattern is stored in."""
        return self.default_format


def register_kind(kind: PatternKind) -> PatternKind:
    """Add a kind to the registry; parse_pattern tries kinds in registration order."""
    if kind.name in KINDS:
        raise ValueError(f"pattern kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    return kind


def grammar() -> str:
    kinds = sorted(KINDS.values(), key=lambda k: (k.order, k.name))
    return " | ".join(k.grammar for k in kinds) + "  (S = sparsity in [0, 1))"
