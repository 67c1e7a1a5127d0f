"""One training step of a traced workload as IR ops, ready for the one costing path.

Per forward op of the workload:

* a linear/conv (weight W, N x K as the GEMM sees it, activation rows M):
  - forward Y = X W^T: the traced op, with W's sparsity;
  - grad-input dX = dY W: GEMM (M, K, N) whose weight operand is W^T. Sparse kernels need the
    transposed weight stored too (torchao writes a transposable 2:4 mask's W and W^T; a CSR
    kernel keeps the CSC copy); it is the layer `<weight>^T`. The first op's input is the
    model's input and needs no gradient unless `input_grad` says so (a layer cut out of a net).
    A convolution's grad-input is the transposed convolution lowered to the same implicit GEMM
    (col2im), the same FLOPs as the forward;
  - grad-weight dW = dY^T X: GEMM (N, K, M) with no weight operand, dense; or, when the
    segment's weight gradient is sparse and the pattern's kernel can write a sparse output
    (the pattern kind's `sparse_output`: unstructured, block), an SDDMM computing only the kept entries. The SDDMM is costed as the
    SpMM with the same mask: the same MACs per nonzero (M each) and the same operand traffic,
    dY in place of Y (Sputnik runs both at the same efficiency, published.md §3.1). N:M has no
    sparse-output kernel (the sparse tensor cores take a sparse *input*): its dW is dense.
    Channel pruning makes all three GEMMs smaller dense ones.
* a weightless matmul: two GEMMs, one per operand gradient; attention: its backward as two
  passes of the same GEMMs (FLOPs 2x forward, the flash-attention convention).
* a memory-bound op (norm, activation, add, pooling, ...): its backward reads dY and the saved
  inputs and writes their gradients: bytes = output + 2 x inputs at the op's dtype.

Then the optimizer update (`optimizers.py`) over the parameter values held, the step's mask
ops (top-k by radix select, 2:4 compression, masked storage's weight * mask), and with
activation checkpointing a second forward (recompute) of every forward op.
Nothing here costs anything: the step goes through `sparsesim.run.estimate.cost_workload`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op, Workload
from sparsesim.sparsity.records import DENSE, LayerSparsity, Pattern, SparseWorkload
from sparsesim.sparsity.sparsify import SPARSIFIED_KINDS, layer_record
from sparsesim.sparsity.stats import analytic_stats
from sparsesim.train.methods import Segment
from sparsesim.train.optimizers import Optimizer

PASSES = ("forward", "grad-input", "grad-weight", "recompute", "optimizer", "mask")
STORAGES = ("sparse", "masked")
TRANSPOSED = "^T"
# Top-k / k-th value of a large tensor (a magnitude threshold) runs as a radix select that reads
# the whole tensor once per digit of the key: PyTorch's multi-block top-k uses 8-bit digits
# (aten/src/ATen/native/cuda/TensorTopK.cu, namespace mbtopk, RADIX_BITS = 8).
RADIX_BITS = 8
# random scores for SET's regrowth are drawn in fp32 (torch.rand's default dtype)
RANDOM_SCORE_BYTES = 4


@dataclass(frozen=True)
class StepOptions:
    """What a step's ops depend on besides the segment: how sparse weights are stored,
    the optimizer, activation checkpointing, and whether the model input needs a gradient."""

    storage: str = "sparse"
    optimizer: Optimizer | None = None
    checkpoint: bool = False
    input_grad: bool = False


@dataclass(frozen=True)
class Step:
    """The ops of one step (or event) with their sparsity, pass and theoretical FLOPs."""

    sparse: SparseWorkload
    layers: tuple[LayerSparsity | None, ...]
    passes: tuple[str, ...]
    theoretical_flops: tuple[float, ...]

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.sparse.ops

    @property
    def flops(self) -> float:
        return float(sum(self.theoretical_flops))


@lru_cache(maxsize=4096)
def _layer(rows: int, cols: int, pattern: Pattern, value_bytes: float) -> LayerSparsity:
    return layer_record("", pattern, analytic_stats(rows, cols, pattern), value_bytes)


@lru_cache(maxsize=16384)
def layer_for(weight: str, rows: int, cols: int, pattern: Pattern, value_bytes: float) -> LayerSparsity:
    """A weight's LayerSparsity under `pattern` with analytic stats (a training mask moves, so
    no one mask is measured)."""
    from dataclasses import replace

    return replace(_layer(rows, cols, pattern, value_bytes), weight=weight)


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape else 0


def _bwd_memory_bytes(op: Op) -> int:
    db = DTYPE_BYTES.get(op.dtype, 4)
    ins = sum(_numel(s) for s in op.input_shapes)
    return int((_numel(op.output_shape) + 2 * ins) * db)


def _is_weight_op(op: Op) -> bool:
    return op.weight is not None and op.kind in SPARSIFIED_KINDS and op.gemm is not None and op.weight_shape is not None


def kept(op: Op, pattern: Pattern) -> float:
    """Kept fraction of a weight op's MACs under `pattern` (what a sparse algorithm computes)."""
    return 1.0 if pattern.spec.is_dense else pattern.density


class _Builder:
    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.ops: list[Op] = []
        self.layers: list[LayerSparsity | None] = []
        self.passes: list[str] = []
        self.flops: list[float] = []
        self.stored: dict[str, LayerSparsity] = {}

    def add(self, op: Op, layer: LayerSparsity | None, phase: str, flops: float) -> None:
        from dataclasses import replace

        self.ops.append(replace(op, index=len(self.ops)))
        self.layers.append(layer)
        self.passes.append(phase)
        self.flops.append(float(flops))
        if layer is not None:
            self.stored.setdefault(layer.weight, layer)

    def step(self, label: str) -> Step:
        from dataclasses import replace

        wl = replace(self.workload, name=self.workload.name, ops=tuple(self.ops))
        sw = SparseWorkload(workload=wl, plan_name=label, layers=dict(self.stored))
        # every layer travels by its op's weight name: `cost_workload` looks layers up by name
        assert all(sw.sparsity_of(op) == ly for op, ly in zip(sw.ops, self.layers))
        return Step(sw, tuple(self.layers), tuple(self.passes), tuple(self.flops))


def _memory_op(template: Op, *, aten: str, kind: str, nbytes: float, flops: float, module: str,
               numel: int, note: str) -> Op:
    return Op(index=0, kind=kind, aten=aten, module=module, call_index=0, dtype=template.dtype,
              input_shapes=((numel,),), output_shape=(numel,), flops=int(flops), bytes_moved=int(nbytes),
              note=note)


def _channel_shrunk(g: GemmShape, pattern: Pattern) -> tuple[int, int]:
    """(N, K) left by channel pruning of the weight's output rows at `pattern`'s density."""
    return max(1, math.ceil(g.n * pattern.density)), g.k


def _forward_op(b: _Builder, op: Op, pattern: Pattern, opts: StepOptions, vb: float, phase: str) -> None:
    """The forward (or its recompute) of a linear/conv, with the weight's sparsity."""
    rows, cols = op.weight_matrix or (0, 0)
    sparse_kernels = opts.storage == "sparse" and not pattern.spec.is_dense
    layer = layer_for(op.weight or "", rows, cols, pattern, vb) if sparse_kernels else None
    b.add(replace(op, training_gemm="forward"), layer, phase, op.flops * kept(op, pattern))


def _backward_ops(b: _Builder, op: Op, pattern: Pattern, seg: Segment, opts: StepOptions, first: bool,
                  vb: float) -> None:
    """Grad-input and grad-weight of a linear/conv."""
    g = op.gemm
    assert g is not None and op.weight is not None and op.weight_shape is not None
    w = op.weight
    rows, cols = op.weight_matrix or (g.n * g.groups, g.k)
    sparse_kernels = opts.storage == "sparse" and not pattern.spec.is_dense
    frac = kept(op, pattern)
    conv = op.kind == "conv"
    n, k = g.n, g.k
    channel = sparse_kernels and pattern.spec.shrinks_op
    if channel:
        n, k = _channel_shrunk(g, pattern)
    if not first or opts.input_grad:
        # the weight operand of grad-input is W^T: a stored copy for sparse kernels (the layer
        # `<weight>^T`); dense or channel-pruned, it is W read transposed (no layer of its own)
        t_layer = None
        t_name = w if not sparse_kernels else w + TRANSPOSED
        if sparse_kernels and not channel:
            t_layer = layer_for(t_name, k * g.groups, n, pattern, vb)
        dgrad = Op(index=0, kind=op.kind, aten="aten.convolution_backward.default" if conv else "aten.mm.default",
                   module=op.module, call_index=op.call_index, dtype=op.dtype,
                   input_shapes=(op.output_shape, (k * g.groups, n)),
                   output_shape=op.input_shapes[0] if op.input_shapes else (g.m, k),
                   flops=2 * g.m * n * k * g.batch * g.groups, bytes_moved=op.bytes_moved,
                   gemm=GemmShape(g.m, k, n, g.batch, g.groups), weight=t_name, weight_shape=(k * g.groups, n),
                   note="grad-input", deployed_from=op.deployed_from, training_gemm="grad-input")
        b.add(dgrad, t_layer, "grad-input", op.flops * frac)
    sddmm = sparse_kernels and seg.wgrad == "sparse" and pattern.spec.sparse_output
    wgrad_flops = op.flops * (frac if seg.wgrad == "sparse" else 1.0)
    if sddmm:
        layer = layer_for(w, rows, cols, pattern, vb)
        sd = Op(index=0, kind=op.kind, aten="aten.sparse_sampled_addmm.default", module=op.module,
                call_index=op.call_index, dtype=op.dtype, input_shapes=(op.output_shape, op.input_shapes[0]),
                output_shape=op.weight_shape, flops=op.flops, bytes_moved=op.bytes_moved, gemm=g,
                weight=w, weight_shape=op.weight_shape, note="grad-weight SDDMM (costed as the SpMM of its mask)")
        b.add(sd, layer, "grad-weight", wgrad_flops)
        return
    wg = Op(index=0, kind="conv" if conv else "matmul",
            aten="aten.convolution_backward.default" if conv else "aten.mm.default", module=op.module,
            call_index=op.call_index, dtype=op.dtype,
            input_shapes=(op.output_shape, op.input_shapes[0] if op.input_shapes else (g.m, g.k)),
            output_shape=op.weight_shape, flops=2 * n * k * g.m * g.batch * g.groups, bytes_moved=op.bytes_moved,
            gemm=GemmShape(n, k, g.m, g.batch, g.groups), note="grad-weight (dense)", deployed_from=op.deployed_from,
            training_gemm="grad-weight")
    b.add(wg, None, "grad-weight", wgrad_flops)


def _other_backward(b: _Builder, op: Op) -> None:
    """Backward of a weightless matmul, attention, or a memory-bound op."""
    from dataclasses import replace

    if op.kind == "attention" and op.gemm is not None:
        for part in ("dQ", "dK dV"):
            b.add(replace(op, note=f"attention backward ({part})"), None, "grad-input", op.flops)
        return
    if op.is_matmul and op.gemm is not None:
        g = op.gemm
        for shape, what in ((GemmShape(g.m, g.k, g.n, g.batch, g.groups), "dA"),
                            (GemmShape(g.k, g.n, g.m, g.batch, g.groups), "dB")):
            b.add(replace(op, kind="matmul", gemm=shape, weight=None, weight_shape=None, note=f"matmul backward ({what})"),
                  None, "grad-input", op.flops)
        return
    b.add(replace(op, aten=f"{op.aten} (backward)", bytes_moved=_bwd_memory_bytes(op), note="backward"),
          None, "grad-input", op.flops)


def _key_passes(value_bytes: float) -> int:
    return max(1, math.ceil(8 * value_bytes / RADIX_BITS))


def _extra_ops(b: _Builder, extra: str, patterns: Mapping[str, Pattern], shapes: Mapping[str, tuple[int, int]],
               template: Op, seg: Segment, vb: float, storage: str) -> None:
    """The mask ops of one step or event, one op per sparsifiable weight that is not dense."""
    for w, p in patterns.items():
        if p.spec.is_dense or w not in shapes:
            continue
        rows, cols = shapes[w]
        size = rows * cols
        held_sparse = storage == "sparse" and seg.held == "sparse"
        values = size * p.density if held_sparse else size
        zeros = size - size * p.density
        module = w.rpartition(".")[0]
        if extra == "prune-topk":
            # threshold by radix select over the held values, then the mask (or the compressed
            # values and indices) rewritten
            layer = layer_for(w, rows, cols, p, vb)
            rewrite = layer.format_bytes if held_sparse else size * vb
            nbytes = _key_passes(vb) * values * vb + rewrite
            b.add(_memory_op(template, aten="aten.topk.default", kind="reduction", nbytes=nbytes, flops=0,
                             module=module, numel=int(values), note="prune: magnitude threshold"), None, "mask", 0)
        elif extra == "grow-random":
            nbytes = zeros * RANDOM_SCORE_BYTES * (1 + _key_passes(RANDOM_SCORE_BYTES))
            b.add(_memory_op(template, aten="aten.topk.default", kind="reduction", nbytes=nbytes, flops=0,
                             module=module, numel=int(zeros), note="grow: random scores over the zeros"), None, "mask", 0)
        elif extra == "grow-gradient":
            nbytes = _key_passes(vb) * zeros * vb
            b.add(_memory_op(template, aten="aten.topk.default", kind="reduction", nbytes=nbytes, flops=0,
                             module=module, numel=int(zeros), note="grow: top-k of the dense gradient over the zeros"),
                  None, "mask", 0)
        elif extra == "nm-compress":
            if storage != "sparse":
                continue
            fwd = layer_for(w, rows, cols, p, vb)
            nbytes = size * vb + 2 * fwd.format_bytes
            b.add(_memory_op(template, aten="aten._sparse_semi_structured_tile.default", kind="elementwise",
                             nbytes=nbytes, flops=0, module=module, numel=size,
                             note="2:4: prune to a transposable mask, write compressed W and W^T"), None, "mask", 0)
        elif extra == "mask-apply":
            # forward: weight = weight_orig * mask; backward: grad_orig = grad * mask
            for what in ("weight = weight_orig * mask", "grad_orig = grad * mask"):
                b.add(_memory_op(template, aten="aten.mul.Tensor", kind="elementwise", nbytes=3 * size * vb,
                                 flops=size, module=module, numel=size, note=f"masked storage: {what}"),
                      None, "mask", 0)


def weight_shapes(workload: Workload) -> dict[str, tuple[int, int]]:
    """Each sparsifiable weight as the N x K matrix its GEMM sees."""
    out: dict[str, tuple[int, int]] = {}
    for op in workload.ops:
        if _is_weight_op(op) and op.weight not in out:
            out[op.weight] = op.weight_matrix  # type: ignore[index,assignment]
    return out


def build_step(workload: Workload, seg: Segment, opts: StepOptions, *, held_values: float, param_bytes: float,
               label: str = "", sparse_values: float | None = None) -> Step:
    """The ops of one step of `seg` (or its extras alone for an event) on `workload`:
    forward, recompute (with checkpointing), backward in reverse order, optimizer, mask ops.

    The optimizer updates `held_values` parameter values (what the storage holds); its
    theoretical FLOPs count `sparse_values` (what the method needs updated, the kept weights),
    so that theoretical FLOPs do not depend on the storage. Masking's own ops count none."""
    from sparsesim.train.optimizers import optimizer_op

    b = _Builder(workload)
    shapes = weight_shapes(workload)
    template = workload.ops[0]
    extras = list(seg.extras)
    if opts.storage == "masked" and seg.sparse and seg.train:
        extras.append("mask-apply")
    if seg.train:
        fwd = list(workload.ops)
        first = fwd[0].index if fwd and _is_weight_op(fwd[0]) else None

        def value_bytes(op: Op) -> float:
            info = workload.weights.get(op.weight or "")
            return DTYPE_BYTES.get(info.dtype, op.dtype_bytes) if info is not None else op.dtype_bytes

        for phase in ("forward", "recompute") if opts.checkpoint else ("forward",):
            for op in fwd:
                if _is_weight_op(op):
                    _forward_op(b, op, seg.patterns.get(op.weight or "", DENSE), opts, value_bytes(op), phase)
                else:
                    b.add(op, None, phase, op.flops)
        for op in reversed(fwd):
            if _is_weight_op(op):
                _backward_ops(b, op, seg.patterns.get(op.weight or "", DENSE), seg, opts, op.index == first,
                              value_bytes(op))
            else:
                _other_backward(b, op)
        if seg.optimizer and opts.optimizer is not None:
            op, layer, phase, flops = optimizer_op(template, opts.optimizer, held_values, param_bytes)
            if sparse_values is not None:
                flops = opts.optimizer.flops_per_param * round(sparse_values)
            b.add(op, layer, phase, flops)
    for extra in extras:
        _extra_ops(b, extra, seg.patterns, shapes, template, seg, param_bytes, opts.storage)
    return b.step(label)
