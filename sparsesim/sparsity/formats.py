"""Storage formats and their exact byte counts, metadata included.

A format says how the kept values are stored; its metadata is what a kernel reads besides the
values (indices, pointers, bitmaps). Counts follow the layouts the libraries use:

- dense:  rows*cols values (for channel pruning: the smaller kept_rows x kept_cols matrix)
- bitmap: nnz values + one bit per element (rows*cols bits, rounded up to bytes)
- csr:    nnz values + nnz column indices + (rows+1) row pointers (torch/cuSPARSE CSR)
- coo:    nnz values + nnz (row, col) index pairs (torch COO: a 2 x nnz index tensor)
- bsr:    nonzero-blocks * r*c values + one column index per block + (block rows + 1) pointers;
          edge blocks are zero-padded to full r x c

A pattern kind may own a format of its own (`nm` for N:M, `vnm` for V:N:M); its layout and
byte count live in the kind's module (`sparsesim.sparsity.kinds`), and `format_bytes` asks it.

Index and pointer widths default to 4 bytes (int32, as cuSPARSE uses); torch defaults to
int64, so pass index_bytes=8, pointer_bytes=8 to match torch's own sparse tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsesim.core.errors import SparsesimError
from sparsesim.sparsity.records import KINDS, Pattern, SparsityStats

# formats any mask can be stored in; kinds add their own (`PatternKind.formats`)
GENERIC_FORMATS = ("dense", "bitmap", "csr", "coo", "bsr")
# int32 indices and pointers: cuSPARSE's CSR/COO/BSR default index type
DEFAULT_INDEX_BYTES = 4
DEFAULT_POINTER_BYTES = 4


class FormatError(SparsesimError, ValueError):
    """A format cannot store a mask (unknown format, missing block size, non-conforming N:M)."""


@dataclass(frozen=True)
class FormatSize:
    """Bytes of one stored weight: values, metadata (indices/pointers/bitmaps) and their sum."""

    values: int
    metadata: int
    total: int


def formats() -> tuple[str, ...]:
    """Every format: the generic ones, then those the registered pattern kinds own."""
    return GENERIC_FORMATS + tuple(f for k in KINDS.values() for f in k.formats)


def default_format(pattern: Pattern) -> str:
    """The format a kernel for `pattern` would normally read."""
    return pattern.spec.default_format


def size_of(values: float, metadata: float) -> FormatSize:
    """A FormatSize from (possibly fractional) value and metadata bytes, each rounded up."""
    v, m = math.ceil(values), math.ceil(metadata)
    return FormatSize(v, m, v + m)


def format_bytes(fmt: str, stats: SparsityStats, *, value_bytes: float, pattern: Pattern | None = None,
                 index_bytes: int = DEFAULT_INDEX_BYTES, pointer_bytes: int = DEFAULT_POINTER_BYTES,
                 block: tuple[int, int] | None = None) -> FormatSize:
    """Exact bytes of a rows x cols weight stored in `fmt` (see module doc for each layout).

    `block` is the BSR block (defaults to the pattern's block); it must be one `stats` measured.
    """
    rows, cols, nnz = stats.rows, stats.cols, stats.nnz
    if fmt == "dense":
        if pattern is not None and pattern.spec.shrinks_op:
            return size_of(stats.kept_rows * stats.kept_cols * value_bytes, 0)
        return size_of(rows * cols * value_bytes, 0)
    if fmt == "bitmap":
        return size_of(nnz * value_bytes, math.ceil(rows * cols / 8))
    if fmt == "csr":
        return size_of(nnz * value_bytes, nnz * index_bytes + (rows + 1) * pointer_bytes)
    if fmt == "coo":
        return size_of(nnz * value_bytes, 2 * nnz * index_bytes)
    if fmt == "bsr":
        rc = block or (pattern.spec.bsr_block(pattern) if pattern is not None else None)
        if rc is None:
            raise FormatError("format 'bsr' needs a block size: a block pattern or block=(r, c)")
        nb = stats.nonzero_blocks(*rc)
        if nb is None:
            raise FormatError(f"format 'bsr': stats hold no count of {rc[0]}x{rc[1]} blocks")
        # a block side longer than the matrix is stored at the matrix's extent
        r, c = min(rc[0], max(rows, 1)), min(rc[1], max(cols, 1))
        block_rows = -(-rows // r)
        return size_of(nb * r * c * value_bytes, nb * index_bytes + (block_rows + 1) * pointer_bytes)
    owner = next((k for k in KINDS.values() if fmt in k.formats), None)
    if owner is None:
        raise FormatError(f"format {fmt!r} is not one of {', '.join(formats())}")
    if pattern is None or pattern.spec is not owner:
        got = pattern.label if pattern is not None else None
        raise FormatError(f"format {fmt!r} needs a {owner.name} pattern ({owner.grammar}), got {got!r}")
    return owner.format_size(fmt, stats, pattern, value_bytes)


def storage_format(pattern: Pattern, stats: SparsityStats, *, value_bytes: float) -> str:
    """The format a weight is stored in, as its kind chooses (e.g. unstructured weights stay
    dense when CSR would be larger: 30 % sparsity in fp16, or stray zeros)."""
    return pattern.spec.storage_format(pattern, stats, value_bytes)
