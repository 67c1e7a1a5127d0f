"""The workload IR: ordered ops with shapes, owning module and weights; it knows nothing of hardware."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Op kinds. Matmul-like kinds carry a GemmShape; the rest carry bytes moved only.
MATMUL_KINDS = ("linear", "matmul", "conv", "attention")
MEMORY_KINDS = ("elementwise", "norm", "softmax", "embedding", "reduction", "copy")
UNKNOWN = "unknown"

DTYPE_BYTES: Mapping[str, float] = {
    "fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int8wo": 1, "int4": 0.5,
    "int32": 4, "int64": 8, "bool": 1,
}

# weight-only dtypes: the weight is stored at the dtype, the activations and the arithmetic stay
# at this 16-bit dtype (int4 weight-only GEMMs dequantise in the kernel, as Marlin does; int8wo is
# int8 weight-only, torchao's int8_weight_only and gpt-fast's int8)
WEIGHT_ONLY_DTYPES: Mapping[str, str] = {"int4": "fp16", "int8wo": "fp16"}

# dtypes a deployment quantises the activations to as well as the weights (`tracing.retype`)
ACTIVATION_QUANT_DTYPES = ("int8", "fp8")


def activation_dtype(dtype: str) -> str:
    """The dtype activations (and the arithmetic) of an op at `dtype` run in."""
    return WEIGHT_ONLY_DTYPES.get(dtype, dtype)


@dataclass(frozen=True)
class GemmShape:
    """A (batched, grouped) GEMM  C[M,N] = A[M,K] @ W[K,N], repeated `batch` x `groups` times.

    For a linear layer M = rows of activations (batch x tokens), N = out features, K = in
    features; its weight is the N x K matrix. For a convolution this is the implicit GEMM:
    M = batch x out_h x out_w, N = out_channels / groups, K = in_channels / groups x kh x kw.
    For attention it is one of its two GEMMs (QK^T); `Op.flops` counts both.
    """

    m: int
    n: int
    k: int
    batch: int = 1
    groups: int = 1

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k * self.batch * self.groups


@dataclass(frozen=True)
class ConvGeometry:
    """What a convolution looks like before it is lowered to a GEMM."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    input_spatial: tuple[int, ...]
    output_spatial: tuple[int, ...]


@dataclass(frozen=True)
class Op:
    """One traced operator.

    `weight` names the parameter (as `named_parameters()` spells it) whose matrix a plan
    sparsifies; `weight_rows`/`weight_cols` is that weight viewed as the N x K GEMM operand
    (a conv weight Cout x Cin/g x kh x kw is viewed as Cout x (Cin/g*kh*kw)).
    `activation_density` is the measured fraction of nonzeros in the input activation
    (1.0 when it cannot be measured, e.g. on the meta device; then `activation_measured` is False).

    A grouped expert GEMM (a Mixture-of-Experts layer's experts, `experts` > 0) carries the rows
    routed to each expert (`expert_tokens`, after capacity drops), the rows dropped for capacity
    and the routing model they came from (`sparsesim.tracing.routing`); its `weight_shape` is the
    stored 3-D expert tensor and its `gemm` the per-expert GEMM run by every touched expert
    (`groups`), padded to the busiest expert's rows.
    """

    index: int
    kind: str
    aten: str
    module: str
    call_index: int
    dtype: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    flops: int
    bytes_moved: int
    gemm: GemmShape | None = None
    conv: ConvGeometry | None = None
    weight: str | None = None
    weight_shape: tuple[int, ...] | None = None
    activation_density: float = 1.0
    activation_measured: bool = False
    note: str = ""
    causal: bool = False  # attention with a causal mask (is_causal): a fused kernel skips the masked tiles
    # attention given an additive mask or bias tensor: torch's SDPA cannot run FlashAttention on it
    masked: bool = False
    strided: bool = False  # an input is a strided view (a permute or slice not made contiguous)
    weight_k_major: bool = False  # the 2-D weight is stored K x N (a Conv1D, an expert bank), not N x K
    experts: int = 0
    top_k: int = 0
    expert_tokens: tuple[int, ...] = ()
    dropped_rows: int = 0
    routing: str = ""
    # the dtype the model built this op in, when an int8/fp8 deployment (`tracing.retype`)
    # retyped it ("" for an op at the dtype it was traced or specified in): a framework runtime
    # keeps such activations at that width and quantises each linear's input on the fly
    deployed_from: str = ""
    # which GEMM of a training step a linear's op is ("forward", "grad-input", "grad-weight"; ""
    # outside a training step): float8 training casts different operands for each (`dynamic_quant`)
    training_gemm: str = ""

    @property
    def is_matmul(self) -> bool:
        return self.kind in MATMUL_KINDS

    @property
    def is_grouped(self) -> bool:
        """A grouped expert GEMM (one GEMM per routed expert, see the class doc)."""
        return self.experts > 0

    @property
    def weight_matrix(self) -> tuple[int, int] | None:
        """The weight as the N x K matrix a mask is built on, or None for weightless ops."""
        if self.weight_shape is None:
            return None
        rows = self.weight_shape[0]
        cols = 1
        for d in self.weight_shape[1:]:
            cols *= d
        return rows, cols

    @property
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class WeightInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    on_meta: bool


@dataclass(frozen=True)
class Workload:
    """An ordered list of ops plus what the tracer saw of the model's weights.

    `model` is kept (not compared, not hashed) so plans can build masks from real weights;
    `activation_norms` maps a weight name to the per-input-feature L2 norms of the activation
    feeding it (for activation-aware masks); both are empty on the meta device. `dataflow`
    (a `sparsesim.tracing.dataflow.Dataflow`) says which channels each traced tensor carries;
    channel pruning needs it.
    `input_bytes` is the size of the tensors held by the example inputs after the forward (token
    ids, images, and a KV cache the forward filled): device memory the run needs besides weights.
    `notes` are what the tracer did that the user should know (e.g. it traced a compiled module's
    original).
    """

    name: str
    ops: tuple[Op, ...]
    weights: Mapping[str, WeightInfo] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, compare=False, hash=False, repr=False)
    activation_norms: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    input_bytes: int = 0
    notes: tuple[str, ...] = ()
    dataflow: Any = field(default=None, compare=False, hash=False, repr=False)

    @property
    def on_meta(self) -> bool:
        return any(w.on_meta for w in self.weights.values())

    def weight_ops(self) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if op.weight is not None)

    def summary(self) -> dict[str, Any]:
        kinds = Counter(op.kind for op in self.ops)
        return {
            "name": self.name,
            "ops": len(self.ops),
            "by_kind": dict(sorted(kinds.items())),
            "unknown_ops": kinds.get(UNKNOWN, 0),
            "unknown_aten": sorted({op.aten for op in self.ops if op.kind == UNKNOWN}),
            "flops": sum(op.flops for op in self.ops),
            "bytes_moved": sum(op.bytes_moved for op in self.ops),
            "weights": len(self.weights),
            "weight_params": sum(_numel(w.shape) for w in self.weights.values()),
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
