"""Records for sparsity: which zeros are allowed (Pattern), what a real mask looks like
(SparsityStats), and a traced workload annotated with both (SparseWorkload).

Pattern, Format and Stats are separate on purpose: a pattern says which zeros are allowed,
a format how nonzeros are stored, stats what a measured (or analytic) mask looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sparsesim.core.errors import PlanError
from sparsesim.core.ir import Op, Workload

if TYPE_CHECKING:
    from sparsesim.sparsity.kinds.base import PatternKind

# the pattern kind registry, name -> PatternKind; filled by sparsesim.sparsity.kinds on import
KINDS: dict[str, PatternKind] = {}


@dataclass(frozen=True)
class Pattern:
    """Which zeros are allowed. `density` is the fraction of weights kept (1 - sparsity).

    Spelled in plans and on the command line as `dense`, `2:4` (any `N:M`), `unstructured:0.9`,
    `block4x4:0.5`, `channel:0.5` and `64:2:8` (V:N:M), where the number after a kind name is
    the *sparsity* (fraction removed). `kind` names a registered `PatternKind` (`spec`), which
    knows the grammar, masks, stats and formats of the kind; `block` is the block shape for
    block patterns and the V x M block sharing a column selection for V:N:M.
    """

    kind: str
    density: float = 1.0
    n: int = 0
    m: int = 0
    block: tuple[int, int] = (1, 1)
    # kept fraction of the input activations of the op the weight belongs to (1.0 = none
    # removed): activation sparsity, `act:S` alone or `P+act:S` on top of a weight pattern
    act: float = 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def spec(self) -> PatternKind:
        """The registered kind: grammar, masks, stats, formats and facts such as `shrinks_op`."""
        try:
            return KINDS[self.kind]
        except KeyError:
            raise PlanError(f"pattern kind {self.kind!r} is not one of {', '.join(KINDS)}") from None

    @property
    def label(self) -> str:
        base = self.spec.label(self)
        if self.act < 1.0 and not self.spec.activation_only:
            return f"{base}+act:{1.0 - self.act:g}"
        return base

    def __str__(self) -> str:
        return self.label


DENSE = Pattern("dense", 1.0)


@dataclass(frozen=True)
class SparsityStats:
    """What a mask looks like, measured from a real 0/1 mask or drawn from an analytic model.

    The mask is viewed as the rows x cols GEMM weight matrix (rows = output features/channels,
    cols = reduction dimension K). N:M groups run along cols.
    """

    rows: int
    cols: int
    nnz: int
    # (n, m) for each N:M ratio checked and whether every group of m along K has <= n nonzeros
    nm_conformance: tuple[tuple[tuple[int, int], bool], ...]
    row_nnz_max: int
    row_nnz_mean: float
    row_nnz_std: float
    # ((r, c), nonzero blocks) for standard block sizes and the pattern's own block
    block_nonzero: tuple[tuple[tuple[int, int], int], ...]
    tile: tuple[int, int]
    # fraction of tiles whose occupancy (nonzero fraction) falls into each of OCCUPANCY_BINS
    occupancy_hist: tuple[float, ...]
    zero_tile_fraction: float
    kept_rows: int
    kept_cols: int
    analytic: bool = False
    # (pattern label, whether the mask has that pattern's structure) for the pattern the stats
    # were measured against (analytic stats conform by construction)
    pattern_conformance: tuple[tuple[str, bool], ...] = ()

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 1.0

    @property
    def imbalance(self) -> float:
        """Busiest row over the average row (1.0 = perfectly balanced)."""
        return self.row_nnz_max / self.row_nnz_mean if self.row_nnz_mean > 0 else 1.0

    def conforms_nm(self, n: int, m: int) -> bool:
        return dict(self.nm_conformance).get((n, m), False)

    def conforms_to(self, pattern: Pattern) -> bool:
        """Whether the mask was found to have `pattern`'s structure (False if never checked)."""
        return dict(self.pattern_conformance).get(pattern.label, False)

    def nonzero_blocks(self, r: int, c: int) -> int | None:
        """Number of r x c blocks holding at least one nonzero, if it was measured."""
        return dict(self.block_nonzero).get((r, c))


# occupancy bin upper edges for SparsityStats.occupancy_hist: exactly 0, (0, .25], ..., (.75, 1]
OCCUPANCY_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class LayerSparsity:
    """One weight's sparsity: its pattern, measured stats and storage format with exact bytes.

    `format_bytes` = `value_bytes` (the stored values) + `metadata_bytes` (indices, pointers,
    bitmaps), all in bytes for the whole weight, as `sparsesim.sparsity.formats.format_bytes` counts them.
    """

    weight: str
    pattern: Pattern
    stats: SparsityStats
    format: str
    format_bytes: int
    value_bytes: int
    metadata_bytes: int


@dataclass(frozen=True)
class SparseWorkload:
    """A workload whose weight ops carry the sparsity a plan gave them.

    `workload` holds the ops as the plan leaves them (channel pruning shrinks them, see
    `sparsesim.sparsity.shrink`); `dense` is the traced workload they came from (the same
    object when nothing was shrunk, or None when not given).
    """

    workload: Workload
    plan_name: str
    layers: Mapping[str, LayerSparsity] = field(default_factory=dict)
    dense: Workload | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.workload.ops

    def sparsity_of(self, op: Op) -> LayerSparsity | None:
        return self.layers.get(op.weight) if op.weight else None
