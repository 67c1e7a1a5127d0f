"""Helpers every hardware family's cost model shares: what an op asks for (MACs, operand bytes),
which latency term dominates, and building the `Cost` record.

Everything here is hardware-agnostic: no device constants appear in this module. A family
passes its own peaks, bandwidths, overheads and energies (read from its device file).

Typical use in a family's cost function::

    work = gemm_work(op, layer)                       # MACs and operand bytes
    compute_s = work.macs * 2 / (peak * efficiency)
    memory_s = (work.a_bytes + work.w_bytes + work.c_bytes) / dram_bw
    return build_cost(device=device, model="cpu", compute_s=compute_s, memory_s=memory_s,
                      overhead_s=launch, energy=EnergyInputs(...), ...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, MEMORY_KINDS, GemmShape, Op, activation_dtype
from sparsesim.cost.energy import action_energy
from sparsesim.cost.record import Cost, Reason
from sparsesim.hw.devices import Device
from sparsesim.sparsity.records import LayerSparsity

# bytes per element of a dtype the IR does not list (a traced complex or custom dtype): counted
# at fp32 width, the default tensor dtype, rather than failing the whole estimate
UNKNOWN_DTYPE_BYTES = 4
# a byte count within this of a whole number is that number (float products of sizes and shares)
BYTE_NOISE = 1e-6


# ----------------------------------------------------------------------------- op -> work

def gemms_of(op: Op) -> tuple[GemmShape, ...]:
    """The GEMMs a matmul-like op runs. Attention runs two: QK^T (op.gemm) and PV.

    PV multiplies the (M x N) score matrix by V (N x head_dim): M = Lq, N = head_dim, K = Lk.
    """
    if op.gemm is None:
        return ()
    g = op.gemm
    if op.kind == "attention":
        pv = GemmShape(m=g.m, n=g.k, k=g.n, batch=g.batch, groups=g.groups)
        return (g, pv)
    return (g,)


# what a framework's sparse weights run: torch's sparse tensor types dispatch matrix products
# only (torch/sparse/semi_structured.py SPARSE_DISPATCH: mm, matmul, addmm, linear, _scaled_mm;
# CSR and BSR tensors: mm/addmm), and torchao sparsifies nn.Linear modules only
FRAMEWORK_SPARSE_OPS = ("torch's sparse tensors (semi-structured, CSR, BSR) run matrix products only, "
                        "no convolution: a sparse conv needs an engine (TensorRT) or an im2col rewrite")


@dataclass(frozen=True)
class GemmWork:
    """What a matmul-like op asks of any hardware, at the op's dtype, before any sparse kernel.

    `gemms` are the dense GEMMs to run (two for attention). A channel-pruned op is already the
    smaller op (the shrink pass, `sparsesim.sparsity.shrink`, made it so).
    `a_bytes` is the first (activation) operand, `w_bytes` the second operand stored dense
    (the weight of a linear/conv, once per op; K and V for attention; the B operand of a bmm),
    `c_bytes` the output. `density` is the kept fraction of the weight's nonzeros (1.0 when
    dense or channel-pruned, since a channel-pruned GEMM is dense). `w_values_bytes` and
    `w_metadata_bytes` are the stored sparse weight as the plan's format gives them (equal to
    w_bytes and 0 when dense).
    """

    gemms: tuple[GemmShape, ...]
    dtype: str
    dtype_bytes: float
    macs: int
    a_bytes: float
    w_bytes: float
    c_bytes: float
    density: float = 1.0
    w_values_bytes: float = 0.0
    w_metadata_bytes: float = 0.0
    channel_pruned: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def effective_macs(self) -> float:
        """MACs on nonzero weights: what a perfect zero-skipping engine would execute."""
        return self.macs * self.density

    @property
    def dense_bytes(self) -> float:
        """Compulsory traffic of the dense op: each operand read once, the output written once."""
        return self.a_bytes + self.w_bytes + self.c_bytes


def gemm_work(op: Op, layer: LayerSparsity | None = None) -> GemmWork:
    """MACs and operand bytes of a matmul-like op (linear, conv, matmul, attention).

    A channel-pruned layer's op arrives already shrunk (it is a dense GEMM); other patterns keep
    the dense shape and report `density` and the stored sparse weight bytes from `layer`.
    Raises ValueError for an op without a GemmShape.
    """
    if op.gemm is None:
        raise ValueError(f"op {op.index} ({op.aten}, module {op.module!r}) has no GEMM shape")
    db = DTYPE_BYTES[op.dtype]
    # a weight-only dtype (int4) stores the weight narrow; activations stay 16-bit
    adb = DTYPE_BYTES[activation_dtype(op.dtype)]
    pruned = layer is not None and layer.pattern.spec.shrinks_op
    if op.kind == "attention":
        qk, pv = gemms_of(op)
        bg = qk.batch * qk.groups
        a = bg * qk.m * qk.k * adb                       # Q
        w = bg * qk.n * qk.k * adb + bg * pv.k * pv.n * adb + attention_mask_bytes(op)  # K, V, the mask
        c = bg * pv.m * pv.n * adb                       # O
        return GemmWork((qk, pv), op.dtype, db, qk.macs + pv.macs, a, w, c)
    g = op.gemm
    bg = g.batch * g.groups
    a = bg * g.m * g.k * adb
    c = bg * g.m * g.n * adb
    # a parameter is stored once and shared over the batch; a bmm's B operand is per batch
    w = (g.groups if op.weight is not None else bg) * g.n * g.k * db
    density, values, meta = 1.0, w, 0.0
    if layer is not None and not pruned and not layer.pattern.spec.is_dense:
        density = layer.stats.density
        values, meta = float(layer.value_bytes), float(layer.metadata_bytes)
    return GemmWork((g,), op.dtype, db, g.macs, a, w, c, density, values, meta, pruned)


def attention_mask_bytes(op: Op) -> float:
    """Bytes of an attention op's mask tensor (its 4th input), which a fused kernel reads once
    like K and V: a padding mask broadcast over heads and queries is small, a full additive bias
    (SAM's relative positions: batch x heads x Lq x Lk) can outweigh Q, K and V together. Taken
    at the activation width: transformers builds additive float masks in the model's dtype."""
    if len(op.input_shapes) < 4 or not op.input_shapes[3]:
        return 0.0
    return float(math.prod(op.input_shapes[3])) * DTYPE_BYTES[activation_dtype(op.dtype)]


def zero_skipped(layer: LayerSparsity | None) -> LayerSparsity | None:
    """The layer whose weight zeros a zero-skipping engine (FPGA PE array, S4-style lanes) can
    skip: its pattern kind says so (`skips_zeros`); None for dense, channel-pruned (a smaller
    dense GEMM, nothing to skip) or no layer."""
    return layer if layer is not None and layer.pattern.spec.skips_zeros else None


def memory_op_bytes(op: Op) -> float:
    """Bytes a memory-bound op moves (as traced); falls back to inputs + output at the dtype."""
    if op.bytes_moved > 0:
        return float(op.bytes_moved)
    db = DTYPE_BYTES.get(op.dtype, UNKNOWN_DTYPE_BYTES)
    n = sum(math.prod(s) for s in op.input_shapes) + math.prod(op.output_shape or (0,))
    return float(n * db)


# ----------------------------------------------------------------------------- latency terms

def bound_of(compute_s: float, memory_s: float, overhead_s: float) -> str:
    """Which term decided the latency: "overhead" when fixed costs exceed both compute and memory."""
    if overhead_s > max(compute_s, memory_s):
        return "overhead"
    return "compute" if compute_s >= memory_s else "memory"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- the record

@dataclass(frozen=True)
class EnergyInputs:
    """Action counts and per-action energies for `cost.energy.action_energy` (all SI: J, J/B, W).

    `bytes_by_level` is also copied into the Cost record; every level needs an entry in
    `energy_per_byte`.
    """

    macs: float
    mac_energy_j: float
    bytes_by_level: Mapping[str, float]
    energy_per_byte: Mapping[str, float]
    static_power_w: float
    metadata_bytes: float = 0.0
    metadata_energy_per_byte: float = 0.0
    gated_macs: float = 0.0
    gated_fraction: float = 0.0


def build_cost(
    *,
    device: Device,
    model: str,
    compute_s: float,
    memory_s: float,
    overhead_s: float,
    energy: EnergyInputs,
    kernel: str,
    why: str,
    flops_executed: float,
    peak_flops: float,
    memory_bytes: float = 0.0,
    metadata_bytes: float = 0.0,
    fallback: bool = False,
    latency_s: float | None = None,
    details: Mapping[str, float] | None = None,
    notes: tuple[Reason, ...] = (),
) -> Cost:
    """Assemble a `Cost`: latency = max(compute, memory) + overhead unless `latency_s` is given
    (e.g. a pipelined or event-simulated latency), bound = the dominant term, energy from
    `action_energy` with static power over the final latency, utilisation = executed FLOPs
    over (latency x peak). `details` gets the three latency terms and the energy breakdown.
    """
    lat = max(compute_s, memory_s) + overhead_s if latency_s is None else latency_s
    e = action_energy(
        macs=energy.macs,
        mac_energy_j=energy.mac_energy_j,
        bytes_by_level=energy.bytes_by_level,
        energy_per_byte=energy.energy_per_byte,
        metadata_bytes=energy.metadata_bytes,
        metadata_energy_per_byte=energy.metadata_energy_per_byte,
        static_power_w=energy.static_power_w,
        latency_s=lat,
        gated_macs=energy.gated_macs,
        gated_fraction=energy.gated_fraction,
    )
    util = flops_executed / (lat * peak_flops) if lat > 0 and peak_flops > 0 else 0.0
    info = {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "overhead_s": overhead_s,
        "energy_compute_j": e.compute_j,
        "energy_memory_j": e.memory_j,
        "energy_metadata_j": e.metadata_j,
        "energy_static_j": e.static_j,
    }
    if details:
        info.update(details)
    return Cost(
        latency_s=lat,
        energy_j=e.total_j,
        bytes_by_level=dict(energy.bytes_by_level),
        # stored bytes are whole bytes: a 4-bit weight of an odd count takes its last byte whole,
        # as the formats count it (the float noise of a product is not a byte)
        memory_bytes=math.ceil(memory_bytes - BYTE_NOISE),
        metadata_bytes=math.ceil(metadata_bytes - BYTE_NOISE),
        bound=bound_of(compute_s, memory_s, overhead_s),
        utilization=min(1.0, util),
        kernel=kernel,
        why=why,
        flops_executed=flops_executed,
        fallback=fallback,
        device=device.name,
        model=model,
        details=info,
        notes=notes,
    )


def stored_operand_bytes(op: Op, work: GemmWork, dtype: str, *, sparse_weight: bool) -> tuple[float, float, float, float]:
    """(weight stored, its metadata, activation in, output out) bytes at the dtype the op runs in.

    With `sparse_weight` the weight is stored as the plan's format gives it (values + metadata),
    else dense. A convolution's activation is its real input tensor (an engine that builds the
    im2col view on chip reads the input once), shrunk with K when channels were pruned.
    """
    scale = DTYPE_BYTES[dtype] / work.dtype_bytes
    if sparse_weight:
        w_store = (work.w_values_bytes + work.w_metadata_bytes) * scale
        meta = work.w_metadata_bytes * scale
    else:
        w_store, meta = work.w_bytes * scale, 0.0
    a_bytes = work.a_bytes * scale
    if op.kind == "conv" and op.input_shapes and op.gemm is not None:
        k_shrink = work.gemms[0].k / op.gemm.k if op.gemm.k else 1.0
        a_bytes = min(a_bytes, math.prod(op.input_shapes[0]) * DTYPE_BYTES[dtype] * k_shrink)
    return w_store, meta, a_bytes, work.c_bytes * scale


def memory_op_cost(
    op: Op,
    device: Device,
    *,
    model: str,
    bandwidth: float,
    overhead_s: float,
    energy_per_byte_j: float,
    static_power_w: float,
    level: str = "dram",
    compute_s: float = 0.0,
    compute_note: str = "",
) -> Cost:
    """An op without a GEMM: bytes / bandwidth + fixed overhead, or the family's `compute_s` of
    evaluating its function where that is longer (`compute_note` says what it is).

    A memory op (elementwise, norm, softmax, ...) is costed this way by design; an op of any
    other kind has no formula in any family and is costed the same way, flagged as a fallback.
    """
    nbytes = memory_op_bytes(op)
    mem_s = nbytes / bandwidth if bandwidth > 0 else 0.0
    known = op.kind in MEMORY_KINDS
    why = (f"{op.kind}: {nbytes / 1e6:.3g} MB at {bandwidth / 1e9:.4g} GB/s" if known
           else f"no formula for {op.aten} (op kind {op.kind!r}): costed as its memory traffic")
    if compute_note:
        why += f"; {compute_note}{' (compute-bound)' if compute_s > mem_s else ''}"
    return build_cost(
        device=device,
        model=model,
        compute_s=compute_s,
        memory_s=mem_s,
        overhead_s=overhead_s,
        energy=EnergyInputs(
            macs=0.0,
            mac_energy_j=0.0,
            bytes_by_level={level: nbytes},
            energy_per_byte={level: energy_per_byte_j},
            static_power_w=static_power_w,
        ),
        kernel="memory",
        why=why,
        flops_executed=float(op.flops),
        peak_flops=0.0,
        fallback=not known,
    )


def run_dtype(op_dtype: str, supported: Mapping[str, float]) -> tuple[str, bool]:
    """The dtype an op runs at on a device that supports `supported`, and whether that is a fallback.

    An unsupported dtype runs at the narrowest supported dtype at least as wide (exact width and
    float-ness preferred); with none that wide, at the widest supported one. A cast to a float
    dtype of the same width (fp16 -> bf16, tf32 -> fp32) is a model conversion, noted but not a
    fallback; a wider, narrower or float <-> int one is.
    """
    if op_dtype in supported:
        return op_dtype, False
    width = DTYPE_BYTES[op_dtype]
    is_int = op_dtype.startswith("int")
    cands = [d for d in supported if DTYPE_BYTES.get(d, 0) >= width]
    if cands:
        best = min(cands, key=lambda d: (DTYPE_BYTES[d], d.startswith("int") != is_int, d))
    else:
        best = max(supported, key=lambda d: (DTYPE_BYTES.get(d, 0), not d.startswith("int"), d))
    same_kind = DTYPE_BYTES.get(best, 0) == width and best.startswith("int") == is_int
    return best, not same_kind


# ----------------------------------------------------------------------------- device-file checks
# Each returns the first problem as one line naming the field, or None, so a family's
# `validate` can chain them with `or` in the order it wants them reported.

def _entries(params: object, name: str) -> list[tuple[str, object]]:
    """(label, value) of a field: one entry, or one per dtype for a per-dtype table."""
    v = getattr(params, name)
    return [(f"{name}.{k}", x) for k, x in v.items()] if isinstance(v, dict) else [(name, v)]


def check_flags(params: object, *names: str) -> str | None:
    """Settings that must be booleans."""
    for name in names:
        v = getattr(params, name)
        if not isinstance(v, bool):
            return f"field '{name}': must be true or false, got {v!r}"
    return None


def check_positive(params: object, *names: str) -> str | None:
    """Quantities (or every entry of per-dtype tables) that must be > 0."""
    for name in names:
        for label, v in _entries(params, name):
            if not v > 0:  # type: ignore[operator]
                return f"field '{label}': must be > 0, got {v:g}"
    return None


def check_whole(params: object, *names: str) -> str | None:
    """Counts (or every entry of per-dtype tables) that must be positive whole numbers."""
    for name in names:
        for label, v in _entries(params, name):
            if v < 1 or v != int(v):  # type: ignore[operator,call-overload]
                return f"field '{label}': must be a positive whole number, got {v:g}"
    return None


def check_fraction(params: object, *names: str, zero_ok: bool = False) -> str | None:
    """Ratios (or every entry of per-dtype tables) in (0, 1], or [0, 1] with `zero_ok`."""
    for name in names:
        for label, v in _entries(params, name):
            if not (0 <= v <= 1 if zero_ok else 0 < v <= 1):  # type: ignore[operator]
                return f"field '{label}': must be in {'[' if zero_ok else '('}0, 1], got {v:g}"
    return None


def check_dtype_table(params: object, name: str, energy: str = "mac_energy") -> str | None:
    """A per-dtype table that defines which dtypes a device runs: known dtypes, values > 0, and
    an `energy` entry (MAC energy) for each."""
    table = getattr(params, name)
    unknown = sorted(set(table) - set(DTYPE_BYTES))
    if unknown:
        return f"field '{name}': unknown dtype(s) {', '.join(unknown)}"
    if any(v <= 0 for v in table.values()):
        return f"field '{name}': every value must be > 0"
    missing = sorted(set(table) - set(getattr(params, energy)))
    if missing:
        return f"field '{energy}': no entry for dtype(s) {', '.join(missing)} listed in {name}"
    return None


def channel_pruned_text(layer: LayerSparsity, work: GemmWork) -> str:
    """'channel pruning: 768x768 weight -> 384x768': the weight as traced (the layer's matrix
    view) and the smaller dense GEMM the shrink pass left."""
    g = work.gemms[0]
    return f"channel pruning: {layer.stats.rows}x{layer.stats.cols} weight -> {g.n}x{g.k}"
