"""Dynamic activation quantisation: how a framework runtime runs an int8 or fp8 linear.

A vendor engine (TensorRT) runs an int8/fp8 network with calibrated static scales: activations
stay 8-bit between layers and each GEMM's epilogue requantises its output (the form
`tracing.retype` gives a workload). PyTorch deploys int8/fp8 linears with torchao's dynamic
schemes instead (`int8_dynamic_activation_int8_weight`, `float8_dynamic_activation_float8_weight`):
the activations stay 16-bit, every call of a linear quantises its input (a per-token scale from
the row's min and max, a scaled, rounded, clamped cast), and

* int8: `torch._int_mm` writes int32 results, which passes scale back to 16 bits (row scale,
  then column scale); TorchInductor realises that int32 tensor too unless
  `force_fuse_int_mm_with_mul` is set (torch/_inductor/config.py: off by default). A 2:4 int8
  weight (torchao's semi-sparse layout) runs `torch._cslt_sparse_mm` with the column scales as
  its alpha and a 16-bit output: one pass applies the row scales;
* fp8: `torch._scaled_mm` applies both scales in its epilogue and writes 16 bits.

Under a runtime that runs each framework op as its own kernel (eager) those passes are the aten
ops below, each a kernel and a host dispatch; under one that fuses elementwise chains
(`fuse_elementwise`: torch.compile) int8's per-token quantisation is one kernel (a row reduction
and its pointwise epilogue, as a softmax is), fp8's per-tensor one two (the tensor-wide amax, then
the scaled cast), and int8's dequantisation one more.

On a CPU, PyTorch's int8 is torch.ao's dynamically quantised linear instead (the runtime's
`dynamic_quant_scheme = "quantized-linear"`): fbgemm or QNNPACK find the fp32 input's range,
quantise it while packing it and scale the int32 sums back to fp32 in the GEMM's output stage,
all inside the one op (aten/src/ATen/native/quantized/cpu/qlinear_dynamic.cpp, PyTorch 2.6).
Float8 training (torchao's Float8Linear, `Op.training_gemm`) casts both operands of each of a
linear's three GEMMs per call and copies the ones `_scaled_mm` needs in the other layout
(`_float8_training`). The passes are family-neutral (`quant_kernels`, `quant_traffic`); each
family prices them its own way (`with_kernels` on a GPU, the CPU family's memory-op rule), and
`deployed_cost` is the one dispatch both families use.

Sources: torchao 0.7 `quantization/quant_api.py` (`_int8_symm_per_token_reduced_range_quant`,
`_input_activation_quant_func_fp8`), `quantization/quant_primitives.py`
(`choose_qparams_affine`, `quantize_affine`), `dtypes/uintx/plain_layout.py`
(`_linear_int8_act_int8_weight_impl`) and `kernel/intmm.py` (`int_scaled_matmul`); the eager
sequences were traced with `torch.utils._python_dispatch.TorchDispatchMode` on torch 2.13 over
bf16 and fp16 [256, 1280] inputs (2026-12-04).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sparsesim.core.ir import ACTIVATION_QUANT_DTYPES, DTYPE_BYTES, Op
from sparsesim.cost.common import GemmWork
from sparsesim.cost.families.gpu_machine import GpuParams, dram_bw
from sparsesim.cost.record import Cost
from sparsesim.hw.runtimes import DYNAMIC_QUANT_SCHEMES, RuntimeParams
from sparsesim.tracing.retype import widened

TORCHAO, QUANTIZED_LINEAR = DYNAMIC_QUANT_SCHEMES


@dataclass(frozen=True)
class Pass:
    """One kernel over a whole operand: bytes read and written per element of it."""

    name: str
    read: float
    write: float


@dataclass(frozen=True)
class QuantKernels:
    """The kernels a runtime launches around one dynamically quantised GEMM: passes over its
    input at the model's width (M x K), over its other operand (N x K; float8 training casts the
    weight too) and over its output (M x N), and kernels over one value per row; `in_op` when the
    passes run inside the GEMM's own op (torch.ao's quantized linear)."""

    on_input: tuple[Pass, ...]
    on_output: tuple[Pass, ...]
    per_row: int
    in_op: bool = False
    on_weight: tuple[Pass, ...] = ()

    @property
    def kernels(self) -> int:
        return 0 if self.in_op else len(self.on_input) + len(self.on_weight) + len(self.on_output) + self.per_row


FP32_BYTES = DTYPE_BYTES["fp32"]
INT32_BYTES = DTYPE_BYTES["int32"]
NARROW_BYTES = DTYPE_BYTES["int8"]  # an int8 or fp8 element
# torchao's 2:4 int8 linear asks cuSPARSELt for bf16 results (out_dtype=torch.bfloat16)
CSLT_OUT_BYTES = DTYPE_BYTES["bf16"]
# eager torchao's ops on the per-row (fp8: per-tensor) values, traced: zeros_like x2, minimum,
# maximum x2, neg, div, clamp, full_like, reciprocal and, for int8, a mul (fp8: the scale's cast
# to fp32); an fp16 model's int8 casts its scales to fp32 as well, one op more
PER_ROW_OPS = 11


def _intermediate_bytes(model_dtype: str) -> float:
    """The width torchao's int8 passes compute in for a model of `model_dtype`: its per-token
    scales are fp32 for an fp16 model (`scale_dtype=torch.float32 if x.dtype == torch.float16`,
    and `int_scaled_matmul` upcasts fp16 scales), so the passes run in fp32; a bf16 (or fp32)
    model's run in its own width."""
    return FP32_BYTES if model_dtype == "fp16" else DTYPE_BYTES[model_dtype]


def _eager_input(dtype: str, w: float, i: float) -> tuple[tuple[Pass, ...], int]:
    """The eager quantisation of a [tokens, K] input of `w`-byte elements (traced): amin and amax
    over each row, PER_ROW_OPS ops on the per-row values (one more, the scales' cast to fp32, for
    an fp16 model's int8), then over the whole input x * (1 / scale), for int8 round, + zero
    point, clamp and the cast, computed in `i`-byte elements; fp8 (its scale always fp32, the
    cast among the per-row ops) x * (1 / scale), clamp and the cast to e4m3."""
    if dtype == "fp8":
        return (Pass("amin", w, 0), Pass("amax", w, 0), Pass("mul (fp32 out)", w, FP32_BYTES),
                Pass("clamp", FP32_BYTES, FP32_BYTES), Pass("cast to fp8", FP32_BYTES, NARROW_BYTES)), PER_ROW_OPS
    return (Pass("amin", w, 0), Pass("amax", w, 0), Pass("mul", w, i), Pass("round", i, i), Pass("add", i, i),
            Pass("clamp", i, i), Pass("cast to int8", i, NARROW_BYTES)), PER_ROW_OPS + (i != w)


def _output(dtype: str, w: float, i: float, *, fused: bool, semi_sparse: bool) -> tuple[Pass, ...]:
    """The passes after the GEMM, per output element.

    * fp8: none (`_scaled_mm` applies both scales in its epilogue and writes the model's width).
    * dense int8 (plain_layout._linear_int8_act_int8_weight_impl): `torch._int_mm` writes int32,
      times the row scales (in `i` bytes), times the column scales, and cast back to the model's
      width when `i` is wider; fused, one kernel reads the int32 result and writes the width.
    * 2:4 int8 (semi_sparse_layout._linear_int8_act_int8_weight_semi_structured_sparse_impl):
      `torch._cslt_sparse_mm` takes the column scales as alpha and writes bf16; times the row
      scales, cast back when wider (eager), or one pass (fused).
    """
    if dtype == "fp8":
        return ()
    if semi_sparse:
        if fused or i == CSLT_OUT_BYTES:
            return (Pass("x row scale", CSLT_OUT_BYTES, w),)
        return (Pass("x row scale", CSLT_OUT_BYTES, i), Pass("cast back", i, w))
    if fused:
        return (Pass("dequantise int32", INT32_BYTES, w),)
    passes = (Pass("int32 x row scale", INT32_BYTES, i), Pass("x column scale", i, i))
    return passes + ((Pass("cast back", i, w),) if i != w else ())


def applies(op: Op, rt: RuntimeParams) -> bool:
    """Whether `op` is a linear of a model deployed at int8/fp8 (or one of a float8 training step's
    GEMMs) that the runtime quantises on the fly (a GEMM specified at int8, `gemm:...,dtype=int8`,
    has its operands at int8 already)."""
    gemm = (op.kind == "linear" and op.weight is not None) or bool(op.training_gemm)
    return rt.dynamic_activation_quant and gemm and op.dtype in ACTIVATION_QUANT_DTYPES and bool(op.deployed_from)


def deployed_cost(op: Op, rt: RuntimeParams, runtime: str, *, quantised: Callable[[Op], Cost],
                  plain: Callable[[Op], Cost]) -> Cost:
    """The cost of `op` under a runtime, any family: `quantised` for a linear the runtime quantises
    on the fly; every other op of a model deployed at int8/fp8 back at its model's width under
    such a runtime (`widened`), saying so for a convolution or matmul; `plain` otherwise."""
    if not (rt.dynamic_activation_quant and op.deployed_from):
        return plain(op)
    if applies(op, rt):
        return quantised(op)
    narrow, wide = op.dtype, widened(op)
    cost = plain(wide)
    if not wide.is_matmul or narrow not in ACTIVATION_QUANT_DTYPES:
        return cost
    return dataclasses.replace(cost, why=f"{cost.why}; deployed at {narrow}, but {runtime} quantises linears "
                                         f"only: this {wide.kind} stays {wide.dtype}")


def _writes_int32(dtype: str, semi_sparse: bool, scheme: str = TORCHAO) -> bool:
    """Whether the GEMM writes int32 results (torch._int_mm) rather than scaled ones."""
    return scheme == TORCHAO and dtype == "int8" and not semi_sparse


# torchao 0.7 float8 training, tensorwise dynamic scaling (float8/float8_utils.py tensor_to_amax,
# amax_to_scale, to_fp8_saturated; float8_tensor.py _ToFloat8ConstrFunc): a cast of a `w`-byte
# tensor runs abs, max, the upcast to fp32, x scale, clamp and the cast to fp8 over it, and 4 ops
# on the scalar amax (to float64, clamp, divide, to float32); fused, a reduction then a scaled cast
FLOAT8_SCALAR_OPS = 4


def _float8_cast(w: float, fused: bool) -> tuple[Pass, ...]:
    if fused:
        return (Pass("amax", w, 0), Pass("scale and cast", w, NARROW_BYTES))
    return (Pass("abs", w, w), Pass("max", w, 0), Pass("to fp32", w, FP32_BYTES), Pass("x scale", FP32_BYTES, FP32_BYTES),
            Pass("clamp", FP32_BYTES, FP32_BYTES), Pass("cast to fp8", FP32_BYTES, NARROW_BYTES))


def _float8_training(gemm: str, w: float, fused: bool) -> QuantKernels:
    """The passes around one GEMM of a Float8Linear's training step (torchao 0.7 float8_linear.py,
    manual_float8_matmul_with_args_in_float8, and float8_ops.py preprocess_addmm, which makes
    `_scaled_mm`'s first operand row-major and its second column-major):

    * forward `x @ w^T`: x and w cast (the weight changes every step, so it is cast every step);
    * grad-input `dY @ w`: dY cast (e5m2, once for both backward GEMMs); the fp8 weight saved by
      the forward is row-major where `_scaled_mm` needs it column-major: a transposed copy;
    * grad-weight `dY^T @ x`: dY^T and the saved fp8 x both copied into the layout it needs.

    The copies are kernels of their own under either runtime (assumed: not traced under inductor)."""
    cast = _float8_cast(w, fused)
    copy = (Pass("transposed copy", NARROW_BYTES, NARROW_BYTES),)
    scalar = 0 if fused else FLOAT8_SCALAR_OPS
    if gemm == "forward":
        return QuantKernels(cast, (), per_row=2 * scalar, on_weight=cast)
    if gemm == "grad-input":
        return QuantKernels(cast, (), per_row=scalar, on_weight=copy)
    return QuantKernels(copy, (), per_row=0, on_weight=copy)


def quant_kernels(dtype: str, rt: RuntimeParams, *, semi_sparse: bool = False, model_dtype: str = "bf16",
                  training_gemm: str = "") -> QuantKernels:
    """The kernels around one linear at `dtype` of a `model_dtype` model under `rt` (fused when it
    fuses elementwise ops); `semi_sparse`: its weight is 2:4 (torchao's semi-sparse layout);
    `training_gemm`: the GEMM of a float8 training step it is (fp8 only)."""
    w = DTYPE_BYTES[model_dtype]
    if training_gemm and dtype == "fp8" and rt.dynamic_quant_scheme == TORCHAO:
        return _float8_training(training_gemm, w, rt.fuse_elementwise)
    if rt.dynamic_quant_scheme == QUANTIZED_LINEAR:
        # qlinear_dynamic (fbgemm: FindMinMax, then Quantize to uint8; QNNPACK alike) inside the
        # op, the int32 sums scaled back to the model's width in the GEMM's output stage
        return QuantKernels((Pass("min and max", w, 0), Pass("quantise", w, NARROW_BYTES)), (), per_row=0,
                            in_op=True)
    i = _intermediate_bytes(model_dtype)
    fused = rt.fuse_elementwise
    on_output = _output(dtype, w, i, fused=fused, semi_sparse=semi_sparse)
    if fused:
        # one kernel reduces each row and writes it 8-bit, as a softmax; fp8's scale is per tensor
        # (torchao 0.7's default granularity, PerTensor): its amax is a reduction of its own first
        fused_input: tuple[Pass, ...] = ((Pass("quantise", w, NARROW_BYTES),) if dtype == "int8"
                                         else (Pass("amax", w, 0), Pass("scale and cast", w, NARROW_BYTES)))
        return QuantKernels(fused_input, on_output, per_row=0)
    eager_input, per_row = _eager_input(dtype, w, i)
    return QuantKernels(eager_input, on_output, per_row=per_row)


def gemm_output(work: GemmWork, *, semi_sparse: bool = False, model_dtype: str = "bf16",
                scheme: str = TORCHAO) -> GemmWork:
    """The 8-bit GEMM's work with the output it writes under the dynamic scheme: int32 for
    `torch._int_mm`, bf16 for cuSPARSELt's int8 (torchao asks for bf16), the model's width for
    `torch._scaled_mm` and for a quantized linear. Part of its own traffic."""
    outputs = work.c_bytes / work.dtype_bytes
    if scheme == QUANTIZED_LINEAR:
        width = DTYPE_BYTES[model_dtype]
    elif _writes_int32(work.dtype, semi_sparse):
        width = INT32_BYTES
    else:
        width = CSLT_OUT_BYTES if work.dtype == "int8" else DTYPE_BYTES[model_dtype]
    return dataclasses.replace(work, c_bytes=outputs * width)


@dataclass(frozen=True)
class QuantTraffic:
    """The quantisation kernels around one linear, sized: each pass with the bytes it moves (its
    elements times its bytes read and written), and the words for a why."""

    kernels: QuantKernels
    passes: tuple[tuple[Pass, float], ...]
    what: str
    note: str

    @property
    def nbytes(self) -> float:
        return sum(b for _, b in self.passes)


def quant_traffic(op: Op, work: GemmWork, rt: RuntimeParams, *, semi_sparse: bool = False) -> QuantTraffic:
    """The kernels `rt` launches around the 8-bit GEMM of `work` (a linear of a model deployed at
    int8/fp8), each pass with the bytes it moves over the GEMM's input or output."""
    qk = quant_kernels(op.dtype, rt, semi_sparse=semi_sparse, model_dtype=op.deployed_from,
                       training_gemm=op.training_gemm)
    g = work.gemms[0]
    inputs = g.m * g.k * g.batch * g.groups
    weights = g.n * g.k * g.batch * g.groups
    outputs = g.m * g.n * g.batch * g.groups
    passes = tuple((q, inputs * (q.read + q.write)) for q in qk.on_input) + \
        tuple((q, weights * (q.read + q.write)) for q in qk.on_weight) + \
        tuple((q, outputs * (q.read + q.write)) for q in qk.on_output)
    names = ", ".join(q.name for q, _ in passes)
    note = "; the GEMM writes int32 results" if _writes_int32(op.dtype, semi_sparse, rt.dynamic_quant_scheme) else ""
    where = "inside the quantized linear" if qk.in_op else f"{qk.kernels} kernel(s)"
    scheme = f"float8 training ({op.training_gemm})" if qk.on_weight else f"dynamic {op.dtype} quantisation"
    what = (f"{scheme}: {where} ({names}"
            f"{f', {qk.per_row} per-row ops' if qk.per_row else ''})")
    return QuantTraffic(qk, passes, what, note)


def with_dynamic_quant(op: Op, work: GemmWork, cost: Cost, p: GpuParams, rt: RuntimeParams,
                       launch_s: float, *, semi_sparse: bool = False) -> Cost:
    """`cost` (the 8-bit GEMM of `work`) on a GPU with the quantisation kernels around it: their
    device time (a launch each, bytes at the DRAM rate) as overhead, their bytes in DRAM traffic
    and energy, and their host dispatch (one framework op each) as host time."""
    qt = quant_traffic(op, work, rt, semi_sparse=semi_sparse)
    return with_kernels(cost, p, rt, launch_s, kernels=qt.kernels.kernels, nbytes=qt.nbytes, what=qt.what,
                        note=qt.note)


def with_kernels(cost: Cost, p: GpuParams, rt: RuntimeParams, launch_s: float, *, kernels: int, nbytes: float,
                 what: str, note: str = "") -> Cost:
    """`cost` with `kernels` more GPU kernels around it moving `nbytes` through DRAM: their device
    time (a launch each, the bytes at the DRAM rate) and their host dispatch (one framework op
    each)."""
    return with_passes(cost, device_s=kernels * launch_s + nbytes / dram_bw(p), host_s=kernels * rt.host_dispatch,
                       bytes_by_level={"dram": nbytes}, energy_j=nbytes * p.dram_energy, what=what, note=note)


def with_passes(cost: Cost, *, device_s: float, host_s: float, bytes_by_level: dict[str, float], energy_j: float,
                what: str, note: str = "") -> Cost:
    """`cost` with more kernels around it (any family): `device_s` of their time as overhead,
    their bytes at each memory level and the energy of moving them, `host_s` of host dispatch;
    the static energy stretches with the latency."""
    nbytes = sum(bytes_by_level.values())
    d = dict(cost.details)
    d["overhead_s"] = float(d.get("overhead_s", 0.0)) + device_s
    d["host_s"] = float(d.get("host_s", 0.0)) + host_s
    d["quant_s"] = float(d.get("quant_s", 0.0)) + device_s
    d["quant_dram_bytes"] = float(d.get("quant_dram_bytes", 0.0)) + bytes_by_level.get("dram", 0.0)
    latency = cost.latency_s + device_s
    stretch = latency / cost.latency_s if cost.latency_s > 0 else 1.0
    extra_j = energy_j + float(d.get("energy_static_j", 0.0)) * (stretch - 1.0)
    d["energy_memory_j"] = float(d.get("energy_memory_j", 0.0)) + energy_j
    d["energy_static_j"] = float(d.get("energy_static_j", 0.0)) * stretch
    why = (f"{cost.why}; {what} moving {nbytes / 1e6:.3g} MB "
           f"(+{device_s * 1e6:.3g} us{f', host +{host_s * 1e6:.3g} us' if host_s else ''}){note}")
    levels = dict(cost.bytes_by_level)
    for level, b in bytes_by_level.items():
        levels[level] = levels.get(level, 0.0) + b
    return dataclasses.replace(cost, latency_s=latency, energy_j=cost.energy_j + extra_j, bytes_by_level=levels,
                               why=why, details=d)
