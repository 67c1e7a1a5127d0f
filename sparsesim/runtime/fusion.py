"""The fusion pass: which ops a runtime runs inside another op's kernel.

Three kinds of fusion, each switched on by the runtime (`RuntimeParams.fuse_elementwise`,
`fuse_epilogue`, `fuse_attention`):

* **chain**: consecutive memory ops (elementwise, copy, norm, softmax, reduction) where each
  consumes its predecessor's output run as one kernel, as torch.compile's inductor and vendor
  engines generate them: the group reads its external inputs once and writes only its last
  output; the intermediates stay in registers/shared memory.
* **epilogue**: elementwise ops (bias, activation, residual add) and inference batch norm right
  after a GEMM or convolution run in its epilogue (TensorRT's conv+BN+ReLU(+add) fusion): the
  GEMM writes the final output once, a fused op reads only its other inputs (the residual), and
  batch norm is folded into the weights.
* **attention**: a weightless score matmul (Q K^T), the elementwise ops and softmax on its output
  (scale, mask add) and the matmul that consumes the probabilities (P V) run as one fused
  attention kernel, as TorchInductor's attention pattern pass rewrites eager-written attention
  into scaled_dot_product_attention and engines run a fused multi-head-attention kernel: the
  scores and probabilities never reach DRAM, Q, K and V are read and the output written once.
  Layout copies of the operands between the two matmuls (V made contiguous) stay as they are.

Producer and consumer are recognised from the trace order and sizes: an op consumes its
predecessor when one of its inputs has as many elements as the predecessor's output. The pass never adds
traffic or launches: a fused op keeps at most its own bytes (`dram_scale` <= 1) and no launch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost.common import UNKNOWN_DTYPE_BYTES, memory_op_bytes

CHAIN_KINDS = ("elementwise", "copy", "norm", "softmax", "reduction")
EPILOGUE_KINDS = ("elementwise", "copy")
EPILOGUE_ANCHORS = ("linear", "conv", "matmul")
ROLES = ("alone", "head", "fused")
# ops between an attention's two matmuls that work on the scores: scale, mask add, softmax
ATTENTION_CHAIN_KINDS = ("elementwise", "softmax")


@dataclass(frozen=True)
class OpFusion:
    """How one op runs under a runtime.

    `role`: alone (its own kernel), head (its kernel also runs the ops fused after it) or fused
    (runs inside the kernel of op `group`); `how`: "chain", "epilogue" or "attention" for grouped ops;
    `dram_scale`: the share of the op's own DRAM traffic left after fusion (1.0 unless fused);
    `launches`: kernels the op launches itself (0 when fused). `kernel_op`: the op whose kernel
    the head's launch runs instead of its own (a fused attention: one flash-attention op doing
    both matmuls and the softmax between them, costed as a traced attention op is).
    """

    index: int
    group: int
    role: str = "alone"
    how: str = ""
    dram_scale: float = 1.0
    launches: int = 1
    kernel_op: Op | None = None

    def describe(self) -> str:
        if self.role == "fused":
            where = {"epilogue": "epilogue", "attention": "fused attention kernel"}.get(self.how, "fused kernel")
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


def _is_score_matmul(op: Op) -> bool:
    return op.kind == "matmul" and op.weight is None and op.gemm is not None and op.gemm.batch > 1


@dataclass(frozen=True)
class AttentionGroup:
    """One eager-written attention: `core` = [score matmul, scale/mask/softmax ops..., value
    matmul]; `layout_copies` = the copies that only exist to feed the two matmuls contiguous
    operands (torch.matmul clones transposed Q, K and V) or to lay the output out token-major
    (the heads transposed back): a fused attention kernel reads strided Q, K, V and writes O in
    that layout itself, so these copies disappear."""

    core: tuple[int, ...]
    layout_copies: tuple[int, ...]


def _feeds(copy: Op, op: Op) -> bool:
    return copy.kind == "copy" and consumes(copy, op)


def attention_groups(ops: Sequence[Op]) -> list[AttentionGroup]:
    """The eager-written attentions in `ops`. A group needs a softmax on the scores and a second
    weightless matmul reading its output; copies between them that do not read the scores (an
    operand's layout copy) are layout copies when the value matmul reads them, else left alone."""
    groups: list[AttentionGroup] = []
    taken: set[int] = set()
    i = 0
    while i < len(ops):
        head = ops[i]
        if not _is_score_matmul(head):
            i += 1
            continue
        scores = _numel(head.output_shape)
        members, between, last, softmax, j = [i], [], head, False, i + 1
        while j < len(ops):
            op = ops[j]
            if op.kind in ATTENTION_CHAIN_KINDS and consumes(last, op) and _numel(op.output_shape) == scores:
                members.append(j)
                last, softmax = op, softmax or op.kind == "softmax"
            elif op.kind == "copy" and _numel(op.output_shape) != scores:
                between.append(j)
            else:
                break
            j += 1
        if not (softmax and j < len(ops) and _is_score_matmul(ops[j]) and consumes(last, ops[j])):
            i += 1
            continue
        value = ops[j]
        copies = [c for c in between if _feeds(ops[c], value)]
        # Q and K made contiguous just before the score matmul (at most one copy each)
        before = i - 1
        while before >= 0 and i - before <= 2 and before not in taken and _feeds(ops[before], head):
            copies.append(before)
            before -= 1
        if j + 1 < len(ops) and ops[j + 1].kind == "copy" and consumes(value, ops[j + 1]):
            copies.append(j + 1)
        group = AttentionGroup(tuple(members + [j]), tuple(sorted(copies)))
        groups.append(group)
        taken.update(group.core + group.layout_copies)
        i = max(group.core + group.layout_copies) + 1
    return groups


def fuse(ops: Sequence[Op], *, elementwise: bool, epilogue: bool, attention: bool = False) -> tuple[OpFusion, ...]:
    """Group `ops` as a runtime that fuses elementwise chains, GEMM epilogues and/or attention
    (score matmul, softmax, value matmul) runs them.

    Returns one OpFusion per op, in order; with every kind off every op is alone."""
    fixed: dict[int, OpFusion] = {}
    if attention:
        for group in attention_groups(ops):
            fixed.update(_attention_fusions(ops, group))
    groups: list[list[int]] = []
    hows: list[str] = []
    for i, op in enumerate(ops):
        if i in fixed:
            continue
        prev = ops[i - 1] if i and i - 1 not in fixed else None
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
    out.extend(fixed.values())
    return tuple(sorted(out, key=lambda f: f.index))


def fused_attention_op(ops: Sequence[Op], group: AttentionGroup) -> Op:
    """The attention op a fused kernel runs for an eager-written attention: QK^T (the score
    matmul's GEMM) and PV with the softmax between them, reading Q, K and V and writing O once,
    like a traced scaled_dot_product_attention. A mask the score ops add is read by its own
    fused op (its bytes stay there)."""
    head, value = ops[group.core[0]], ops[group.core[-1]]
    q, k = head.input_shapes[0], head.input_shapes[1]
    v = value.input_shapes[1] if len(value.input_shapes) > 1 else k
    moved = (_numel(q) + _numel(k) + _numel(v) + _numel(value.output_shape)) * _elem_bytes(head)
    # a score op adding a second tensor (a padding mask, a position bias) makes the rewritten
    # scaled_dot_product_attention call one with attn_mask
    masked = any(ops[i].kind == "elementwise" and sum(_numel(s) > 1 for s in ops[i].input_shapes) > 1
                 for i in group.core[1:-1])
    return dataclasses.replace(head, kind="attention", aten="fused attention (score matmul, softmax, value matmul)",
                               input_shapes=(q, k, v), output_shape=value.output_shape,
                               flops=head.flops + value.flops, bytes_moved=round(moved), note="", masked=masked)


def _attention_fusions(ops: Sequence[Op], group: AttentionGroup) -> dict[int, OpFusion]:
    """One fused attention kernel, launched by the score matmul and costed as the attention op
    it runs (`fused_attention_op`: Q, K, V read and O written once, both matmuls and the
    softmax); the score ops run on chip, keeping only reads of their own other inputs (a mask);
    the value matmul's work and traffic are the kernel's; the layout copies move nothing."""
    members = group.core
    head = members[0]
    out = {head: OpFusion(head, head, "head", "attention", 1.0, 1, kernel_op=fused_attention_op(ops, group))}
    for prev, i in itertools.pairwise(members):
        last = i == members[-1]
        scale = 0.0 if last else _share(ops[i], drop_input=ops[prev], drop_output=True)
        out[i] = OpFusion(i, head, "fused", "attention", scale, 0)
    for i in group.layout_copies:
        out[i] = OpFusion(i, head, "fused", "attention", 0.0, 0)
    return out


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
