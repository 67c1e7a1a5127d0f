"""Storage formats and their exact byte counts, metadata included.

A format says how the kept values are stored; its metadata is what a kernel reads besides the
values (indices, pointers, bitmaps). Counts follow the layouts the libraries use:

- dense:  rows*cols values (for channel pruning: the smaller kept_rows x kept_cols matrix)
- bitmap: nnz values + one bit per element (rows*cols bits, rounded up to bytes)
- csr:    nnz values + nnz column indices + (rows+1) row pointers (torch/cuSPARSE CSR)
- coo:    nnz values + nnz (row, col) index pairs (torch COO: a 2 x nnz index tensor)
- bsr:    nonzero-blocks * r*c values + one column index per block + (block rows + 1) pointers;
          edge blocks are zero-padded to full r x c
- nm:     exactly N values per group of M along K (zeros stored when a group keeps fewer) +
          ceil(log2 M) bits of position per stored value, as in Mishra et al. 2021
          ("Accelerating Sparse Deep Neural Networks": 2 bits per kept fp16 value for 2:4,
          i.e. 12.5 % of the value bytes)

Index and pointer widths default to 4 bytes (int32, as cuSPARSE uses); torch defaults to
int64, so pass index_bytes=8, pointer_bytes=8 to match torch's own sparse tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsesim.core.errors import SparsesimError
from sparsesim.sparsity.records import Pattern, SparsityStats

FORMATS = ("dense", "bitmap", "csr", "coo", "bsr", "nm")
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


def default_format(pattern: Pattern) -> str:
    """The format a kernel for `pattern` would normally read."""
    return {"dense": "dense", "unstructured": "csr", "nm": "nm", "block": "bsr", "channel": "dense"}[pattern.kind]


def _size(values: float, metadata: float) -> FormatSize:
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
        if pattern is not None and pattern.kind == "channel":
            return _size(stats.kept_rows * stats.kept_cols * value_bytes, 0)
        return _size(rows * cols * value_bytes, 0)
    if fmt == "bitmap":
        return _size(nnz * value_bytes, math.ceil(rows * cols / 8))
    if fmt == "csr":
        return _size(nnz * value_bytes, nnz * index_bytes + (rows + 1) * pointer_bytes)
    if fmt == "coo":
        return _size(nnz * value_bytes, 2 * nnz * index_bytes)
    if fmt == "bsr":
        rc = block or (pattern.block if pattern is not None and pattern.kind == "block" else None)
        if rc is None:
            raise FormatError("format 'bsr' needs a block size: a block pattern or block=(r, c)")
        nb = stats.nonzero_blocks(*rc)
        if nb is None:
            raise FormatError(f"format 'bsr': stats hold no count of {rc[0]}x{rc[1]} blocks")
        block_rows = -(-rows // rc[0])
        return _size(nb * rc[0] * rc[1] * value_bytes, nb * index_bytes + (block_rows + 1) * pointer_bytes)
    if fmt == "nm":
        if pattern is None or pattern.kind != "nm":
            raise FormatError(f"format 'nm' needs an N:M pattern, got {pattern.label if pattern else None!r}")
        n, m = pattern.n, pattern.m
        if not stats.conforms_nm(n, m):
            raise FormatError(f"format 'nm': the mask does not conform to {n}:{m}")
        stored = rows * ((cols // m) * n + min(n, cols % m))
        bits = max(1, math.ceil(math.log2(m)))
        return _size(stored * value_bytes, math.ceil(stored * bits / 8))
    raise FormatError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def storage_format(pattern: Pattern, stats: SparsityStats, *, value_bytes: float) -> str:
    """The format a weight is stored in: `default_format`, except that unstructured weights
    stay dense when CSR would be larger (e.g. 30 % sparsity in fp16, or stray zeros)."""
    fmt = default_format(pattern)
    if fmt == "csr":
        dense = format_bytes("dense", stats, value_bytes=value_bytes, pattern=pattern).total
        if format_bytes("csr", stats, value_bytes=value_bytes, pattern=pattern).total >= dense:
            return "dense"
    return fmt
