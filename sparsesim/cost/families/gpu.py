"""GPU tensor-core family: how a GPU runs dense, 2:4, unstructured, block and channel-pruned GEMMs.

The machine (tiles, waves over the SMs, split-K, L2 and DRAM traffic, Hopper's clusters) is in
`gpu_machine`; each kernel library (cuBLAS, cuSPARSELt, torch's CUTLASS 2:4, Sputnik-like and
cuSPARSE CSR, Flash-LLM, BSR, Marlin and Sparse-Marlin for int4) is a model in `gpu_kernels`.
This module picks, per op, among the kernels that serve the op's pattern and that the runtime
offers (`runtime.<name>.kernels` in the device file), the fastest, and says which and why; a
kernel the user forces (`--kernel`) is used for the ops it serves. A runtime offers one int4 layout
per pattern, as its software stores the model (torch: torchao's tinygemm and Sparse-Marlin; an
engine: Marlin and Sparse-Marlin); where a dense kernel it does not offer would be faster, the
dense cost says so (`weak_dense_library`), since a sparse kernel can then gain more than its
math. When no sparse kernel can run
the op, it runs dense with `fallback=True` and a `why` naming every rule that failed.

* Dense: output tiles of the device's GEMM tile spread over the SMs in waves (split-K when the
  tiles fill less than one wave, as cuBLAS does); latency = max(compute, memory) + the runtime's
  kernel launch. A batch-1 GEMV is bound by weight bytes.
* N:M: sparse tensor cores for masks the device's ratio covers and shapes that meet the
  kernel's alignment; the precision never changes (a dtype the tensor cores lack falls back dense).
* Unstructured: CSR kernels on CUDA cores (cost by tokens, rows and nonzeros per row) or
  Flash-LLM on tensor cores; slower than dense until high sparsity for CSR.
* Block rxc: BSR, on tensor cores (blocks padded to the MMA) or CUDA cores.
* Channel pruning: exactly the dense cost of the smaller GEMM.
* Attention: two dense tensor-core GEMMs with flash-style traffic (Q, K, V, O once).
* Memory ops: bytes / achievable DRAM bandwidth + the kernel launch (fusion is the runtime's pass).

Energy: MACs x pJ/MAC (dtype) + bytes per level x pJ/B + metadata bytes + static power x latency.
"""

from __future__ import annotations

import dataclasses
import math

from sparsesim.core.ir import Op
from sparsesim.cost.common import FRAMEWORK_SPARSE_OPS, GemmWork, channel_pruned_text, gemm_work, memory_op_cost
from sparsesim.cost.families import dynamic_quant
from sparsesim.cost.families.gpu_kernels import (
    KERNELS,
    GpuKernel,
    KernelEnv,
    alignment_problem,
    attention_cost,
    dense_cost,
    nm_support,
)
from sparsesim.cost.families.gpu_machine import (
    MODEL,
    GpuParams,
    Tiling,
    compute_unit,
    dram_bw,
    mma_k,
    precision_id,
    tiling,
)
from sparsesim.cost.record import ALONE, Cost, Reason, RunContext
from sparsesim.cost.registry import register_cost
from sparsesim.cost.sparse_inputs import skippable_inputs
from sparsesim.hw.devices import Device
from sparsesim.sparsity.records import LayerSparsity

__all__ = [
    "KERNELS",
    "GpuParams",
    "Tiling",
    "alignment_problem",
    "compute_unit",
    "gpu_cost",
    "kernel_env",
    "mma_k",
    "nm_support",
    "tiling",
]


def kernel_env(device: Device, context: RunContext) -> KernelEnv:
    """The runtime around the kernels: its parameters and per-kernel launch cost."""
    p: GpuParams = device.params
    name, rt = device.runtime(context.runtime)
    launch = rt.kernel_launch if rt.kernel_launch is not None else p.launch_overhead
    return KernelEnv(name, rt, launch, context.kernel)


def _candidates(kind: str, dtype: str, env: KernelEnv) -> tuple[list[GpuKernel], str]:
    """Kernels that may run an op of pattern `kind` at `dtype`, and a note when the user forced one
    (a forced kernel is tried whatever the dtype, so its why says what it runs)."""
    serving = [k for k in KERNELS.values() if kind in k.serves]
    if env.forced and env.forced in KERNELS and kind in KERNELS[env.forced].serves:
        note = "" if env.rt.offers(env.forced) else f" (not offered by {env.runtime}: forced)"
        return [KERNELS[env.forced]], f"kernel {env.forced} forced{note}"
    return [k for k in serving if env.rt.offers(k.name) and k.takes(dtype)], ""


def _pick(op: Op, kind: str, work: GemmWork, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost | str:
    """The fastest kernel the runtime offers for `kind`, with the choice in its why; or the
    reasons (one string) when none can run the op."""
    kernels, forced_note = _candidates(kind, work.dtype, env)
    if not kernels:
        return f"{env.runtime} offers no kernel for {kind} on this device"
    costs: list[tuple[str, Cost]] = []
    reasons: list[str] = []
    for k in kernels:
        out = k.refusal(work.dtype) or k.run(op, work, layer, device, env)
        if isinstance(out, str):
            reasons.append(f"{k.name}: {out}")
        else:
            costs.append((k.name, out))
    if not costs:
        return "; ".join(reasons)
    name, best = min(costs, key=lambda nc: nc[1].latency_s)
    if kind == "dense" and not forced_note:
        best = _weaker_than_known(op, work, device, env, name, best)
    if forced_note:
        choice = forced_note
    elif len(costs) > 1:
        others = ", ".join(f"{n} {c.latency_s * 1e6:.3g} us" for n, c in costs if n != name)
        choice = f"{env.runtime} picks {name} ({best.latency_s * 1e6:.3g} us), fastest of those it offers (vs {others})"
    else:
        choice = f"{env.runtime} runs {name}" + (f" (not: {'; '.join(reasons)})" if reasons else "")
    return dataclasses.replace(best, why=f"{best.why}; {choice}")


def _weaker_than_known(op: Op, work: GemmWork, device: Device, env: KernelEnv, name: str, picked: Cost) -> Cost:
    """A dense kernel the runtime is tied to (its one int4 layout: torchao's tinygemm) that runs
    slower than a kernel it does not offer would: said, and stated as a weak dense library (the
    share of that kernel's speed it reaches), since a sparse kernel can then beat it by more than
    its math."""
    others = [k for k in KERNELS.values()
              if "dense" in k.serves and not env.rt.offers(k.name) and k.takes(work.dtype)]
    runs = [(k.name, out) for k in others if isinstance(out := k.run(op, work, None, device, env), Cost)]
    if not runs:
        return picked
    other, known = min(runs, key=lambda nc: nc[1].latency_s)
    if known.latency_s >= picked.latency_s:
        return picked
    share = known.latency_s / picked.latency_s
    weak = [r.value for r in picked.notes if r.code == "weak_dense_library"]
    notes = tuple(r for r in picked.notes if r.code != "weak_dense_library")
    return dataclasses.replace(
        picked, notes=(*notes, Reason("weak_dense_library", share * (weak[0] if weak else 1.0))),
        why=f"{picked.why}; {name} is the only dense {work.dtype} layout {env.runtime} offers: {other} (not offered) "
            f"would take {known.latency_s * 1e6:.3g} us, so a sparse kernel can beat it by more than its math")


def broadcasts_innermost(op: Op) -> bool:
    """Whether an elementwise op broadcasts an input along its innermost axis (an input whose last
    dim is 1 where the output's is not, e.g. SAM's rel_h[..., None]): eager torch then runs its
    generic kernel with a stride-0 innermost operand, no vectorised loads. A broadcast along outer
    axes (a bias vector, BERT's [B, 1, 1, S] mask) keeps the innermost access contiguous."""
    out = op.output_shape or ()
    if len(out) == 0 or out[-1] <= 1:
        return False
    return any(1 < math.prod(s) < math.prod(out) and len(s) > 0 and s[-1] == 1 for s in op.input_shapes)


def memory_op_bandwidth(op: Op, p: GpuParams, env: KernelEnv) -> tuple[float, str]:
    """The DRAM rate a memory op streams at, and why when it is below the device's: under a
    runtime that runs each elementwise op as its own framework kernel (no elementwise fusion), a
    layout copy, an elementwise op or norm that reads a strided view (`Op.strided`: SAM's residual
    adds and layer norms on its un-padded windows) and a broadcasting elementwise op run torch's
    generic, non-vectorised kernel
    (measured on an H200 by benchmarks/gpu_profile.py: SAM's permuted copies at ~1.5 TB/s and its
    relative-position bias adds at ~0.6 TB/s of a 4.8 TB/s HBM)."""
    if env.rt.fuse_elementwise:
        return dram_bw(p), ""
    if op.kind == "elementwise" and p.broadcast_elementwise_efficiency < 1 and broadcasts_innermost(op):
        return dram_bw(p) * p.broadcast_elementwise_efficiency, (
            f"broadcast along the innermost axis through {env.runtime}'s generic kernel at "
            f"{p.broadcast_elementwise_efficiency:.0%} of the streaming rate")
    if (op.kind == "copy" or (op.strided and op.kind in ("elementwise", "norm"))) and p.strided_copy_efficiency < 1:
        what = "a layout copy" if op.kind == "copy" else f"{op.kind} on a strided view"
        return dram_bw(p) * p.strided_copy_efficiency, (f"{what} through {env.runtime}'s generic kernel "
                                                         f"at {p.strided_copy_efficiency:.0%} of the streaming rate")
    return dram_bw(p), ""


@register_cost("gpu")
def gpu_cost(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on a GPU under the context's runtime (see the module docstring).

    Every op fetches its weights from off-chip memory once, whatever the run `context`. Under a
    runtime that quantises int8/fp8 linears on the fly, every other op runs at 16 bits and each
    such linear pays its quantisation kernels (`dynamic_quant`).
    """
    env = kernel_env(device, context)
    return dynamic_quant.deployed_cost(op, env.rt, env.runtime,
                                       quantised=lambda o: _quantised_on_the_fly(o, layer, device, env),
                                       plain=lambda o: _gpu_cost(o, layer, device, env))


def _quantised_on_the_fly(op: Op, layer: LayerSparsity | None, device: Device, env: KernelEnv) -> Cost:
    """An int8/fp8 linear of a deployed model under a runtime that quantises its input per call:
    the 8-bit GEMM (writing what torchao's kernel writes) with its quantisation kernels."""
    # torchao's semi-sparse int8 layout: the patterns cuSPARSELt runs
    semi_sparse = layer is not None and layer.pattern.kind in KERNELS["cusparselt"].serves
    work = dynamic_quant.gemm_output(gemm_work(op, layer), semi_sparse=semi_sparse, model_dtype=op.deployed_from,
                                     scheme=env.rt.dynamic_quant_scheme)
    cost = _gpu_cost(op, layer, device, env, work)
    if cost.details.get("precision") != precision_id(op.dtype):
        return cost  # the GEMM fell back to 16 bits: nothing to quantise
    return dynamic_quant.with_dynamic_quant(op, work, cost, device.params, env.rt, env.launch,
                                            semi_sparse=semi_sparse)


def _gpu_cost(op: Op, layer: LayerSparsity | None, device: Device, env: KernelEnv,
              work: GemmWork | None = None) -> Cost:
    p: GpuParams = device.params
    if not op.is_matmul or op.gemm is None:
        bandwidth, how = memory_op_bandwidth(op, p, env)
        cost = memory_op_cost(op, device, model=MODEL, bandwidth=bandwidth, overhead_s=env.launch,
                              energy_per_byte_j=p.dram_energy, static_power_w=p.static_power)
        return dataclasses.replace(cost, why=f"{cost.why} ({how})") if how else cost
    work = gemm_work(op, layer) if work is None else work
    if op.kind == "attention":
        return attention_cost(op, work, device, env)
    pruned = ""
    if skippable_inputs(op, layer):
        kind = "act"  # a dense weight, sparse inputs: the dense kernels, or one that skips the zeros
    elif layer is None or layer.pattern.spec.is_dense:
        kind = "dense"
    elif layer.pattern.spec.shrinks_op:
        kind = "dense"
        pruned = f"{channel_pruned_text(layer, work)}, a smaller dense GEMM"
    else:
        kind = layer.pattern.kind
    if not any(kind in k.serves for k in KERNELS.values()):
        assert layer is not None
        return _run_dense(op, work, device, env, f"{layer.pattern.label}: no GPU kernel for {kind} patterns: ran dense",
                          notes=(Reason("unsupported"),))
    if op.kind == "conv" and not env.rt.sparse_convolutions and kind not in ("dense", "act"):
        assert layer is not None
        return _run_dense(op, work, device, env, f"{layer.pattern.label} conv under {env.runtime}: {FRAMEWORK_SPARSE_OPS}",
                          notes=(Reason("unsupported"),))
    out = _pick(op, kind, work, layer, device, env)
    if kind == "vnm" and not isinstance(out, Cost):
        # a V:N:M mask is also an N:M mask: it runs as one when Spatha cannot run it
        assert layer is not None
        as_nm = _pick(op, "nm", work, layer, device, env)
        if isinstance(as_nm, Cost):
            return dataclasses.replace(as_nm, fallback=True,
                                       why=f"{layer.pattern.label} not run by Spatha: {out}; as N:M: {as_nm.why}")
        out = f"{out}; as N:M: {as_nm}"
    if isinstance(out, Cost):
        if pruned:
            out = dataclasses.replace(out, why=f"{pruned}; {out.why}",
                                      kernel=out.kernel.replace("dense", "dense (channel-pruned)", 1))
        return out
    label = layer.pattern.label if layer is not None else "dense"
    if kind in ("dense", "act"):
        return _dequantised(op, work, device, env, out)
    return _run_dense(op, work, device, env, f"{label} not run sparse: {out}; ran dense")


def _run_dense(op: Op, work: GemmWork, device: Device, env: KernelEnv, why: str,
               notes: tuple[Reason, ...] = ()) -> Cost:
    """An op whose pattern no kernel runs: the dense kernel the runtime picks for it, the one a
    dense plan runs (an int4 layer keeps its int4 kernel), as a fallback."""
    out = _pick(op, "dense", work, None, device, env)
    if isinstance(out, Cost):
        return dataclasses.replace(out, fallback=True, why=f"{why}: {out.why}", notes=out.notes + notes)
    return _dequantised(op, work, device, env, f"{why}: {out}", notes)


def _dequantised(op: Op, work: GemmWork, device: Device, env: KernelEnv, why: str,
                 notes: tuple[Reason, ...] = ()) -> Cost:
    """No dense kernel for the dtype (int4 where the runtime offers no int4 kernel): the weights are
    dequantised to 16 bits and run through a 16-bit dense GEMM."""
    p: GpuParams = device.params
    return dense_cost(op, work, device, env, fallback=True, notes=notes,
                      why=f"{why}; ran as a 16-bit dense GEMM", kernel="dense (cublas)",
                      unit=compute_unit(p, "fp16" if "fp16" in p.tensor_peak else work.dtype),
                      w_bytes=work.w_bytes / work.dtype_bytes * 2 if work.dtype_bytes < 1 else None)
