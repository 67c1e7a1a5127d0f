"""Dense cycle count of a systolic PE array: SCALE-Sim's closed form, nothing else.

A GEMM C[M,N] = A[M,K] @ W[K,N] on an R x C array is cut into folds (one array-sized tile of the
stationary operand each); a fold fills the array, streams the moving operand through and drains.
SCALE-Sim v3 in its stall-free mode counts exactly (peers.md, checked on every layer it ran):

    dataflow             folds                  cycles per fold
    output stationary    ceil(M/R) * ceil(N/C)  R + C + K - 2
    weight stationary    ceil(K/R) * ceil(N/C)  2R + C + M - 2
    input stationary     ceil(K/R) * ceil(M/C)  2R + C + N - 2

    total = folds * cycles per fold - 1

Zero skipping, memory stalls and overheads are the FPGA family's business (sparsesim/cost/fpga.py);
this module is the pure dense model so it can be checked against SCALE-Sim cycle for cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

DATAFLOWS = ("output_stationary", "weight_stationary", "input_stationary")
# the short spellings SCALE-Sim's config files use
DATAFLOW_ALIASES = {"os": "output_stationary", "ws": "weight_stationary", "is": "input_stationary"}


@dataclass(frozen=True)
class SystolicCycles:
    """Cycle count of one GEMM on one array, with the pieces that produced it.

    `fold_rows`/`fold_cols` are the two fold counts (their product is `folds`); `stream` is the
    length of the operand streamed through each fold (K for OS, M for WS, N for IS), the part of
    a fold's cycles that zero-skipping can shorten; `fill_drain` is the rest of the fold.
    """

    dataflow: str
    rows: int
    cols: int
    folds: int
    fold_rows: int
    fold_cols: int
    cycles_per_fold: int
    stream: int
    fill_drain: int
    repeats: int
    macs: int

    @property
    def cycles(self) -> int:
        """Total cycles of all repeats: the folds run back to back, so the closing -1 counts once."""
        return self.repeats * self.folds * self.cycles_per_fold - 1

    @property
    def utilization(self) -> float:
        """Useful MACs over PE-cycles (SCALE-Sim's definition)."""
        return self.macs / (self.cycles * self.rows * self.cols) if self.cycles > 0 else 0.0


def normalize_dataflow(dataflow: str) -> str:
    """Accept `output_stationary`/`os` spellings; raise ValueError naming the bad value."""
    d = DATAFLOW_ALIASES.get(dataflow, dataflow)
    if d not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r} (use one of {', '.join(DATAFLOWS)} or os/ws/is)")
    return d


def fold_geometry(m: int, n: int, k: int, rows: int, cols: int, dataflow: str) -> tuple[int, int, int, int]:
    """(fold_rows, fold_cols, stream length, fill+drain cycles) of one GEMM under `dataflow`."""
    d = normalize_dataflow(dataflow)
    if d == "output_stationary":
        return ceil(m / rows), ceil(n / cols), k, rows + cols - 2
    if d == "weight_stationary":
        return ceil(k / rows), ceil(n / cols), m, 2 * rows + cols - 2
    return ceil(k / rows), ceil(m / cols), n, 2 * rows + cols - 2


def gemm_cycles(
    m: int, n: int, k: int, rows: int, cols: int, dataflow: str, *, repeats: int = 1
) -> SystolicCycles:
    """Stall-free cycles of `repeats` independent M x N x K GEMMs on a rows x cols array."""
    for label, v in (("M", m), ("N", n), ("K", k), ("rows", rows), ("cols", cols), ("repeats", repeats)):
        if int(v) != v or v < 1:
            raise ValueError(f"systolic GEMM: {label} must be a positive integer, got {v!r}")
    d = normalize_dataflow(dataflow)
    fr, fc, stream, fill = fold_geometry(m, n, k, rows, cols, d)
    return SystolicCycles(
        dataflow=d,
        rows=rows,
        cols=cols,
        folds=fr * fc,
        fold_rows=fr,
        fold_cols=fc,
        cycles_per_fold=stream + fill,
        stream=stream,
        fill_drain=fill,
        repeats=repeats,
        macs=m * n * k * repeats,
    )


def conv_output_size(size: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1) -> int:
    """PyTorch's output size of one spatial dimension (floor division)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_gemm(
    in_h: int, in_w: int, kernel_h: int, kernel_w: int, channels: int, filters: int, stride: int,
    padding: int = 0, batch: int = 1,
) -> tuple[int, int, int]:
    """Implicit-GEMM (M, N, K) of a dense ungrouped convolution: M = batch x output pixels,
    N = filters, K = channels x kernel area."""
    oh = conv_output_size(in_h, kernel_h, stride, padding)
    ow = conv_output_size(in_w, kernel_w, stride, padding)
    return batch * oh * ow, filters, channels * kernel_h * kernel_w
