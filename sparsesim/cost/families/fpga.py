"""FPGA family: a systolic PE array of DSP slices with zero-skipping PEs, an on-chip buffer and
off-chip DRAM.

How a sparse layer runs here, and why it is costed this way:

* Dense cycles are SCALE-Sim's closed form (`systolic.gemm_cycles`): convolutions as implicit
  GEMMs, batch x groups as repeated GEMMs, attention as its two GEMMs back to back.
* The array is built for one `design_dtype`; an op of another dtype runs on the same DSP budget,
  so the array keeps its rows and loses columns in proportion to the DSPs one MAC needs
  (DSP packing: two int8 MACs share one DSP48E2, an fp32 MAC needs several).
* Weight-zero skipping. In an output-stationary array each PE column holds one weight row
  (one output channel) and streams its K reduction; a skipping PE streams only that row's
  nonzeros, but the array moves in lockstep, so a fold lasts as long as its *busiest* column.
  In a weight-stationary array the design packs each column's nonzeros into fewer array rows
  (column packing), so the K-folds of a column tile shrink to the busiest column's nonzeros.
  Either way the latency scales with the busiest row, not the mean (see `busy_rows`).
* Row-interleaved sparse matrix-vector PEs (EIE/ESE-style, `row_interleaved`): the activation
  vector is broadcast to all rows x cols PEs, weight rows are interleaved over the PEs, and each
  PE works through the nonzeros of its rows one MAC per cycle from its own queue: no systolic
  fill, one activation vector (one row of M) after another. Dense cycles per vector =
  ceil(N / PEs) x K; with skipping, the busiest PE's nonzeros (`busiest_pe`: the sum of its
  rows, spread by the measured per-row deviation, which load-balance-aware pruning removes).
* Activation-zero skipping (output stationary and row-interleaved: there a PE can skip a (weight, activation)
  pair whose activation is zero; in weight-stationary arrays activations flow in lockstep
  through every PE of a row, so a zero cannot shorten the stream).
* Channel pruning is a smaller dense GEMM (`common.gemm_work`).
* On-chip dataflow (`families.dataflow`, shared with the S4 family): activations stay in the
  on-chip buffer between layers and the weights too when the whole model fits; DRAM traffic is
  the weights streamed in (once per micro-batch) and the activations that spill. When an op's
  own weight leaves no room, its operands go through DRAM under a two-level blocking: the
  buffer is split in half, the larger-reuse operand is held in buffer-sized chunks and the
  other is re-read once per chunk (`dataflow.offchip_traffic`). Memory time = bytes / off-chip
  bandwidth; latency = max(compute, memory) + the per-layer setup overhead.
* Elementwise ops fused by the runtime (the `engine` runtime's epilogue fusion) run in the
  array's output stage: no DRAM trip; an op left alone streams its on-chip tensors at
  `onchip_bandwidth`. `Cost.details` exposes compute_s,
  memory_s and overhead_s separately for layer-pipeline simulation.
* Energy: the per-action energies of the device file are standard-cell ASIC figures; the same
  action in FPGA fabric costs `fabric_energy_factor` times as much (LUT routing, DSP slices and
  block RAM built for generality: Kuon & Rose's FPGA-vs-ASIC dynamic-power gap), applied to the
  MAC, its operand reads, on-chip buffer and metadata bytes, not to DRAM. An FPGA design does not
  gate its clock: the array is clocked for the op's whole latency, and every PE cycle without a
  MAC (waiting on the busiest PE, the pipeline fill, DRAM or the per-layer setup) costs
  `gated_fraction` of an executed one (the clock tree and registers keep switching).
  Static power x latency on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.cost.common import (
    EnergyInputs,
    bound_of,
    build_cost,
    check_dtype_table,
    check_flags,
    check_positive,
    check_whole,
    gemm_work,
    run_dtype,
    stored_operand_bytes,
    zero_skipped,
)
from sparsesim.cost.families.dataflow import (
    DataflowParams,
    describe,
    memory_op_on_chip,
    offchip_traffic,
    onchip_traffic,
    samples,
)
from sparsesim.cost.families.systolic import gemm_cycles
from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.cost.registry import register_cost, register_peaks
from sparsesim.hw.devices import Device, quantity, register_family, setting
from sparsesim.sparsity.records import LayerSparsity, SparsityStats

MODEL = "fpga-systolic"
FPGA_DATAFLOWS = ("output_stationary", "weight_stationary", "row_interleaved")
# float slack when rounding a ratio of whole counts (k / rows = 2.0000000001 must give 2 folds)
FLOAT_SLACK = 1e-9


@register_family("fpga")
@dataclass(frozen=True)
class FpgaParams(DataflowParams):
    """Device-file fields of an FPGA PE-array design (SI units after loading); the on-chip
    memory, energy and power block is `DataflowParams`, shared with the S4 family."""

    pe_rows: float = quantity("count")
    pe_cols: float = quantity("count")
    clock: float = quantity("frequency")
    dataflow: str = setting()
    design_dtype: str = setting()
    dsp_per_mac: Mapping[str, float] = quantity("ratio", per_dtype=True)
    dsp_total: float = quantity("count")
    offchip_bandwidth: float = quantity("bandwidth")
    memory_capacity: float = quantity("bytes")  # the off-chip DRAM the model runs from (run.fit)
    skip_weight_zeros: bool = setting()
    skip_activation_zeros: bool = setting()
    layer_overhead: float = quantity("cycles")
    fabric_energy_factor: float = quantity("ratio")  # FPGA over standard-cell ASIC per-action energy

    def validate(self) -> str | None:
        """A problem with the design as one line, or None."""
        for name in ("dataflow", "design_dtype"):
            if not isinstance(getattr(self, name), str):
                return f"field '{name}': must be a name, got {getattr(self, name)!r}"
        if self.dataflow not in FPGA_DATAFLOWS:
            return f"field 'dataflow': {self.dataflow!r} is not one of {', '.join(FPGA_DATAFLOWS)}"
        problem = (check_whole(self, "pe_rows", "pe_cols")
                   or check_positive(self, "clock", "offchip_bandwidth", "fabric_energy_factor")
                   or self.check_dataflow()
                   or check_flags(self, "skip_weight_zeros", "skip_activation_zeros")
                   or check_dtype_table(self, "dsp_per_mac"))
        if problem:
            return problem
        if self.design_dtype not in self.dsp_per_mac:
            return f"field 'design_dtype': {self.design_dtype!r} has no entry in dsp_per_mac"
        need = self.pe_rows * self.pe_cols * self.dsp_per_mac[self.design_dtype]
        if need > self.dsp_total:
            return (f"PE array {self.pe_rows:g}x{self.pe_cols:g} at {self.dsp_per_mac[self.design_dtype]:g} "
                    f"DSP/MAC ({self.design_dtype}) needs {need:g} DSPs but dsp_total is {self.dsp_total:g}")
        return None


def busy_rows(stats: SparsityStats, rows_per_fold: int) -> tuple[float, float]:
    """(nonzeros of the busiest weight row, expected busiest row of any other fold).

    One fold holds the matrix's busiest row (row_nnz_max, measured). For the others the expected
    maximum of `rows_per_fold` rows is interpolated between the mean and the matrix maximum with
    the extreme-value scaling of a normal sample (E[max of n] - mean ~ sqrt(2 ln n)):
    mean + (max - mean) * sqrt(ln rows_per_fold / ln rows). Both terms only fall when zeros
    are added, so more zeros never slow the model down.
    """
    top, mean = float(stats.row_nnz_max), float(stats.row_nnz_mean)
    n = max(1, stats.rows)
    if rows_per_fold >= n or n < 2:
        return top, top
    share = math.sqrt(math.log(max(1, rows_per_fold)) / math.log(n))
    return top, mean + (top - mean) * share


@dataclass(frozen=True)
class _Run:
    """Cycles and on-chip traffic of one dense-shaped GEMM after skipping."""

    cycles: float
    dense_cycles: float
    folds: int
    executed_macs: float
    buffer_bytes: float


def _gemm_run(
    g: GemmShape, rows: int, cols: int, dataflow: str, db: float, *,
    stats: SparsityStats | None, act_density: float,
) -> _Run:
    """One (repeated) GEMM on the array; `stats` set = skip weight zeros, act_density < 1 = skip activations."""
    reps = g.batch * g.groups
    if min(g.m, g.n, g.k, reps) <= 0:
        return _Run(0.0, 0.0, 0, 0.0, 0.0)  # everything pruned away: only the setup overhead remains
    dense = gemm_cycles(g.m, g.n, g.k, rows, cols, dataflow, repeats=reps)
    # bytes of each operand per repeat, streamed from the on-chip buffer
    a_b, w_b, c_b = g.m * g.k * db, g.n * g.k * db, g.m * g.n * db
    if dataflow == "output_stationary":
        stream_bytes = a_b * dense.fold_cols + w_b * dense.fold_rows
    else:
        stream_bytes = w_b + a_b * dense.fold_cols + c_b * (dense.fold_rows - 1)
    if stats is None and act_density >= 1.0:
        return _Run(dense.cycles, dense.cycles, dense.folds * reps, float(dense.macs),
                    reps * (stream_bytes + c_b))
    # per-column-fold reduction length after weight skipping: one fold at the busiest row,
    # the others at the expected busiest row of their `cols` rows
    per_fold_rows = min(cols, g.n)
    if stats is not None:
        top, typical = busy_rows(stats, per_fold_rows)
        k_top, k_typ = top / stats.cols * g.k, typical / stats.cols * g.k
        kept = stats.density
    else:
        k_top = k_typ = float(g.k)
        kept = 1.0
    n_col_folds = g.groups * dense.fold_cols  # column folds of one batch element
    if dataflow == "output_stationary":
        # the K stream of every fold shrinks; activation zeros shrink it further
        k_top *= act_density
        k_typ *= act_density
        per_batch = dense.fold_rows * ((k_top + dense.fill_drain) + (n_col_folds - 1) * (k_typ + dense.fill_drain))
        executed = g.m * g.n * g.k * reps * kept * act_density
    else:
        # weight stationary: the K folds of a column tile shrink to the packed busiest column
        f_top = math.ceil(k_top / rows - FLOAT_SLACK)
        f_typ = math.ceil(k_typ / rows - FLOAT_SLACK)
        per_batch = dense.cycles_per_fold * (f_top + (n_col_folds - 1) * f_typ)
        executed = g.m * g.n * g.k * reps * kept
    cycles = max(0.0, g.batch * per_batch - 1)
    cycles = min(cycles, float(dense.cycles))  # a skipping array is never slower than running dense
    frac = executed / dense.macs if dense.macs else 1.0
    return _Run(cycles, dense.cycles, dense.folds * reps, executed, reps * (stream_bytes * frac + c_b))


def busiest_pe(stats: SparsityStats, rows_per_pe: int, pes: int) -> float:
    """Expected nonzeros of the busiest PE when each holds `rows_per_pe` weight rows: their mean
    sum plus the per-row deviation summed over its rows, scaled by the extreme-value factor of
    `pes` PEs (E[max of n normals] - mean ~ sqrt(2 ln n)); never above `rows_per_pe` busiest rows."""
    mean = rows_per_pe * float(stats.row_nnz_mean)
    spread = math.sqrt(rows_per_pe) * float(stats.row_nnz_std) * math.sqrt(2 * math.log(max(pes, 1)))
    return min(mean + spread, rows_per_pe * float(stats.row_nnz_max))


def _spmv_run(g: GemmShape, pes: int, db: float, *, stats: SparsityStats | None, act_density: float) -> _Run:
    """One (repeated) GEMM on row-interleaved PEs: M activation vectors, one after another."""
    reps = g.batch * g.groups
    if min(g.m, g.n, g.k, reps) <= 0:
        return _Run(0.0, 0.0, 0, 0.0, 0.0)
    rows_per_pe = math.ceil(g.n / pes)
    dense_per_vector = float(rows_per_pe * g.k)
    per_vector, kept = dense_per_vector, 1.0
    if stats is not None and stats.cols > 0:
        per_vector = busiest_pe(stats, rows_per_pe, pes) / stats.cols * g.k
        kept = stats.density
    per_vector *= act_density
    vectors = g.m * reps
    executed = float(g.m * g.n * g.k * reps) * kept * act_density
    # every PE reads its weights (values) and the broadcast activation once per vector
    buffer_bytes = vectors * (g.n * g.k * db * kept + g.k * db) + vectors * g.n * db
    return _Run(vectors * per_vector, vectors * dense_per_vector, vectors, executed, buffer_bytes)


def array_for(p: FpgaParams, dtype: str) -> tuple[int, int]:
    """Rows x cols of the array at `dtype`: same DSP budget, columns scaled by DSPs per MAC."""
    rows, cols = int(p.pe_rows), int(p.pe_cols)
    ratio = p.dsp_per_mac[p.design_dtype] / p.dsp_per_mac[dtype]
    return rows, max(1, min(cols, math.floor(cols * ratio + FLOAT_SLACK)))


@register_peaks("fpga")
def fpga_peaks(device: Device, dtypes: set[str]) -> list[tuple[str, float]]:
    """The PE array at the dtype it runs the workload in: rows x cols MACs (2 FLOP each) per clock."""
    p: FpgaParams = device.params
    peaks = []
    for dt in sorted(dtypes or {p.design_dtype}):
        run, _ = run_dtype(dt, p.dsp_per_mac)
        rows, cols = array_for(p, run)
        peaks.append((f"PE array {run}", 2.0 * rows * cols * p.clock))
    return peaks


@register_cost("fpga")
def fpga_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on an FPGA PE-array design.

    The run `context` says how large the model's weights are: whether they stay on chip.
    """
    p: FpgaParams = device.params
    overhead_s = p.layer_overhead / p.clock
    if not op.is_matmul or op.gemm is None:
        return memory_op_on_chip(op, device, p, model=MODEL, dram_bandwidth=p.offchip_bandwidth,
                                 overhead_s=overhead_s, context=context,
                                 onchip_energy_factor=p.fabric_energy_factor)
    dtype, cast = run_dtype(op.dtype, p.dsp_per_mac)
    rows, cols = array_for(p, dtype)
    db = DTYPE_BYTES[dtype]
    work = gemm_work(op, layer)
    notes: list[str] = []
    fallback = cast
    if dtype != op.dtype:
        notes.append(f"{op.dtype} not supported by the design, ran as {dtype}")

    # a layer with zeros to skip (None: dense, channel-pruned or no plan); `stats` set = skipped
    sparse = zero_skipped(layer)
    stats = None
    if sparse is not None:
        if p.skip_weight_zeros:
            stats = sparse.stats
        else:
            fallback = True
            notes.append(f"{sparse.pattern.label}: the design does not skip zero weights, ran dense")
    act = 1.0
    if p.skip_activation_zeros and op.activation_density < 1.0:
        if p.dataflow in ("output_stationary", "row_interleaved"):
            act = max(0.0, op.activation_density)
        else:
            notes.append("activation zeros not skippable in a weight-stationary array")

    if p.dataflow == "row_interleaved":
        runs = [_spmv_run(g, rows * cols, db, stats=stats if i == 0 and op.weight else None,
                          act_density=act if i == 0 else 1.0) for i, g in enumerate(work.gemms)]
    else:
        runs = [
            _gemm_run(g, rows, cols, p.dataflow, db, stats=stats if i == 0 and op.weight else None,
                      act_density=act if i == 0 else 1.0)
            for i, g in enumerate(work.gemms)
        ]
    cycles = sum(r.cycles for r in runs)
    dense_cycles = sum(r.dense_cycles for r in runs)
    executed = sum(r.executed_macs for r in runs)
    compute_s = cycles / p.clock

    w_store, meta, a_bytes, c_bytes = stored_operand_bytes(op, work, dtype, sparse_weight=stats is not None)
    g0 = work.gemms[0]
    traffic = onchip_traffic(w_store, a_bytes, c_bytes, batch=samples(op.output_shape), buffer=p.onchip_buffer,
                             model_weights=context.model_weight_bytes)
    if traffic.fits:
        dram, rereads = traffic.dram, traffic.microbatches
        notes.append(describe(traffic, p.onchip_buffer))
    else:
        dram, rereads = offchip_traffic(w_store, a_bytes, c_bytes, p.onchip_buffer)
    memory_s = dram / p.offchip_bandwidth
    sram = sum(r.buffer_bytes for r in runs)

    df = {"output_stationary": "OS", "weight_stationary": "WS", "row_interleaved": "row-interleaved"}[p.dataflow]
    folds = sum(r.folds for r in runs)
    unit = "activation vectors" if p.dataflow == "row_interleaved" else "folds"
    head = f"{df} {rows}x{cols} {dtype} @{p.clock / 1e6:g} MHz, {folds} {unit}"
    if work.channel_pruned:
        head += f", channel-pruned to N={g0.n} K={g0.k}"
    if sparse is not None and stats is not None:
        head += (f", {sparse.pattern.label} skipped: busiest row {stats.row_nnz_max} nnz vs mean "
                 f"{stats.row_nnz_mean:.3g} (imbalance {stats.imbalance:.2f}), "
                 f"{dense_cycles / max(cycles, 1):.2f}x fewer cycles")
    if act < 1.0:
        head += f", activation zeros skipped (density {act:.2f})"
    if rereads > 1 and not traffic.fits:
        notes.append(f"operands exceed the {p.onchip_buffer / 1e6:.3g} MB buffer: re-read {rereads}x")
    bound = bound_of(compute_s, memory_s, overhead_s)
    why = "; ".join([head + f"; {bound}-bound"] + notes)
    # the array is clocked for the whole op (no clock gating): PE cycles without a MAC cost gated_fraction of one
    clocked = rows * cols * (max(compute_s, memory_s) + overhead_s) * p.clock
    gap = p.fabric_energy_factor
    return build_cost(
        device=device,
        model=MODEL,
        compute_s=compute_s,
        memory_s=memory_s,
        overhead_s=overhead_s,
        energy=EnergyInputs(
            macs=executed,
            mac_energy_j=gap * (p.mac_energy[dtype] + p.operand_energy),
            bytes_by_level={"dram": dram, "sram": sram},
            energy_per_byte={"dram": p.dram_energy, "sram": gap * p.sram_energy},
            static_power_w=p.static_power,
            metadata_bytes=meta * rereads,
            metadata_energy_per_byte=gap * p.metadata_energy,
            gated_macs=max(0.0, clocked - executed),
            gated_fraction=p.gated_fraction,
        ),
        kernel="zero-skipping PE array" if stats is not None else "dense PE array",
        why=why,
        flops_executed=2.0 * executed,
        peak_flops=2.0 * rows * cols * p.clock,
        memory_bytes=w_store,
        metadata_bytes=meta,
        fallback=fallback,
        details={
            "cycles": cycles,
            "dense_cycles": dense_cycles,
            "folds": float(folds),
            "array_rows": float(rows),
            "array_cols": float(cols),
            "offchip_bytes": dram,
            "rereads": float(rereads),
            "weights_pinned": float(traffic.pinned),
            "onchip_bytes": traffic.onchip if traffic.fits else dram,
            "activation_density_used": act,
            "clocked_pe_cycles": clocked,
        },
    )


__all__ = ["FpgaParams", "array_for", "busiest_pe", "busy_rows", "fpga_cost", "offchip_traffic"]
