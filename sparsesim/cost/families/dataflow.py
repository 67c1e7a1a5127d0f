"""What the on-chip dataflow engines (the S4-style sparse engine, FPGA PE-array designs) share:
the device-file block of on-chip memory, energies and power, and the rule that decides which
bytes of an op cross the DRAM bus.

A dataflow engine keeps activations in on-chip SRAM between layers and its weights there too
when the whole model fits, so DRAM traffic is what spills, not every operand of every op:

* Weights are pinned on chip when the model's stored weights and one sample's activations fit
  the buffer together (`RunContext.model_weight_bytes`; an op run alone counts its own weight).
  Pinned weights cost no DRAM traffic per inference; otherwise the op streams its weight in.
* Activations (the op's input and output) stay on chip when they fit the buffer left over. When
  the whole batch does not fit, the engine runs the layers depth-first over micro-batches that
  do: activations still stay on chip, but an unpinned weight is streamed once per micro-batch.
  A single sample too large for the buffer spills its excess to DRAM (written by the producer,
  read by the consumer: both halves are charged to the op that touches them).
* When the op's own weight leaves no room at all, the family's blocked off-chip model applies
  (every operand from DRAM, re-read per block): the caller's fallback.

The network's own input (an image from the host) and final output are not charged to DRAM:
per op, the engine cannot tell them from activations that stay on chip (a known
underestimate of a few percent of the traffic for ResNet-class models).

Pure functions of byte counts: no device constants here (they come from the device file).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, MEMORY_KINDS, Op
from sparsesim.cost.common import (
    UNKNOWN_DTYPE_BYTES,
    EnergyInputs,
    build_cost,
    check_fraction,
    check_positive,
    memory_op_bytes,
)
from sparsesim.cost.record import Cost, RunContext
from sparsesim.hw.devices import Device, quantity


@dataclass(frozen=True)
class DataflowParams:
    """Device-file fields every on-chip dataflow engine has (SI units after loading).

    `onchip_buffer`: SRAM/BRAM that holds weights and activations between layers;
    `onchip_bandwidth`: the rate an op that is not fused into a MAC pipeline (pooling, a lone
    elementwise op) streams on-chip data; `tdp`: the board power the engine never exceeds on
    average (checked, not used to cost); energies per action and static power as Accelergy.
    `operand_energy` is what one executed MAC costs beyond the multiply-add: the PE's local
    reads of its weight, the weight's index, the matching activation and the partial sum (a
    sparse PE pays it per nonzero, a skipped MAC pays nothing). `gated_fraction` is what a MAC
    slot the array spends without a MAC costs, as a share of a MAC with its operand reads: a
    clock-gated slot on an ASIC engine, a clocked-idle PE cycle on an FPGA design (which does
    not gate its clock: stalled PEs keep their clock tree and registers switching).
    """

    onchip_buffer: float = quantity("bytes")
    onchip_bandwidth: float = quantity("bandwidth")
    mac_energy: Mapping[str, float] = quantity("energy", per_dtype=True)
    operand_energy: float = quantity("energy")
    sram_energy: float = quantity("energy_per_byte")
    dram_energy: float = quantity("energy_per_byte")
    metadata_energy: float = quantity("energy_per_byte")
    static_power: float = quantity("power")
    tdp: float = quantity("power")
    gated_fraction: float = quantity("ratio")

    def check_dataflow(self) -> str | None:
        """The shared fields' problem as one line, or None."""
        problem = (check_positive(self, "onchip_buffer", "onchip_bandwidth", "tdp")
                   or check_fraction(self, "gated_fraction", zero_ok=True))
        if problem:
            return problem
        if self.static_power > self.tdp:
            return f"field 'static_power': {self.static_power:g} W exceeds tdp {self.tdp:g} W"
        return None


@dataclass(frozen=True)
class Traffic:
    """Where one op's bytes go on a dataflow engine.

    `dram`: bytes crossing the DRAM bus (weights streamed in, activations spilled);
    `weight_dram` / `spill_dram` split it; `onchip`: bytes read or written in the on-chip buffer;
    `pinned`: the weights live on chip; `microbatches`: how many passes the batch took;
    `fits`: False when the op's own weight leaves no room (the caller's blocked model applies).
    """

    dram: float
    weight_dram: float
    spill_dram: float
    onchip: float
    pinned: bool
    microbatches: int
    fits: bool = True


def onchip_traffic(
    weight: float, act_in: float, act_out: float, *, batch: int, buffer: float,
    model_weights: float | None,
) -> Traffic:
    """DRAM and on-chip bytes of one op (see the module docstring for the rule).

    `weight` is the op's stored weight (values + metadata), `act_in`/`act_out` its activations
    for the whole `batch`, `model_weights` the stored weights of the whole model (None: the op
    runs alone, its own weight is the model).
    """
    batch = max(1, int(batch))
    acts = act_in + act_out
    per_sample = acts / batch
    model = weight if model_weights is None else max(model_weights, weight)
    pinned = model + per_sample <= buffer
    free = buffer - (model if pinned else weight)
    if free <= 0:
        return Traffic(math.inf, math.inf, 0.0, 0.0, False, 1, fits=False)
    micro = min(batch, max(1, math.ceil(acts / free))) if acts > 0 else 1
    spill = max(0.0, per_sample - free) * batch
    weight_dram = 0.0 if pinned else weight * micro
    onchip = acts + weight * micro
    return Traffic(weight_dram + spill, weight_dram, spill, onchip, pinned, micro)


def offchip_traffic(w: float, a: float, c: float, buffer: float) -> tuple[float, int]:
    """(bytes moved off chip, re-read count) of an op whose operands all come from DRAM.

    If the operands and output fit the buffer each is read once; otherwise the buffer is split
    in half, the larger-reuse operand is held in buffer-sized chunks and the other is re-read
    once per chunk (the cheaper of the two loop orders is taken)."""
    if w + a + c <= buffer:
        return w + a + c, 1
    half = buffer / 2
    if half <= 0:
        return math.inf, 0
    n_w = math.ceil(w / half) if w > 0 else 1    # weights held in chunks, activations re-read
    n_a = math.ceil(a / half) if a > 0 else 1    # activations held in chunks, weights re-read
    by_w, by_a = w + a * n_w + c, a + w * n_a + c
    return (by_w, n_w) if by_w <= by_a else (by_a, n_a)


def memory_op_on_chip(
    op: Op, device: Device, p: DataflowParams, *, model: str, dram_bandwidth: float, overhead_s: float,
    context: RunContext, onchip_energy_factor: float = 1.0,
) -> Cost:
    """An op without a GEMM on a dataflow engine: its tensors stream from the on-chip buffer at
    `onchip_bandwidth` and only what spills crosses DRAM. Fused into a MAC pipeline by the
    runtime it costs less still (`sparsesim.runtime.apply`). `onchip_energy_factor` scales the
    on-chip byte energy (an FPGA fabric's gap over the ASIC figures; 1 on an ASIC)."""
    nbytes = memory_op_bytes(op)
    out_b = math.prod(op.output_shape) * DTYPE_BYTES.get(op.dtype, UNKNOWN_DTYPE_BYTES) if op.output_shape else 0.0
    out_b = min(float(out_b), nbytes)
    t = onchip_traffic(0.0, nbytes - out_b, out_b, batch=samples(op.output_shape), buffer=p.onchip_buffer,
                       model_weights=context.model_weight_bytes or 0.0)
    onchip_s = t.onchip / p.onchip_bandwidth
    dram_s = t.dram / dram_bandwidth
    known = op.kind in MEMORY_KINDS
    why = (f"{op.kind}: {nbytes / 1e6:.3g} MB on chip at {p.onchip_bandwidth / 1e9:.4g} GB/s"
           + (f", {t.dram / 1e6:.3g} MB spilled over DRAM at {dram_bandwidth / 1e9:.4g} GB/s" if t.dram > 0 else "")
           if known else f"no formula for {op.aten} (op kind {op.kind!r}): costed as its memory traffic")
    return build_cost(
        device=device, model=model, compute_s=0.0, memory_s=max(onchip_s, dram_s), overhead_s=overhead_s,
        energy=EnergyInputs(macs=0.0, mac_energy_j=0.0, bytes_by_level={"dram": t.dram, "sram": t.onchip},
                            energy_per_byte={"dram": p.dram_energy, "sram": p.sram_energy * onchip_energy_factor},
                            static_power_w=p.static_power),
        kernel="memory", why=why, flops_executed=float(op.flops), peak_flops=0.0, fallback=not known,
        details={"offchip_bytes": t.dram, "onchip_bytes": t.onchip, "offchip_s": dram_s},
    )


def samples(output_shape: tuple[int, ...] | None) -> int:
    """Independent samples of an op's batch: the leading dimension of its output (images of a
    convolution, token rows of a linear layer), the unit a micro-batch is cut in."""
    return max(1, int(output_shape[0])) if output_shape else 1


def describe(t: Traffic, buffer: float) -> str:
    """The traffic decision in words, for a Cost's `why`."""
    where = "weights pinned on chip" if t.pinned else "weights streamed from DRAM"
    if t.microbatches > 1:
        where += f" ({t.microbatches} micro-batches)" if not t.pinned else f", {t.microbatches} micro-batches"
    if t.spill_dram > 0:
        where += f", {t.spill_dram / 1e6:.3g} MB of activations spill past the {buffer / 1e6:.3g} MB buffer"
    else:
        where += ", activations on chip"
    return where


__all__ = ["DataflowParams", "Traffic", "describe", "memory_op_on_chip", "offchip_traffic", "onchip_traffic",
           "samples"]
