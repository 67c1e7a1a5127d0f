"""Runtimes as device-file data: what running a model under eager PyTorch, a compiler or a vendor
engine costs on a device, on top of what its kernels cost.

A device file names its default runtime and describes each runtime it offers with dotted keys,
every number with a unit and a source, like any other device-file field:

    default_runtime = { value = "eager", source = "..." }
    runtime.eager.host_dispatch = { value = 8, unit = "us", source = "..." }
    runtime.eager.fuse_elementwise = { value = false, source = "..." }
    runtime.eager.kernels = { value = ["cublas", "cusparselt", "cutlass-24"], source = "..." }

The fields are the same for every family (`RuntimeParams`); a family reads the ones that apply
to it (the GPU family its `kernel_launch` and kernel list). A device file without runtime keys
gets one implicit runtime (`IMPLICIT`): no fusion, no host time beyond the family's own overheads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparsesim.core.errors import DeviceFileError
from sparsesim.hw.devices import Provenance, parse_field, parse_quantity, quantity, setting

RUNTIMES = ("eager", "compiled", "engine")
"""The runtimes sparsesim models, from the least to the most optimised."""

RUNTIME_HELP = (
    "eager (framework dispatch per op, no fusion), compiled (torch.compile: elementwise and norm "
    "ops fused, CUDA graphs) or engine (a vendor inference engine: epilogue fusion, tuned kernels)"
)


# the runtime fields that list kernel names (checked against the family's kernels)
KERNEL_LISTS = ("kernels", "serial_dispatch", "transpose_fused", "zeroed_workspace")


# the ops a framework runtime quantises a linear's input with (`RuntimeParams.dynamic_quant_scheme`)
DYNAMIC_QUANT_SCHEMES = ("torchao", "quantized-linear")


@dataclass(frozen=True)
class RuntimeParams:
    """One runtime on one device (SI units after loading).

    `host_dispatch` is host (CPU) time per framework op the runtime dispatches one by one (0 when
    a graph is replayed); `host_overlaps` says whether the device runs ahead of the host (a GPU
    stream: an op takes the longer of its kernel and its dispatch) or not (a CPU: they add up).
    `kernel_dispatch` is the extra host time per call of a sparse kernel's framework op, per
    kernel name (torch's semi-structured tensors run their dispatch in Python and its cuSPARSELt
    op sets up the library's plan on every call; torch.sparse CSR matmul; the Python launch of
    torch's Triton BSR kernel); a kernel it does not name costs an ordinary op's `host_dispatch`.
    `serial_dispatch` names the kernels whose host time blocks the stream (the GPU waits for it)
    rather than running ahead of the kernels, so it adds to the op's time even when the kernel is
    long. `kernel_launch` is the device-side
    cost of one kernel under this runtime (None: the family's own figure). `fuse_elementwise`:
    chains of elementwise/norm/softmax ops run as one kernel; `fuse_epilogue`: elementwise ops
    (bias, activation, residual add) and inference batch norm right after a GEMM/conv run in its
    epilogue; `fuse_attention`: an attention written as score matmul, softmax and value matmul
    runs as one fused attention kernel (scores kept on chip). `kernels` lists the kernel libraries the runtime offers (empty: the family's all).
    `epilogue_in_pipeline`: a fused epilogue op runs in the output stage of the MAC pipeline of a
    dataflow engine, so its remaining on-chip reads (the residual) overlap the GEMM it is fused
    into; only the DRAM traffic it spills still takes time of its own.
    `algorithm_search`: the runtime times the library's algorithms and keeps the fastest (a
    vendor engine's tactic search: split-K for sparse kernels too); `framework_layouts`: sparse
    kernels run through a framework's tensor layouts (torch's semi-structured padding and copies);
    `transpose_fused` names the sparse kernels the framework asks to write their result in the
    linear's own layout (no copy of a transposed result afterwards). `zeroed_workspace` names the
    kernels whose framework op allocates and zeroes the kernel's lock workspace on every call
    (torchao's Sparse-Marlin linear): one fill kernel more a call.
    `attention_warp_specialised`: the runtime's fused attention is a Hopper kernel whose producer
    and consumer warps overlap the softmax with the MMAs (FlashAttention-3's design); without it
    the softmax follows the MMAs (FlashAttention-2, torch's SDPA). `attention_head_dim_multiple`:
    the runtime's attention kernels exist for head dims in multiples of this, so a head dim in
    between runs the next kernel up, its MMAs over the padded width (1: every head dim).
    `attention_block_q` / `attention_block_k`: the query rows and keys one thread block of the
    runtime's attention kernel takes at a time; a sequence that is not a multiple of them runs
    whole blocks over zero-padded rows (1: no padding).
    `masked_attention_rate`: the share of that fused attention's rate the runtime's kernel reaches
    when the attention is given an additive mask or bias tensor (torch's SDPA cannot run
    FlashAttention with attn_mask and runs its memory-efficient or cuDNN kernel, which loads a
    bias tile for every score tile; 1: as fast as without a mask). `pads_channels`: the
    runtime pads a tensor-core layer's channels to the tensor cores' vector width: a
    convolution's input channels, a GEMM's K and N (a vendor engine reformats its tensors into
    vectorised layouts; eager and compiled torch hand cuDNN and cuBLAS the shapes as they are).
    `dynamic_activation_quant`: the runtime deploys int8/fp8 by quantising each linear's 16-bit
    input on every call (torchao's dynamic schemes; `cost.families.dynamic_quant`), every other
    op staying 16-bit; without it int8/fp8 activations stay 8-bit between layers (a vendor
    engine's calibrated static scales). `dynamic_quant_scheme` names the ops that do it:
    "torchao" (its aten sequence around `torch._int_mm`/`_scaled_mm`) or "quantized-linear"
    (torch.ao's dynamically quantised linear on a CPU: fbgemm or QNNPACK find the input's range,
    quantise it and scale the int32 sums back inside the one op).
    `sparse_convolutions`: the runtime's sparse kernels take convolutions (an engine's implicit
    GEMM); false for a framework whose sparse tensors run matrix products only, so a sparse conv
    runs dense (`cost.common.FRAMEWORK_SPARSE_OPS`).
    `masked_attention_epilogue_blocks`: what a thread block of the runtime's masked attention kernel
    (the one `masked_attention_rate` describes) spends outside its loop over the keys (loading its
    query tile, rescaling and writing its output tile), as that many more blocks of
    `attention_block_k` keys: a 196-token window runs 4 such blocks and then pays for a fifth, a
    4,096-token sequence pays 65 for 64 (0: the loop is all there is). Measured for the masked
    kernel only; an unmasked attention does not pay it.
    """

    host_dispatch: float = quantity("time")
    host_overlaps: bool = setting()
    fuse_elementwise: bool = setting()
    fuse_epilogue: bool = setting()
    fuse_attention: bool = setting(default=False)
    kernel_dispatch: Mapping[str, float] = quantity("time", per_dtype=True, default={})
    serial_dispatch: tuple[str, ...] = setting(default=[])
    transpose_fused: tuple[str, ...] = setting(default=[])
    zeroed_workspace: tuple[str, ...] = setting(default=[])
    kernel_launch: float | None = quantity("time", default=None)
    kernels: tuple[str, ...] = setting(default=[])
    algorithm_search: bool = setting(default=False)
    framework_layouts: bool = setting(default=False)
    epilogue_in_pipeline: bool = setting(default=False)
    attention_warp_specialised: bool = setting(default=False)
    attention_head_dim_multiple: float = quantity("count", default=1.0)
    attention_block_q: float = quantity("count", default=1.0)
    attention_block_k: float = quantity("count", default=1.0)
    masked_attention_epilogue_blocks: float = quantity("count", default=0.0)
    masked_attention_rate: float = quantity("ratio", default=1.0)
    pads_channels: bool = setting(default=False)
    dynamic_activation_quant: bool = setting(default=False)
    dynamic_quant_scheme: str = setting(default="torchao")
    sparse_convolutions: bool = setting(default=True)

    def validate(self) -> str | None:
        for name in ("host_overlaps", "fuse_elementwise", "fuse_epilogue", "fuse_attention", "algorithm_search",
                     "framework_layouts", "epilogue_in_pipeline", "attention_warp_specialised",
                     "pads_channels", "dynamic_activation_quant", "sparse_convolutions"):
            if not isinstance(getattr(self, name), bool):
                return f"field '{name}': must be true or false, got {getattr(self, name)!r}"
        if self.dynamic_quant_scheme not in DYNAMIC_QUANT_SCHEMES:
            return (f"field 'dynamic_quant_scheme': {self.dynamic_quant_scheme!r} is not one of "
                    f"{', '.join(DYNAMIC_QUANT_SCHEMES)}")
        for name in ("attention_head_dim_multiple", "attention_block_q", "attention_block_k"):
            m = getattr(self, name)
            if m < 1 or m != int(m):
                return f"field '{name}': must be a whole number >= 1, got {m:g}"
        if not 0 < self.masked_attention_rate <= 1:
            return f"field 'masked_attention_rate': must be in (0, 1], got {self.masked_attention_rate:g}"
        for name in KERNEL_LISTS:
            listed = getattr(self, name)
            if not isinstance(listed, (list, tuple)) or not all(isinstance(k, str) and k for k in listed):
                return f"field '{name}': must be a list of kernel names"
        return None

    def offers(self, kernel: str) -> bool:
        """Whether this runtime can run `kernel` (every kernel when the list is empty)."""
        return not self.kernels or kernel in self.kernels


IMPLICIT = RuntimeParams(host_dispatch=0.0, host_overlaps=True, fuse_elementwise=False, fuse_epilogue=False,
                         framework_layouts=True)
"""The runtime of a device file that names none: the family's overheads, no fusion."""


@dataclass(frozen=True)
class Runtimes:
    """A device's runtimes: its default and each runtime's parameters."""

    default: str = "eager"
    by_name: Mapping[str, RuntimeParams] = field(default_factory=lambda: {"eager": IMPLICIT})
    implicit: bool = True

    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)


def parse_runtimes(doc: Mapping[str, Any], where: str, provenance: dict[str, Provenance]) -> Runtimes:
    """The `default_runtime` and `runtime.<name>.<field>` keys of a device-file document (the
    implicit runtime when it has neither); provenance entries are added as `runtime.<name>.<field>`.
    Unknown runtimes or fields, a missing field or a default that is not described raise
    DeviceFileError naming the file and the key."""
    raw_default, tables = doc.get("default_runtime"), doc.get("runtime")
    if raw_default is None and tables is None:
        return Runtimes()
    if raw_default is None or tables is None:
        missing = "default_runtime" if raw_default is None else "runtime.<name>.<field>"
        raise DeviceFileError(f"{where}: runtimes need both 'default_runtime' and {missing!r} keys")
    default, provenance["default_runtime"] = parse_quantity(raw_default, None, "default_runtime", where)
    if not isinstance(default, str):
        raise DeviceFileError(f"{where}: field 'default_runtime' must name a runtime ({', '.join(RUNTIMES)})")
    if not isinstance(tables, dict) or not tables:
        raise DeviceFileError(f"{where}: field 'runtime' must hold runtime.<name>.<field> = {{ value, source }} keys")
    fields = {f.name: f for f in dataclasses.fields(RuntimeParams)}
    by_name: dict[str, RuntimeParams] = {}
    for name in tables:
        if name not in RUNTIMES:
            raise DeviceFileError(f"{where}: field 'runtime.{name}': unknown runtime {name!r} "
                                  f"(known: {', '.join(RUNTIMES)})")
    for name, table in tables.items():
        key = f"runtime.{name}"
        if not isinstance(table, dict):
            raise DeviceFileError(f"{where}: field '{key}' must hold {key}.<field> keys")
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise DeviceFileError(f"{where}: field '{key}': unknown field(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(fields)})")
        values: dict[str, Any] = {}
        for fname, f in fields.items():
            if fname not in table:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                    raise DeviceFileError(f"{where}: missing field '{key}.{fname}'")
                continue
            values[fname] = parse_field(table[fname], f, f"{key}.{fname}", where, provenance, key="kernel")
        for listed in KERNEL_LISTS:
            if listed in values and isinstance(values[listed], list):
                values[listed] = tuple(values[listed])
        params = RuntimeParams(**values)
        problem = params.validate()
        if problem:
            raise DeviceFileError(f"{where}: runtime {name!r}: {problem}")
        by_name[name] = params
    if default not in by_name:
        raise DeviceFileError(f"{where}: field 'default_runtime': {default!r} is not one of the runtimes the "
                              f"file describes ({', '.join(by_name)})")
    return Runtimes(default, by_name, implicit=False)
