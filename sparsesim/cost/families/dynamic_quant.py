"""Dynamic activation quantisation: how a framework runtime runs an int8 or fp8 linear.

A vendor engine (TensorRT) runs an int8/fp8 network with calibrated static scales: activations
stay 8-bit between layers and each GEMM's epilogue requantises its output (the form
`tracing.retype` gives a workload). PyTorch deploys int8/fp8 linears with torchao's dynamic
schemes instead (`int8_dynamic_activation_int8_weight`, `float8_dynamic_activation_float8_weight`):
the activations stay 16-bit, every call of a linear quantises its input (a per-token scale from
the row's min and max, a scaled, rounded, clamped cast), and

* int8: `torch._int_mm` writes int32 results, which passes scale back to 16 bits (row scale,
  then column scale); TorchInductor realises that int32 tensor too unless
  `force_fuse_int_mm_with_mul` is set (torch/_inductor/config.py: off by default);
* fp8: `torch._scaled_mm` applies both scales in its epilogue and writes 16 bits.

Under a runtime that runs each framework op as its own kernel (eager) those passes are the aten
ops below, each a kernel and a host dispatch; under one that fuses elementwise chains
(`fuse_elementwise`: torch.compile) the quantisation is one kernel (a row reduction and its
pointwise epilogue, as a softmax is) and the dequantisation one more.

Sources: torchao 0.7 `quantization/quant_api.py` (`_int8_symm_per_token_reduced_range_quant`,
`_input_activation_quant_func_fp8`), `quantization/quant_primitives.py`
(`choose_qparams_affine`, `quantize_affine`), `dtypes/uintx/plain_layout.py`
(`_linear_int8_act_int8_weight_impl`) and `kernel/intmm.py` (`int_scaled_matmul`); the eager
sequences were traced with `torch.utils._python_dispatch.TorchDispatchMode` on torch 2.13 over a
bf16 [256, 1280] input (2026-12-04).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost.common import GemmWork
from sparsesim.cost.families.gpu_machine import GpuParams, dram_bw
from sparsesim.cost.record import Cost
from sparsesim.hw.runtimes import RuntimeParams

DYNAMIC_DTYPES = ("int8", "fp8")
# the 16-bit activations the runtime keeps between linears
WIDE_BYTES = 2.0


@dataclass(frozen=True)
class Pass:
    """One kernel over a whole operand: bytes read and written per element of it."""

    name: str
    read: float
    write: float


@dataclass(frozen=True)
class QuantKernels:
    """The kernels a runtime launches around one dynamically quantised linear: passes over its
    16-bit input (M x K), passes over its output (M x N), and kernels over one value per row."""

    on_input: tuple[Pass, ...]
    on_output: tuple[Pass, ...]
    per_row: int

    @property
    def kernels(self) -> int:
        return len(self.on_input) + len(self.on_output) + self.per_row


# eager int8 (traced): amin and amax over each row, 11 ops on the per-row values (zeros_like x2,
# minimum, maximum x2, neg, div, clamp, full_like, reciprocal, mul), then x * (1/scale), round,
# + zero point, clamp and the cast to int8 over the whole input; after `torch._int_mm`, the
# int32 result times the bf16 row scales (bf16 out) and times the column scales
_EAGER_INT8 = QuantKernels(
    on_input=(Pass("amin", 2, 0), Pass("amax", 2, 0), Pass("mul", 2, 2), Pass("round", 2, 2), Pass("add", 2, 2),
              Pass("clamp", 2, 2), Pass("cast to int8", 2, 1)),
    on_output=(Pass("int32 x row scale", 4, 2), Pass("x column scale", 2, 2)),
    per_row=11,
)
# eager fp8 (traced): amin, amax, 11 per-row ops (the scale cast to fp32 among them), then
# x * (1/scale) in fp32, a clamp in fp32 and the cast to e4m3; `_scaled_mm` writes 16 bits
_EAGER_FP8 = QuantKernels(
    on_input=(Pass("amin", 2, 0), Pass("amax", 2, 0), Pass("mul (fp32 out)", 2, 4), Pass("clamp", 4, 4),
              Pass("cast to fp8", 4, 1)),
    on_output=(),
    per_row=11,
)
# fused: one kernel reads each row once and writes it 8-bit; one reads the int32 result and
# writes 16 bits
_FUSED_INT8 = QuantKernels(on_input=(Pass("quantise", 2, 1),), on_output=(Pass("dequantise int32", 4, 2),), per_row=0)
_FUSED_FP8 = QuantKernels(on_input=(Pass("quantise", 2, 1),), on_output=(), per_row=0)
# what the GEMM itself writes per output element under the dynamic scheme
_GEMM_OUTPUT_BYTES = {"int8": DTYPE_BYTES["int32"], "fp8": WIDE_BYTES}


def applies(op: Op, rt: RuntimeParams) -> bool:
    """Whether `op` is a linear of a model deployed at int8/fp8 that the runtime quantises on the
    fly (a GEMM specified at int8, `gemm:...,dtype=int8`, has its operands at int8 already)."""
    return rt.dynamic_activation_quant and op.kind == "linear" and op.weight is not None \
        and op.dtype in DYNAMIC_DTYPES and bool(op.deployed_from)


def quant_kernels(dtype: str, rt: RuntimeParams) -> QuantKernels:
    """The kernels around one linear at `dtype` under `rt` (fused when it fuses elementwise ops)."""
    if rt.fuse_elementwise:
        return _FUSED_INT8 if dtype == "int8" else _FUSED_FP8
    return _EAGER_INT8 if dtype == "int8" else _EAGER_FP8


def gemm_output(work: GemmWork) -> GemmWork:
    """The 8-bit GEMM's work with the output it writes under the dynamic scheme (int32 for
    `torch._int_mm`, 16 bits for `torch._scaled_mm`): part of the GEMM's own traffic."""
    outputs = work.c_bytes / work.dtype_bytes
    return dataclasses.replace(work, c_bytes=outputs * _GEMM_OUTPUT_BYTES[work.dtype])


def with_dynamic_quant(op: Op, work: GemmWork, cost: Cost, p: GpuParams, rt: RuntimeParams,
                       launch_s: float) -> Cost:
    """`cost` (the 8-bit GEMM of `work`) with the quantisation kernels around it: their device
    time (a launch each, bytes at the DRAM rate) as overhead, their bytes in DRAM traffic and
    energy, and their host dispatch (one framework op each) as host time."""
    qk = quant_kernels(op.dtype, rt)
    g = work.gemms[0]
    inputs = g.m * g.k * g.batch * g.groups
    outputs = g.m * g.n * g.batch * g.groups
    nbytes = inputs * sum(q.read + q.write for q in qk.on_input) + outputs * sum(q.read + q.write for q in qk.on_output)
    device_s = qk.kernels * launch_s + nbytes / dram_bw(p)
    host_s = qk.kernels * rt.host_dispatch
    d = dict(cost.details)
    d["overhead_s"] = float(d.get("overhead_s", 0.0)) + device_s
    d["host_s"] = float(d.get("host_s", 0.0)) + host_s
    d["quant_s"] = device_s
    latency = cost.latency_s + device_s
    stretch = latency / cost.latency_s if cost.latency_s > 0 else 1.0
    extra_j = nbytes * p.dram_energy + float(d.get("energy_static_j", 0.0)) * (stretch - 1.0)
    d["energy_memory_j"] = float(d.get("energy_memory_j", 0.0)) + nbytes * p.dram_energy
    d["energy_static_j"] = float(d.get("energy_static_j", 0.0)) * stretch
    passes = ", ".join(q.name for q in qk.on_input + qk.on_output)
    out_note = f"; the GEMM writes its results at {_GEMM_OUTPUT_BYTES[op.dtype]:g} B" if qk.on_output else ""
    why = (f"{cost.why}; dynamic {op.dtype} quantisation: {qk.kernels} kernel(s) ({passes}"
           f"{f', {qk.per_row} per-row ops' if qk.per_row else ''}) moving {nbytes / 1e6:.3g} MB "
           f"(+{device_s * 1e6:.3g} us{f', host +{host_s * 1e6:.3g} us' if host_s else ''}){out_note}")
    levels = dict(cost.bytes_by_level)
    levels["dram"] = levels.get("dram", 0.0) + nbytes
    return dataclasses.replace(cost, latency_s=latency, energy_j=cost.energy_j + extra_j, bytes_by_level=levels,
                               why=why, details=d)
