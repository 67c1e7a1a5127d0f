"""Peak memory of a training step: what is resident while it runs, by component.

* weights: as held: dense (all parameters at their dtype), or sparse (values + indices in the
  layer's storage format; the layers a distribution keeps dense and every non-sparsifiable
  parameter dense);
* copies: sparse kernels' extra copies: the transposed weight the grad-input kernel reads, or
  torchao's compressed W and W^T next to the dense weight;
* master: the fp32 master copy under mixed precision; optimizer: the optimizer's states;
* grads: one gradient per held parameter value, at the parameter dtype;
* activations: tensors saved for backward (every forward op's output, in-place ops aliasing
  their input; with checkpointing only each segment's boundary plus the largest segment
  recomputed, segments of sqrt(n) ops as in Chen et al. 2016) plus the activation gradients in
  flight (the largest op's input and output gradient);
* masks: masked storage (torch.nn.utils.prune): the mask buffer and the recomputed
  weight = weight_orig * mask, each dense at the parameter dtype, per sparse layer;
* workspace: RigL's update step with sparse storage: the dense weight gradient of one layer at a
  time (the largest), streamed into the top-k of the regrowth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from sparsesim.core.ir import DTYPE_BYTES, Workload
from sparsesim.sparsity.records import DENSE, Pattern
from sparsesim.train.distributions import sparsifiable
from sparsesim.train.methods import Segment
from sparsesim.train.optimizers import Optimizer
from sparsesim.train.step import TRANSPOSED, layer_for

COMPONENTS = ("weights", "copies", "master", "optimizer", "grads", "activations", "masks", "workspace")


@dataclass(frozen=True)
class Memory:
    """Bytes resident at a step's peak, by component (see the module docstring)."""

    weights: float = 0.0
    copies: float = 0.0
    master: float = 0.0
    optimizer: float = 0.0
    grads: float = 0.0
    activations: float = 0.0
    masks: float = 0.0
    workspace: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(getattr(self, f.name) for f in fields(self)))

    def largest(self) -> tuple[str, float]:
        """The component holding the most bytes and its share of the total."""
        name = max(COMPONENTS, key=lambda c: getattr(self, c))
        total = self.total
        return name, (getattr(self, name) / total if total > 0 else 0.0)


@dataclass(frozen=True)
class ModelSizes:
    """What memory needs of a workload: parameter count and dtype, activations saved."""

    params: int
    param_bytes: float
    sparsifiable: Mapping[str, int]
    saved_activations: float
    checkpointed_activations: float
    activation_grads: float


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape else 0


def _inplace(aten: str) -> bool:
    parts = aten.split(".")
    return len(parts) >= 2 and parts[1].endswith("_") and not parts[1].startswith("_")


def model_sizes(workload: Workload) -> ModelSizes:
    layers = {ly.weight: ly.size for ly in sparsifiable(workload)}
    model = workload.model
    if model is not None and hasattr(model, "parameters"):
        params = [(p.numel(), p.dtype) for p in model.parameters()]
        count = sum(n for n, _ in params)
        from sparsesim.tracing.tracer import dtype_name

        widest = max(params, key=lambda t: t[0])[1] if params else None
        pb = DTYPE_BYTES.get(dtype_name(widest), 4) if widest is not None else 4
    else:
        count = sum(_numel(w.shape) for w in workload.weights.values())
        dts = [w.dtype for w in workload.weights.values()]
        pb = DTYPE_BYTES.get(dts[0], 4) if dts else 4
    count = max(count, sum(layers.values()))
    outs = []
    for op in workload.ops:
        db = DTYPE_BYTES.get(op.dtype, 4)
        outs.append(0.0 if _inplace(op.aten) else _numel(op.output_shape) * db)
    saved = float(sum(outs))
    n = len(outs)
    seg = max(1, math.isqrt(n)) if n else 1
    chunks = [outs[i:i + seg] for i in range(0, n, seg)]
    # kept: each segment's output (the next one's input); during the backward of a segment its
    # recomputed insides (the boundary is already counted)
    boundaries = sum(c[-1] for c in chunks if c)
    inner = max((sum(c[:-1]) for c in chunks), default=0.0)
    grads = max((sum(_numel(s) for s in op.input_shapes[:1]) + _numel(op.output_shape)) * DTYPE_BYTES.get(op.dtype, 4)
                for op in workload.ops) if workload.ops else 0.0
    return ModelSizes(count, pb, layers, saved, float(boundaries + inner), float(grads))


def step_memory(sizes: ModelSizes, shapes: Mapping[str, tuple[int, int]], seg: Segment, *, storage: str,
                optimizer: Optimizer | None, checkpoint: bool) -> Memory:
    """Peak bytes of one step of `seg` (training segments only)."""
    pb = sizes.param_bytes
    other = sizes.params - sum(sizes.sparsifiable.values())
    sparse_held = storage == "sparse" and seg.held == "sparse"
    weights = copies = masks = workspace = 0.0
    values = float(other)
    for w, size in sizes.sparsifiable.items():
        p: Pattern = seg.patterns.get(w, DENSE)
        rows, cols = shapes.get(w, (size, 1))
        if sparse_held and not p.spec.is_dense:
            layer = layer_for(w, rows, cols, p, pb)
            weights += layer.format_bytes
            values += layer.value_bytes / pb if p.spec.shrinks_op else layer.stats.nnz
            if not p.spec.shrinks_op:
                copies += layer_for(w + TRANSPOSED, cols, rows, p, pb).format_bytes
        else:
            weights += size * pb
            values += size
            if not p.spec.is_dense and storage == "masked":
                masks += 2 * size * pb
            elif not p.spec.is_dense and storage == "sparse" and seg.held == "dense+nm":
                copies += 2 * layer_for(w, rows, cols, p, pb).format_bytes
        if sparse_held and seg.wgrad == "dense" and not p.spec.is_dense:
            workspace = max(workspace, size * pb)
    weights += other * pb
    master = state = 0.0
    if optimizer is not None:
        m, s = optimizer.resident_bytes(pb)
        master = values * m
        state = values * s if seg.optimizer else 0.0
    acts = (sizes.checkpointed_activations if checkpoint else sizes.saved_activations) + sizes.activation_grads
    return Memory(weights=weights, copies=copies, master=master, optimizer=state, grads=values * pb,
                  activations=acts, masks=masks, workspace=workspace)
