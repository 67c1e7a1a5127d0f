"""S4-style sparse engine family (Moffett Antoum class): a dense MAC array whose lanes skip zero
weights, up to a maximum factor and only in the ratios the hardware supports.

The model, and why:

* Dense time = MACs / the dense peak at the op's dtype.
* Weight zeros are skipped in a compression mode r: the largest supported ratio
  r <= min(max factor, 1 / density) (round down: a layer at 0.2 density with ratios
  1,2,4,8,16,32 runs in the 4x mode, not 5x).
* Lanes work on weight rows, so the slowest lane sets the time: its density is the busiest
  row's (row_nnz_max / cols) pulled towards the mean row by the device's load balancer,
  d_eff = (mean + (1 - balancing) * (max - mean)) / cols; a lane holding more than its 1/r
  share spills into extra cycles. Time = dense x max(1/r, d_eff), i.e. speedup = min(r, 1/d_eff).
  Density and d_eff only fall when zeros are added, so more zeros are never slower.
* Activation zeros are skipped (time x activation density) only where the device file says so.
* On-chip dataflow (`families.dataflow`): activations stay in the on-chip SRAM between layers,
  the compressed weights (values + metadata as the plan's format gives them) too when the whole
  model fits; DRAM traffic is the weights streamed in when it does not, once per micro-batch,
  and the activations that spill. Memory time = DRAM bytes / card bandwidth.
* Elementwise ops (BN, ReLU, residual add) run in the MAC pipeline's output stage when the
  runtime fuses them (the `engine` runtime's epilogue fusion, `sparsesim.runtime`): no launch,
  no DRAM trip, only the residual operand read from SRAM. An op that is not fused (pooling)
  streams its on-chip tensors at `onchip_bandwidth`, its spilled bytes over DRAM.
* Channel pruning is a smaller dense op (`common.gemm_work`).
* Energy: MACs on nonzeros at full energy plus their operand reads inside the PE; the empty slots of the chosen ratio are gated (a
  small fraction of a MAC, from the device file); SRAM bytes for what stays on chip, DRAM bytes
  only for what crosses the bus; static power x latency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sparsesim.core.ir import Op
from sparsesim.cost.common import (
    EnergyInputs,
    bound_of,
    build_cost,
    check_dtype_table,
    check_flags,
    check_fraction,
    check_positive,
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
from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.cost.registry import register_cost
from sparsesim.hw.devices import Device, quantity, register_family, setting
from sparsesim.sparsity.records import LayerSparsity, SparsityStats

MODEL = "s4-sparse-engine"
# float slack when comparing a ratio with 1/density (1/0.25 must give exactly 4)
RATIO_TOLERANCE = 1e-9
# the `why` notes: 1/density of an all-zero layer is shown as 1/DENSITY_FLOOR, and a mode is said
# to be "rounded down" only when it is more than NOTE_SLACK (relative) below the ideal one
DENSITY_FLOOR = 1e-12
NOTE_SLACK = 1e-6


@register_family("s4")
@dataclass(frozen=True)
class S4Params(DataflowParams):
    """Device-file fields of an S4-style sparse engine (SI units after loading); the on-chip
    memory, energy and power block is `DataflowParams`, shared with the FPGA family."""

    dense_peak: Mapping[str, float] = quantity("flop_rate", per_dtype=True)
    max_sparsity_factor: float = quantity("ratio")
    supported_ratios: Sequence[float] = setting()
    balancing: float = quantity("ratio")
    skip_activation_zeros: bool = setting()
    memory_bandwidth: float = quantity("bandwidth")
    memory_capacity: float = quantity("bytes")  # the card's DRAM the model runs from (run.fit)
    op_overhead: float = quantity("time")

    def validate(self) -> str | None:
        ratios = self.supported_ratios
        if not isinstance(ratios, (list, tuple)) or not ratios or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 1 for r in ratios
        ):
            return "field 'supported_ratios': must be a non-empty list of numbers >= 1"
        if 1 not in ratios:
            return "field 'supported_ratios': must include 1 (dense)"
        if max(ratios) > self.max_sparsity_factor:
            return (f"field 'supported_ratios': {max(ratios):g} exceeds max_sparsity_factor "
                    f"{self.max_sparsity_factor:g}")
        return (check_fraction(self, "balancing", zero_ok=True)
                or check_flags(self, "skip_activation_zeros")
                or check_dtype_table(self, "dense_peak")
                or check_positive(self, "memory_bandwidth")
                or self.check_dataflow())


def effective_density(stats: SparsityStats, balancing: float) -> float:
    """Density of the busiest lane after load balancing (see the module docstring)."""
    if stats.cols <= 0:
        return stats.density
    top, mean = float(stats.row_nnz_max), float(stats.row_nnz_mean)
    return (mean + (1.0 - balancing) * (top - mean)) / stats.cols


def skip_ratio(density: float, ratios: Sequence[float], max_factor: float) -> float:
    """The largest supported ratio <= min(max_factor, 1/density): rounded down, never up."""
    limit = max_factor if density <= 0 else min(max_factor, 1.0 / density)
    ok = [r for r in ratios if r <= limit * (1 + RATIO_TOLERANCE)]
    return float(max(ok)) if ok else 1.0


@register_cost("s4")
def s4_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on an S4-style engine.

    The run `context` says how large the model's weights are: whether they stay on chip.
    """
    p: S4Params = device.params
    if not op.is_matmul or op.gemm is None:
        return memory_op_on_chip(op, device, p, model=MODEL, dram_bandwidth=p.memory_bandwidth,
                                 overhead_s=p.op_overhead, context=context)
    dtype, cast = run_dtype(op.dtype, p.dense_peak)
    peak = p.dense_peak[dtype]
    work = gemm_work(op, layer)
    notes: list[str] = []
    if dtype != op.dtype:
        notes.append(f"{op.dtype} not supported by the engine, ran as {dtype}")

    dense_s = work.flops / peak
    # the layer whose weight zeros the lanes skip (None: dense, channel-pruned or no plan)
    skipped = zero_skipped(layer)
    ratio, d_eff, speedup = 1.0, 1.0, 1.0
    if skipped is not None:
        st = skipped.stats
        ratio = skip_ratio(st.density, p.supported_ratios, p.max_sparsity_factor)
        d_eff = effective_density(st, p.balancing)
        speedup = 1.0 / max(1.0 / ratio, d_eff) if d_eff > 0 else ratio
    act = 1.0
    if p.skip_activation_zeros and op.activation_density < 1.0:
        act = max(0.0, op.activation_density)
    compute_s = dense_s / speedup * act

    # the engine builds a convolution's im2col view on chip: the real input tensor is what it holds
    w_store, meta, a_bytes, c_bytes = stored_operand_bytes(op, work, dtype, sparse_weight=skipped is not None)
    traffic = onchip_traffic(w_store, a_bytes, c_bytes, batch=samples(op.output_shape), buffer=p.onchip_buffer,
                             model_weights=context.model_weight_bytes)
    if traffic.fits:
        dram, onchip, weight_passes = traffic.dram, traffic.onchip, traffic.microbatches
        notes.append(describe(traffic, p.onchip_buffer))
    else:
        dram, weight_passes = offchip_traffic(w_store, a_bytes, c_bytes, p.onchip_buffer)
        onchip = dram
        notes.append(f"the weight alone fills the {p.onchip_buffer / 1e6:.3g} MB SRAM: operands blocked "
                     f"through DRAM, re-read {weight_passes}x")
    memory_s = dram / p.memory_bandwidth

    nonzero_macs = work.effective_macs * act
    slot_macs = work.macs / speedup * act
    head = f"{dtype} dense peak {peak / 1e12:.3g} TOP/s"
    if work.channel_pruned:
        head += f", channel-pruned to N={work.gemms[0].n} K={work.gemms[0].k}"
    if skipped is not None:
        head += (f", {skipped.pattern.label} (density {st.density:.3g}) in the {ratio:g}x mode, "
                 f"{speedup:.3g}x after imbalance (busiest lane {d_eff:.3g} after balancing)")
        ideal = 1.0 / max(st.density, DENSITY_FLOOR)
        if ratio <= 1.0:
            notes.append(f"density {st.density:.3g} too high for any supported skip ratio: ran dense")
        elif ratio < min(p.max_sparsity_factor, ideal) * (1 - NOTE_SLACK):
            notes.append(f"1/density = {ideal:.3g}x rounded down to the supported {ratio:g}x")
        elif ratio >= p.max_sparsity_factor and ideal > ratio:
            notes.append(f"1/density = {ideal:.3g}x capped at the engine's {p.max_sparsity_factor:g}x maximum")
    if act < 1.0:
        head += f", activation zeros skipped (density {act:.2f})"
    bound = bound_of(compute_s, memory_s, p.op_overhead)
    why = "; ".join([head + f"; {bound}-bound"] + notes)
    return build_cost(
        device=device,
        model=MODEL,
        compute_s=compute_s,
        memory_s=memory_s,
        overhead_s=p.op_overhead,
        energy=EnergyInputs(
            macs=nonzero_macs,
            mac_energy_j=p.mac_energy[dtype] + p.operand_energy,
            bytes_by_level={"dram": dram, "sram": onchip},
            energy_per_byte={"dram": p.dram_energy, "sram": p.sram_energy},
            static_power_w=p.static_power,
            metadata_bytes=meta * weight_passes,
            metadata_energy_per_byte=p.metadata_energy,
            gated_macs=max(0.0, slot_macs - nonzero_macs),
            gated_fraction=p.gated_fraction,
        ),
        kernel=f"sparse engine {ratio:g}x mode" if ratio > 1 else "dense MAC array",
        why=why,
        flops_executed=2.0 * nonzero_macs,
        peak_flops=peak,
        memory_bytes=w_store,
        metadata_bytes=meta,
        fallback=cast,
        details={"skip_ratio": ratio, "speedup": speedup, "effective_density": d_eff, "activation_density_used": act,
                 "dense_compute_s": dense_s, "offchip_bytes": dram, "weights_pinned": float(traffic.pinned), "onchip_bytes": onchip,
                 "microbatches": float(traffic.microbatches)},
    )


__all__ = ["S4Params", "effective_density", "s4_cost", "skip_ratio"]
