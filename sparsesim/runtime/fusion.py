"""The fusion pass: which ops a runtime runs inside another op's kernel.

Two kinds of fusion, each switched on by the runtime (`RuntimeParams.fuse_elementwise`,
`fuse_epilogue`):

* **chain**: consecutive memory ops (elementwise, copy, norm, softmax, reduction) where each
  consumes its predecessor's output run as one kernel, as torch.compile's inductor and vendor
  engines generate them: the group reads its external inputs once and writes only its last
  output; the intermediates stay in registers/shared memory.
* **epilogue**: elementwise ops (bias, activation, residual add) and inference batch norm right
  after a GEMM or convolution run in its epilogue (TensorRT's conv+BN+ReLU(+add) fusion): the
  GEMM writes the final output once, a fused op reads only its other inputs (the residual), and
  batch norm is folded into the weights.

Producer and consumer are recognised from the trace order and sizes: an op consumes its
predecessor when one of its inputs has as many elements as the predecessor's output. The pass never adds
traffic or launches: a fused op keeps at most its own bytes (`dram_scale` <= 1) and no launch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost.common import UNKNOWN_DTYPE_BYTES, memory_op_bytes

CHAIN_KINDS = ("elementwise", "copy", "norm", "softmax", "reduction")
EPILOGUE_KINDS = ("elementwise", "copy")
EPILOGUE_ANCHORS = ("linear", "conv", "matmul")
ROLES = ("alone", "head", "fused")


@dataclass(frozen=True)
class OpFusion:
    """How one op runs under a runtime.

    `role`: alone (its own kernel), head (its kernel also runs the ops fused after it) or fused
    (runs inside the kernel of op `group`); `how`: "chain" or "epilogue" for grouped ops;
    `dram_scale`: the share of the op's own DRAM traffic left after fusion (1.0 unless fused);
    `launches`: kernels the op launches itself (0 when fused).
    """

    index: int
    group: int
    role: str = "alone"
    how: str = ""
    dram_scale: float = 1.0
    launches: int = 1

    def describe(self) -> str:
        if self.role == "fused":
            where = "epilogue" if self.how == "epilogue" else "fused kernel"
            return (f"fused into op {self.group}'s {where}: no launch of its own, "
                    f"{self.dram_scale:.0%} of its DRAM traffic left")
        if self.role == "head":
            return f"runs a fused {self.how} kernel for the ops after it"
        return ""


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _elem_bytes(op: Op) -> float:
    return DTYPE_BYTES.get(op.dtype, UNKNOWN_DTYPE_BYTES)


def consumes(prev: Op, op: Op) -> bool:
    """Whether `op` reads `prev`'s output: one of its inputs has as many elements (a view such as
    addmm's 2D output seen as batch x tokens x features moves no data)."""
    if not prev.output_shape:
        return False
    n = _numel(prev.output_shape)
    return any(_numel(s) == n for s in op.input_shapes if s)


def _is_batch_norm(op: Op) -> bool:
    return op.kind == "norm" and "batch_norm" in op.aten


def _joins_epilogue(anchor_open: bool, prev: Op, op: Op) -> bool:
    return anchor_open and consumes(prev, op) and (op.kind in EPILOGUE_KINDS or _is_batch_norm(op))


def fuse(ops: Sequence[Op], *, elementwise: bool, epilogue: bool) -> tuple[OpFusion, ...]:
    """Group `ops` as a runtime that fuses elementwise chains and/or GEMM epilogues runs them.

    Returns one OpFusion per op, in order; with both kinds off every op is alone."""
    groups: list[list[int]] = []
    hows: list[str] = []
    for i, op in enumerate(ops):
        prev = ops[i - 1] if i else None
        if prev is not None and groups and groups[-1][-1] == i - 1:
            how = hows[-1]
            if how == "epilogue" and epilogue and _joins_epilogue(True, prev, op):
                groups[-1].append(i)
                continue
            if how == "chain" and elementwise and op.kind in CHAIN_KINDS and consumes(prev, op):
                groups[-1].append(i)
                continue
            if how == "" and prev.kind in EPILOGUE_ANCHORS and epilogue and _joins_epilogue(True, prev, op):
                groups[-1].append(i)
                hows[-1] = "epilogue"
                continue
            if (how == "" and elementwise and prev.kind in CHAIN_KINDS and op.kind in CHAIN_KINDS
                    and consumes(prev, op)):
                groups[-1].append(i)
                hows[-1] = "chain"
                continue
        groups.append([i])
        hows.append("")
    out: list[OpFusion] = []
    for members, how in zip(groups, hows):
        head = members[0]
        if len(members) == 1:
            out.append(OpFusion(head, head))
            continue
        for pos, i in enumerate(members):
            op = ops[i]
            last = pos == len(members) - 1
            if pos == 0:
                # an epilogue anchor (GEMM) writes the group's output as its own; a chain head
                # keeps its inputs but hands its output on
                scale = 1.0 if how == "epilogue" else _share(op, drop_input=None, drop_output=not last)
                out.append(OpFusion(i, head, "head", how, scale, 1))
                continue
            prev = ops[i - 1]
            if how == "epilogue":
                scale = 0.0 if _is_batch_norm(op) else _share(op, drop_input=prev, drop_output=True)
            else:
                scale = _share(op, drop_input=prev, drop_output=not last)
            out.append(OpFusion(i, head, "fused", how, scale, 0))
    return tuple(out)


def _share(op: Op, *, drop_input: Op | None, drop_output: bool) -> float:
    """The share of `op`'s traffic left when the input coming from `drop_input` and (with
    `drop_output`) its output stay on chip; in [0, 1]."""
    total = memory_op_bytes(op)
    if total <= 0:
        return 1.0
    saved = 0.0
    if drop_input is not None:
        saved += _numel(drop_input.output_shape) * _elem_bytes(op)
    if drop_output:
        saved += _numel(op.output_shape) * _elem_bytes(op)
    return min(1.0, max(0.0, (total - saved) / total))
